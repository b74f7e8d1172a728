"""Prompt fitting (stages.fit_prompt): the template is never cut; shots go first, then query steps."""

from __future__ import annotations

from dataclasses import replace

import pytest

from promptintern.methods.stages import ContextBudget, FitStats, PromptTooLongError, fit_prompt
from promptintern.prompting.prompt import build_prompt
from promptintern.tasks import Instance, Template, get_task


class Shrinking:
    """A task stand-in whose query can lose one ``row`` at a time (like NL2F's table rows)."""

    name = "toy"

    def format_example(self, index, inst):
        return f"## Example {index}\n{inst.query}\n{inst.reference}"

    def shrink(self, inst):
        rows = inst.query.count("row")
        if rows == 0:
            return None
        return replace(inst, query=inst.query.rsplit(" row", 1)[0])


def chars(prompt):
    return len(prompt.to_text())


TEMPLATE = Template("T" * 100, "")
QUERY = Instance("q", "test", "Q" + " row" * 5, "A")
SHOTS = [Instance(str(i), "train", "x" * 20, "y" * 5) for i in range(4)]


def budget(max_tokens, reserve=10):
    return ContextBudget(chars, max_tokens, lambda inst: reserve)


def test_fits_without_change_when_room():
    stats = FitStats()
    prompt = fit_prompt(Shrinking(), QUERY, TEMPLATE, SHOTS, budget(10_000), stats)
    assert prompt == build_prompt(Shrinking(), QUERY, TEMPLATE, SHOTS)
    assert stats.to_dict() == {"prompts": 1, "prompts_fitted": 0, "shots_dropped": 0, "query_steps": 0}


def test_drops_lowest_ranked_shots_first_then_shrinks_query_never_the_template():
    full = chars(build_prompt(Shrinking(), QUERY, TEMPLATE, SHOTS))
    two_shots = chars(build_prompt(Shrinking(), QUERY, TEMPLATE, SHOTS[:2]))
    stats = FitStats()
    prompt = fit_prompt(Shrinking(), QUERY, TEMPLATE, SHOTS, budget(two_shots + 10), stats)
    assert len(prompt.examples) == 2 and prompt.examples[0].startswith("## Example 1\n" + SHOTS[0].query)
    assert prompt.instruction == TEMPLATE.instruction and stats.shots_dropped == 2 and stats.query_steps == 0
    assert two_shots < full

    no_shots = chars(build_prompt(Shrinking(), QUERY, TEMPLATE))
    stats = FitStats()
    prompt = fit_prompt(Shrinking(), QUERY, TEMPLATE, SHOTS, budget(no_shots + 10 - 8), stats)
    assert prompt.examples == () and prompt.query == "Q" + " row" * 3 and prompt.instruction == TEMPLATE.instruction
    assert stats.shots_dropped == 4 and stats.query_steps == 2 and stats.prompts_fitted == 1


def test_fails_clearly_when_template_and_query_alone_do_not_fit():
    with pytest.raises(PromptTooLongError, match=r"toy instance q: template \+ query take \d+ tokens"):
        fit_prompt(Shrinking(), QUERY, TEMPLATE, SHOTS, budget(50))


def test_nl2f_training_prompts_keep_their_template(tmp_path):
    """The real NL2F task with a tight context: rows and shots go, the template stays whole."""
    task = get_task("nl2f")
    train = task.load("train")
    inst = max(train[:40], key=lambda i: len(i.query))
    template = task.template()
    shots = [t for t in train[:40] if t.id != inst.id][:5]
    roomy = chars(build_prompt(task, inst, template, shots))
    stats = FitStats()
    tight = chars(build_prompt(task, inst, template)) - 1
    prompt = fit_prompt(task, inst, template, shots, budget(tight + 10), stats)
    assert prompt.template == template.text and prompt.examples == ()
    assert stats.shots_dropped == 5 and stats.query_steps >= 1 and chars(prompt) <= tight < roomy
