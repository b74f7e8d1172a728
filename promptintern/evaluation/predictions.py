"""Predictions files: JSONL lines ``{"task_id": ..., "prediction": ...}`` (+ optional fields).

Reading validates every line and reports *all* problems at once, each naming file, line and field:
non-UTF-8 bytes, invalid JSON, missing or mistyped fields, duplicate ids, ids unknown to the split and
ids of the split with no prediction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptintern.io import atomic_write_text
from promptintern.tasks.base import Instance

OPTIONAL_NUMBERS = ("input_tokens", "output_tokens", "latency_s")
MAX_LISTED = 50


class PredictionsError(ValueError):
    """A predictions file failed validation; ``problems`` lists every issue found."""

    def __init__(self, path: Path, problems: list[str]):
        self.path = path
        self.problems = problems
        shown = problems[:MAX_LISTED]
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        super().__init__(f"{path}: {len(problems)} problem(s):\n  " + "\n  ".join(shown) + more)


@dataclass
class Prediction:
    task_id: str
    prediction: str
    line: int
    extra: dict[str, Any] = field(default_factory=dict)


def _check_record(rec: Any, where: str, problems: list[str]) -> Prediction | None:
    before = len(problems)
    if not isinstance(rec, dict):
        problems.append(f"{where}: expected a JSON object")
        return None
    tid = rec.get("task_id")
    if tid is None:
        problems.append(f"{where}: field 'task_id' is missing")
    elif isinstance(tid, bool) or not isinstance(tid, (str, int)):
        problems.append(f"{where}: field 'task_id' must be a string or integer")
    pred = rec.get("prediction")
    if "prediction" not in rec:
        problems.append(f"{where}: field 'prediction' is missing")
    elif not isinstance(pred, str):
        problems.append(f"{where}: field 'prediction' must be a string")
    for key in OPTIONAL_NUMBERS:
        val = rec.get(key)
        if val is not None and (isinstance(val, bool) or not isinstance(val, (int, float)) or val < 0):
            problems.append(f"{where}: field {key!r} must be a non-negative number")
    if len(problems) > before:
        return None
    extra = {k: v for k, v in rec.items() if k not in ("task_id", "prediction")}
    return Prediction(str(tid), pred, 0, extra)


def read_predictions(
    path: str | Path, instances: Sequence[Instance] | None = None, *, allow_missing: bool = False
) -> dict[str, Prediction]:
    """Parse and validate ``path``; with ``instances``, ids must belong to the split and (unless
    ``allow_missing``) cover it."""
    path = Path(path)
    problems: list[str] = []
    found: dict[str, Prediction] = {}
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                problems.append(f"{where}: not valid UTF-8 (byte {exc.start})")
                continue
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})")
                continue
            pred = _check_record(rec, where, problems)
            if pred is None:
                continue
            pred.line = lineno
            if pred.task_id in found:
                problems.append(
                    f"{where}: field 'task_id': duplicate id {pred.task_id!r} (first on line {found[pred.task_id].line})"
                )
                continue
            found[pred.task_id] = pred
    if instances is not None:
        known = {i.id for i in instances}
        for pred in found.values():
            if pred.task_id not in known:
                problems.append(
                    f"{path}:{pred.line}: field 'task_id': unknown id {pred.task_id!r} for this split"
                )
        missing = [] if allow_missing else [i.id for i in instances if i.id not in found]
        if missing:
            shown = ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else "")
            problems.append(f"{path}: {len(missing)} id(s) of the split have no prediction: {shown}")
    if problems:
        raise PredictionsError(path, problems)
    return found


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Write records as JSONL atomically (nothing is replaced if producing a record fails)."""
    atomic_write_text(path, "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records))
