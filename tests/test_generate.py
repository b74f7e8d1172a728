"""Greedy generation on a tiny random Llama: batching is order- and padding-invariant, stops cut output."""

import pytest

from promptintern.serving.generate import cut_at_stop, generate
from promptintern.serving.models import load_model, load_tokenizer


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(str(tiny_model_dir), device="cpu"), load_tokenizer(str(tiny_model_dir))


def test_batched_equals_unbatched(tiny):
    model, tok = tiny
    prompts = ["short", "a much longer prompt here", "mid length"]
    one = [g.text for g in generate(model, tok, prompts, max_new_tokens=6, batch_size=1)]
    three = [g.text for g in generate(model, tok, prompts, max_new_tokens=6, batch_size=3)]
    assert one == three
    assert all(len(t) > 0 for t in one)


def test_counts_and_latency(tiny):
    model, tok = tiny
    (gen,) = generate(model, tok, ["hello"], max_new_tokens=4)
    assert gen.input_tokens == 5
    assert 0 < gen.output_tokens <= 4
    assert gen.latency_s > 0


def test_stop_strings_truncate():
    assert cut_at_stop("abc```rest", ["```"]) == "abc"
    assert cut_at_stop("abc\n\nx[/BASH]y", ["[/BASH]", "\n\n"]) == "abc"
    assert cut_at_stop("abc", ["zz"]) == "abc"


def test_stop_strings_match_the_completion_only():
    """A stop string that spans the prompt's end ("assistant\\n" + "[NL]") must not end the generation."""
    import torch

    from promptintern.serving.generate import stop_criteria
    from promptintern.testing import char_tokenizer

    tok = char_tokenizer()
    prompt = tok("assistant\n", add_special_tokens=False)["input_ids"]
    criteria = stop_criteria(tok, len(prompt), ["\n[NL]"])

    def stops(generated: str) -> bool:
        ids = torch.tensor([prompt + tok(generated, add_special_tokens=False)["input_ids"]])
        return bool(criteria[0](ids, None)[0])

    assert not stops("[NL]") and not stops("[NL] ls [/NL]")
    assert stops("ls\n[NL]") and stop_criteria(tok, 3, []) is None


def test_a_deadline_stops_generation_and_none_leaves_it_alone(tiny):
    from promptintern.serving.generate import DeadlineExceeded, deadline

    model, tok = tiny
    with deadline(0.0), pytest.raises(DeadlineExceeded):
        list(generate(model, tok, ["hello", "there"], max_new_tokens=4))
    with deadline(None):
        free = [g.text for g in generate(model, tok, ["hello"], max_new_tokens=4)]
    with deadline(3600.0):
        assert [g.text for g in generate(model, tok, ["hello"], max_new_tokens=4)] == free
