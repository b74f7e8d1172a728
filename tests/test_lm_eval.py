"""lm-evaluation-harness task configs: registration, prompts equal to the suite's, metrics end to end."""

from __future__ import annotations

import json

import pytest
from conftest import needs_bwrap

pytest.importorskip("lm_eval")

from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.api.model import LM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from promptintern.prompt import build_prompt  # noqa: E402
from promptintern.tasks import get_task  # noqa: E402
from promptintern.tasks.lm_eval_support import include_path, task_names  # noqa: E402
from promptintern.testing import char_tokenizer  # noqa: E402

ALL = [
    "promptintern_mbpp",
    "promptintern_nl2f",
    "promptintern_nl2bash",
    "promptintern_mbpp_full",
    "promptintern_nl2f_full",
    "promptintern_nl2bash_full",
]


@pytest.fixture(scope="module")
def module_home(tmp_path_factory):
    return str(tmp_path_factory.mktemp("lm-eval-home"))


@pytest.fixture(autouse=True)
def _shared_home(module_home, monkeypatch):
    """One PROMPTINTERN_HOME for the module (the NL2Bash split is built once); no hub access."""
    monkeypatch.setenv("PROMPTINTERN_HOME", module_home)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="module")
def manager():
    return TaskManager(include_path=include_path(), include_defaults=False)


def _hf(model_dir) -> dict:
    return {"pretrained": str(model_dir), "device": "cpu", "dtype": "float32"}


def _metrics(results: dict, task: str) -> dict:
    row = results["results"][task]
    return {k.split(",")[0]: v for k, v in row.items() if k.endswith(",none") and "_stderr" not in k}


class OracleLM(LM):
    """Answers every request with its document's reference, formatted as the task's answer."""

    def generate_until(self, requests):
        return [get_task(r.doc["task"]).format_answer(r.doc["reference"]) for r in requests]

    def loglikelihood(self, requests):
        raise NotImplementedError

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError


def test_task_manager_registers_all_tasks_and_tags(manager):
    assert sorted(task_names()) == sorted(ALL)
    assert set(ALL) <= set(manager.all_tasks)
    loaded = manager.load(["promptintern"])["tasks"]
    assert sorted(loaded) == sorted(task_names("query"))


def test_unknown_option_is_named():
    from promptintern.tasks.lm_eval_support import load_docs, prompts_for

    with pytest.raises(ValueError, match="unknown task 'spider'"):
        load_docs("spider")
    with pytest.raises(ValueError, match="unknown prompt 'half'"):
        prompts_for(get_task("nl2f"), [], "half")


@needs_bwrap
def test_oracle_answers_score_full_marks(manager):
    """References formatted as answers go through extraction and the suite's metrics: 100 everywhere."""
    tasks = ["promptintern_mbpp", "promptintern_nl2f", "promptintern_nl2bash"]
    res = simple_evaluate(model=OracleLM(), tasks=tasks, limit=3, task_manager=manager, bootstrap_iters=0)
    assert _metrics(res, "promptintern_mbpp") == {"pass@1": 100.0}
    assert _metrics(res, "promptintern_nl2f") == {"em": 100.0, "em_raw": 100.0}
    assert _metrics(res, "promptintern_nl2bash") == pytest.approx({"bleu": 100.0, "sentence_bleu": 100.0})
    assert {t: res["n-samples"][t]["effective"] for t in tasks} == dict.fromkeys(tasks, 3)


@needs_bwrap
def test_tiny_model_query_only_all_tasks(manager, tiny_model_dir):
    tasks = task_names("query")
    res = simple_evaluate(
        model="hf",
        model_args=_hf(tiny_model_dir),
        tasks=tasks,
        limit=2,
        task_manager=manager,
        gen_kwargs={"max_gen_toks": 12},
        bootstrap_iters=0,
    )
    expected = {
        "promptintern_mbpp": {"pass@1"},
        "promptintern_nl2f": {"em", "em_raw"},
        "promptintern_nl2bash": {"bleu", "sentence_bleu"},
    }
    for name in tasks:
        metrics = _metrics(res, name)
        assert set(metrics) == expected[name]
        assert all(0.0 <= v <= 100.0 for v in metrics.values()), metrics
        assert res["n-samples"][name]["effective"] == 2
        assert len(res["samples"][name]) == 2
    original = {name: res["n-samples"][name]["original"] for name in tasks}
    assert original == {"promptintern_mbpp": 500, "promptintern_nl2f": 52, "promptintern_nl2bash": 621}
    # without a chat template the context is the suite's plain-text prompt
    task = get_task("nl2bash")
    first = task.load("test")[0]
    sample = res["samples"]["promptintern_nl2bash"][0]
    assert sample["doc"]["id"] == first.id
    assert sample["arguments"][0][0] == build_prompt(task, first).to_text()


def test_full_prompt_with_chat_template_matches_zero_shot_full(manager, tiny_model_dir):
    """The context is what the suite's zero-shot-full run renders with the model's chat template."""
    from promptintern.profile import load_profile
    from promptintern.run import Experiment

    exp = Experiment("nl2f", "zero-shot-full", load_profile("smoke"), model=str(tiny_model_dir))
    suite = [p.render(char_tokenizer()) for p in exp.inference_prompts()[:2]]
    manager = TaskManager(
        include_path=include_path(), include_defaults=False, metadata={"shots": exp.inference_plan.shots}
    )
    res = simple_evaluate(
        model="hf",
        model_args=_hf(tiny_model_dir),
        tasks=["promptintern_nl2f_full"],
        limit=2,
        task_manager=manager,
        apply_chat_template=True,
        gen_kwargs={"max_gen_toks": 8},
        bootstrap_iters=0,
    )
    samples = res["samples"]["promptintern_nl2f_full"]
    contexts = [s["arguments"][0][0] for s in samples]
    assert exp.inference_plan.shots > 0 and "## Example 1" in contexts[0]
    assert contexts == suite
    # and lm-eval's greedy continuation is the suite's own generate() output
    from promptintern.generate import generate
    from promptintern.models import load_model, load_tokenizer

    ours = generate(
        load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir)), suite, max_new_tokens=8
    )
    assert [g.text for g in ours] == [s["resps"][0][0] for s in samples]
    assert set(_metrics(res, "promptintern_nl2f_full")) == {"em", "em_raw"}


def test_num_fewshot_is_refused(manager, tiny_model_dir):
    with pytest.raises(ValueError, match="num_fewshot=2 is not supported"):
        simple_evaluate(
            model="hf",
            model_args=_hf(tiny_model_dir),
            tasks=["promptintern_nl2f"],
            num_fewshot=2,
            limit=1,
            task_manager=manager,
            gen_kwargs={"max_gen_toks": 4},
        )


def test_cli_command_writes_summary_and_predictions(tiny_model_dir, tmp_path):
    import typer
    from typer.testing import CliRunner

    from promptintern.lm_eval_cli import lm_eval_cmd
    from promptintern.predictions import read_predictions

    app = typer.Typer()
    app.command("lm-eval")(lm_eval_cmd)
    app.command("noop")(lambda: None)  # keeps "lm-eval" a subcommand
    args = ["lm-eval", "-t", "nl2f", "--model", str(tiny_model_dir), "--split", "validation", "--limit", "2"]
    args += ["--max-new-tokens", "6"]
    args += ["--predictions-dir", str(tmp_path), "--out", str(tmp_path / "results.json"), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert summary["chat_template"] is True and summary["prompt"] == "query"
    metrics = summary["metrics"]["promptintern_nl2f"]
    assert set(metrics) == {"em", "em_raw", "em_stderr", "em_raw_stderr"}
    assert 0.0 <= metrics["em"] <= 100.0
    assert summary["n"]["promptintern_nl2f"] == {"original": 36, "effective": 2}  # the validation split
    assert "promptintern_nl2f" in json.loads((tmp_path / "results.json").read_text())["results"]
    validation = get_task("nl2f").load("validation")
    preds = read_predictions(tmp_path / "promptintern_nl2f.jsonl", validation, allow_missing=True)
    assert list(preds) == [i.id for i in validation[:2]]
    assert all(p.extra["em"] in (0.0, 100.0) and "output" in p.extra for p in preds.values())
    bad = CliRunner().invoke(app, ["lm-eval", "-t", "spider", "--model", str(tiny_model_dir)])
    assert bad.exit_code == 2 and "unknown task(s) spider" in bad.output
