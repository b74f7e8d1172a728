"""Loader for the official NL2Formula JSON release (Zhao et al., 2024).

Each split file is a JSON list of tables::

    {"TableName": str, "Table": grid, "t5Formulas": [{"Question", "Formula", "Formula2", "Level"}, ...]}

``Table`` is an NL2Formula grid (see :mod:`table`).  ``Formula2`` is the target formula (the release's own
training code uses it); a leading ``=`` is dropped so references match extracted predictions.  The data
is not bundled: point ``$PROMPTINTERN_NL2FORMULA`` (or the task's ``path`` option) at the directory that
holds the split files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptintern.tasks.nl2f.table import check_grid, make_grid

ENV_VAR = "PROMPTINTERN_NL2FORMULA"
#: Accepted file names per split, first match wins (the release ships ``valid.json``).
SPLIT_FILES = {
    "train": ("train.json",),
    "validation": ("validation.json", "valid.json", "val.json", "dev.json"),
    "test": ("test.json",),
}


@dataclass(frozen=True)
class Record:
    """One NL2Formula question with its table."""

    id: str
    question: str
    formula: str
    level: str
    table_name: str
    grid: list[list[str]]


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The release directory: ``path`` if given, else ``$PROMPTINTERN_NL2FORMULA``."""
    chosen = path if path is not None else os.environ.get(ENV_VAR)
    if not chosen:
        raise FileNotFoundError(
            f"NL2Formula data not configured: set ${ENV_VAR} to the directory holding the release's "
            "train/valid/test JSON files, or pass path=... with source='nl2formula'"
        )
    directory = Path(chosen).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(f"NL2Formula data directory {directory} does not exist")
    return directory


def split_file(directory: Path, split: str) -> Path:
    """The JSON file of ``split`` in ``directory``."""
    names = SPLIT_FILES.get(split)
    if names is None:
        raise ValueError(f"NL2Formula has no split {split!r}; choose from {', '.join(SPLIT_FILES)}")
    for name in names:
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"no NL2Formula {split} file in {directory}; expected one of {', '.join(names)}")


def _text(value: Any, where: str, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, (str, int, float)) or (required and not str(value).strip()):
        raise ValueError(f"{where}: must be a non-empty string, got {value!r}")
    return str(value).strip()


def parse_tables(data: Any, source: str, split: str) -> list[Record]:
    """Validate a parsed split file and flatten it into records; errors name file, table and field."""
    if not isinstance(data, list):
        raise ValueError(f"{source}: expected a JSON list of tables, got {type(data).__name__}")
    records = []
    for t, table in enumerate(data):
        where = f"{source}: table {t}"
        if not isinstance(table, dict):
            raise ValueError(f"{where}: expected an object with TableName, Table and t5Formulas")
        name = _text(table.get("TableName"), f"{where}: field 'TableName'")
        where = f"{source}: table {t} ({name!r})"
        problem = check_grid(table.get("Table"))
        if problem:
            raise ValueError(f"{where}: field 'Table': {problem}")
        grid = table["Table"]
        grid = make_grid(grid[1][1:], (row[1:] for row in grid[2:]))
        formulas = table.get("t5Formulas")
        if not isinstance(formulas, list):
            raise ValueError(f"{where}: field 't5Formulas' must be a list, got {type(formulas).__name__}")
        for f, item in enumerate(formulas):
            field = f"{where}: field 't5Formulas[{f}]"
            if not isinstance(item, dict):
                raise ValueError(f"{field}' must be an object")
            question = _text(item.get("Question"), f"{field}.Question'")
            formula = _text(item.get("Formula2"), f"{field}.Formula2'").lstrip("=").strip()
            if not formula:
                raise ValueError(f"{field}.Formula2' is only '='")
            level = _text(item.get("Level"), f"{field}.Level'", required=False)
            records.append(Record(f"nl2formula-{split}-{t}-{f}", question, formula, level, name, grid))
    return records


def load_split(split: str, path: str | os.PathLike | None = None) -> list[Record]:
    """All records of ``split`` from the release directory (see :func:`data_dir`)."""
    file = split_file(data_dir(path), split)
    try:
        with open(file, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file}: not valid JSON: {exc}") from exc
    return parse_tables(data, str(file), split)
