"""Shared benchmark fixtures: the model under test, torch threads, MBPP prompts.

Model-dependent benchmarks run on a tiny random Llama by default (2 layers, hidden 64) that uses the embedded
model's tokenizer when it is installed (SmolLM2's BPE and chat template, so token counts are the real ones),
else the tests' character-level tokenizer; ``PROMPTINTERN_BENCH_EMBEDDED=1`` runs them on the embedded
SmolLM2-135M-Instruct instead. Torch uses ``PROMPTINTERN_BENCH_THREADS`` threads (default: 1 for the tiny
model, torch's default for the embedded one); model benchmarks run at most 2 rounds on the embedded model
(``PROMPTINTERN_BENCH_ROUNDS`` sets the count). The tiny model measures the suite's overhead and how cost
scales with prompt length, not a real model's speed.
"""

from __future__ import annotations

import os

import pytest

from promptintern.serving.models import EMBEDDED, ModelNotFoundError, load_model, load_tokenizer
from promptintern.testing import char_tokenizer, save_tiny_llama

EMBEDDED_ENV = "PROMPTINTERN_BENCH_EMBEDDED"
THREADS_ENV = "PROMPTINTERN_BENCH_THREADS"
ROUNDS_ENV = "PROMPTINTERN_BENCH_ROUNDS"


def use_embedded() -> bool:
    return os.environ.get(EMBEDDED_ENV, "") == "1"


def _tiny_tokenizer():
    try:
        return load_tokenizer(EMBEDDED), "embedded"
    except ModelNotFoundError:
        return char_tokenizer(), "char"


@pytest.fixture(scope="session", autouse=True)
def bench_threads():
    """Torch intra-op threads for the session (restored afterwards)."""
    import torch

    before = torch.get_num_threads()
    wanted = os.environ.get(THREADS_ENV) or ("" if use_embedded() else "1")
    if wanted:
        torch.set_num_threads(int(wanted))
    yield torch.get_num_threads()
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def bench_model_name(tmp_path_factory) -> str:
    """``"embedded"`` under PROMPTINTERN_BENCH_EMBEDDED=1, else the path of a saved tiny random Llama."""
    if use_embedded():
        return EMBEDDED
    tok, _ = _tiny_tokenizer()
    path = tmp_path_factory.mktemp("bench-tiny-llama")
    save_tiny_llama(path, tok, hidden_size=64, max_position_embeddings=16384)
    return str(path)


@pytest.fixture(scope="session")
def rounds():
    """``rounds(n, warmup)``: ``benchmark.pedantic`` options; the embedded model gets at most 2 rounds and no
    warm-up round (each costs tens of seconds on 2 cores), ``PROMPTINTERN_BENCH_ROUNDS`` overrides the count."""

    def options(n: int, warmup: int = 0) -> dict:
        count = int(os.environ.get(ROUNDS_ENV) or 0) or (min(n, 2) if use_embedded() else n)
        return {"rounds": count, "iterations": 1, "warmup_rounds": 0 if use_embedded() else warmup}

    return options


@pytest.fixture(scope="session")
def model_info(bench_model_name, bench_threads) -> dict:
    """What every model benchmark records in ``extra_info``."""
    tokenizer = "embedded" if use_embedded() else _tiny_tokenizer()[1]
    return {
        "model": "embedded" if use_embedded() else "tiny-random-llama",
        "tokenizer": tokenizer,
        "torch_threads": bench_threads,
    }


@pytest.fixture(scope="module")
def bench_model(bench_model_name):
    """The model (cpu, eval) and its tokenizer; one instance per benchmark module."""
    return load_model(bench_model_name, device="cpu"), load_tokenizer(bench_model_name)


@pytest.fixture(scope="session")
def mbpp():
    """The MBPP task with its train and test splits."""
    from promptintern.tasks import get_task

    task = get_task("mbpp")
    return task, task.load("train"), task.load("test")
