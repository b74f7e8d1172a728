"""The harness's generation backends beyond hf/llamacpp: ``openai`` (a local llama-cpp-python server on
127.0.0.1) and ``auto`` (the faster of hf and llamacpp, measured on the first batch, recorded)."""

from __future__ import annotations

import json

import pytest

from promptintern.harness.backend_choice import auto_candidates
from promptintern.harness.experiment import Experiment
from promptintern.profile import load_profile


def test_auto_falls_back_to_hf_without_a_gguf_or_for_hf_only_methods(tiny_model_dir):
    smoke = load_profile("smoke")
    exp = Experiment("nl2bash", "zero-shot", smoke, model=str(tiny_model_dir), backend_override="auto")
    assert auto_candidates(exp) == ("hf",) and exp.backend == "hf"
    gist = Experiment("nl2bash", "gist", smoke, backend_override="auto")
    assert auto_candidates(gist) == ("hf",) and gist.requested_backend == "hf"


def test_backend_enters_the_run_key_but_not_the_adapter_key():
    smoke = load_profile("smoke")
    runs = {
        b: Experiment("nl2bash", "ft-none", smoke, backend_override=b)
        for b in ("hf", "llamacpp", "openai", "auto")
    }
    assert len({e.key for e in runs.values()}) == 4
    assert len({e.train_key for e in runs.values()}) == 1


@pytest.mark.integration
def test_auto_measures_both_backends_and_records_the_choice():
    pytest.importorskip("llama_cpp")
    smoke = load_profile("smoke")
    exp = Experiment("nl2bash", "zero-shot", smoke, backend_override="auto", limit=3)
    assert exp.backend == "auto"
    result = exp.evaluate(progress=False)
    choice = json.loads((exp.directory / "backend.json").read_text())
    assert set(choice["seconds_per_instance"]) == {"hf", "llamacpp"}
    assert choice["chosen"] == min(choice["seconds_per_instance"], key=choice["seconds_per_instance"].get)
    assert result["backend"] == choice["chosen"] and result["n"] == 3
    again = Experiment("nl2bash", "zero-shot", smoke, backend_override="auto", limit=3)
    assert again.evaluate(progress=False)["backend"] == choice["chosen"]


@pytest.mark.integration
def test_an_experiment_runs_through_a_local_openai_compatible_server():
    pytest.importorskip("llama_cpp")
    smoke = load_profile("smoke")
    exp = Experiment("nl2bash", "zero-shot", smoke, backend_override="openai", limit=2)
    result = exp.evaluate(progress=False)
    assert result["backend"] == "openai" and result["n"] == 2 and result["output_tokens_mean"] > 0
    records = [json.loads(line) for line in (exp.directory / "predictions.jsonl").read_text().splitlines()]
    cpp = Experiment("nl2bash", "zero-shot", smoke, backend_override="llamacpp", limit=2)
    cpp.evaluate(progress=False)
    same = [json.loads(line) for line in (cpp.directory / "predictions.jsonl").read_text().splitlines()]
    # the same GGUF, greedy, the same prompt text: the server's answers are the in-process llama.cpp's
    assert [r["input_tokens"] for r in records] == [r["input_tokens"] for r in same]
    assert [r["output"] for r in records] == [r["output"] for r in same]


@pytest.mark.integration
def test_llamacpp_prefix_reuse_gives_the_same_answers_from_the_cached_prefix():
    pytest.importorskip("llama_cpp")
    from promptintern.serving.llamacpp import LlamaCppGenerator, gguf_for
    from promptintern.serving.models import load_tokenizer

    tok = load_tokenizer("embedded")
    exp = Experiment("nl2bash", "prefix-cached", load_profile("smoke"), limit=3)
    ids = [tok(p.render(tok), add_special_tokens=False)["input_ids"] for p in exp.inference_prompts()]
    gen = LlamaCppGenerator(gguf_for("embedded"), n_ctx=exp.context_length)
    plain = list(gen.generate(ids, max_new_tokens=12))
    reused = list(gen.generate(ids, max_new_tokens=12, reuse_prefix=True))
    assert [g.text for g in reused] == [g.text for g in plain]
    shared = min(next(i for i, (a, b) in enumerate(zip(ids[0], other, strict=False)) if a != b) for other in ids[1:])
    assert shared > 100 and all(g.cached_tokens >= shared for g in reused[1:])


def test_agreement_report_pairs_the_two_runs(tiny_model_dir, tmp_path):
    from promptintern.harness.agreement import agreement, write_report

    smoke = load_profile("smoke")
    # a tiny model has no GGUF, so `auto` serves with hf: the same run twice, a zero difference
    report = agreement("nl2bash", "zero-shot", smoke, backends=("hf", "auto"), limit=3, model=str(tiny_model_dir),
                       progress=False)  # fmt: skip
    assert report["n"] == 3 and report["backends"] == ["hf", "hf"] and report["metric"] == "bleu"
    assert report["diff"] == 0.0 and report["paired_ci95"] == [0.0, 0.0] and report["agree"]
    assert report["identical_predictions"] == 3
    js, md = write_report([report], tmp_path / "agreement")
    assert json.loads(js.read_text())[0]["task"] == "nl2bash" and "| nl2bash | zero-shot | 3 | bleu |" in md.read_text()
