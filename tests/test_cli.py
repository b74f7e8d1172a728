"""End-to-end CLI: stats, oracle scoring, predictions errors, prompt rendering, generate -> eval."""

import json

import pytest
from typer.testing import CliRunner

from promptintern.cli import _mount_sandbox, app
from promptintern.tasks import get_task

_mount_sandbox()
runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_data_stats_json():
    res = _run("data", "stats", "--json")
    assert res.exit_code == 0, res.output
    stats = json.loads(res.stdout)
    assert stats["mbpp"] == {"train": 374, "validation": 90, "test": 500, "prompt": 10}
    assert set(stats) == {"mbpp", "nl2f", "nl2bash"}
    for name in ("nl2f", "nl2bash"):
        assert set(stats[name]) == {"train", "validation", "test"} and all(
            v > 0 for v in stats[name].values()
        )


@pytest.mark.parametrize(("task", "metric"), [("nl2f", "em"), ("nl2bash", "bleu")])
def test_oracle_scores_100(task, metric):
    res = _run("eval", "--task", task, "--split", "test", "--oracle", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["metrics"][metric] == pytest.approx(100.0)
    assert out["failures"] == []


def test_mbpp_references_pass_in_sandbox_partial(tmp_path):
    preds = tmp_path / "p.jsonl"
    insts = get_task("mbpp").load("test")[:6]
    rows = [{"task_id": int(i.id), "prediction": i.reference} for i in insts[:5]]
    rows.append({"task_id": int(insts[5].id), "prediction": "def nothing():\n    pass"})
    preds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = _run(
        "eval",
        "--task",
        "mbpp",
        "--predictions",
        preds,
        "--partial",
        "--json",
        "--out",
        tmp_path / "rows.jsonl",
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["metrics"]["passed"] == 5 and out["n"] == 6
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert [r["passed"] for r in rows] == [True] * 5 + [False]


def test_bad_predictions_exit_2_and_list_problems(tmp_path):
    preds = tmp_path / "bad.jsonl"
    preds.write_text('{"task_id": "spider-dev-x", "prediction": "=1"}\n{oops\n')
    res = runner.invoke(app, ["eval", "--task", "nl2f", "--predictions", str(preds)])
    assert res.exit_code == 2
    assert "bad.jsonl:1: field 'task_id': unknown id 'spider-dev-x'" in res.output
    assert "bad.jsonl:2: invalid JSON" in res.output


def test_eval_needs_exactly_one_source():
    res = runner.invoke(app, ["eval", "--task", "nl2f"])
    assert res.exit_code != 0 and "exactly one" in res.output


def test_prompt_command_renders_parts():
    inst = get_task("nl2bash").load("test")[0]
    full = _run("prompt", "--task", "nl2bash", "--id", inst.id)
    query = _run("prompt", "--task", "nl2bash", "--id", inst.id, "--query-only")
    assert full.exit_code == query.exit_code == 0
    assert "<API Doc 1>" in full.stdout and inst.query in full.stdout
    assert query.stdout.strip() == inst.query


def test_generate_then_eval_with_tiny_model(tiny_model_dir, tmp_path):
    out = tmp_path / "preds.jsonl"
    res = _run(
        "generate",
        "--task",
        "nl2bash",
        "--method",
        "zero-shot",
        "--profile",
        "smoke",
        "--model",
        tiny_model_dir,
        "--out",
        out,
    )
    assert res.exit_code == 0, res.output
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == 3 and all(
        {"task_id", "prediction", "output", "input_tokens", "latency_s"} <= set(r) for r in recs
    )
    res = _run("eval", "--task", "nl2bash", "--predictions", out, "--partial", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["n"] == 3


def test_show_prompts_prints_every_stage():
    inst = get_task("nl2f").load("train")[0]
    res = _run("show-prompts", "--task", "nl2f", "--id", inst.id, "--profile", "smoke")
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert out.count("===== stage") == 3
    stage1, stage2, stage3 = out.split("===== stage")[1:]
    assert "<API Doc 1>" in stage1 and "## Example 2" in stage1
    assert "## Example 1" in stage2 and "## Example 2" not in stage2
    assert "## Example" not in stage3 and "API Doc" not in stage3 and inst.query in stage3


def test_tokens_reports_reduction(tiny_model_dir):
    res = _run("tokens", "--task", "nl2f", "--profile", "smoke", "--model", tiny_model_dir, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    tokens = out["mean_input_tokens"]
    assert out["n"] == len(get_task("nl2f").load("test"))
    assert tokens["template + k-shots"] > tokens["template x0.6 + k/2-shots"] > tokens["PromptIntern (query only)"]
    assert tokens["PromptIntern (query only)"] == tokens["no template"]
    assert out["reduction_vs_full"]["PromptIntern (query only)"] == pytest.approx(1 - tokens["no template"] / tokens["template + k-shots"])


def test_run_json_stdout_is_pure_json(tiny_model_dir):
    res = _run("run", "--task", "nl2f", "--method", "promptintern", "--profile", "smoke", "--model", tiny_model_dir,
               "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)  # Trainer logs and progress bars must not leak into stdout
    assert out["method"] == "promptintern" and out["n"] == 3 and len(out["ci95"]) == 2
