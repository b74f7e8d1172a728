"""Rows of one configuration trained with several seeds: their per-instance scores and one combined row.

The store holds one row per training seed (``seed`` is part of its key). A table cell or a claim shows the
seed-averaged metric with an interval that resamples seeds and test instances
(:meth:`promptintern.tasks.metrics.Metric.seeded_interval`), read from each run's ``scores.jsonl``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from promptintern.harness.store import RunRow

log = logging.getLogger(__name__)

SCORES_FILE = "scores.jsonl"
#: Table 8's server measurement: taken whole from the seed that was measured (one per configuration).
_LATENCY = ("latency_s_mean", "ttft_s_mean", "tpot_s_mean", "latency_output_tokens_mean", "latency_n", "latency_source")
#: Numeric row fields averaged over seeds in a combined row (the rest are taken from the first seed's row).
_AVERAGED = (
    "input_tokens_mean", "output_tokens_mean", "tau_all", "compression_x", "tau_full", "rate_achieved",
    "latency_s_mean", "cost_usd_per_instance",
    "input_tokens_cl100k_mean", "output_tokens_cl100k_mean", "cost_ft_gpt35_usd_per_instance",
    "cost_ft_gpt4_usd_per_instance", "wall_s",
)  # fmt: skip


def instance_rows(row: RunRow) -> list[dict[str, Any]] | None:
    """The per-instance scores of a stored row's run (``<directory>/scores.jsonl``), None when unavailable.
    Rows scored before per-instance rows carried the instance's ``group`` get it from the task's test split."""
    if row.status != "ok" or not row.directory:
        return None
    path = Path(row.directory) / SCORES_FILE
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError):
        return None
    if rows and any("group" not in r for r in rows):
        labels = split_groups(row.task)
        for r in rows:
            if "group" not in r and r.get("id") in labels:
                r["group"] = labels[r["id"]]
    return rows


@functools.cache
def split_groups(task: str) -> dict[str, str]:
    """id -> ``group`` of the task's test instances that have one (paraphrases of one question: the
    bootstrap resamples them together); empty when the task has none or its data cannot be read here."""
    from promptintern.tasks import get_task

    try:
        instances = get_task(task).load("test")
    except Exception as exc:  # any loader failure: instances are then resampled one by one
        log.warning("no instance groups for %s (its test split could not be read: %s)", task, exc)
        return {}
    return {i.id: str(i.group) for i in instances if getattr(i, "group", None) is not None}


def on_shared_instances(runs: Sequence[Sequence[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
    """Each run's per-instance rows restricted to the test instances every run has, in the first run's order
    (a sizing may give some rows more test instances than others: they are compared on the ones shared)."""
    if not runs:
        return []
    shared = set.intersection(*({r["id"] for r in run} for run in runs))
    order = [r["id"] for r in runs[0] if r["id"] in shared]
    out = []
    for run in runs:
        by_id = {r["id"]: r for r in run}
        out.append([by_id[i] for i in order])
    return out


def metric_for(task: str):
    """The task's metric object."""
    from promptintern.tasks import get_task

    return get_task(task).metric


def seeds_of(rows: Sequence[RunRow]) -> list[int]:
    return sorted({r.seed for r in rows})


def combine(rows: Sequence[RunRow]) -> RunRow:
    """One row for the ok rows of a configuration over seeds: the metric averaged over seeds, its interval
    over seeds and instances (the stored per-seed interval when there is one seed; none when the seeds' records
    are missing or cover different test instances), numeric columns averaged, except Table 8's latency, which
    comes whole from the seed measured through the server.
    Rows that are not ok are ignored unless none is ok (then the first row is returned)."""
    ok = sorted((r for r in rows if r.status == "ok"), key=lambda r: r.seed)
    if not ok:
        return rows[0]
    if len(ok) == 1:
        return _clustered(ok[0])
    first = ok[0]
    out: dict[str, Any] = {}
    for name in ("value", *_AVERAGED):
        values = [getattr(r, name) for r in ok]
        out[name] = None if any(v is None for v in values) else sum(values) / len(values)
    measured = next((r for r in ok if r.latency_source == "server"), None)
    if measured is not None:  # never average a server measurement with another seed's harness timing
        out |= {name: getattr(measured, name) for name in _LATENCY}
    out["ci_lo"] = out["ci_hi"] = None
    per_seed = [instance_rows(r) for r in ok]
    if all(p for p in per_seed):
        try:
            out["ci_lo"], out["ci_hi"] = metric_for(first.task).seeded_interval(per_seed)
        except ValueError:  # the seeds were scored on different test instances: no paired interval
            pass
    return dataclasses.replace(first, **out)


def _clustered(row: RunRow) -> RunRow:
    """``row`` with its interval recomputed from its per-instance records when they come in groups (clusters
    resampled; a run stored before per-instance rows carried groups holds an instance-by-instance interval)."""
    from promptintern.tasks.metrics import groups

    records = instance_rows(row)
    if not records or groups(records) is None:
        return row
    lo, hi = metric_for(row.task).interval(records)
    return dataclasses.replace(row, ci_lo=lo, ci_hi=hi)


__all__ = ["combine", "instance_rows", "metric_for", "seeds_of", "split_groups"]
