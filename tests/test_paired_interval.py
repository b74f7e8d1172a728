"""Paired bootstrap intervals of a metric difference (both systems scored on the same resampled instances)."""

from __future__ import annotations

import pytest

from promptintern.tasks.metrics import get_metric


def _rows(metric_name: str, preds: list[str], refs: list[str]) -> list[dict]:
    metric = get_metric(metric_name)
    instances = [type("I", (), {"id": f"i{k}", "reference": r})() for k, r in enumerate(refs)]
    return metric.rows(None, instances, preds)


REFS = [f"find . -name '*.py' -size +{k}k" for k in range(40)]


@pytest.mark.parametrize("name", ["exact_match", "bleu"])
def test_identical_systems_have_a_zero_interval(name):
    metric = get_metric(name)
    preds = [r if k % 3 else "ls -la" for k, r in enumerate(REFS)]
    rows = _rows(name, preds, REFS)
    assert metric.paired_interval(rows, list(reversed(rows))) == (0.0, 0.0)  # matched by id, not by order


@pytest.mark.parametrize("name", ["exact_match", "bleu"])
def test_a_better_system_gets_an_interval_above_zero_and_narrower_than_unpaired(name):
    metric = get_metric(name)
    good = _rows(name, [r if k % 4 else "ls" for k, r in enumerate(REFS)], REFS)
    bad = _rows(name, [r if k % 2 else "ls" for k, r in enumerate(REFS)], REFS)
    lo, hi = metric.paired_interval(good, bad)
    diff = metric.aggregate(good)[metric.primary] - metric.aggregate(bad)[metric.primary]
    assert 0 < lo <= diff <= hi
    # pairing removes what the two share: narrower than the two unpaired intervals combined
    (a_lo, a_hi), (b_lo, b_hi) = metric.interval(good), metric.interval(bad)
    assert hi - lo < (a_hi - a_lo) + (b_hi - b_lo)
    with pytest.raises(ValueError, match="same test instances"):
        metric.paired_interval(good, bad[:-1])
