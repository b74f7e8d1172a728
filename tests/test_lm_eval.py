"""lm-evaluation-harness task configs: generated from the registry (built-ins and task folders), prompts equal
to the suite's, generation settings from the task, metrics equal to ``Task.score`` end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import needs_bwrap

pytest.importorskip("lm_eval")

from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.api.model import LM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

import promptintern.tasks as registry  # noqa: E402
from promptintern.paths import DataNotFoundError, data_file  # noqa: E402
from promptintern.prompting.prompt import build_prompt  # noqa: E402
from promptintern.tasks import get_task  # noqa: E402
from promptintern.tasks import lm_eval_support as support  # noqa: E402
from promptintern.tasks.lm_eval_support import include_path, mean_metrics, task_names  # noqa: E402
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


def _have(*parts: str) -> bool:
    try:
        data_file(*parts)
        return True
    except DataNotFoundError:
        return False


needs_spider = pytest.mark.skipif(not _have("spider", "dev.json"), reason="Spider data not found")
needs_nl2bash = pytest.mark.skipif(not _have("nl2bash", "all.nl"), reason="NL2Bash data not available")


@pytest.fixture
def isolated_registry(monkeypatch):
    """Task folders registered by a test stay out of the process-wide registry and the support caches."""
    registry.task_names()  # the built-ins first
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    support._task.cache_clear()
    support._LOADED.clear()
    yield
    support._task.cache_clear()
    support._LOADED.clear()


TEST_ROWS = [
    ("q1", "What is two plus two?", "four"),
    ("q2", "Name the capital of France.", "the city of Paris"),
    ("q3", "Which colour is the sky on a clear day?", "it is blue"),
    ("q4", "How many legs has a spider?", "eight legs in total"),
]
TRAIN_ROWS = [
    ("t1", "What is one plus one?", "two"),
    ("t2", "Name the capital of Italy.", "the city of Rome"),
    ("t3", "Which colour is grass?", "it is green"),
]


def make_task_folder(root: Path, name: str = "tiny-qa", metric: str = "exact_match") -> Path:
    """A task folder with no Python: task.yaml, template.yaml and JSONL data (train, test)."""
    folder = root / name
    (folder / "data").mkdir(parents=True)
    (folder / "task.yaml").write_text(
        textwrap.dedent(
            f"""\
            name: {name}
            title: Tiny QA
            data: {{train: data/train.jsonl, test: data/test.jsonl}}
            query_format: "[Q] {{query}} [/Q]"
            metric: {metric}
            shots: 2
            max_new_tokens: 7
            stop: ["\\n[Q]", "\\n## Example"]
            """
        )
    )
    (folder / "template.yaml").write_text(
        'instruction: Answer the question between [Q] and [/Q] in a few words.\nanswer_format: "ANSWER: {answer}"\n'
    )
    for split, rows in (("train", TRAIN_ROWS), ("test", TEST_ROWS)):
        lines = [json.dumps({"id": i, "query": q, "answer": a}) for i, q, a in rows]
        (folder / "data" / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


class HalfOracleLM(OracleLM):
    """The reference for every other document; for the others its last word replaced (partial credit for
    BLEU/chrF, a miss for exact match, broken code for MBPP)."""

    def generate_until(self, requests):
        out = []
        for r in requests:
            reference = r.doc["reference"]
            if r.doc_id % 2:
                words = reference.split(" ")
                reference = " ".join(words[:-1] + ["wrong)"]) if len(words) > 1 else "wrong)"
            out.append(get_task(r.doc["task"]).format_answer(reference))
        return out


def assert_equals_task_score(res: dict, lm_task: str, ref: str, **options) -> dict:
    """lm-eval's metrics of ``lm_task`` are ``Task.score`` of the same extracted predictions."""
    task = get_task(ref)
    samples = res["samples"][lm_task]
    by_id = {i.id: i for i in task.load(samples[0]["doc"]["split"])}
    instances = [by_id[s["doc"]["id"]] for s in samples]
    predictions = {s["doc"]["id"]: task.extract(s["filtered_resps"][0]) for s in samples}
    expected = task.score(instances, predictions, **options).metrics
    got = _metrics(res, lm_task)
    means = mean_metrics(task.metric)
    assert set(got) == {task.primary_metric, *means}
    assert got[task.primary_metric] == pytest.approx(expected[task.primary_metric], abs=1e-9)
    for name, key in means.items():
        assert got[name] == pytest.approx(expected[key], abs=1e-9), name
    assert 0.0 < got[task.primary_metric] < 100.0  # the check means something: some right, some wrong
    return got


def test_task_manager_registers_all_tasks_and_tags(manager):
    assert sorted(task_names(tasks=registry.PAPER_TASKS)) == sorted(ALL)
    assert set(ALL) <= set(manager.all_tasks)
    assert {"promptintern", "promptintern_full"} <= set(manager.all_tags)
    loaded = manager.load(["promptintern"])["tasks"]
    assert sorted(loaded) == sorted(task_names("query"))
    # the generated folder is keyed by content: the same tasks give the same folder, other tasks another
    assert include_path() == include_path()
    assert include_path(["mbpp"]) != include_path()
    assert sorted(p.name for p in Path(include_path(["mbpp"])).iterdir()) == [
        "promptintern_mbpp.yaml",
        "promptintern_mbpp_full.yaml",
    ]


def test_generation_settings_come_from_the_task(manager):
    """until / max_gen_toks are not in the configs: PromptInternTask takes them from task.yaml."""
    for path in Path(include_path()).glob("*.yaml"):
        text = path.read_text()
        assert "until:" not in text and "max_gen_toks" not in text, path
    tasks = manager.load(task_names())["tasks"]
    for name in registry.PAPER_TASKS:
        task = get_task(name)
        for lm_task in (f"promptintern_{name}", f"promptintern_{name}_full"):
            gen = tasks[lm_task].config.generation_kwargs
            assert gen["until"] == list(task.stop) and gen["max_gen_toks"] == task.max_new_tokens
            assert gen["do_sample"] is False


def test_unknown_option_is_named(tmp_path):
    from promptintern.tasks.lm_eval_support import load_docs, prompts_for

    with pytest.raises(ValueError, match=r"unknown task\(s\) spider; choose from mbpp, nl2f, nl2bash"):
        load_docs("spider")
    with pytest.raises(ValueError, match="unknown task\\(s\\) spider, bash"):
        include_path(["spider", "nl2f", "bash"])
    with pytest.raises(ValueError, match="not a task folder"):
        include_path([str(tmp_path)])
    with pytest.raises(ValueError, match="unknown prompt 'half'"):
        prompts_for(get_task("nl2f"), [], "half")
    with pytest.raises(ValueError, match="unknown prompt 'half'"):
        task_names("half")


@needs_bwrap
def test_oracle_answers_score_full_marks(manager):
    """References formatted as answers go through extraction and the suite's metrics: 100 everywhere."""
    tasks = ["promptintern_mbpp", "promptintern_nl2f", "promptintern_nl2bash"]
    res = simple_evaluate(model=OracleLM(), tasks=tasks, limit=3, task_manager=manager, bootstrap_iters=0)
    assert _metrics(res, "promptintern_mbpp") == {"pass@1": 100.0}
    assert _metrics(res, "promptintern_nl2f") == {"em": 100.0, "em_lenient": 100.0, "em_raw": 100.0}
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
        "promptintern_nl2f": {"em", "em_lenient", "em_raw"},
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
    from promptintern.harness.experiment import Experiment
    from promptintern.profile import load_profile

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
    from promptintern.serving.generate import generate
    from promptintern.serving.models import load_model, load_tokenizer

    ours = generate(
        load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir)), suite, max_new_tokens=8
    )
    assert [g.text for g in ours] == [s["resps"][0][0] for s in samples]
    assert set(_metrics(res, "promptintern_nl2f_full")) == {"em", "em_lenient", "em_raw"}


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

    from promptintern.evaluation.predictions import read_predictions
    from promptintern.harness.lm_eval_cli import lm_eval_cmd

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
    # em is the metric's corpus aggregation (no lm-eval stderr); the per-instance means have one
    assert set(metrics) == {"em", "em_lenient", "em_raw", "em_lenient_stderr", "em_raw_stderr"}
    assert 0.0 <= metrics["em"] <= 100.0
    assert summary["n"]["promptintern_nl2f"] == {"original": 36, "effective": 2}  # the validation split
    assert "promptintern_nl2f" in json.loads((tmp_path / "results.json").read_text())["results"]
    validation = get_task("nl2f").load("validation")
    preds = read_predictions(tmp_path / "promptintern_nl2f.jsonl", validation, allow_missing=True)
    assert list(preds) == [i.id for i in validation[:2]]
    assert all(p.extra["em"] in (0.0, 100.0) and "output" in p.extra for p in preds.values())
    bad = CliRunner().invoke(app, ["lm-eval", "-t", "spider", "--model", str(tiny_model_dir)])
    assert bad.exit_code == 2 and "unknown task(s) spider" in bad.output


# -- the generic metric path equals Task.score, per metric kind ---------------------------------------
@pytest.mark.parametrize("metric", ["exact_match", "bleu", "chrf"])
def test_folder_task_metrics_equal_task_score(metric, tmp_path, isolated_registry):
    folder = make_task_folder(tmp_path, f"tiny-{metric.replace('_', '-')}", metric)
    name = registry.resolve_task(folder)
    manager = TaskManager(include_path=include_path([folder]), include_defaults=False)
    lm_task = f"promptintern_{name}"
    res = simple_evaluate(model=HalfOracleLM(), tasks=[lm_task], task_manager=manager, bootstrap_iters=0)
    got = assert_equals_task_score(res, lm_task, name)
    assert res["n-samples"][lm_task]["effective"] == len(TEST_ROWS)
    if metric != "exact_match":
        assert set(got) == {metric, f"sentence_{metric}"}


@needs_spider
def test_nl2f_metrics_equal_task_score(manager):
    res = simple_evaluate(
        model=HalfOracleLM(), tasks=["promptintern_nl2f"], limit=8, task_manager=manager, bootstrap_iters=0
    )
    assert set(assert_equals_task_score(res, "promptintern_nl2f", "nl2f")) == {"em", "em_lenient", "em_raw"}


@needs_nl2bash
def test_nl2bash_metrics_equal_task_score(manager):
    res = simple_evaluate(
        model=HalfOracleLM(), tasks=["promptintern_nl2bash"], limit=8, task_manager=manager, bootstrap_iters=0
    )
    assert set(assert_equals_task_score(res, "promptintern_nl2bash", "nl2bash")) == {"bleu", "sentence_bleu"}


@needs_bwrap
def test_mbpp_metrics_equal_task_score(manager):
    res = simple_evaluate(
        model=HalfOracleLM(), tasks=["promptintern_mbpp"], limit=4, task_manager=manager, bootstrap_iters=0
    )
    got = assert_equals_task_score(res, "promptintern_mbpp", "mbpp", backend="bwrap", progress=False)
    assert set(got) == {"pass@1"}


# -- task folders through lm-eval ------------------------------------------------------------------------
def test_folder_task_config_and_oracle(tmp_path, isolated_registry):
    """A folder task's configs: named after task.yaml (a '-' kept), the folder as dataset, the task's
    generation settings, the suite's prompts (query and full), and full marks for the oracle."""
    folder = make_task_folder(tmp_path)
    path = include_path([str(folder)])
    text = (Path(path) / "promptintern_tiny-qa.yaml").read_text()
    assert json.dumps({"task_name": str(folder.resolve()), "prompt": "query"}) in text
    manager = TaskManager(include_path=path, include_defaults=False, metadata={"shots": 1})
    assert sorted(manager.load(["promptintern", "promptintern_full"])["tasks"]) == [
        "promptintern_tiny-qa",
        "promptintern_tiny-qa_full",
    ]
    res = simple_evaluate(
        model=OracleLM(), tasks=["promptintern_tiny-qa", "promptintern_tiny-qa_full"], task_manager=manager,
        bootstrap_iters=0,
    )  # fmt: skip
    assert _metrics(res, "promptintern_tiny-qa") == {"exact_match": 100.0}
    assert _metrics(res, "promptintern_tiny-qa_full") == {"exact_match": 100.0}
    task = get_task(folder)
    assert res["configs"]["promptintern_tiny-qa"]["generation_kwargs"]["until"] == ["\n[Q]", "\n## Example"]
    assert res["configs"]["promptintern_tiny-qa"]["generation_kwargs"]["max_gen_toks"] == 7
    first = task.load("test")[0]
    sample = res["samples"]["promptintern_tiny-qa"][0]
    assert (
        sample["arguments"][0][0] == build_prompt(task, first).to_text() and "[Q] What is two" in first.query
    )
    full = res["samples"]["promptintern_tiny-qa_full"][0]["arguments"][0][0]
    assert "## Example 1" in full and "## Example 2" not in full and "Answer the question" in full


def test_generated_folder_works_in_a_fresh_process(tmp_path, isolated_registry, monkeypatch):
    """Plain lm-eval (another process, no $PROMPTINTERN_INCLUDE_PATH) finds the folder task from the
    generated include path alone."""
    monkeypatch.delenv(registry.INCLUDE_ENV, raising=False)
    folder = make_task_folder(tmp_path)
    path = include_path([folder])
    code = (
        "import sys; from lm_eval.tasks import TaskManager; "
        "t = TaskManager(include_path=sys.argv[1], include_defaults=False).load(['promptintern_tiny-qa'])"
        "['tasks']['promptintern_tiny-qa']; "
        "print(len(t.test_docs()), t.config.generation_kwargs['max_gen_toks'], t.test_docs()[0]['task'])"
    )
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(len(TEST_ROWS)), "7", "tiny-qa"]


def test_cli_runs_a_task_folder(tiny_model_dir, tmp_path, isolated_registry):
    import typer
    from typer.testing import CliRunner

    from promptintern.evaluation.predictions import read_predictions
    from promptintern.harness.lm_eval_cli import lm_eval_cmd

    app = typer.Typer()
    app.command("lm-eval")(lm_eval_cmd)
    app.command("noop")(lambda: None)
    folder = make_task_folder(tmp_path / "tasks")
    shown = CliRunner().invoke(app, ["lm-eval", "-t", str(folder), "--print-include-path"])
    assert shown.exit_code == 0, shown.output
    assert (Path(shown.stdout.strip()) / "promptintern_tiny-qa_full.yaml").is_file()
    args = [
        "lm-eval",
        "-t",
        str(folder),
        "--model",
        str(tiny_model_dir),
        "--limit",
        "2",
        "--max-new-tokens",
        "4",
    ]
    args += ["--predictions-dir", str(tmp_path / "preds"), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert summary["tasks"] == ["tiny-qa"]
    assert set(summary["metrics"]["promptintern_tiny-qa"]) == {"exact_match"}
    assert summary["n"]["promptintern_tiny-qa"] == {"original": len(TEST_ROWS), "effective": 2}
    test = get_task("tiny-qa").load("test")
    preds = read_predictions(tmp_path / "preds" / "promptintern_tiny-qa.jsonl", test, allow_missing=True)
    assert list(preds) == ["q1", "q2"]
    assert all(p.extra["exact_match"] in (0.0, 100.0) for p in preds.values())
    bad = CliRunner().invoke(app, ["lm-eval", "-t", str(tmp_path / "nowhere"), "--print-include-path"])
    assert bad.exit_code == 2 and "no such task folder" in bad.output
