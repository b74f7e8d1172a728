"""Percentile bootstrap confidence intervals over test instances (and over training seeds).

Instances are resampled one by one, or, where ``groups`` is given (one label per instance, e.g. the paraphrase
group of an NL2F-Spider question), as clusters: a resample draws as many groups as there are, with replacement,
and takes every instance of each drawn group. Paraphrases of one question are not independent draws (a model
tends to answer both alike), so resampling them one by one would give too narrow an interval.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import numpy as np


def resampler(n: int, groups: Sequence[Hashable] | None = None) -> Callable[[np.random.Generator], np.ndarray]:
    """``draw(rng)``: the instance indices of one bootstrap resample of ``range(n)``, instance by instance, or
    cluster by cluster when ``groups`` labels each of the ``n`` instances."""
    if groups is None:
        return lambda rng: rng.integers(0, n, n)
    if len(groups) != n:
        raise ValueError(f"{len(groups)} group labels for {n} instances")
    members: dict[Hashable, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    clusters = [np.asarray(m, dtype=np.int64) for m in members.values()]
    if len(clusters) == n:  # every instance its own group: the plain bootstrap
        return lambda rng: rng.integers(0, n, n)
    return lambda rng: np.concatenate([clusters[k] for k in rng.integers(0, len(clusters), len(clusters))])


def bootstrap_ci(
    n: int,
    statistic: Callable[[np.ndarray], float],
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    groups: Sequence[Hashable] | None = None,
) -> tuple[float, float]:
    """``(low, high)`` of ``statistic(indices)`` over ``resamples`` resamples of ``range(n)`` with replacement
    (of the clusters of ``groups`` where given)."""
    if n == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    draw = resampler(n, groups)
    values = np.array([statistic(draw(rng)) for _ in range(resamples)])
    alpha = (1 - confidence) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def mean_ci(values: Sequence[float], **kwargs) -> tuple[float, float]:
    """Bootstrap interval of the mean of per-instance values (e.g. pass@1 or EM as 0/100)."""
    arr = np.asarray(values, dtype=float)
    return bootstrap_ci(len(arr), lambda idx: float(arr[idx].mean()), **kwargs)


def corpus_ci(scorer, predictions: Sequence[str], references: Sequence[str], **kwargs) -> tuple[float, float]:
    """Bootstrap interval of a sacrebleu corpus metric (``BLEU``, ``CHRF``): instances resampled, score recomputed.

    A corpus score depends only on the summed per-sentence statistics, so each sentence is tokenised and counted
    once (sacrebleu's own statistics) and every resample sums rows: the same values as re-scoring the resampled
    corpus (tested), about 1000x faster on NL2Bash's 621 test commands.
    """
    stats = np.asarray(scorer._extract_corpus_statistics(list(predictions), [list(references)]), dtype=np.int64)
    return bootstrap_ci(
        len(stats),
        lambda idx: float(scorer._compute_score_from_stats(stats[idx].sum(axis=0)).score),
        **kwargs,
    )


def paired_corpus_ci(
    scorer, predictions: tuple[Sequence[str], Sequence[str]], references: Sequence[str], **kwargs
) -> tuple[float, float]:
    """Paired bootstrap interval of ``score(predictions[0]) - score(predictions[1])`` for a sacrebleu corpus
    metric: each resample draws instances once and re-scores both systems on them (summed statistics)."""
    stats = [
        np.asarray(scorer._extract_corpus_statistics(list(p), [list(references)]), dtype=np.int64)
        for p in predictions
    ]

    def diff(idx: np.ndarray) -> float:
        a, b = (scorer._compute_score_from_stats(s[idx].sum(axis=0)).score for s in stats)
        return float(a - b)

    return bootstrap_ci(len(stats[0]), diff, **kwargs)


def corpus_bleu_ci(predictions: Sequence[str], references: Sequence[str], **kwargs) -> tuple[float, float]:
    """:func:`corpus_ci` of sacrebleu's default BLEU."""
    from sacrebleu.metrics import BLEU

    return corpus_ci(BLEU(), predictions, references, **kwargs)


def seeded_ci(
    runs_a: Sequence[Callable[[np.ndarray], float]],
    runs_b: Sequence[Callable[[np.ndarray], float]] = (),
    *,
    n: int,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    groups: Sequence[Hashable] | None = None,
) -> tuple[float, float]:
    """Two-stage bootstrap interval of ``mean_s a_s(I) - mean_s b_s(I)`` (of ``mean_s a_s(I)`` when ``runs_b``
    is empty): each ``a_s`` / ``b_s`` scores one training seed's run on instance indices ``I``.

    Every resample draws the seeds of each side with replacement (the seeds of ``a`` and ``b`` are independent
    training runs) and one set of ``n`` instance indices shared by every run (a paired comparison on the same
    test instances), so the interval covers the variation between training seeds as well as between test
    instances. With one seed per side it is the paired instance bootstrap. ``groups``: the instances are
    resampled as these clusters (module docstring).
    """
    if n == 0 or not runs_a:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    draw = resampler(n, groups)
    values = np.empty(resamples)
    for r in range(resamples):
        seeds_a = rng.integers(0, len(runs_a), len(runs_a))
        seeds_b = rng.integers(0, len(runs_b), len(runs_b)) if runs_b else ()
        idx = draw(rng)
        a = float(np.mean([runs_a[s](idx) for s in seeds_a]))
        values[r] = a - (float(np.mean([runs_b[s](idx) for s in seeds_b])) if runs_b else 0.0)
    alpha = (1 - confidence) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))
