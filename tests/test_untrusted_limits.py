"""Limits on untrusted input: leaderboard hosts run ``submit`` on strangers' files.

Size caps on a prediction and on a predictions file (parameters and environment variables), the real
column of a JSON error, tarball headers checked before anything is extracted, and Markdown that renders
submitters' text as text.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import tempfile
import tracemalloc
from pathlib import Path

import pytest

from promptintern.evaluation.predictions import (
    FILE_BYTES_ENV,
    PREDICTION_BYTES_ENV,
    PredictionsError,
    read_predictions,
)
from promptintern.harness import leaderboard, submissions
from promptintern.harness.submissions import SubmissionError, load_submission
from promptintern.tasks import PAPER_TASKS
from promptintern.tasks.base import Instance

INSTANCES = [Instance(str(i), "test", f"q{i}", f"a{i}") for i in (1, 2, 3)]


@pytest.fixture(autouse=True)
def _no_caps_from_the_host(monkeypatch):
    monkeypatch.delenv(PREDICTION_BYTES_ENV, raising=False)
    monkeypatch.delenv(FILE_BYTES_ENV, raising=False)


def _write(tmp_path: Path, lines: list[str | bytes], name: str = "preds.jsonl") -> Path:
    path = tmp_path / name
    path.write_bytes(b"".join((ln if isinstance(ln, bytes) else ln.encode()) + b"\n" for ln in lines))
    return path


def _rec(tid: int, pred: str) -> str:
    return json.dumps({"task_id": tid, "prediction": pred}, ensure_ascii=False)


def _problems(path: Path, **kwargs) -> list[str]:
    with pytest.raises(PredictionsError) as err:
        read_predictions(path, INSTANCES, **kwargs)
    assert "\n" not in "".join(err.value.problems)  # one line each
    return err.value.problems


# -- predictions ---------------------------------------------------------------------------------------
def test_prediction_over_the_cap_names_file_line_and_field(tmp_path):
    path = _write(tmp_path, [_rec(1, "x"), _rec(2, "é" * 60), _rec(3, "y" * 100)])
    assert len(read_predictions(path, INSTANCES, max_prediction_bytes=120)) == 3  # é is 2 bytes: 120
    problems = _problems(path, max_prediction_bytes=100)
    assert problems == [
        f"{path}:2: field 'prediction' is 120 bytes, over the 100-byte cap (PROMPTINTERN_MAX_PREDICTION_BYTES)",
        f"{path}: 1 id(s) of the split have no prediction: 2",
    ]


def test_a_huge_line_is_refused_without_being_read_whole(tmp_path):
    """The issue's case: one 50 MB prediction scored for 101 s with 6.5 GB of memory and exited 0."""
    path = tmp_path / "preds.jsonl"
    with open(path, "wb") as fh:
        fh.write((_rec(1, "x") + "\n").encode())
        fh.write(b'{"task_id": 2, "prediction": "')
        fh.truncate(50 << 20)  # sparse: 50 MiB of NUL bytes, no newline
    tracemalloc.start()
    try:
        problems = _problems(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    line2 = (50 << 20) - len(_rec(1, "x")) - 1
    assert problems[0] == (
        f"{path}:2: line is {line2:,} bytes, too long for field 'prediction' under its 65,536-byte cap "
        "(PROMPTINTERN_MAX_PREDICTION_BYTES): a line holds at most 528,384"
    )
    assert peak < 8 << 20, f"peak {peak:,} bytes while reading a 50 MiB line"


def test_file_over_the_cap_is_refused_before_any_line_is_parsed(tmp_path, monkeypatch):
    path = _write(tmp_path, [_rec(1, "x"), _rec(2, "y"), _rec(3, "z")])
    size = path.stat().st_size
    assert len(read_predictions(path, INSTANCES, max_file_bytes=size)) == 3
    monkeypatch.setattr(json, "loads", lambda *a, **k: pytest.fail("parsed a line of a file over the cap"))
    assert _problems(path, max_file_bytes=size - 1) == [
        f"{path}: file is {size:,} bytes, over the {size - 1:,}-byte cap (PROMPTINTERN_MAX_PREDICTIONS_FILE_BYTES)"
    ]
    big = tmp_path / "big.jsonl"
    with open(big, "wb") as fh:
        fh.truncate(65 << 20)  # sparse, over the 64 MiB default
    assert _problems(big) == [
        f"{big}: file is {65 << 20:,} bytes, over the {64 << 20:,}-byte cap (PROMPTINTERN_MAX_PREDICTIONS_FILE_BYTES)"
    ]


def test_environment_sets_the_caps_at_call_time(tmp_path, monkeypatch):
    path = _write(tmp_path, [_rec(1, "x"), _rec(2, "12345"), _rec(3, "z")])
    monkeypatch.setenv(PREDICTION_BYTES_ENV, "4")
    assert _problems(path)[0].endswith("field 'prediction' is 5 bytes, over the 4-byte cap (PROMPTINTERN_MAX_PREDICTION_BYTES)")
    assert len(read_predictions(path, INSTANCES, max_prediction_bytes=5)) == 3  # an argument wins
    monkeypatch.setenv(PREDICTION_BYTES_ENV, "")  # empty: the default
    assert len(read_predictions(path, INSTANCES)) == 3
    monkeypatch.setenv(FILE_BYTES_ENV, "20")
    assert _problems(path) == [
        f"{path}: file is {path.stat().st_size:,} bytes, over the 20-byte cap (PROMPTINTERN_MAX_PREDICTIONS_FILE_BYTES)"
    ]


@pytest.mark.parametrize("value", ["abc", "0", "-5", "1.5", "64K"])
def test_invalid_environment_value_is_a_clear_error(tmp_path, monkeypatch, value):
    path = _write(tmp_path, [_rec(1, "x")])
    monkeypatch.setenv(PREDICTION_BYTES_ENV, value)
    assert _problems(path) == [
        f"environment variable PROMPTINTERN_MAX_PREDICTION_BYTES={value!r} is not a positive whole number of bytes"
    ]
    monkeypatch.delenv(PREDICTION_BYTES_ENV)
    monkeypatch.setenv(FILE_BYTES_ENV, value)
    with pytest.raises(SubmissionError, match=f"PROMPTINTERN_MAX_PREDICTIONS_FILE_BYTES={value!r} is not a positive"):
        load_submission(tmp_path)


def test_json_errors_report_the_real_column(tmp_path):
    path = _write(
        tmp_path,
        [
            '{"task_id": 1, "prediction": "abc"',  # truncated: used to be "at column 1" (of line 2)
            '{"task_id": 2 "prediction": "x"}',
            '{"task_id": 3, "prediction": "abc',
        ],
    )
    assert _problems(path, allow_missing=True) == [
        f"{path}:1: invalid JSON (Expecting ',' delimiter at column 35, the end of the line: truncated?)",
        f"{path}:2: invalid JSON (Expecting ',' delimiter at column 15)",
        f"{path}:3: invalid JSON (Unterminated string starting at column 30)",
    ]
    crlf = tmp_path / "crlf.jsonl"
    crlf.write_bytes(b"".join(_rec(i, "x").encode() + b"\r\n" for i in (1, 2, 3)))
    assert len(read_predictions(crlf, INSTANCES)) == 3


def test_hostile_json_is_a_problem_not_a_crash(tmp_path):
    path = _write(
        tmp_path,
        [
            '{"task_id": 1, "prediction": ' + "[" * 100_000 + "}",
            '{"task_id": 1' + "0" * 5000 + ', "prediction": "x"}',
            '{"task_id": 1, "prediction": "\\ud800"}',
            '{"task_id": 2, "prediction": "x", "input_tokens": NaN}',
            '{"task_id": 3, "prediction": "x", "latency_s": 1e999}',
        ],
    )
    problems = _problems(path, allow_missing=True)
    assert problems[0] == f"{path}:1: invalid JSON (nested too deeply)"
    assert problems[1].startswith(f"{path}:2: invalid JSON (Exceeds the limit (4300 digits)")
    assert problems[2] == f"{path}:3: field 'prediction': a lone surrogate escape (\\ud800-\\udfff) is not text"
    assert problems[3] == f"{path}:4: field 'input_tokens' must be a non-negative number"
    assert problems[4] == f"{path}:5: field 'latency_s' must be a non-negative number"
    assert len(problems) == 5


# -- tarballs ------------------------------------------------------------------------------------------
META = b"name: x\nmodel: m\nmethod: t\ncontact: a@example.org\n"


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.PAX_FORMAT)


def _member(name: str, data: bytes) -> bytes:
    return _header(name, len(data)) + data + b"\0" * (-len(data) % 512)


@pytest.fixture
def no_extraction(tmp_path, monkeypatch):
    """Any extraction fails the test; temporary folders go to a folder the test can check is empty."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))

    def refuse(*args, **kwargs):
        pytest.fail("a member was extracted")

    for name in ("extract", "extractfile", "extractall"):
        monkeypatch.setattr(tarfile.TarFile, name, refuse)
    return tmp


def test_a_huge_declared_member_is_refused_from_its_header(tmp_path, no_extraction):
    """The issue's case: a 500 MiB member under an unexpected name used to be extracted first. The archive
    is cut after the header: the check reads nothing past it."""
    tarball = tmp_path / "huge.tar.gz"
    blob = _member("sub/submission.yaml", META) + _header("sub/predictions/blob.bin", 500 << 20) + b"\0" * 4096
    tarball.write_bytes(gzip.compress(blob))
    with pytest.raises(SubmissionError) as err:
        load_submission(tarball)
    assert err.value.problems == [
        "huge.tar.gz: member 'sub/predictions/blob.bin': declared size 524,288,000 bytes, over the "
        "67,108,864-byte cap on a member (PROMPTINTERN_MAX_PREDICTIONS_FILE_BYTES)"
    ]
    assert list(no_extraction.iterdir()) == []


def test_names_and_declared_sizes_are_checked_before_extracting(tmp_path, monkeypatch, no_extraction):
    monkeypatch.setenv(FILE_BYTES_ENV, "100")
    members = [
        _member("submission.yaml", META),
        _member("predictions/nl2f.jsonl", b"x" * 101),
        _member("predictions/notes.txt", b"hello"),
        _member("predictions/deep/nl2f.jsonl", b"{}"),
    ]
    tarball = tmp_path / "sub.tgz"
    tarball.write_bytes(gzip.compress(b"".join(members) + b"\0" * 1024))
    with pytest.raises(SubmissionError) as err:
        load_submission(tarball)
    expected = f"expected predictions/<task>.jsonl, task one of {', '.join(PAPER_TASKS)}"
    assert err.value.problems == [
        "sub.tgz: member 'predictions/nl2f.jsonl': declared size 101 bytes, over the 100-byte cap "
        "(PROMPTINTERN_MAX_PREDICTIONS_FILE_BYTES)",
        f"sub.tgz: member 'predictions/notes.txt': unexpected; {expected}",
        f"sub.tgz: member 'predictions/deep/nl2f.jsonl': unexpected; {expected}",
    ]
    assert list(no_extraction.iterdir()) == []


def test_archive_caps_stop_reading_headers(tmp_path, monkeypatch, no_extraction):
    monkeypatch.setattr(submissions, "MAX_ARCHIVE_BYTES", 1000)
    tarball = tmp_path / "many.tar.gz"
    blob = b"".join(_member(f"junk{i}.txt", b"y" * 400) for i in range(5))
    tarball.write_bytes(gzip.compress(blob + b"\0" * 1024))
    with pytest.raises(SubmissionError) as err:
        load_submission(tarball)
    assert err.value.problems == ["many.tar.gz: more than 1,000 bytes uncompressed (at 'junk2.txt')"]
    assert list(no_extraction.iterdir()) == []


def test_only_the_layout_is_extracted(tmp_path, monkeypatch):
    """Other top-level files are skipped, as in a folder; the data filter extracts the rest."""
    from promptintern.tasks import get_task

    lines = "".join(_rec(i.id, i.reference) + "\n" for i in get_task("nl2f").load("test")).encode()
    tarball = tmp_path / "sub.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        for name, data in [
            ("sub/", None),
            ("sub/README.md", b"# notes\n"),
            ("sub/submission.yaml", META),
            ("sub/predictions/nl2f.jsonl", lines),
        ]:
            info = tarfile.TarInfo(name.rstrip("/"))
            if data is None:
                info.type = tarfile.DIRTYPE
            else:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    extracted: list[str] = []
    real = tarfile.TarFile.extract

    def spy(self, member, *args, **kwargs):
        extracted.append(member.name)
        assert kwargs.get("filter") == "data"
        return real(self, member, *args, **kwargs)

    monkeypatch.setattr(tarfile.TarFile, "extract", spy)
    sub = load_submission(tarball)
    assert list(sub.tasks) == ["nl2f"] and sub.meta.name == "x"
    assert extracted == ["sub/submission.yaml", "sub/predictions/nl2f.jsonl"]


# -- Markdown ------------------------------------------------------------------------------------------
def test_markdown_renders_submitters_text_as_text():
    from promptintern.evaluation.cost import load_prices

    name = "<img src=x onerror=alert(1)> | *bold* [link](javascript:x)\nrow\x1b[31m"
    cell = leaderboard.Cell("em", 50.0, 40.0, 60.0, 10, 100.0, None, None, None, "v")
    entry = leaderboard.Entry(1, name, "m_1", "t", None, "now", "h", {"nl2f": cell})
    board = leaderboard.Leaderboard([entry], ["nl2f"], load_prices(), [f"{name} / nl2f: a note"])
    md = leaderboard.render_markdown(board)
    safe = (
        "&lt;img src=x onerror=alert(1)&gt; \\| \\*bold\\* \\[link\\](javascript:x) row\ufffd\\[31m"
    )
    assert f"| 1 | {safe} | m\\_1 | t | 50.0 [40.0, 60.0] |" in md
    assert f"- {safe} / nl2f: a note" in md
    assert "<img" not in md and "\x1b" not in md
    header, _, row = [ln for ln in md.splitlines() if ln.startswith("|")]
    unescaped = lambda ln: ln.replace("\\|", "").count("|")  # noqa: E731
    assert unescaped(row) == unescaped(header)
    page = leaderboard.render_html(board)
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "<img" not in page
