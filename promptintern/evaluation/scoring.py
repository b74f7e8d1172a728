"""Score a predictions file (or the dataset's own references, ``oracle``) with a task's metric."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from promptintern.errors import check_input_file
from promptintern.evaluation.predictions import read_predictions
from promptintern.tasks import Instance, Task, TaskScore


def load_predictions(
    task: Task, instances: Sequence[Instance], path: str | Path, *, extract: bool = False, partial: bool = False
) -> dict[str, str]:
    """Validated ``{id: prediction}`` for a split's ``instances``.

    ``extract`` applies the task's answer extractor; ``partial`` accepts a file covering only some ids. A
    missing file or a directory raises :class:`~promptintern.errors.UserError`.
    """
    check_input_file(path, "predictions file (JSONL)")
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


def failures(task: Task, score: TaskScore) -> list[dict[str, Any]]:
    """Per-instance rows that did not get full marks under the task's metric."""
    return [row for row in score.per_instance if task.metric.failed(row)]


def confidence_interval(task: Task, score: TaskScore, **kwargs: Any) -> tuple[float, float]:
    """95 % bootstrap interval of the primary metric, computed by the task's metric from the per-instance rows."""
    return task.metric.interval(score.per_instance, **kwargs)
