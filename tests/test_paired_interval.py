"""Paired bootstrap intervals of a metric difference (both systems scored on the same resampled instances)."""

from __future__ import annotations

import numpy as np
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


def test_paraphrase_groups_are_resampled_together():
    from promptintern.evaluation.stats import bootstrap_ci, resampler

    metric = get_metric("exact_match")
    # 20 questions asked twice each (consecutive paraphrases); the system answers both alike
    refs = [f"ls -{k}" for k in range(20) for _ in range(2)]
    preds = [r if k % 3 else "pwd" for k, r in enumerate(refs[::2]) for _ in range(2)]
    rows = _rows("exact_match", preds, refs)
    assert "group" not in rows[0]
    plain = metric.interval(rows)
    grouped = [dict(r, group=f"g{k // 2}") for k, r in enumerate(rows)]
    lo, hi = metric.interval(grouped)
    # the duplicates carry no new information: resampled as 20 clusters the interval is wider
    assert hi - lo > 1.2 * (plain[1] - plain[0])
    assert metric.interval(grouped) == (lo, hi)  # seeded: deterministic
    # a resample takes whole clusters, as many as there are
    draw = resampler(40, [r["group"] for r in grouped])
    idx = draw(np.random.default_rng(1))
    assert len(idx) == 40 and all(idx[k] // 2 == idx[k + 1] // 2 for k in range(0, 40, 2))
    # one instance per group is the plain bootstrap, draw for draw
    singles = [dict(r, group=r["id"]) for r in rows]
    assert metric.interval(singles) == plain
    assert bootstrap_ci(3, lambda i: float(i.sum()), groups=["a", "b", "c"]) == bootstrap_ci(3, lambda i: float(i.sum()))
    with pytest.raises(ValueError, match="2 group labels for 3 instances"):
        resampler(3, ["a", "b"])
    # a paired comparison and the seeded interval use the groups of the rows too
    worse = [dict(r, prediction="pwd", em=0.0) for r in grouped]
    p_lo, p_hi = metric.paired_interval(grouped, worse)
    u_lo, u_hi = metric.paired_interval(rows, [dict(r, prediction="pwd", em=0.0) for r in rows])
    assert p_hi - p_lo > u_hi - u_lo
    s_lo, s_hi = metric.seeded_interval([grouped], [worse])
    assert s_hi - s_lo > 1.2 * (u_hi - u_lo)


def test_rows_carry_the_instance_group():
    import promptintern.tasks.nl2f.metric  # noqa: F401 - registers nl2formula_em
    from promptintern.tasks.base import Instance

    instances = [Instance("a", "test", "q", "ls", {"group": "not this"}, group="g1"),
                 Instance("b", "test", "q", "pwd", {"group": "nor this"})]  # a column named group is just data
    for name in ("exact_match", "bleu", "nl2formula_em"):
        rows = get_metric(name).rows(None, instances, ["ls", "pwd"])
        assert rows[0]["group"] == "g1" and "group" not in rows[1]
