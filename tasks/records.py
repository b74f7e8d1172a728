"""A folder task's data files (JSONL or CSV): records read with their line numbers and checked against the
task's field map and query format; every problem names the file, line and field."""

from __future__ import annotations

import csv
import json
from functools import cache
from pathlib import Path
from typing import Any

#: Problems reported per file before the rest are summarised (a wrong field map would repeat on every line).
MAX_PROBLEMS = 20


def _rows(path: Path) -> tuple[list[tuple[int, Any]], list[str]]:
    """``(line, record)`` pairs and parse problems."""
    rows, problems = [], []
    if not path.is_file():
        return [], [f"{path}: file not found"]
    with open(path, encoding="utf-8", newline="") as fh:
        if path.suffix == ".csv":
            reader = csv.DictReader(fh)
            for rec in reader:
                rows.append((reader.line_num, rec))
        else:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rows.append((lineno, json.loads(line)))
                except json.JSONDecodeError as exc:
                    problems.append(f"{path}:{lineno}: invalid JSON ({exc.msg})")
    return rows, problems


def query_text(spec, record: dict[str, Any]) -> str:
    """The query as the prompt shows it: ``query_format`` over the record's columns and the role names."""
    # the id/query/answer roles; the group column is no role of the prompt (a data column "group" stays data)
    columns = spec.fields.model_dump(exclude={"group"})
    roles = {role: record.get(column) for role, column in columns.items() if column}
    return spec.query_format.format(**(record | roles)).strip()


def _check(path: Path, lineno: int, rec: Any, spec, seen: dict[str, int], split: str) -> list[str]:
    where = f"{path}:{lineno}"
    if not isinstance(rec, dict):
        return [f"{where}: expected a JSON object"]
    out = []
    for role, column in spec.fields.model_dump().items():
        if column is None or (role == "group" and split != "test"):  # groups matter for the test intervals only
            continue
        value = rec.get(column)
        if value is None or (isinstance(value, str) and not value.strip() and role != "id"):
            out.append(f"{where}: field {column!r} ({role}) is missing or empty")
        elif not isinstance(value, str | int | float):
            out.append(f"{where}: field {column!r} ({role}) must be a string or number")
    if out:
        return out
    try:
        query_text(spec, rec)
    except (KeyError, IndexError, ValueError) as exc:
        out.append(f"{where}: query_format {spec.query_format!r}: {type(exc).__name__} {exc}")
    if spec.fields.id is not None:
        tid = str(rec[spec.fields.id])
        if tid in seen:
            out.append(f"{where}: field {spec.fields.id!r}: id {tid!r} repeats line {seen[tid]}")
        seen[tid] = lineno
    return out


def check_records(path: Path, spec, split: str) -> list[str]:
    """Every problem of one data file (capped at :data:`MAX_PROBLEMS`, then counted)."""
    rows, problems = _rows(path)
    seen: dict[str, int] = {}
    for lineno, rec in rows:
        problems += _check(path, lineno, rec, spec, seen, split)
    if not rows and not problems:
        problems.append(f"{path}: split {split!r} has no records")
    if len(problems) > MAX_PROBLEMS:
        problems = problems[:MAX_PROBLEMS] + [f"{path}: ... and {len(problems) - MAX_PROBLEMS} more problem(s)"]
    return problems


@cache
def read_records(path: Path, mtime_ns: int) -> tuple[tuple[str, dict[str, Any]], ...]:
    """``(id, record)`` of a checked data file (cached per file version); the id is the line number when the
    task has no id field. Raises ``ValueError`` (file, line, field) on the first bad record."""
    from promptintern.tasks.spec import TaskFolderError

    rows, problems = _rows(path)
    if problems:
        raise TaskFolderError(problems[0])
    return tuple((str(lineno), rec) for lineno, rec in rows)


def load_records(path: Path, spec, split: str) -> list[tuple[str, dict[str, Any]]]:
    """Checked ``(id, record)`` pairs of ``split``; the first problem raises :class:`TaskFolderError`."""
    from promptintern.tasks.spec import TaskFolderError

    rows = read_records(path, path.stat().st_mtime_ns)
    seen: dict[str, int] = {}
    out = []
    for lineno, rec in rows:
        problems = _check(path, int(lineno), rec, spec, seen, split)
        if problems:
            raise TaskFolderError(problems[0])
        tid = str(rec[spec.fields.id]) if spec.fields.id is not None else lineno
        out.append((tid, rec))
    return out
