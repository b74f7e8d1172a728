"""Compressor throughput on the MBPP API documents: truncate (model-free) and LLMLingua on the bench model.

Timed: one ``compress(documents, 0.5)`` call, no cache involved (the LLMLingua model is loaded before
timing). ``extra_info``: original and kept size in the compressor's unit, the achieved rate and the
throughput in original units per second.
"""

import pytest

from promptintern.compress import get_compressor

RATE = 0.5


def mean_seconds(benchmark) -> float | None:
    """Mean round time of a finished benchmark (None with --benchmark-disable)."""
    stats = getattr(benchmark, "stats", None)
    return stats.stats.mean if stats is not None else None


def record(benchmark, result) -> None:
    mean = mean_seconds(benchmark)
    benchmark.extra_info.update(
        unit=result.unit,
        origin_tokens=result.origin_tokens,
        compressed_tokens=result.compressed_tokens,
        rate_achieved=round(result.rate_achieved, 4),
        origin_tokens_per_s=round(result.origin_tokens / mean, 1) if mean else None,
    )


@pytest.mark.parametrize("mode", ["head", "lines"])
def test_truncate(benchmark, mbpp, mode):
    task, _, _ = mbpp
    documents = task.template().documents
    comp = get_compressor("truncate", mode=mode)
    result = benchmark(comp.compress, documents, RATE)
    record(benchmark, result)
    assert 0 < result.compressed_tokens < result.origin_tokens


def test_llmlingua(benchmark, mbpp, bench_model_name, model_info, rounds):
    task, _, _ = mbpp
    documents = task.template().documents
    comp = get_compressor("llmlingua", model=bench_model_name, device="cpu")
    comp.prompt_compressor()  # loads the model before timing
    result = benchmark.pedantic(comp.compress, args=(documents, RATE), **rounds(3, warmup=1))
    record(benchmark, result)
    benchmark.extra_info.update(model_info)
    assert 0 < result.compressed_tokens < result.origin_tokens
