"""Profiles, stage plans/datasets and the train -> predict -> score experiment on a tiny model."""

import json

import pytest

from promptintern.evaluation.stats import mean_ci
from promptintern.harness.experiment import Experiment
from promptintern.profile import ProfileError, available, load_profile


def test_builtin_profiles_validate():
    assert {"smoke", "cpu", "paper"} <= set(available())
    for name in available():
        prof = load_profile(name)
        assert prof.name == name and prof.method.stages >= 1
    paper = load_profile("paper")
    assert [paper.train_for(t).epochs_per_stage for t in ("mbpp", "nl2f", "nl2bash")] == [6, 12, 12]
    # the paper's batch sizes as effective batches: per-device batch x gradient accumulation
    effective = [paper.train_for(t).batch_size * paper.train_for(t).gradient_accumulation_steps
                 for t in ("mbpp", "nl2f", "nl2bash")]  # fmt: skip
    assert effective == [16, 128, 128] and all(paper.train_for(t).gradient_checkpointing for t in ("mbpp", "nl2f"))
    assert paper.train.lora_r == 32 and paper.train.max_length == 4096 and paper.train.save_steps == 200


def test_bad_profile_names_file_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrain: {lora_r: many}\nmethod: {stagez: 3}\n")
    with pytest.raises(ProfileError) as err:
        load_profile(str(bad))
    assert (
        "bad.yaml" in str(err.value)
        and "train.lora_r" in str(err.value)
        and "method.stagez" in str(err.value)
    )
    with pytest.raises(ProfileError, match="unknown profile 'fast'"):
        load_profile("fast")


@pytest.fixture()
def smoke():
    return load_profile("smoke")


def test_promptintern_stage_plans_and_datasets(smoke):
    exp = Experiment("mbpp", "promptintern", smoke)
    plans = exp.plans
    assert [(p.tau, p.shots) for p in plans] == [(1.0, 2), (0.5, 1), (0.0, 0)]
    full, half = plans[0].template, plans[1].template
    assert plans[2].template is None
    assert len(half.text) < len(full.text)
    stages = exp.stage_datasets()
    assert [len(s) for s in stages] == [4, 4, 4]
    for stage, plan in zip(stages, plans, strict=True):
        for ex in stage:
            assert len(ex.prompt.examples) == plan.shots
            assert ex.answer.startswith("```python")
    last = stages[-1][0].prompt
    assert last.template == "" and last.examples == () and last.query == exp.train_set[0].query
    lengths = [sum(len(ex.prompt.to_text()) for ex in s) for s in stages]
    assert lengths[0] > lengths[1] > lengths[2]
    assert exp.inference_plan.tau == 0.0


def test_direct_ft_and_zero_shot_schedules(smoke):
    taus = {
        m: [p.tau for p in Experiment("nl2f", m, smoke).plans] for m in ("ft-full", "ft-template", "ft-none")
    }
    assert taus == {"ft-full": [1.0] * 3, "ft-template": [1.0] * 3, "ft-none": [0.0] * 3}
    shots = [p.shots for p in Experiment("nl2f", "ft-compressed", smoke).plans]
    assert shots == [1, 1, 1]
    zs = Experiment("nl2f", "zero-shot-full", smoke)
    assert not zs.trains and [(p.tau, p.shots) for p in zs.plans] == [(1.0, 2)]
    with pytest.raises(ValueError, match="unknown method"):
        Experiment("nl2f", "magic", smoke)


def test_key_changes_with_settings(smoke):
    a = Experiment("nl2f", "promptintern", smoke, model="m1")
    b = Experiment("nl2f", "promptintern", smoke, model="m2")
    c = Experiment("nl2f", "ft-full", smoke, model="m1")
    assert len({a.key, b.key, c.key}) == 3
    assert a.key == Experiment("nl2f", "promptintern", smoke, model="m1").key


def test_experiment_end_to_end_and_cached_rerun(smoke, tiny_model_dir):
    exp = Experiment("nl2f", "promptintern", smoke, model=str(tiny_model_dir))
    result = exp.evaluate(progress=False)
    assert result["n"] == 3 and result["primary"] == "em"
    lo, hi = result["ci95"]
    assert lo <= result["value"] <= hi
    d = exp.directory
    assert (exp.train_directory / "adapter").is_dir() and (d / "scores.json").is_file()
    assert [
        json.loads(x)["stage"] for x in [json.dumps(r) for r in json.loads((d / "plan.json").read_text())]
    ] == [1, 2, 3]
    preds = (d / "predictions.jsonl").read_text()
    # a rerun is served from the cache; a torn predictions file is resumed, keeping finished lines
    assert (
        Experiment("nl2f", "promptintern", smoke, model=str(tiny_model_dir)).evaluate(progress=False)
        == result
    )
    lines = preds.splitlines()
    (d / "scores.json").unlink()
    (d / "predictions.jsonl").write_text(lines[0] + "\n" + lines[1][:10])
    again = Experiment("nl2f", "promptintern", smoke, model=str(tiny_model_dir))
    again.predict(progress=False)
    resumed = (d / "predictions.jsonl").read_text().splitlines()
    assert resumed[0] == lines[0]  # the finished line is kept as it was

    def strip(line):
        return {k: v for k, v in json.loads(line).items() if k != "latency_s"}

    assert [strip(x) for x in resumed] == [strip(x) for x in lines]


def test_bootstrap_interval_brackets_mean():
    lo, hi = mean_ci([100.0] * 30 + [0.0] * 70, seed=1)
    assert lo < 30 < hi and 10 < lo and hi < 50
    assert mean_ci([100.0] * 5) == (100.0, 100.0)


def test_example_schedule_is_a_fraction_of_k_and_keeps_old_keys(smoke):
    base = Experiment("mbpp", "promptintern", smoke)
    data = smoke.model_dump()
    data["method"]["example_schedule"] = {"pattern": "constant", "start": 0.0, "end": 0.0}
    no_examples = Experiment("mbpp", "promptintern", type(smoke).model_validate(data))
    assert [p.shots for p in no_examples.plans] == [0, 0, 0]
    assert [p.tau for p in no_examples.plans] == [p.tau for p in base.plans]
    assert no_examples.key != base.key
    data["method"]["example_schedule"] = None
    assert Experiment("mbpp", "promptintern", type(smoke).model_validate(data)).key == base.key


def test_merge_adapter_enters_the_key_only_where_it_applies(smoke, monkeypatch):
    data = smoke.model_dump()
    data["generation"]["merge_adapter"] = False
    unmerged_profile = type(smoke).model_validate(data)
    merged = Experiment("nl2f", "promptintern", smoke, model="m1")  # merge_adapter defaults to True
    unmerged = Experiment("nl2f", "promptintern", unmerged_profile, model="m1")
    assert merged.settings()["generation"]["merge_adapter"] is True and merged.key != unmerged.key
    assert unmerged.settings()["generation"]["merge_adapter"] is False
    # no adapter to merge: same key either way
    assert Experiment("nl2f", "zero-shot", smoke, model="m1").key == (
        Experiment("nl2f", "zero-shot", unmerged_profile, model="m1").key
    )
    assert Experiment("nl2f", "gist", smoke, model="m1").key != (  # gist's own loader merges too
        Experiment("nl2f", "gist", unmerged_profile, model="m1").key
    )

    seen = []
    monkeypatch.setattr("promptintern.training.trainer.load_for_inference", lambda *a, **k: seen.append(k) or ("m", "t"))
    for exp in (unmerged, merged):
        monkeypatch.setattr(exp, "train", lambda progress=True: "adapter-dir")
        assert exp._load_for_generation(progress=False) == ("m", "t")
    assert seen == [{"merge": False}, {"merge": True}]


def test_table1_promptintern_row_serves_the_compressed_template(smoke, tiny_model_dir):
    """Table 1 / Table 5 "w/ τ = 0.3": linear 1 -> 0.3, the 0.3 template kept at the last stage and at inference."""
    from promptintern.harness.sizing import apply_overrides
    from promptintern.harness.tables import load_spec

    row = next(r for r in load_spec(1).rows if r.method == "promptintern")
    exp = Experiment("nl2bash", "promptintern", apply_overrides(smoke, row.overrides), model=str(tiny_model_dir))
    assert [(p.tau, p.shots) for p in exp.plans] == [(1.0, 2), (0.65, 1), (0.3, 0)]
    served = exp.inference_plan.template
    full = exp.task.template()
    assert served is not None and 0 < len(served.text) < len(full.text)
    prompts = exp.inference_prompts()
    assert all(p.template == served.text and p.examples == () for p in prompts)
    stages = exp.stage_datasets()
    assert all(ex.prompt.template == served.text for ex in stages[-1])  # trained on what is served
    result = exp.evaluate(progress=False)
    assert result["template"]["rate_requested"] == 0.3 and 0 < result["template"]["rate_achieved"] < 1
    assert result["input_tokens_mean"] > Experiment("nl2bash", "zero-shot", smoke, model=str(tiny_model_dir)).evaluate(
        progress=False
    )["input_tokens_mean"]


def test_training_retrieves_by_gold_output_and_test_time_by_query(smoke, monkeypatch):
    """Eq. 3: training instances' examples are ranked by BLEU between gold outputs; test prompts by queries."""
    from promptintern.methods import stages

    seen = []
    real = stages.ExampleRetriever

    def spy(bank, **kw):
        seen.append(kw.get("field"))
        return real(bank, **kw)

    monkeypatch.setattr(stages, "ExampleRetriever", spy)
    exp = Experiment("nl2bash", "promptintern", smoke)
    monkeypatch.setattr(exp, "_budget", lambda training: None)
    exp.stage_datasets()
    assert seen == ["answer"]
    ft = Experiment("nl2bash", "ft-full", smoke)
    monkeypatch.setattr(ft, "_budget", lambda training: None)
    ft.inference_prompts()
    assert seen == ["answer", "query"]
    data = smoke.model_dump()
    data["method"]["retrieval_key"] = "query"
    by_query = Experiment("nl2bash", "promptintern", type(smoke).model_validate(data))
    assert by_query.key != exp.key


def test_mistyped_task_keys_in_a_profile_are_errors_naming_file_and_key(tmp_path):
    """A typo in a task name or in a task's train/generation section must not silently fall back."""
    bad = tmp_path / "typo.yaml"
    bad.write_text(
        "name: typo\ntasks:\n  nl2bsh: {train_limit: 8}\n"
        "  nl2f: {train: {epochs_per_stag: 2}, generation: {max_new_token: 9}}\n"
    )
    with pytest.raises(ProfileError) as err:
        load_profile(str(bad))
    msg = str(err.value)
    assert msg.startswith(str(bad)) and "tasks.nl2f.train.epochs_per_stag" in msg
    assert "tasks.nl2f.generation.max_new_token" in msg and "tasks.nl2bsh: unknown task" in msg
    bad.write_text("name: typo\ntasks:\n  nl2bsh: {train_limit: 8}\n")
    with pytest.raises(ProfileError, match=r"typo\.yaml: tasks\.nl2bsh: unknown task \(choose from mbpp"):
        load_profile(str(bad))


def test_task_sections_are_typed_and_override_the_shared_ones():
    paper = load_profile("paper")
    nl2f = paper.train_for("nl2f")
    assert nl2f.batch_size * nl2f.gradient_accumulation_steps == 128 and nl2f.lora_r == 32
    cpu = load_profile("cpu")
    assert cpu.generation_for("mbpp").max_new_tokens == 256 and cpu.generation_for("mbpp").merge_adapter is True
    assert cpu.generation_for("nl2bash").max_new_tokens is None
    from promptintern.harness.sizing import apply_overrides

    with pytest.raises(ProfileError, match=r"tasks\.sql: unknown task"):
        apply_overrides(cpu, {"tasks": {"sql": {"shots": 1}}})


def test_experiments_that_differ_in_decoding_share_one_trained_adapter(smoke, tiny_model_dir, monkeypatch):
    """The adapter's key holds only what changes training: another backend, stop string or metric reuses it."""
    exp = Experiment("nl2bash", "ft-none", smoke, model=str(tiny_model_dir))
    adapter = exp.train(progress=False)
    other = Experiment("nl2bash", "ft-none", smoke, model=str(tiny_model_dir), backend_override="llamacpp")
    assert other.key != exp.key and other.train_key == exp.train_key
    assert other.train_directory == exp.train_directory
    weights = adapter / "adapter_model.safetensors"
    mtime = weights.stat().st_mtime_ns
    assert other.train(progress=False) == adapter and weights.stat().st_mtime_ns == mtime  # every stage was done
    changed = Experiment("nl2bash", "ft-none", smoke.model_copy(update={"seed": 1}), model=str(tiny_model_dir))
    assert changed.train_key != exp.train_key
    from promptintern import keys

    monkeypatch.setitem(keys.METHOD_VERSIONS, "decoding", keys.METHOD_VERSIONS["decoding"] + 1)
    redecoded = Experiment("nl2bash", "ft-none", smoke, model=str(tiny_model_dir))
    assert redecoded.key != exp.key and redecoded.train_key == exp.train_key  # new predictions, same adapter
