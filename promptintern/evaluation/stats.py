"""Percentile bootstrap confidence intervals over test instances."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def bootstrap_ci(
    n: int,
    statistic: Callable[[np.ndarray], float],
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """``(low, high)`` of ``statistic(indices)`` over ``resamples`` resamples of ``range(n)`` with replacement."""
    if n == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, n)) for _ in range(resamples)])
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
