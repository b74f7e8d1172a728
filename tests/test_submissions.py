"""Leaderboard submissions: submit, leaderboard (md/json/html), duplicates, rejection of bad submissions."""

from __future__ import annotations

import io
import json
import sqlite3
import tarfile
from pathlib import Path

import pytest
import typer
from conftest import needs_bwrap
from typer.testing import CliRunner

from promptintern.harness import leaderboard
from promptintern.harness.submissions import SubmissionError, load_submission, submit
from promptintern.harness.submit_cli import data_export_cmd, leaderboard_cmd, submit_cmd
from promptintern.tasks import get_task

runner = CliRunner()


def _app() -> typer.Typer:
    """The commands as the main CLI registers them."""
    app = typer.Typer()
    data = typer.Typer()
    app.add_typer(data, name="data")
    app.command("submit")(submit_cmd)
    app.command("leaderboard")(leaderboard_cmd)
    data.command("export")(data_export_cmd)
    return app


def _export(task: str, out: Path) -> list[dict]:
    res = runner.invoke(_app(), ["data", "export", "--task", task, "--references", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def _write(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def make_submission(
    root: Path,
    tasks=("nl2f", "nl2bash"),
    *,
    name="oracle",
    model="gpt-4",
    tokens=200,
    wrong_every: int = 0,
    extra_meta: str = "",
) -> Path:
    """A submission folder from the tasks' references (every ``wrong_every``-th prediction blanked)."""
    (root / "predictions").mkdir(parents=True)
    for task in tasks:
        path = root / "predictions" / f"{task}.jsonl"
        records = _export(task, path)
        for i, rec in enumerate(records):
            rec["input_tokens"] = tokens
            if wrong_every and i % wrong_every == 0:
                rec["prediction"] = "wrong"
        _write(path, records)
    (root / "submission.yaml").write_text(
        f"name: {name}\nmodel: {model}\nmethod: promptintern\ncontact: someone@example.org\n{extra_meta}",
        encoding="utf-8",
    )
    return root


def _stored(store: Path) -> int:
    if not store.exists():
        return 0
    con = sqlite3.connect(store)
    try:
        return con.execute("SELECT COUNT(*) FROM submissions").fetchone()[0]
    except sqlite3.OperationalError:  # the table was never created
        return 0
    finally:
        con.close()


def test_data_export_writes_the_references(tmp_path):
    records = _export("nl2f", tmp_path / "nl2f.jsonl")
    instances = get_task("nl2f").load("test")
    assert [r["task_id"] for r in records] == [i.id for i in instances]
    assert [r["prediction"] for r in records] == [i.reference for i in instances]
    res = runner.invoke(_app(), ["data", "export", "--task", "nl2f"])
    assert res.exit_code == 2 and "--references" in res.output


def test_submit_then_leaderboard_then_resubmit(tmp_path):
    sub = make_submission(tmp_path / "sub")
    store = tmp_path / "results.sqlite"
    res = runner.invoke(_app(), ["submit", str(sub), "--store", str(store)])
    assert res.exit_code == 0, res.output
    assert "recorded submission #1 (oracle)" in res.output
    assert "nl2f: em 100.00" in res.output and "nl2bash: bleu 100.00" in res.output

    md = runner.invoke(_app(), ["leaderboard", "--store", str(store)]).output
    assert "| 1 | oracle | gpt-4 | promptintern | 100.0 [100.0, 100.0] | 200.0 | 0.006 |" in md
    data = json.loads(
        runner.invoke(_app(), ["leaderboard", "--format", "json", "--store", str(store)]).output
    )
    (entry,) = data["entries"]
    assert set(entry["tasks"]) == {"nl2f", "nl2bash"} and "contact" not in entry
    nl2f = entry["tasks"]["nl2f"]
    assert nl2f["n"] == 52 and nl2f["value"] == 100.0 and nl2f["ci_lo"] == 100.0
    assert nl2f["cost_usd_per_instance"] == pytest.approx(200 / 1000 * 0.03)
    html_file = tmp_path / "board.html"
    res = runner.invoke(_app(), ["leaderboard", "-f", "html", "-o", str(html_file), "--store", str(store)])
    assert res.exit_code == 0, res.output
    page = html_file.read_text(encoding="utf-8")
    assert "<svg" in page and "<script>" in page and 'id="leaderboard"' in page and "oracle" in page
    assert "src=" not in page and "href=" not in page  # one self-contained file, nothing fetched

    again = runner.invoke(_app(), ["submit", str(sub), "--store", str(store)])
    assert again.exit_code == 0, again.output
    assert "already present: identical to submission #1" in again.output
    # a tarball of the same predictions, reformatted and under another name, is the same content
    for path in (sub / "predictions").iterdir():
        recs = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text(
            "".join(json.dumps(dict(reversed(list(r.items()))), indent=None) + "\n" for r in recs[::-1])
        )
    (sub / "submission.yaml").write_text((sub / "submission.yaml").read_text().replace("oracle", "renamed"))
    tarball = tmp_path / "sub.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(sub, arcname="sub")
    outcome = submit(tarball, store_path=store)
    assert outcome.status == "already present" and outcome.id == 1
    assert _stored(store) == 1


def test_malformed_submission_lists_every_problem_and_stores_nothing(tmp_path):
    sub = make_submission(
        tmp_path / "sub", extra_meta="colour: blue\ntask_versions:\n  nl2f: 0000\n  nl2bash: abc123\n"
    )
    meta = (sub / "submission.yaml").read_text().replace("contact: someone@example.org\n", "")
    (sub / "submission.yaml").write_text(meta)
    nl2f = sub / "predictions" / "nl2f.jsonl"
    lines = nl2f.read_text().splitlines()
    first = json.loads(lines[0])
    lines[1] = "{not json"
    lines[2] = json.dumps({"task_id": json.loads(lines[2])["task_id"], "input_tokens": 3})  # no prediction
    lines[3] = json.dumps(first)  # duplicate of line 1
    lines[4] = json.dumps({"task_id": "no-such-id", "prediction": "x", "input_tokens": 1})
    del lines[10:]  # the rest of the split has no prediction
    nl2f.write_text("\n".join(lines) + "\n")
    bash = sub / "predictions" / "nl2bash.jsonl"
    recs = [json.loads(line) for line in bash.read_text().splitlines()]
    del recs[5]["input_tokens"]
    _write(bash, recs)
    (sub / "predictions" / "gsm8k.jsonl").write_text("")
    store = tmp_path / "results.sqlite"

    res = runner.invoke(_app(), ["submit", str(sub), "--store", str(store)])
    assert res.exit_code == 2
    err = res.output
    expected = [
        "submission.yaml: field 'contact': Field required",
        "submission.yaml:4: field 'colour': Extra inputs are not permitted",
        "submission.yaml:6: field 'task_versions.nl2f': Input should be a valid string",  # YAML reads 0000 as 0
        "submission.yaml:7: field 'task_versions.nl2bash': 'abc123' is not this suite's nl2bash test split",
        "predictions/gsm8k.jsonl: unexpected file",
        "predictions/nl2f.jsonl:2: invalid JSON",
        "predictions/nl2f.jsonl:3: field 'prediction' is missing",
        "predictions/nl2f.jsonl:4: field 'task_id': duplicate id",
        "predictions/nl2f.jsonl:5: field 'task_id': unknown id 'no-such-id'",
        "predictions/nl2f.jsonl: 46 id(s) of the split have no prediction",
        "predictions/nl2bash.jsonl: field 'input_tokens' is given on some lines but missing on line(s) 6",
    ]
    for problem in expected:
        assert problem in err, f"{problem!r} not reported in:\n{err}"
    assert "11 problem(s)" in err
    assert _stored(store) == 0

    with pytest.raises(SubmissionError) as info:
        load_submission(sub)
    assert len(info.value.problems) == 11


def test_a_task_failing_to_score_records_nothing(tmp_path, monkeypatch):
    sub = make_submission(tmp_path / "sub")
    store = tmp_path / "results.sqlite"
    task_cls = type(get_task("nl2bash"))

    def broken(self, *args, **kwargs):
        raise RuntimeError("scorer crashed")

    monkeypatch.setattr(task_cls, "score", broken)
    with pytest.raises(RuntimeError, match="scorer crashed"):
        submit(sub, store_path=store)
    assert _stored(store) == 0


def _tar_with(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return path


def test_unsafe_tarball_is_rejected_before_extraction(tmp_path):
    def info(name, kind=tarfile.REGTYPE, link=""):
        ti = tarfile.TarInfo(name)
        ti.type, ti.linkname = kind, link
        return ti

    tarball = _tar_with(
        tmp_path / "evil.tar.gz",
        [
            (info("submission.yaml"), b"name: x\n"),
            (info("../escaped.txt"), b"boom"),
            (info("/tmp/absolute.txt"), b"boom"),
            (info("predictions/nl2f.jsonl", tarfile.SYMTYPE, "/etc/passwd"), b""),
            (info("predictions/hard", tarfile.LNKTYPE, "submission.yaml"), b""),
            (info("dev", tarfile.FIFOTYPE), b""),
        ],
    )
    with pytest.raises(SubmissionError) as exc:
        load_submission(tarball)
    text = str(exc.value)
    assert "'../escaped.txt': path leaves the archive" in text
    assert "'/tmp/absolute.txt': absolute path" in text
    assert "'predictions/nl2f.jsonl': links are not allowed" in text
    assert "'predictions/hard': links are not allowed" in text
    assert "'dev': only regular files and folders" in text
    assert not (tmp_path / "escaped.txt").exists()
    (tmp_path / "evil.zip").write_bytes(b"PK")
    with pytest.raises(SubmissionError, match="expected a folder or a .tar.gz"):
        load_submission(tmp_path / "evil.zip")


def test_invalid_yaml_names_its_line(tmp_path):
    sub = make_submission(tmp_path / "sub", tasks=("nl2f",))
    (sub / "submission.yaml").write_text("name: x\nmodel: [unclosed\n")
    with pytest.raises(SubmissionError, match=r"submission.yaml:\d+: invalid YAML"):
        load_submission(sub)


def test_costs_only_for_priced_models(tmp_path):
    store = tmp_path / "results.sqlite"
    submit(
        make_submission(tmp_path / "a", tasks=("nl2f",), name="priced", model="openai:gpt-4o"),
        store_path=store,
    )
    submit(
        make_submission(
            tmp_path / "b", tasks=("nl2f",), name="local", model="my-org/my-model", wrong_every=2
        ),
        store_path=store,
    )
    board = leaderboard.load(store)
    priced, local = board.entries
    assert priced.tasks["nl2f"].cost_usd_per_instance == pytest.approx(200 / 1000 * 0.005)
    assert local.tasks["nl2f"].cost_usd_per_instance is None
    assert local.tasks["nl2f"].value == pytest.approx(100 * 26 / 52)
    assert any("local / nl2f: cost blank: no price for model 'my-org/my-model'" in n for n in board.notes)
    assert "my-org/my-model" in leaderboard.render_markdown(board)
    with pytest.raises(ValueError, match="unknown leaderboard format 'pdf'"):
        leaderboard.render("pdf", store)


def test_corpus_bleu_ci_equals_rescoring_each_resample():
    from sacrebleu.metrics import BLEU

    from promptintern.evaluation.stats import bootstrap_ci, corpus_bleu_ci

    refs = [i.reference for i in get_task("nl2bash").load("test")[:40]]
    preds = [r if k % 3 else r.split(" ")[0] + " -x foo" for k, r in enumerate(refs)]
    bleu = BLEU()
    slow = bootstrap_ci(
        len(preds),
        lambda idx: bleu.corpus_score([preds[i] for i in idx], [[refs[i] for i in idx]]).score,
        resamples=60,
    )
    fast = corpus_bleu_ci(preds, refs, resamples=60)
    assert fast == pytest.approx(slow, abs=1e-9)
    assert fast[0] < fast[1] < 100


@needs_bwrap
def test_mbpp_submission_runs_in_the_sandbox(tmp_path, monkeypatch):
    task_cls = type(get_task("mbpp"))
    real_load = task_cls.load
    monkeypatch.setattr(task_cls, "load", lambda self, split: real_load(self, split)[:3])
    sub = make_submission(tmp_path / "sub", tasks=("mbpp",), model="embedded")
    path = sub / "predictions" / "mbpp.jsonl"
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    recs[1]["prediction"] = "import os\nos._exit(0)"  # exits before the asserts: must not pass
    _write(path, recs)
    outcome = submit(sub, store_path=tmp_path / "results.sqlite", workers=2)
    result = outcome.results["mbpp"]
    assert (outcome.status, result.metric, result.n) == ("recorded", "pass@1", 3)
    assert result.value == pytest.approx(200 / 3)
    assert result.signature == "python_tests|sandbox:bwrap|n:3"
