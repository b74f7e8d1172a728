"""MBPP loading: standard splits, fields, query rendering, template and error reporting."""

import pytest

from promptintern.tasks import get_task
from promptintern.tasks.mbpp import read_mbpp


@pytest.fixture(scope="module")
def mbpp():
    return get_task("mbpp")


@pytest.mark.parametrize(
    ("split", "n", "lo", "hi"),
    [("train", 374, 601, 974), ("validation", 90, 511, 600), ("test", 500, 11, 510), ("prompt", 10, 1, 10)],
)
def test_standard_splits(mbpp, split, n, lo, hi):
    items = mbpp.load(split)
    ids = [int(i.id) for i in items]
    assert len(items) == n
    assert (min(ids), max(ids)) == (lo, hi)
    assert len(set(ids)) == n


def test_instance_fields(mbpp):
    first = mbpp.load("test")[0]
    assert first.id == "11"
    assert first.query.startswith(first.query.splitlines()[0])
    assert "Your code should pass these tests:" in first.query
    assert sum(line.startswith("assert") for line in first.query.splitlines()) == 3
    assert "\r" not in first.reference and "def " in first.reference
    assert set(first.meta) == {"test_list", "test_setup_code", "challenge_test_list"}


def test_template_and_answer_format(mbpp):
    tmpl = mbpp.template()
    assert "expert Python programmer" in tmpl.instruction
    assert tmpl.documents == ""  # the paper's Figure 5 has no API documents
    extended = type(mbpp)(template="extended").template()
    assert extended.documents.startswith("Here is the API documents") and "<API Doc 1>" in extended.documents
    assert mbpp.format_answer("def f():\n    return 1") == "```python\ndef f():\n    return 1\n```"


def test_unknown_split(mbpp):
    with pytest.raises(ValueError, match="no split 'dev'"):
        mbpp.load("dev")


def test_malformed_file_names_line_and_field(tmp_path):
    bad = tmp_path / "mbpp.jsonl"
    bad.write_text(
        '{"task_id": 1, "text": "t", "code": "c", "test_list": ["assert 1"], '
        '"test_setup_code": "", "challenge_test_list": []}\n{"task_id": 2, "text": "t"}\n'
    )
    with pytest.raises(ValueError, match=r"mbpp.jsonl:2: field 'code' is missing"):
        read_mbpp(bad)
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"mbpp.jsonl:1: invalid JSON"):
        read_mbpp(bad)


def test_data_root_env_override(tmp_path, monkeypatch):
    from promptintern.paths import DataNotFoundError

    monkeypatch.setenv("PROMPTINTERN_DATA", str(tmp_path))
    with pytest.raises(DataNotFoundError, match="PROMPTINTERN_DATA"):
        get_task("mbpp").load("test")
