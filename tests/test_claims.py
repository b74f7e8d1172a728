"""The claims table: seeded paired intervals, verdicts, best-of comparisons and ratio claims on synthetic runs."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from promptintern.evaluation.stats import seeded_ci
from promptintern.harness.claims import ClaimSpec, evaluate_claims, load_claims, render_markdown, verdict
from promptintern.harness.seeds import combine
from promptintern.harness.store import RunRow
from promptintern.tasks import get_task

REFS = ["ls -l", "find . -name '*.py'", "du -sh .", "wc -l a.txt", "cat a | sort", "rm -rf tmp", "echo hi",
        "grep -r foo .", "tar czf a.tgz a", "chmod +x run.sh"] * 3  # fmt: skip


def _run(tmp_path, method, seed, predictions, *, value=None, variant="", tokens=None):
    """A stored row for nl2bash whose directory holds scores.jsonl and predictions.jsonl."""
    metric = get_task("nl2bash").metric
    rows = [
        {"id": str(i), "prediction": p, "reference": r, "sentence_bleu": 0.0}
        for i, (p, r) in enumerate(zip(predictions, REFS, strict=True))
    ]
    for r in rows:
        r["sentence_bleu"] = metric.scorer(sentence=True).sentence_score(r["prediction"], [r["reference"]]).score
    folder = tmp_path / f"{method}-{variant}-{seed}"
    folder.mkdir()
    (folder / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tokens = tokens or [50] * len(rows)
    preds = [{"task_id": r["id"], "input_tokens": t, "input_tokens_cl100k": t, "output_tokens_cl100k": 10}
             for r, t in zip(rows, tokens, strict=True)]  # fmt: skip
    (folder / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    score = metric.aggregate(rows)["bleu"] if value is None else value
    return RunRow(table_id="2", method=method, variant=variant, task="nl2bash", model="m", profile="cpu",
                  seed=seed, metric="bleu", value=score, n=len(rows), directory=str(folder),
                  input_tokens_mean=float(np.mean(tokens)))  # fmt: skip


def _noisy(k):
    """References with every k-th answer wrong."""
    return [("echo wrong" if i % k == 0 else r) for i, r in enumerate(REFS)]


def test_seeded_interval_with_one_seed_each_is_the_paired_bootstrap_and_seeds_widen_it():
    rng = np.random.default_rng(1)
    a, b = rng.normal(50, 10, 60), rng.normal(45, 10, 60)
    stat = lambda v: (lambda idx: float(v[idx].mean()))  # noqa: E731
    lo, hi = seeded_ci([stat(a)], [stat(b)], n=60)
    assert lo < a.mean() - b.mean() < hi
    # a constant shift gives a zero-width interval; identical runs a zero difference
    assert seeded_ci([stat(a + 5)], [stat(a)], n=60) == pytest.approx((5.0, 5.0))
    assert seeded_ci([stat(a), stat(a)], [stat(a)], n=60) == pytest.approx((0.0, 0.0))
    # two seeds that disagree by 8 points: the interval must cover the seed variation
    lo2, hi2 = seeded_ci([stat(a - 4), stat(a + 4)], [stat(a)], n=60)
    assert lo2 < -2 and hi2 > 2


def test_bleu_statistic_on_a_subset_is_the_corpus_bleu_of_that_subset():
    metric = get_task("nl2bash").metric
    rows = [{"id": str(i), "prediction": p, "reference": r} for i, (p, r) in enumerate(zip(_noisy(3), REFS, strict=True))]
    idx = np.array([0, 1, 1, 4, 7, 9, 12])
    fast = metric.statistic(rows)(idx)
    assert fast == pytest.approx(metric._corpus([rows[i] for i in idx])[0])


def test_claims_verdicts_seeds_and_best_of(tmp_path):
    good = [_run(tmp_path, "promptintern", s, REFS) for s in (0, 1)]  # perfect answers
    bad = [_run(tmp_path, "ft-none", s, _noisy(2)) for s in (0, 1)]
    tau = [_run(tmp_path, "promptintern", s, _noisy(5), variant="tau-0.3") for s in (0, 1)]
    baselines = [_run(tmp_path, "llmlingua", 0, _noisy(2)), _run(tmp_path, "selective-context", 0, _noisy(4))]
    gist = [RunRow(table_id="7", method="gist", task="nl2bash", model="m", profile="cpu", status="not run",
                   reason="too slow")]  # fmt: skip
    records = {r["id"]: r for r in evaluate_claims(good + bad + tau + baselines + gist, ["nl2bash"])}
    a = records["a"]
    assert a["verdict"] == "reproduced" and a["ci_low"] > 0 and a["seeds"] == {"a": [0, 1], "b": [0, 1]}
    assert a["n_test"] == len(REFS) and a["diff"] == pytest.approx(good[0].value - bad[0].value)
    assert a["primary"] and a["paper"] == "+7.3..11.3 BLEU"
    c = records["c"]  # against the best of the baselines that ran: selective-context (fewer wrong answers)
    assert c["b"] == "selective-context" and c["a"] == "promptintern/tau-0.3"
    assert records["d"]["verdict"] == "not run" and "gist: not run: too slow" in records["d"]["reason"]
    assert records["b"]["verdict"] == "not run" and records["b"]["reason"] == "ft-compressed: not run yet: no result for nl2bash in the results store"
    md = render_markdown(list(records.values()))
    assert "**(a)" in md and "| reproduced |" in md and "Not run:" in md and "(ft-compressed)" in md
    assert "not adjusted for the 2 primary comparisons that ran" in md and "1 − 0.95^2 = 10%" in md


def test_equivalence_and_ratio_claims(tmp_path):
    pi = _run(tmp_path, "promptintern", 0, _noisy(3), tokens=[50] * len(REFS))
    same = _run(tmp_path, "ft-compressed", 0, _noisy(3), tokens=[600] * len(REFS))
    full = _run(tmp_path, "ft-full", 0, _noisy(3), tokens=[1000] * len(REFS))
    records = {r["id"]: r for r in evaluate_claims([pi, same, full], ["nl2bash"])}
    b = records["b"]
    assert b["verdict"] == "reproduced" and b["ci_low"] == b["ci_high"] == 0.0 and b["tokens_ratio"] == 12.0
    h1 = records["h1"]
    assert h1["verdict"] == "reproduced" and h1["diff"] == pytest.approx(95.0) and h1["unit"] == "% less"
    assert records["h2"]["verdict"] == "not run" and "Table 8" in records["h2"]["reason"]
    assert records["h3"]["verdict"] == "reproduced" and records["h3"]["diff"] > 0

    # Table 8's copy of a row holds the server measurement: the speedup claim finds it among the tables' copies
    latency = tmp_path / "latency.json"
    latency.write_text(json.dumps({"requests": {"promptintern": [{"total_s": t} for t in (0.5, 0.6, 0.4)],
                                                "ft-full": [{"total_s": t} for t in (2.0, 2.4, 1.6)]}}))  # fmt: skip
    measured = [dataclasses.replace(r, table_id="8", provenance={"latency_file": str(latency), "latency_row": r.method})
                for r in (pi, full)]  # fmt: skip
    h2 = {r["id"]: r for r in evaluate_claims([pi, same, full, *measured], ["nl2bash"])}["h2"]
    assert h2["verdict"] == "reproduced" and h2["diff"] == pytest.approx(4.0) and h2["n_test"] == 3


def test_two_rows_that_both_score_zero_are_inconclusive_not_equivalent(tmp_path):
    nothing = ["qqq"] * len(REFS)  # no n-gram of any reference: BLEU 0 on every instance
    pi = [_run(tmp_path, "promptintern", s, nothing) for s in (0, 1)]
    rows = pi + [_run(tmp_path, "ft-compressed", s, nothing) for s in (0, 1)] + [_run(tmp_path, "ft-none", 0, nothing)]
    assert {r.value for r in rows} == {0.0}
    records = {r["id"]: r for r in evaluate_claims(rows, ["nl2bash"])}
    b = records["b"]  # the interval [0, 0] lies inside the margin, yet the metric saw nothing of either row
    assert (b["ci_low"], b["ci_high"]) == (0.0, 0.0) and b["verdict"] == "inconclusive" and "cannot separate" in b["note"]
    assert records["a"]["verdict"] == "inconclusive" and records["a"]["note"]
    md = render_markdown(list(records.values()))
    assert "| inconclusive (both 0) |" in md and "no verdict either way" in md
    # one row that scores is compared as usual
    some = [_run(tmp_path, "ft-none", 1, _noisy(2))]
    a = {r["id"]: r for r in evaluate_claims(pi + some, ["nl2bash"])}["a"]
    assert a["verdict"] == "contradicted" and "note" not in a


def test_ratio_claims_resample_instance_groups_whole(tmp_path, monkeypatch):
    from promptintern.harness import claims

    # tokens that vary with the group (every 5 consecutive instances one group), as paraphrases of one question do
    pi = _run(tmp_path, "promptintern", 0, REFS, tokens=[40 + 10 * (i // 5) for i in range(len(REFS))])
    full = _run(tmp_path, "ft-full", 0, REFS, tokens=[900 - 60 * (i // 5) for i in range(len(REFS))])

    def h1():
        return {r["id"]: r for r in evaluate_claims([pi, full], ["nl2bash"])}["h1"]

    monkeypatch.setattr(claims, "split_groups", lambda task: {})
    plain = h1()
    monkeypatch.setattr(claims, "split_groups", lambda task: {str(i): f"g{i // 5}" for i in range(len(REFS))})
    grouped = h1()
    assert grouped["diff"] == plain["diff"] and grouped["n_test"] == plain["n_test"] == len(REFS)
    assert grouped["ci_high"] - grouped["ci_low"] > 1.5 * (plain["ci_high"] - plain["ci_low"])
    # one instance per group is the plain bootstrap, draw for draw
    monkeypatch.setattr(claims, "split_groups", lambda task: {str(i): f"g{i}" for i in range(len(REFS))})
    assert (h1()["ci_low"], h1()["ci_high"]) == (plain["ci_low"], plain["ci_high"])


def test_rows_with_more_test_instances_are_compared_on_the_shared_ones(tmp_path):
    """A sizing's row_overrides may give a claim's rows more test instances than the others: each claim pairs its
    two sides on the instances both have, so a row is compared with another on the other's instances."""
    n = 20
    long_pi = [_run(tmp_path, "promptintern", s, REFS) for s in (0, 1)]  # all 30 instances, perfect answers
    short = tmp_path / "short"
    short.mkdir()
    ft = [_run(short, "ft-none", s, _noisy(2)) for s in (0, 1)]  # the first 20 only
    for r in ft:
        folder = r.directory
        for name in ("scores.jsonl", "predictions.jsonl"):
            lines = (tmp_path / folder / name).read_text().splitlines()[:n]
            (tmp_path / folder / name).write_text("".join(line + "\n" for line in lines))
    ft = [dataclasses.replace(r, n=n) for r in ft]
    same = [_run(tmp_path, "ft-compressed", s, REFS, tokens=[600] * len(REFS)) for s in (0, 1)]
    full = _run(short, "ft-full", 0, REFS, tokens=[1000] * len(REFS))
    cut = tmp_path / full.directory / "predictions.jsonl"
    cut.write_text("".join(line + "\n" for line in cut.read_text().splitlines()[:n]))
    records = {r["id"]: r for r in evaluate_claims(long_pi + ft + same + [full], ["nl2bash"])}
    a, b, h1 = records["a"], records["b"], records["h1"]
    metric = get_task("nl2bash").metric
    first = [json.loads(line) for line in (tmp_path / ft[0].directory / "scores.jsonl").read_text().splitlines()]
    expected = 100.0 - metric.aggregate(first)["bleu"]  # promptintern is perfect: 100 on every subset
    assert a["n_test"] == n and a["diff"] == pytest.approx(expected) and a["a_value"] == pytest.approx(100.0)
    assert b["n_test"] == len(REFS) and b["diff"] == pytest.approx(0.0)
    assert h1["n_test"] == n and h1["diff"] == pytest.approx(95.0)


def test_verdict_rules():
    greater = ClaimSpec(id="x", claim="a > b", kind="greater", a="p", b="q")
    assert [verdict(greater, *ci) for ci in ((1, 3), (-3, -1), (-1, 3))] == ["reproduced", "contradicted", "inconclusive"]
    eq = ClaimSpec(id="y", claim="a ≈ b", kind="equivalent", a="p", b="q", margin=5)
    assert [verdict(eq, *ci) for ci in ((-2, 3), (6, 9), (-4, 7))] == ["reproduced", "contradicted", "inconclusive"]
    with pytest.raises(ValueError, match="margin"):
        ClaimSpec(id="z", claim="", kind="equivalent", a="p", b="q")
    assert [c.id for c in load_claims()][:3] == ["a", "b", "c"] and all(c.primary for c in load_claims()[:3])


def test_combine_averages_seeds_and_resamples_them(tmp_path):
    rows = [_run(tmp_path, "promptintern", 0, REFS), _run(tmp_path, "promptintern", 1, _noisy(2))]
    cell = combine(rows)
    assert cell.value == pytest.approx((rows[0].value + rows[1].value) / 2)
    assert cell.ci_lo < rows[1].value + 1 and cell.ci_hi > rows[0].value - 1  # the seed spread is inside
    assert combine(rows[:1]) is rows[0]


def test_combine_takes_the_server_latency_of_the_measured_seed(tmp_path):
    measured = dataclasses.replace(_run(tmp_path, "promptintern", 0, REFS), latency_s_mean=0.5, ttft_s_mean=0.1,
                                   tpot_s_mean=0.01, latency_source="server")  # fmt: skip
    other = dataclasses.replace(_run(tmp_path, "promptintern", 1, REFS), latency_s_mean=3.0)  # harness timing
    cell = combine([measured, other])
    assert (cell.latency_s_mean, cell.ttft_s_mean, cell.latency_source) == (0.5, 0.1, "server")


def test_records_get_the_task_groups_and_a_single_seed_row_its_clustered_interval(tmp_path, monkeypatch):
    from promptintern.harness import seeds

    # ten commands, each asked three times (ids i, i + 10, i + 20) and answered alike every time
    row = _run(tmp_path, "promptintern", 0, ["echo wrong" if i % 10 % 4 == 0 else r for i, r in enumerate(REFS)])
    monkeypatch.setattr(seeds, "split_groups", lambda task: {})
    assert combine([row]) is row  # records without groups: the stored row as it is
    plain = seeds.instance_rows(row)
    assert "group" not in plain[0]
    monkeypatch.setattr(seeds, "split_groups", lambda task: {str(i): f"g{i % 10}" for i in range(30)})
    records = seeds.instance_rows(row)
    assert [r["group"] for r in records[:12]] == [f"g{i % 10}" for i in range(12)]
    clustered = combine([row])
    metric = get_task("nl2bash").metric
    assert (clustered.ci_lo, clustered.ci_hi) == metric.interval(records)
    lo, hi = metric.interval(plain)
    assert clustered.ci_hi - clustered.ci_lo > 1.2 * (hi - lo)  # 10 independent commands, not 30
