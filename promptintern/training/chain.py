"""Stage keys and step counts of a progressive run.

A stage's adapter is determined by the run's settings, its own dataset, its index (seed + i - 1) and the stage
before it, so its key is a chain: ``key_i = H(settings, method settings, i, dataset_i, key_{i-1}, schedule_i)``.
Two experiments whose leading stages have the same keys (PromptIntern, its Table 5 / 6 variants and ft-full all
begin with the full template and k shots) train those stages once and share the checkpoint.

``schedule_i`` is what the optimizer does in stage i. ``restart``: a fresh AdamW and LR schedule over the
stage's own steps. ``continuous``: one AdamW (its moments carried from stage to stage) and one LR schedule over
the steps of ALL stages, stage i running its slice ``[offset_i, offset_i + steps_i)``; the slice and the total
enter the key, so a run with more stages or bigger later stages does not share a stage whose LR differed.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


def stage_steps(
    examples: int, *, batch_size: int, accumulation: int, epochs: float, world_size: int = 1
) -> int:
    """Optimizer steps of a stage, as the Trainer counts them (batches per process, rounded up to whole
    accumulation groups, times epochs, rounded up; at least 1)."""
    batches = math.ceil(examples / (batch_size * world_size))
    per_epoch = max(math.ceil(batches / accumulation), 1)
    return max(math.ceil(epochs * per_epoch), 1)


@dataclass(frozen=True)
class StagePlan:
    """Stage ``index`` (1-based): its key, its optimizer steps and the LR-schedule slice it runs."""

    index: int
    key: str
    steps: int
    offset: int
    total: int


def _sha256(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def plan_stages(
    config: Mapping, method: Mapping | None, datasets: Sequence[str], steps: Sequence[int], optimizer: str
) -> list[StagePlan]:
    """The chain of stage keys. ``config``: the fingerprinted training config; ``method``: the method's own
    settings; ``datasets``: each stage's dataset hash; ``steps``: each stage's optimizer steps."""
    if optimizer not in ("continuous", "restart"):
        raise ValueError(f"optimizer must be 'continuous' or 'restart', got {optimizer!r}")
    total = sum(steps)
    plans, previous, offset = [], None, 0
    for index, (dataset, n) in enumerate(zip(datasets, steps, strict=True), 1):
        schedule = {"offset": offset, "total": total} if optimizer == "continuous" else {"total": n}
        key = _sha256(
            {"config": dict(config), "method": method, "stage": index, "dataset": dataset,
             "previous": previous, "schedule": schedule, "steps": n}
        )  # fmt: skip
        plans.append(StagePlan(index, key, n, offset if optimizer == "continuous" else 0, schedule["total"]))
        previous, offset = key, offset + n
    return plans
