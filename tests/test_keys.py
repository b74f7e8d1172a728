"""Run keys from content (promptintern.keys): every input that changes a result changes the key."""

from __future__ import annotations

import shutil

import pytest

from promptintern import keys
from promptintern.harness.experiment import Experiment
from promptintern.profile import load_profile
from promptintern.tasks import Instance, Template


@pytest.fixture()
def smoke():
    return load_profile("smoke")


def test_content_key_is_canonical_and_kind_scoped():
    a = keys.content_key("x", {"b": 1, "a": [1, 2]})
    assert a == keys.content_key("x", {"a": [1, 2], "b": 1})
    assert a != keys.content_key("y", {"a": [1, 2], "b": 1})
    assert len(keys.content_key("x", {}, length=16)) == 16


def test_instances_digest_sees_ids_queries_and_references():
    base = [Instance("1", "train", "q", "r"), Instance("2", "train", "q2", "r2")]
    digest = keys.instances_digest(base)
    for changed in (
        [Instance("1", "train", "q", "R"), base[1]],
        [Instance("1", "train", "Q", "r"), base[1]],
        [Instance("9", "train", "q", "r"), base[1]],
        base[::-1],
    ):
        assert keys.instances_digest(changed) != digest
    assert keys.instances_digest(list(base)) == digest


def test_model_identity_hashes_local_files(tmp_path, tiny_model_dir):
    copy = shutil.copytree(tiny_model_dir, tmp_path / "model")
    before = keys.model_identity(str(copy))
    assert before == keys.model_identity(str(copy))  # remembered, same answer
    assert "model.safetensors" in before["files"] and "config.json" in before["files"]
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one flipped bit in the weights
    weights.write_bytes(bytes(data))
    assert keys.model_identity(str(copy)) != before
    hub = keys.model_identity("org/never-downloaded")
    assert hub == {"name": "org/never-downloaded", "revision": None}
    assert keys.model_identity("openai:gpt-4") == {"name": "openai:gpt-4"}


def test_run_key_changes_with_every_input(smoke, tmp_path, tiny_model_dir, monkeypatch):
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")

    def key(**patches):
        exp = Experiment("nl2bash", "promptintern", smoke, model=str(model))
        for name, value in patches.items():
            monkeypatch.setattr(exp, name, value)
        return exp.key

    base = key()
    assert key() == base  # unchanged: same key, so the finished run is served from its folder

    # template content
    original = Experiment("nl2bash", "promptintern", smoke).task.template()
    edited = Template(original.instruction + " Be brief.", original.documents)
    task_cls = type(Experiment("nl2bash", "promptintern", smoke).task)
    with monkeypatch.context() as m:
        m.setattr(task_cls, "template", lambda self: edited)
        assert key() != base
    # documents content
    with monkeypatch.context() as m:
        m.setattr(task_cls, "template", lambda self: Template(original.instruction, original.documents + "\nx"))
        assert key() != base
    # data: one reference of the test subset, then of the training subset
    exp = Experiment("nl2bash", "promptintern", smoke, model=str(model))
    test, train = list(exp.test_set), list(exp.train_set)
    test[0] = Instance(test[0].id, test[0].split, test[0].query, test[0].reference + " ")
    train[-1] = Instance(train[-1].id, train[-1].split, train[-1].query + "!", train[-1].reference)
    assert key(test_set=test) != base and key(train_set=train) != base
    # metric / extractor version
    with monkeypatch.context() as m:
        m.setattr(task_cls, "metric_version", "999")
        assert key() != base
    # method version and shared pipeline version
    for name in ("promptintern", "pipeline"):
        with monkeypatch.context() as m:
            m.setitem(keys.METHOD_VERSIONS, name, keys.METHOD_VERSIONS[name] + 1)
            assert key() != base
    # template variant
    data = smoke.model_dump()
    data["template"] = "extended"
    assert Experiment("nl2bash", "promptintern", type(smoke).model_validate(data), model=str(model)).key != base
    # model file: the same path with other weights
    weights = model / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 1
    weights.write_bytes(bytes(blob))
    assert key() != base


def test_changed_template_recomputes_and_unchanged_rerun_is_cached(smoke, tiny_model_dir, monkeypatch):
    model = str(tiny_model_dir)
    first = Experiment("nl2bash", "ft-none", smoke, model=model)
    result = first.evaluate(progress=False)
    again = Experiment("nl2bash", "ft-none", smoke, model=model)
    monkeypatch.setattr(again, "train", lambda *a, **k: pytest.fail("a cached run must not train again"))
    assert again.evaluate(progress=False) == result and again.directory == first.directory

    task_cls = type(first.task)
    original = first.task.template()
    monkeypatch.setattr(task_cls, "template", lambda self: Template(original.instruction + " New rule.", ""))
    changed = Experiment("nl2bash", "ft-none", smoke, model=model)
    assert changed.directory != first.directory and not (changed.directory / "scores.json").exists()


def test_retrieval_and_compression_caches_are_keyed_by_content():
    from promptintern.compress.cache import CompressionCache
    from promptintern.prompting.retrieve import ExampleRetriever

    bank = [Instance(str(i), "train", f"find file {i}", f"find . -name f{i}") for i in range(5)]
    r = ExampleRetriever(bank, field="answer")
    key = r.cache_key(bank[:2], 2)
    assert key != ExampleRetriever(bank, field="query").cache_key(bank[:2], 2)
    changed = bank[:4] + [Instance("4", "train", "find file 4", "find . -name F4")]
    assert ExampleRetriever(changed, field="answer").cache_key(bank[:2], 2) != key
    payload = {"kind": "template", "text": "abc", "rate": 0.5}
    assert CompressionCache.key(payload) != CompressionCache.key(payload | {"text": "abd"})


def test_compressor_fingerprints_follow_the_model_file(tmp_path, tiny_model_dir):
    """A compressed template cached with one model is not served after the model's weights change."""
    from promptintern.compress import get_compressor

    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    before = get_compressor("llmlingua", model=str(model)).fingerprint()
    weights = model / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 1
    weights.write_bytes(bytes(blob))
    assert get_compressor("llmlingua", model=str(model)).fingerprint() != before
