"""Exported results: records copied without adapters, rows.jsonl merged across pieces, read back absolute."""

from __future__ import annotations

import json

import pytest

from promptintern.harness.archive import ArchiveError, export_runs, import_runs, read_rows
from promptintern.harness.store import ResultsStore, RunRow


def _row(tmp_path, method, task="nl2bash", seed=0, value=1.0):
    run = tmp_path / "home" / f"{task}-{method}-{seed}"
    run.mkdir(parents=True)
    for name in ("scores.json", "scores.jsonl", "predictions.jsonl", "settings.json"):
        (run / name).write_text("{}\n")
    (run / "adapter").mkdir()
    latency = tmp_path / "home" / "latency.json"
    latency.write_text('{"requests": {}}')
    return RunRow(table_id="2", method=method, task=task, model="m", profile="cpu", seed=seed, value=value,
                  directory=str(run), provenance={"latency_file": str(latency), "git": "abc"})  # fmt: skip


def test_export_copies_records_and_merges_pieces(tmp_path):
    out = tmp_path / "results"
    first = [_row(tmp_path, "promptintern"), _row(tmp_path, "ft-none", seed=1)]
    export_runs(first, out)
    lines = [json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines()]
    assert {x["directory"] for x in lines} == {"runs/nl2bash/promptintern/seed-0", "runs/nl2bash/ft-none/seed-1"}
    assert (out / "runs/nl2bash/promptintern/seed-0/predictions.jsonl").is_file()
    assert not (out / "runs/nl2bash/promptintern/seed-0/adapter").exists()
    assert lines[0]["provenance"]["latency_file"] == "latency/latency.json" and (out / "latency/latency.json").is_file()

    # a second piece: another task, and a rerun of one row that replaces it
    export_runs([_row(tmp_path, "zero-shot", task="nl2f"), _row(tmp_path / "b", "promptintern", value=2.0)], out)
    rows = read_rows(out)
    assert sorted((r.task, r.method, r.seed) for r in rows) == [
        ("nl2bash", "ft-none", 1), ("nl2bash", "promptintern", 0), ("nl2f", "zero-shot", 0)]  # fmt: skip
    assert {r.method: r.value for r in rows}["promptintern"] == 2.0
    assert all(r.directory.startswith(str(out.resolve())) for r in rows)

    with ResultsStore(tmp_path / "s.sqlite") as store:
        assert len(import_runs(out, store)) == 3 and len(import_runs(out, store, missing_only=True)) == 0


def test_a_folder_without_rows_or_with_a_bad_line_is_refused(tmp_path):
    with pytest.raises(ArchiveError, match="rows.jsonl does not exist"):
        read_rows(tmp_path)
    (tmp_path / "rows.jsonl").write_text('{"table_id": "2"}\n')
    with pytest.raises(ArchiveError, match="rows.jsonl, line 1"):
        read_rows(tmp_path)
