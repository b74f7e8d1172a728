"""Inference latency of one MBPP test instance on one model: full prompt vs query-only vs prefix-cached.

``full``: template + 5 BLEU-retrieved shots + query, plain greedy ``generate`` (what the untrained model
needs); ``query``: the query alone (how PromptIntern serves its fine-tuned model; LoRA merged, so the same
architecture and cost); ``prefix-cached``: the full prompt through :class:`PrefixCachedGenerator`, whose shared
prefix (system turn + user-turn opening, found over 8 test prompts) is computed once before timing and
reported in ``extra_info`` (``prefix_tokens``, ``prefix_seconds``), not in the timed rounds. Every mode
decodes exactly 16 new tokens (``min_new_tokens``), so the timings differ by the prompt work only.
"""

import pytest

from promptintern.prompting.prompt import build_prompt
from promptintern.prompting.retrieve import ExampleRetriever
from promptintern.serving.generate import generate
from promptintern.serving.prefix_cache import PrefixCachedGenerator

SHOTS, NEW, PREPARE = 5, 16, 8


@pytest.fixture(scope="module")
def setup(bench_model, mbpp):
    model, tok = bench_model
    model.generation_config.min_new_tokens = NEW  # this module's own model instance
    task, train, test = mbpp
    retriever = ExampleRetriever(train)
    instances = test[:PREPARE]
    full = [build_prompt(task, x, task.template(), retriever.top_k(x, SHOTS)).render(tok) for x in instances]
    cached = PrefixCachedGenerator(model, tok)
    cached.prepare(full)  # warm-up (first forward pass of this model instance)
    cached.prepare(full)
    return model, tok, full[0], build_prompt(task, instances[0]).render(tok), cached


@pytest.mark.parametrize("mode", ["full", "query", "prefix-cached"])
def test_latency(benchmark, setup, model_info, rounds, mode):
    model, tok, full, query, cached = setup
    if mode == "prefix-cached":
        run = lambda: list(cached.generate([full], max_new_tokens=NEW))  # noqa: E731
    else:
        prompt = full if mode == "full" else query
        run = lambda: list(generate(model, tok, [prompt], max_new_tokens=NEW))  # noqa: E731
    (gen,) = benchmark.pedantic(run, **rounds(5, warmup=1))
    benchmark.extra_info.update(
        model_info,
        input_tokens=gen.input_tokens,
        output_tokens=gen.output_tokens,
        cached_tokens=getattr(gen, "cached_tokens", 0),
        computed_prompt_tokens=gen.input_tokens - getattr(gen, "cached_tokens", 0),
    )
    if mode == "prefix-cached":
        benchmark.extra_info.update(cached.stats())
        assert gen.cached_tokens == cached.prefix_tokens > 0
    assert gen.output_tokens == NEW
