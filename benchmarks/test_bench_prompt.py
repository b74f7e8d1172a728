"""Prompt rendering + token counting throughput on the MBPP test split (embedded tokenizer)."""

import pytest

from promptintern.prompting.prompt import build_prompt
from promptintern.prompting.tokens import counter_for
from promptintern.serving.models import EMBEDDED
from promptintern.tasks import get_task


@pytest.fixture(scope="module")
def setup():
    task = get_task("mbpp")
    return task, task.load("test"), task.load("train")[:5], counter_for(EMBEDDED)


@pytest.mark.parametrize("mode", ["full", "query"])
def test_render_and_count(benchmark, setup, mode):
    task, tests, shots, counter = setup
    template = task.template() if mode == "full" else None
    examples = shots if mode == "full" else ()

    def run():
        return sum(counter.count_prompt(build_prompt(task, inst, template, examples)) for inst in tests)

    total = benchmark(run)
    benchmark.extra_info["mean_input_tokens"] = total / len(tests)
    assert total > 0
