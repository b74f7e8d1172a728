"""Prefix-KV-cache serving on the tiny random Llama: same greedy tokens as plain generation, cache untouched."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from promptintern.prompting.prompt import Prompt  # noqa: E402
from promptintern.serving.generate import generate  # noqa: E402
from promptintern.serving.models import load_model, load_tokenizer  # noqa: E402
from promptintern.serving.prefix_cache import PrefixCachedGenerator, common_prefix_length  # noqa: E402

TEMPLATE = "You write Python functions. Keep them short.\n\nDocs: len(x) returns the length of x."
SHOTS = ("## Example 1\nQ: add two numbers\nA: def f(a, b): return a + b",)
QUERIES = ("reverse a string", "sum a list of numbers", "x", "count vowels in a word")
NEW = 24


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model, tok = load_model(str(tiny_model_dir), device="cpu"), load_tokenizer(str(tiny_model_dir))
    model.generation_config.eos_token_id = None  # always decode NEW tokens: long outputs to compare
    return model, tok


def render(tok, query: str, instruction: str = TEMPLATE, examples=SHOTS) -> str:
    return Prompt(query=query, instruction=instruction, examples=examples).render(tok)


def plain(model, tok, prompts):
    return list(generate(model, tok, prompts, max_new_tokens=NEW, batch_size=1))


def snapshot(cache):
    return [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]


def same_tensors(a, b) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x, y) for pa, pb in zip(a, b, strict=True) for x, y in zip(pa, pb, strict=True)
    )


def test_common_prefix_length():
    assert common_prefix_length([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix_length([[1, 2], [1, 2]]) == 2
    assert common_prefix_length([[5], [1, 2]]) == 0
    assert common_prefix_length([]) == 0


def test_prefix_is_the_shared_token_prefix(tiny):
    model, tok = tiny
    prompts = [render(tok, q) for q in QUERIES]
    gen = PrefixCachedGenerator(model, tok)
    n = gen.prepare(prompts)
    # the queries start with different characters: everything before the query is shared
    shared_text = prompts[0][: prompts[0].index(QUERIES[0])]
    assert all(p.startswith(shared_text) for p in prompts) and shared_text.endswith("question:\n")
    assert n == gen.prefix_tokens == len(gen.encode(shared_text))
    assert (
        gen.prefix_ids == gen.encode(prompts[1])[:n]
        and gen.encode(prompts[0])[n] != gen.encode(prompts[1])[n]
    )
    assert gen._cache.get_seq_length() == n and gen.stats()["prefix_seconds"] > 0


def test_same_tokens_as_plain_greedy_and_cache_untouched(tiny):
    model, tok = tiny
    prompts = [render(tok, q) for q in QUERIES]
    reference = plain(model, tok, prompts)
    gen = PrefixCachedGenerator(model, tok)
    gen.prepare(prompts)
    before, length = snapshot(gen._cache), gen._cache.get_seq_length()
    cached = list(gen.generate(prompts, max_new_tokens=NEW))
    assert [g.text for g in cached] == [g.text for g in reference]
    assert all(g.output_tokens == NEW for g in cached)
    assert len({g.text for g in cached}) > 1  # the outputs depend on the uncached part of the prompt
    assert [g.input_tokens for g in cached] == [g.input_tokens for g in reference]
    assert all(g.cached_tokens == gen.prefix_tokens > 0 for g in cached)
    assert gen._cache.get_seq_length() == length and same_tensors(snapshot(gen._cache), before)
    again = list(gen.generate(prompts[:1], max_new_tokens=NEW))  # a second pass over the same cache
    assert again[0].text == cached[0].text


def test_fallbacks_partial_and_no_shared_prefix(tiny):
    model, tok = tiny
    gen = PrefixCachedGenerator(model, tok)
    gen.prepare([render(tok, q) for q in QUERIES[:2]])
    full = gen.prefix_tokens
    before = snapshot(gen._cache)
    other_template = render(tok, "reverse a string", instruction="You write Bash one-liners.")
    unrelated = "no chat template here"
    partial = render(tok, "reverse a string", instruction=TEMPLATE[:20] + " CHANGED", examples=())
    prompts = [other_template, unrelated, partial]
    reference = plain(model, tok, prompts)
    cached = list(gen.generate(prompts, max_new_tokens=NEW))
    assert [g.text for g in cached] == [g.text for g in reference]
    shared = [common_prefix_length([gen.prefix_ids, gen.encode(p)]) for p in prompts]
    assert [g.cached_tokens for g in cached] == shared
    assert shared[1] == 0 and 0 < shared[0] < shared[2] < full  # cropped copies of the cache were used
    assert gen._cache.get_seq_length() == full and same_tensors(snapshot(gen._cache), before)


def test_explicit_prefix_and_prompt_equal_to_prefix(tiny):
    model, tok = tiny
    prompt = render(tok, QUERIES[0])
    head = prompt[: prompt.index("Q:")]
    gen = PrefixCachedGenerator(model, tok, prefix=head)
    assert gen.prefix_tokens == len(gen.encode(head))
    whole = PrefixCachedGenerator(model, tok, prefix=gen.encode(prompt))  # nothing left to prefill
    for g in (gen, whole):
        (out,) = g.generate([prompt], max_new_tokens=NEW)
        assert out.text == plain(model, tok, [prompt])[0].text
    assert out.cached_tokens == out.input_tokens - 1  # the last prompt token is always recomputed


def test_one_prompt_needs_an_explicit_prefix(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="at least 2 prompts"):
        list(PrefixCachedGenerator(model, tok).generate(["only one"], max_new_tokens=2))
