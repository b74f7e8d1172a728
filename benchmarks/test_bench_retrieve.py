"""BLEU example retrieval (``ExampleRetriever``): top-10 of the NL2Bash train bank for 50 test queries.

``cold``: a new retriever per round, so the n-gram index of the bank is built and the 50 queries ranked;
``warm``: the index already built, ranking only (what every later call of a run pays). The disk cache is
off in both. ``extra_info``: bank size, queries, k, queries per second.
"""

import pytest

from promptintern.prompting.retrieve import ExampleRetriever
from promptintern.tasks import get_task

K, QUERIES = 10, 50


@pytest.fixture(scope="module")
def nl2bash():
    task = get_task("nl2bash")
    return task.load("train"), task.load("test")[:QUERIES]


def rank(retriever: ExampleRetriever, queries) -> dict[str, list[str]]:
    return retriever.retrieve_all(queries, K, use_cache=False, progress=False)


def record(benchmark, bank, queries) -> None:
    stats = getattr(benchmark, "stats", None)
    mean = stats.stats.mean if stats is not None else None
    benchmark.extra_info.update(
        bank=len(bank),
        queries=len(queries),
        k=K,
        queries_per_s=round(len(queries) / mean, 1) if mean else None,
    )


def test_retrieve_cold(benchmark, nl2bash):
    bank, queries = nl2bash
    result = benchmark.pedantic(lambda: rank(ExampleRetriever(bank), queries), rounds=3, iterations=1)
    record(benchmark, bank, queries)
    assert len(result) == QUERIES and all(len(ids) == K for ids in result.values())


def test_retrieve_warm(benchmark, nl2bash):
    bank, queries = nl2bash
    retriever = ExampleRetriever(bank)
    rank(retriever, queries[:1])  # builds the index
    result = benchmark.pedantic(rank, args=(retriever, queries), rounds=5, iterations=1)
    record(benchmark, bank, queries)
    assert len(result) == QUERIES and all(len(ids) == K for ids in result.values())
