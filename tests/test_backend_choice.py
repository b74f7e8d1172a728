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
    timed, stopped = choice["seconds_per_instance"], choice["stopped_after_seconds_per_instance"]
    assert set(timed) | set(stopped) == {"hf", "llamacpp"} and "llamacpp" in timed
    assert choice["chosen"] == min(timed, key=timed.get)
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


class _RaceExperiment:
    """What choose_backend uses of an Experiment: llama.cpp answers at once, hf takes ``hf_s`` per prompt and
    checks the generation deadline as HF's stopping criteria do."""

    task_name = "nl2bash"

    def __init__(self, hf_s: float):
        from types import SimpleNamespace

        self.hf_s, self.chosen_backend, self.written, self.closed = hf_s, None, {}, []
        self.profile = SimpleNamespace(generation_for=lambda task: SimpleNamespace(batch_size=2))

    def _load_for_generation(self, progress):
        return SimpleModel(self.chosen_backend, self.closed), None

    def _generations(self, model, tok, prompts, all_prompts):
        import time

        from promptintern.serving.generate import check_deadline

        for p in prompts:
            if model.backend == "llamacpp":
                time.sleep(0.05)
            else:
                for _ in range(int(self.hf_s / 0.01)):
                    time.sleep(0.01)
                    check_deadline()
            yield f"{model.backend}:{p}"

    def _write_json(self, name, data):
        self.written[name] = data


class SimpleModel:
    def __init__(self, backend, closed):
        self.backend, self.closed_list = backend, closed

    def close(self):
        self.closed_list.append(self.backend)


@pytest.mark.parametrize(("hf_s", "winner"), [(0.6, "llamacpp"), (0.0, "hf")])
def test_auto_races_hf_against_llamacpps_time_and_keeps_the_winners_probe(monkeypatch, hf_s, winner):
    import promptintern.harness.backend_choice as choice

    monkeypatch.setattr(choice, "auto_candidates", lambda exp: ("hf", "llamacpp"))
    exp = _RaceExperiment(hf_s)
    model, _, stream = choice.choose_backend(exp, ["a", "b", "c"], ["a", "b", "c"], progress=False)
    assert exp.chosen_backend == winner == model.backend
    assert list(stream) == [f"{winner}:{p}" for p in "abc"]
    record = exp.written["backend.json"]
    assert record["chosen"] == winner and record["probe_instances"] == 2
    if winner == "llamacpp":  # hf was stopped after llama.cpp's time, well before its own 1.2 s
        assert record["seconds_per_instance"].keys() == {"llamacpp"}
        assert record["stopped_after_seconds_per_instance"]["hf"] == record["seconds_per_instance"]["llamacpp"]
        assert exp.closed == ["hf"]
    else:
        assert record["seconds_per_instance"].keys() == {"hf", "llamacpp"} and exp.closed == ["llamacpp"]


def test_llamacpp_prefix_reuse_and_workers_enter_the_key_only_where_they_can_matter():
    smoke = load_profile("smoke")
    data = smoke.model_dump()
    data["generation"] |= {"llamacpp_reuse_prefix": True, "llamacpp_workers": 3}
    reusing = type(smoke).model_validate(data)
    for backend, differs in (("llamacpp", True), ("auto", True), ("hf", False)):
        a = Experiment("nl2bash", "ft-none", smoke, backend_override=backend)
        b = Experiment("nl2bash", "ft-none", reusing, backend_override=backend)
        assert (a.key != b.key) is differs and b.reuses_prefix and not a.reuses_prefix
    # the worker count never changes an answer, so it is not part of any key
    data["generation"]["llamacpp_reuse_prefix"] = False
    workers_only = type(smoke).model_validate(data)
    assert Experiment("nl2bash", "ft-none", workers_only, backend_override="llamacpp").key == (
        Experiment("nl2bash", "ft-none", smoke, backend_override="llamacpp").key
    )
    assert Experiment("nl2bash", "prefix-cached", smoke).reuses_prefix
