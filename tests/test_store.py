"""Results store (SQLite upsert, schema version, WAL), provenance fields and the price list."""

import re
import sqlite3
from pathlib import Path

import pytest

from promptintern.evaluation.cost import PriceError, cost, load_prices
from promptintern.harness import provenance
from promptintern.harness.store import ResultsStore, RunRow, StoreError


def _row(**kw):
    base = dict(table_id="1", method="promptintern", task="nl2bash", model="embedded", profile="cpu")
    return RunRow(**(base | kw))


def test_round_trip_and_upsert_without_duplicates(tmp_path):
    path = tmp_path / "r.sqlite"
    prov = provenance.collect(seed=0, wall_s=1.5, settings_key="abc")
    with ResultsStore(path) as store:
        store.record(_row(value=10.0, ci_lo=5.0, ci_hi=15.0, n=20, tau_all=0.25, provenance=prov))
        store.record(_row(value=12.0, ci_lo=6.0, ci_hi=16.0, n=20, tau_all=0.25, provenance=prov))  # same key
        store.record(_row(variant="tau-fixed-0.3", value=7.0))
        store.record({**_row(table_id="2").to_dict(), "status": "not run", "reason": "no checkpoint"})
        (count,) = store.connection.execute("SELECT COUNT(*) FROM runs").fetchone()
        assert count == 3
        rows = store.rows("1", "cpu")
        assert [(r.variant, r.value) for r in rows] == [("", 12.0), ("tau-fixed-0.3", 7.0)]
        assert rows[0].ci_hi == 16.0 and rows[0].provenance == prov and rows[0].created_at
        assert [r.status for r in store.rows(table_id=2)] == ["not run"]
        assert store.rows(profile="paper") == []
        assert store.connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with ResultsStore(path) as again:  # reopening keeps the rows and the schema
        assert len(again.rows()) == 3
        assert again.connection.execute("SELECT version FROM schema_version").fetchall() == [(2,)]


def test_store_of_schema_1_gains_the_new_columns(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE schema_version (component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
    con.execute("INSERT INTO schema_version VALUES ('runs', 1)")
    con.execute(
        "CREATE TABLE runs (table_id TEXT NOT NULL, method TEXT NOT NULL, variant TEXT NOT NULL, model TEXT "
        "NOT NULL, task TEXT NOT NULL, seed INTEGER NOT NULL, profile TEXT NOT NULL, status TEXT NOT NULL, "
        "reason TEXT, value REAL, provenance TEXT, created_at TEXT NOT NULL, "
        "PRIMARY KEY (table_id, method, variant, model, task, seed, profile))"
    )
    con.execute(
        "INSERT INTO runs (table_id, method, variant, model, task, seed, profile, status, value, provenance, "
        "created_at) VALUES ('1', 'promptintern', '', 'embedded', 'nl2bash', 0, 'cpu', 'ok', 3.5, '{}', 'x')"
    )
    con.commit()
    con.close()
    with ResultsStore(path) as store:
        (row,) = store.rows()
        assert row.value == 3.5 and row.compression_x is None and row.tau_full is None
        store.record(_row(compression_x=5.3))
        assert store.connection.execute("SELECT version FROM schema_version").fetchall() == [(2,)]


def test_row_validation_names_the_problem(tmp_path):
    with pytest.raises(ValueError, match="status must be one of"):
        _row(status="done")
    with pytest.raises(ValueError, match="needs a reason"):
        _row(status="failed")
    with pytest.raises(ValueError, match="'model' must be a non-empty"):
        _row(model="")
    with (
        ResultsStore(tmp_path / "r.sqlite") as store,
        pytest.raises(ValueError, match="unknown run row field"),
    ):
        store.record({**_row().to_dict(), "bleu": 3})


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "r.sqlite"
    ResultsStore(path).close()
    con = sqlite3.connect(path)
    con.execute("UPDATE schema_version SET version = 99 WHERE component = 'runs'")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="schema version 99"):
        ResultsStore(path)


def test_default_path_under_home(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTINTERN_HOME", str(tmp_path / "h"))
    with ResultsStore() as store:
        assert store.path == tmp_path / "h" / "results.sqlite" and store.path.is_file()


def test_provenance_fields(tmp_path):
    p = provenance.collect(seed=3, wall_s=2.0, settings_key="k")
    assert p["seed"] == 3 and p["wall_s"] == 2.0 and p["settings_key"] == "k"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", p["created_at"])
    git = p["git"]
    assert git["commit"] is None or re.fullmatch(r"[0-9a-f]{40}", git["commit"])
    assert git["dirty"] in (True, False, None)
    for name in ("torch", "transformers", "peft", "llmlingua", "sacrebleu", "promptintern"):
        assert name in p["packages"]
    assert p["packages"]["promptintern"] and p["python"].count(".") == 2
    hw = p["hardware"]
    assert hw["cores"] >= 1 and hw["ram_gib"] > 0 and isinstance(hw["gpu"], list) and hw["cpu"]
    if Path("/proc/cpuinfo").is_file():  # Linux: the CPU generation, which a VM's model name may hide
        assert re.fullmatch(r"family \d+ model \d+", hw["cpu_generation"])
        assert hw["cpu_generation"] in provenance.describe_hardware(hw)
    # outside a git checkout the git fields are None, not an error
    assert provenance.git_info(tmp_path) == {"commit": None, "dirty": None}


def test_git_dirty_ignores_the_harness_results(tmp_path):
    import subprocess

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "results").mkdir()
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "results" / "table1.md").write_text("old\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    assert provenance.git_info(tmp_path)["dirty"] is False
    (tmp_path / "results" / "table1.md").write_text("new\n")  # rewritten by a run: not a code change
    (tmp_path / "notes.txt").write_text("untracked\n")
    assert provenance.git_info(tmp_path)["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert provenance.git_info(tmp_path)["dirty"] is True


def test_prices_and_cost(tmp_path):
    prices = load_prices()
    assert prices.as_of and "openai" in prices.source.lower()
    assert cost("embedded", 3000, 100) == 0.0
    assert cost("/some/local/checkpoint", 3000, 100) == 0.0  # default: local models are free
    assert cost("gpt-4", 1000, 1000) == pytest.approx(0.09)
    assert cost("openai:gpt-4", 500, 0) == pytest.approx(0.015)
    mine = tmp_path / "p.yaml"
    mine.write_text("as_of: '2025-01-01'\nmodels: {my-api: {input: 1.0, output: 2.0}}\n")
    merged = load_prices(mine)
    assert merged.as_of == "2025-01-01" and merged.cost("my-api", 2000, 500) == pytest.approx(3.0)
    assert merged.cost("gpt-4", 1000, 0) == pytest.approx(0.03)  # packaged prices are kept
    bad = tmp_path / "bad.yaml"
    bad.write_text("as_of: x\nmodels: {m: {input: -1, output: 0}}\n")
    with pytest.raises(PriceError, match=r"models\.m\.input"):
        load_prices(bad)
