"""Predictions files: JSONL lines ``{"task_id": ..., "prediction": ...}`` (+ optional fields).

Reading validates every line and reports *all* problems at once, each naming file, line and field:
non-UTF-8 bytes, invalid JSON, missing or mistyped fields, duplicate ids, ids unknown to the split and
ids of the split with no prediction.

Predictions files come from strangers (``promptintern submit``), so reading is bounded: the file's size is
checked (stat, then while reading) against :data:`MAX_PREDICTIONS_FILE_BYTES`, each line is read with a
length limit before it is parsed, and each ``prediction`` is checked against :data:`MAX_PREDICTION_BYTES`
of UTF-8. Both caps are parameters of :func:`read_predictions`, whose defaults the environment variables
``PROMPTINTERN_MAX_PREDICTION_BYTES`` and ``PROMPTINTERN_MAX_PREDICTIONS_FILE_BYTES`` set (read at call time).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from promptintern.io import atomic_write_text
from promptintern.tasks.base import Instance

OPTIONAL_NUMBERS = ("input_tokens", "output_tokens", "latency_s")
MAX_LISTED = 50
#: Cap on one prediction, in bytes of UTF-8. The largest reference answer of the three paper tasks is
#: 1,282 bytes (MBPP test; NL2Bash 532 bytes in train, NL2F 93), measured over every split of the suite's
#: data, so 64 KiB leaves a verbose model's answer (thousands of tokens) 50 times that room.
MAX_PREDICTION_BYTES = 64 << 10
#: Cap on a predictions file: 64 MiB holds the largest split (NL2Bash train, 8,088 lines) at ~8 KiB a line.
MAX_PREDICTIONS_FILE_BYTES = 64 << 20
PREDICTION_BYTES_ENV = "PROMPTINTERN_MAX_PREDICTION_BYTES"
FILE_BYTES_ENV = "PROMPTINTERN_MAX_PREDICTIONS_FILE_BYTES"
#: A line may take ``LINE_FACTOR`` times the prediction cap plus ``LINE_EXTRA_BYTES``: JSON escapes
#: (``\u001f``) take up to 6 bytes per byte of the string, and the line holds the id and optional fields too.
LINE_FACTOR = 8
LINE_EXTRA_BYTES = 4 << 10


class PredictionsError(ValueError):
    """A predictions file failed validation; ``problems`` lists every issue found."""

    def __init__(self, path: Path, problems: list[str]):
        self.path = path
        self.problems = problems
        shown = problems[:MAX_LISTED]
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        super().__init__(f"{path}: {len(problems)} problem(s):\n  " + "\n  ".join(shown) + more)


def byte_limit(env: str, default: int, value: int | None = None) -> int:
    """A size cap: ``value`` when given, else ``$env`` when set (and not empty), else ``default``.

    Raises :class:`ValueError` with a one-line message when the cap is not a positive whole number."""
    if value is None:
        raw = os.environ.get(env, "").strip()
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value <= 0:
            raise ValueError(f"environment variable {env}={raw!r} is not a positive whole number of bytes")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"size cap {value!r} ({env}) is not a positive whole number of bytes")
    return value


def prediction_limits(
    max_prediction_bytes: int | None = None, max_file_bytes: int | None = None
) -> tuple[int, int]:
    """``(per-prediction cap, per-file cap)`` in bytes: each argument, else its environment variable, else
    its default."""
    return (
        byte_limit(PREDICTION_BYTES_ENV, MAX_PREDICTION_BYTES, max_prediction_bytes),
        byte_limit(FILE_BYTES_ENV, MAX_PREDICTIONS_FILE_BYTES, max_file_bytes),
    )


def file_size_problem(where: str | Path, size: int, cap: int) -> str | None:
    """The problem of a ``size``-byte predictions file over ``cap`` (``None`` within it)."""
    if size <= cap:
        return None
    return f"{where}: file is {size:,} bytes, over the {cap:,}-byte cap ({FILE_BYTES_ENV})"


@dataclass
class Prediction:
    task_id: str
    prediction: str
    line: int
    extra: dict[str, Any] = field(default_factory=dict)


def _check_record(rec: Any, where: str, problems: list[str], max_bytes: int) -> Prediction | None:
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
        if val is not None and (
            isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val) or val < 0
        ):
            problems.append(f"{where}: field {key!r} must be a non-negative number")
    for key, val in rec.items():
        try:  # a lone surrogate escape ("\ud800") parses but can be neither hashed nor stored as UTF-8
            json.dumps([key, val], ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            problems.append(f"{where}: field {key!r}: a lone surrogate escape (\\ud800-\\udfff) is not text")
    if len(problems) > before:
        return None
    size = len(pred.encode("utf-8"))
    if size > max_bytes:
        problems.append(
            f"{where}: field 'prediction' is {size:,} bytes, over the {max_bytes:,}-byte cap "
            f"({PREDICTION_BYTES_ENV})"
        )
        return None
    extra = {k: v for k, v in rec.items() if k not in ("task_id", "prediction")}
    return Prediction(str(tid), pred, 0, extra)


def _lines(fh: BinaryIO, line_cap: int) -> Iterator[tuple[int, bytes | None, int]]:
    """``(line number, bytes, size)`` of each line; the bytes are ``None`` for a line over ``line_cap``,
    which is skipped in bounded chunks, never held whole."""
    lineno = 0
    while raw := fh.readline(line_cap + 1):
        lineno += 1
        if len(raw) <= line_cap or raw.endswith(b"\n"):
            yield lineno, raw, len(raw)
            continue
        size = len(raw)
        while chunk := fh.readline(1 << 20):
            size += len(chunk)
            if chunk.endswith(b"\n"):
                break
        yield lineno, None, size


def read_predictions(
    path: str | Path,
    instances: Sequence[Instance] | None = None,
    *,
    allow_missing: bool = False,
    max_prediction_bytes: int | None = None,
    max_file_bytes: int | None = None,
) -> dict[str, Prediction]:
    """Parse and validate ``path``; with ``instances``, ids must belong to the split and (unless
    ``allow_missing``) cover it. A file over ``max_file_bytes`` is refused before anything is parsed, a
    prediction over ``max_prediction_bytes`` of UTF-8 is a problem of its line (defaults:
    :data:`MAX_PREDICTIONS_FILE_BYTES`, :data:`MAX_PREDICTION_BYTES`, unless the environment variables
    ``PROMPTINTERN_MAX_PREDICTIONS_FILE_BYTES`` / ``PROMPTINTERN_MAX_PREDICTION_BYTES`` set them)."""
    path = Path(path)
    try:
        pred_cap, file_cap = prediction_limits(max_prediction_bytes, max_file_bytes)
    except ValueError as exc:
        raise PredictionsError(path, [str(exc)]) from None
    line_cap = LINE_FACTOR * pred_cap + LINE_EXTRA_BYTES
    problems: list[str] = []
    found: dict[str, Prediction] = {}
    with open(path, "rb") as fh:
        over = file_size_problem(path, os.fstat(fh.fileno()).st_size, file_cap)
        if over:
            raise PredictionsError(path, [over])
        total = 0
        for lineno, raw, size in _lines(fh, line_cap):
            where = f"{path}:{lineno}"
            total += size
            if total > file_cap:  # the file grew, or is not a regular file
                problems.append(f"{path}: more than {file_cap:,} bytes read, over the cap ({FILE_BYTES_ENV})")
                break
            if raw is None:
                problems.append(
                    f"{where}: line is {size:,} bytes, too long for field 'prediction' under its "
                    f"{pred_cap:,}-byte cap ({PREDICTION_BYTES_ENV}): a line holds at most {line_cap:,}"
                )
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                problems.append(f"{where}: not valid UTF-8 (byte {exc.start})")
                continue
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                # the position on the line (the trailing newline is stripped, so a truncated line's error
                # points at its end instead of "line 2, column 1")
                end = ", the end of the line: truncated?" if exc.pos >= len(line) else ""
                at = "" if exc.msg.endswith(" at") else " at"  # "Unterminated string starting at"
                problems.append(f"{where}: invalid JSON ({exc.msg}{at} column {exc.pos + 1}{end})")
                continue
            except (ValueError, RecursionError) as exc:  # integers of over 4300 digits, deep nesting
                reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).split(";")[0]
                problems.append(f"{where}: invalid JSON ({reason})")
                continue
            pred = _check_record(rec, where, problems, pred_cap)
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
