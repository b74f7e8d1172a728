"""NL2Formula exact match: formulas compared after lower-casing and removing all whitespace."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from promptintern.tasks.base import Instance, TaskScore

SIGNATURE = "nl2f-em|norm=lower+strip-all-whitespace|raw=strip"


def normalise(formula: str) -> str:
    """NL2Formula's comparison form: lower case, no whitespace anywhere."""
    return "".join(formula.lower().split())


def exact_match(
    instances: Sequence[Instance], predictions: Mapping[str, str], task: str = "nl2f"
) -> TaskScore:
    """``em`` (normalised) and ``em_raw`` (exact after trimming the ends), both 0-100."""
    rows = []
    for inst in instances:
        if inst.id not in predictions:
            raise ValueError(f"no prediction for instance {inst.id!r}")
        pred = predictions[inst.id] or ""
        rows.append(
            {
                "id": inst.id,
                "prediction": pred,
                "reference": inst.reference,
                "em": float(normalise(pred) == normalise(inst.reference)),
                "em_raw": float(pred.strip() == inst.reference.strip()),
            }
        )
    n = len(rows)
    metrics = {key: (100.0 * sum(r[key] for r in rows) / n if n else 0.0) for key in ("em", "em_raw")}
    return TaskScore(task=task, metrics=metrics, per_instance=rows, primary="em", signature=SIGNATURE)
