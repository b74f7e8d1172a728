"""A task folder's declaration: ``task.yaml`` (what the task is) and ``template.yaml`` (its recurring prompt).

Both are validated as a whole: :func:`read_task_folder` collects every problem (file, line, field) and raises
one :class:`TaskFolderError` listing them all, so a user fixes a folder in one pass.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

TASK_FILE = "task.yaml"
DATA_SUFFIXES = (".jsonl", ".csv")


class TaskFolderError(ValueError):
    """A task folder is invalid; the message lists every problem as ``file:line: field: problem``."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class FieldMap(_Strict):
    """Which column of a data record holds the id (None: the record's line number), query and answer, and
    optionally the group: records sharing a group (e.g. paraphrases of one question) are resampled together by
    the bootstrap intervals."""

    id: str | None = "id"
    query: str = "query"
    answer: str = "answer"
    group: str | None = None


class TaskFile(_Strict):
    """``task.yaml``. Built-in tasks name their Python class (``class``); folder tasks give ``data``."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    title: str | None = None
    display_name: str | None = None
    description: str = ""
    python_class: str | None = Field(None, alias="class")
    data: dict[str, str] = Field(default_factory=dict)
    fields: FieldMap = FieldMap()
    query_format: str = "{query}"
    metric: str | dict[str, Any]
    shots: int = Field(5, ge=0)
    max_new_tokens: int = Field(256, gt=0)
    stop: list[str] = Field(default_factory=list)
    #: ``answer_format`` (the default): the text inside the template's answer format; or ``module:function``.
    extract: str = "answer_format"

    @field_validator("data")
    @classmethod
    def _data_files(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [f for f in value.values() if not f.endswith(DATA_SUFFIXES)]
        if bad:
            raise ValueError(f"data files must end with {' or '.join(DATA_SUFFIXES)}: {', '.join(bad)}")
        return value

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: list[str]) -> list[str]:
        if any(not s for s in value):
            raise ValueError("stop strings must not be empty")
        return value

    @property
    def identity(self) -> dict[str, Any]:
        """What changes a task's results, for run keys: not the prose fields, nor the group column (it changes
        only the intervals, which tables and claims recompute from the per-instance scores and the split)."""
        prose = {"title": True, "display_name": True, "description": True}
        return self.model_dump(exclude=prose | {"fields": {"group"}}, by_alias=True)


class DocumentsRef(_Strict):
    header: str = ""
    file: str


class TemplateFile(_Strict):
    """``template.yaml``: the recurring prompt (instruction, API documents) and the answer's format."""

    instruction: str = Field(min_length=1)
    documents: DocumentsRef | None = None
    answer_format: str = "{answer}"

    @field_validator("answer_format")
    @classmethod
    def _has_answer(cls, value: str) -> str:
        if "{answer}" not in value:
            raise ValueError("answer_format must contain {answer}")
        return value


# -- reading with line numbers --------------------------------------------------------------------------
def read_yaml(path: Path) -> tuple[Any, dict[tuple, int]]:
    """A YAML file's data and the 1-based line of every key path (``("fields", "query")``)."""
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise TaskFolderError(f"{path}{line}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    lines: dict[tuple, int] = {}

    def walk(n, at: tuple) -> None:
        lines[at] = n.start_mark.line + 1
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                walk(v, (*at, k.value))
                lines[(*at, k.value)] = k.start_mark.line + 1
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                walk(v, (*at, i))

    if node is not None:
        walk(node, ())
    return data, lines


def _located(path: Path, lines: dict[tuple, int], loc: tuple, msg: str) -> str:
    for end in range(len(loc), -1, -1):  # the deepest key that exists in the file
        if loc[:end] in lines:
            return f"{path}:{lines[loc[:end]]}: {'.'.join(map(str, loc)) or '(file)'}: {msg}"
    return f"{path}: {'.'.join(map(str, loc))}: {msg}"


def validate(model: type[BaseModel], path: Path, problems: list[str]) -> tuple[BaseModel | None, dict]:
    """``path`` parsed as ``model`` and its raw mapping; problems are appended (with lines) and the model is
    None when invalid."""
    if not path.is_file():
        problems.append(f"{path}: file not found")
        return None, {}
    try:
        data, lines = read_yaml(path)
    except TaskFolderError as exc:
        problems.append(str(exc))
        return None, {}
    if not isinstance(data, dict):
        problems.append(f"{path}:1: expected a mapping of keys")
        return None, {}
    try:
        return model.model_validate(data), data
    except ValidationError as exc:
        for e in exc.errors():
            msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
            problems.append(_located(path, lines, tuple(e["loc"]), msg))
        return None, data


def _data_part(raw: dict) -> TaskFile | None:
    """The data-related keys of an invalid ``task.yaml``, when they are valid themselves, so the data files
    are still checked and reported in the same pass."""
    keys = ("data", "fields", "query_format")
    try:
        return TaskFile.model_validate({k: raw[k] for k in keys if k in raw} | {"name": "x", "metric": "x"})
    except ValidationError:
        return None


@cache
def read_task_file(path: Path) -> TaskFile:
    """A built-in task's ``task.yaml`` (validated; errors name file, line and field)."""
    problems: list[str] = []
    spec, _ = validate(TaskFile, path, problems)
    if problems:
        raise TaskFolderError("; ".join(problems))
    return spec


def check_folder(folder: Path) -> TaskFile:
    """Validate a user task folder: ``task.yaml``, ``template.yaml``, the documents and data files it names,
    the metric, and every data record's fields. One :class:`TaskFolderError` lists all problems."""
    from promptintern.tasks.documents import load_documents
    from promptintern.tasks.records import check_records

    problems: list[str] = []
    task_path = folder / TASK_FILE
    spec, raw = validate(TaskFile, task_path, problems)
    template, _ = validate(TemplateFile, folder / "template.yaml", problems)
    if template is not None and template.documents is not None:
        documents = folder / template.documents.file
        try:
            load_documents(documents)
        except OSError:
            problems.append(f"{documents}: file not found (template.yaml documents.file)")
        except ValueError as exc:
            problems.append(str(exc))
    data = spec if spec is not None else _data_part(raw)
    if data is not None and data.python_class is None:
        missing = [s for s in ("train", "test") if s not in data.data]
        if missing:
            problems.append(f"{task_path}: data: needs a file for split(s) {', '.join(missing)}")
        for split, name in data.data.items():
            problems += check_records(folder / name, data, split)
    if spec is not None:
        try:
            from promptintern.tasks.metrics import get_metric

            get_metric(spec.metric, folder)
        except ValueError as exc:
            problems.append(f"{task_path}: metric: {exc}")
    if problems:
        raise TaskFolderError(f"task folder {folder} is invalid:\n  " + "\n  ".join(problems))
    return spec
