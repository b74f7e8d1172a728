"""Predictions files: every problem is reported with file, line and field; nothing passes silently."""

import json

import pytest

from promptintern.evaluation.predictions import PredictionsError, read_predictions, write_jsonl
from promptintern.tasks.base import Instance

INSTANCES = [Instance(str(i), "test", f"q{i}", f"a{i}") for i in (1, 2, 3)]


def _write(tmp_path, lines: list[str | bytes]):
    path = tmp_path / "preds.jsonl"
    path.write_bytes(b"".join((ln if isinstance(ln, bytes) else ln.encode()) + b"\n" for ln in lines))
    return path


def test_valid_file_accepts_int_and_str_ids(tmp_path):
    path = _write(
        tmp_path,
        [
            json.dumps({"task_id": 1, "prediction": "x"}),
            json.dumps({"task_id": "2", "prediction": "y", "latency_s": 0.5}),
            "",
            json.dumps({"task_id": 3, "prediction": ""}),
        ],
    )
    preds = read_predictions(path, INSTANCES)
    assert {k: v.prediction for k, v in preds.items()} == {"1": "x", "2": "y", "3": ""}
    assert preds["2"].extra == {"latency_s": 0.5}


def test_all_problems_listed_with_line_and_field(tmp_path):
    path = _write(
        tmp_path,
        [
            json.dumps({"task_id": 1, "prediction": "x"}),
            "{broken",
            json.dumps({"task_id": 1, "prediction": "dup"}),
            json.dumps({"prediction": "no id"}),
            json.dumps({"task_id": 9, "prediction": "unknown"}),
            json.dumps({"task_id": 2, "prediction": 5}),
            b'{"task_id": 3, "prediction": "\xff"}',
            json.dumps({"task_id": 2, "prediction": "ok", "input_tokens": -1}),
            json.dumps([1, 2]),
        ],
    )
    with pytest.raises(PredictionsError) as err:
        read_predictions(path, INSTANCES)
    text = str(err.value)
    for expected in [
        "preds.jsonl:2: invalid JSON",
        "preds.jsonl:3: field 'task_id': duplicate id '1' (first on line 1)",
        "preds.jsonl:4: field 'task_id' is missing",
        "preds.jsonl:5: field 'task_id': unknown id '9'",
        "preds.jsonl:6: field 'prediction' must be a string",
        "preds.jsonl:7: not valid UTF-8",
        "preds.jsonl:8: field 'input_tokens' must be a non-negative number",
        "preds.jsonl:9: expected a JSON object",
        "2 id(s) of the split have no prediction: 2, 3",
    ]:
        assert expected in text, expected
    assert len(err.value.problems) == 9


def test_partial_allows_missing_but_not_unknown(tmp_path):
    path = _write(tmp_path, [json.dumps({"task_id": 1, "prediction": "x"})])
    assert list(read_predictions(path, INSTANCES, allow_missing=True)) == ["1"]
    path = _write(tmp_path, [json.dumps({"task_id": 7, "prediction": "x"})])
    with pytest.raises(PredictionsError, match="unknown id '7'"):
        read_predictions(path, INSTANCES, allow_missing=True)


def test_write_jsonl_is_atomic(tmp_path):
    target = tmp_path / "out.jsonl"
    write_jsonl(target, [{"a": 1}])

    def boom():
        yield {"a": 2}
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_jsonl(target, boom())
    assert target.read_text() == '{"a": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]
