"""BLEU example retrieval: exact agreement with sacrebleu, ranking, exclusion of self, subsets, cache."""

from __future__ import annotations

import random

import pytest
import sacrebleu

import promptintern.prompting.retrieve as R
from promptintern.paths import cache_dir
from promptintern.prompting.retrieve import ExampleRetriever, query_bleu, retrieve_all
from promptintern.tasks.base import Instance

WORDS = "find all files the in current directory , . 's ( ) - 10 3.5 list x & &amp; name *.txt".split()
EDGE = ["", " ", "files", "files ", "the", "find all files", "find find find find", "a-1 b,2 (c)."]


def sentence(rng: random.Random) -> str:
    words = rng.choices(WORDS[: rng.randint(3, len(WORDS))], k=rng.randint(0, 14))
    return " ".join(words) + rng.choice(["", ".", " .", "\n", "  "])


def make_bank(n: int, seed: int = 0) -> list[Instance]:
    rng = random.Random(seed)
    queries = EDGE + [sentence(rng) for _ in range(n - len(EDGE) - 3)]
    queries += [queries[10], queries[10], queries[11]]  # duplicate queries under other ids
    return [Instance(id=f"q{i}", split="train", query=q, reference="") for i, q in enumerate(queries)]


def sacre(hyp: str, ref: str) -> float:
    return sacrebleu.sentence_bleu(hyp, [ref]).score


def brute_top_k(bank: list[Instance], x: Instance, k: int) -> list[str]:
    ranked = sorted(
        ((-sacre(x.query, b.query), j, b.id) for j, b in enumerate(bank) if b.id != x.id),
    )
    return [bid for _, _, bid in ranked[:k]]


def test_query_bleu_equals_sacrebleu_on_random_pairs_and_edge_cases():
    rng = random.Random(1)
    pairs = [(a, b) for a in EDGE for b in EDGE]
    pairs += [(sentence(rng), sentence(rng)) for _ in range(600)]
    pairs += [(s, s) for s in (sentence(rng) for _ in range(20))]
    for hyp, ref in pairs:
        assert query_bleu(hyp, ref) == sacre(hyp, ref), (hyp, ref)  # bit-identical, so within 1e-9
    assert query_bleu("find all files", "find all files") == pytest.approx(100.0, abs=1e-9)
    assert query_bleu("", "files") == query_bleu("files", "") == 0.0


@pytest.mark.parametrize("dense", ["mixed", "all_sparse", "all_dense"])
def test_index_scores_equal_sacrebleu(monkeypatch, dense):
    divisor, min_df = {"mixed": (8, 1), "all_sparse": (1, 10**9), "all_dense": (10**9, 1)}[dense]
    monkeypatch.setattr(R, "DENSE_DIVISOR", divisor)
    monkeypatch.setattr(R, "DENSE_MIN_DF", min_df)
    bank = make_bank(70)
    retriever = ExampleRetriever(bank)
    probes = bank[:12] + [Instance("new", "test", "find the files 's in in current directory .", "")]
    for x in probes:
        expected = [sacre(x.query, b.query) for b in bank]
        assert retriever.scores(x) == expected
    for x in probes:
        assert [b.id for b in retriever.top_k(x, 6)] == brute_top_k(bank, x, 6), x.query


def test_top_k_matches_brute_force_and_never_returns_self():
    bank = make_bank(90, seed=3)
    retriever = ExampleRetriever(bank)
    for x in bank:
        got = [b.id for b in retriever.top_k(x, 5)]
        assert len(got) == 5 and x.id not in got and len(set(got)) == 5
        assert got == brute_top_k(bank, x, 5)
    # identical query under another id is eligible (and ranked first, score 100)
    assert retriever.top_k(bank[-3], 1)[0].query == bank[-3].query
    assert retriever.top_k(bank[0], 0) == []
    assert len(retriever.top_k(bank[0], 1000)) == len(bank) - 1
    outsider = Instance("x", "test", "find all files", "")
    assert len(retriever.top_k(outsider, 1000)) == len(bank)
    with pytest.raises(ValueError):
        retriever.top_k(bank[0], -1)


def test_zero_scores_fill_in_bank_order():
    bank = [Instance(f"b{i}", "train", q, "") for i, q in enumerate(["x y", "alpha", "beta", "x", "gamma"])]
    got = [b.id for b in ExampleRetriever(bank).top_k(Instance("b1", "train", "x y z", ""), 4)]
    assert got == ["b0", "b3", "b2", "b4"]  # two positive scores, then zeros in bank order without self


def test_fraction_subsets_are_seeded_sized_and_nested():
    bank = make_bank(374)
    sizes = {f: len(ExampleRetriever(bank, fraction=f).bank) for f in (0.25, 0.5, 1.0)}
    assert sizes == {0.25: 94, 0.5: 187, 1.0: 374}
    quarter, half = (ExampleRetriever(bank, fraction=f, seed=7).bank for f in (0.25, 0.5))
    assert {b.id for b in quarter} < {b.id for b in half}
    assert [b.id for b in quarter] == [b.id for b in ExampleRetriever(bank, fraction=0.25, seed=7).bank]
    assert [b.id for b in quarter] != [b.id for b in ExampleRetriever(bank, fraction=0.25, seed=8).bank]
    order = {b.id: i for i, b in enumerate(bank)}
    assert [order[b.id] for b in quarter] == sorted(order[b.id] for b in quarter)
    for bad in (0, 1.5, -0.25):
        with pytest.raises(ValueError, match="fraction"):
            ExampleRetriever(bank, fraction=bad)
    with pytest.raises(ValueError, match="unique"):
        ExampleRetriever(bank + bank[:1])


def test_retrieve_all_deterministic_and_cached(monkeypatch):
    bank = make_bank(120, seed=5)
    first = retrieve_all(bank, 4, fraction=0.5, seed=2, progress=False)
    retriever = ExampleRetriever(bank, fraction=0.5, seed=2)
    assert first == {x.id: [b.id for b in retriever.top_k(x, 4)] for x in bank}
    assert all(x.id not in ids and len(ids) == 4 for x, ids in ((x, first[x.id]) for x in bank))
    files = list(cache_dir("retrieval").glob("*.json"))
    assert len(files) == 1 and not list(cache_dir("retrieval").glob(".tmp-*"))

    def boom(*args, **kwargs):
        raise AssertionError("cache miss")

    monkeypatch.setattr(ExampleRetriever, "_rank", boom)
    assert retrieve_all(bank, 4, fraction=0.5, seed=2, progress=False) == first
    with pytest.raises(AssertionError, match="cache miss"):  # other k, seed or data: a new key
        retrieve_all(bank, 3, fraction=0.5, seed=2, progress=False)
    with pytest.raises(AssertionError, match="cache miss"):
        retrieve_all(bank[:-1], 4, bank=bank, fraction=0.5, seed=2, progress=False)
    monkeypatch.undo()
    assert retrieve_all(bank, 4, fraction=0.5, seed=2, use_cache=False, progress=False) == first


def test_answer_field_ranks_by_gold_outputs():
    """Eq. 3: with field="answer" the scores are BLEU between references, whatever the queries say."""
    from promptintern.prompting.retrieve import ExampleRetriever
    from promptintern.tasks import Instance

    bank = [
        Instance("a", "train", "list all files here", "tar -czf backup.tar.gz dir"),
        Instance("b", "train", "compress the folder dir", "ls -la"),
        Instance("c", "train", "something else", "find . -name '*.py'"),
    ]
    x = Instance("x", "train", "list all files here please", "ls -la /tmp")
    by_query = ExampleRetriever(bank, field="query").top_k(x, 1)
    by_answer = ExampleRetriever(bank, field="answer").top_k(x, 1)
    assert [e.id for e in by_query] == ["a"] and [e.id for e in by_answer] == ["b"]
    with pytest.raises(ValueError, match="retrieval field"):
        ExampleRetriever(bank, field="output")
