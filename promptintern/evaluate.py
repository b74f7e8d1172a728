"""Score a predictions file (or the dataset's own references, ``oracle``) with a task's metric."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from promptintern.predictions import read_predictions
from promptintern.tasks import Instance, Task, TaskScore


def load_predictions(
    task: Task, instances: Sequence[Instance], path: str | Path, *, extract: bool = False, partial: bool = False
) -> dict[str, str]:
    """Validated ``{id: prediction}`` for a split's ``instances``.

    ``extract`` applies the task's answer extractor; ``partial`` accepts a file covering only some ids.
    """
    records = read_predictions(path, instances, allow_missing=partial)
    return {tid: task.extract(r.prediction) if extract else r.prediction for tid, r in records.items()}


def oracle_predictions(instances: Sequence[Instance]) -> dict[str, str]:
    """The gold answers, keyed by id."""
    return {inst.id: inst.reference for inst in instances}


def evaluate(
    task: Task, instances: Sequence[Instance], predictions: dict[str, str], *, partial: bool = False, **options: Any
) -> TaskScore:
    """Score ``predictions`` (``{id: answer}``) on ``instances`` (only the predicted ids when ``partial``)."""
    if partial:
        instances = [i for i in instances if i.id in predictions]
    return task.score(instances, predictions, **options)


#: Per-instance keys and the value a fully correct row has (MBPP pass, NL2F EM on 0/1, NL2Bash BLEU 0-100).
PERFECT = {"passed": True, "em": 1.0, "sentence_bleu": 100.0}


def failures(score: TaskScore) -> list[dict[str, Any]]:
    """Per-instance rows that did not get full marks."""
    out = []
    for row in score.per_instance:
        key = next(k for k in PERFECT if k in row)
        if row[key] != PERFECT[key] and not (
            isinstance(row[key], float) and abs(row[key] - PERFECT[key]) < 1e-9
        ):
            out.append(row)
    return out


def confidence_interval(score: TaskScore, **kwargs: Any) -> tuple[float, float]:
    """95 % bootstrap interval of the task's primary metric from its per-instance rows."""
    from promptintern.stats import corpus_bleu_ci, mean_ci

    rows = score.per_instance
    if rows and "sentence_bleu" in rows[0]:
        return corpus_bleu_ci([r["prediction"] for r in rows], [r["reference"] for r in rows], **kwargs)
    key = "passed" if rows and "passed" in rows[0] else "em"
    return mean_ci([100.0 * float(r[key]) for r in rows], **kwargs)
