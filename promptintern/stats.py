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


def corpus_bleu_ci(predictions: Sequence[str], references: Sequence[str], **kwargs) -> tuple[float, float]:
    """Bootstrap interval of sacrebleu corpus BLEU (instances resampled, BLEU recomputed)."""
    from sacrebleu.metrics import BLEU

    bleu = BLEU()
    preds, refs = list(predictions), list(references)
    return bootstrap_ci(
        len(preds),
        lambda idx: bleu.corpus_score([preds[i] for i in idx], [[refs[i] for i in idx]]).score,
        **kwargs,
    )
