"""Task registry: every task is a folder with a ``task.yaml`` (lm-eval's ``include_path`` is the model).

- The built-in tasks (``mbpp``, ``nl2f``, ``nl2bash``) are the folders of this package; their ``task.yaml``
  names the Python class that loads their data (``class:``).
- A user folder needs no Python (:class:`~promptintern.tasks.folder.FolderTask`): ``get_task("./my-task")``
  registers it under the ``name`` of its ``task.yaml``; :func:`include_path` registers every task folder
  under a directory, and so does ``$PROMPTINTERN_INCLUDE_PATH`` (directories joined by ``os.pathsep``).
- Python code can register a factory directly: ``register_task("name", factory)``.

``get_task(name_or_folder, template=..., **options)`` builds a task; ``task_names()`` lists what is registered.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

from promptintern.tasks.base import TEMPLATE_VARIANTS, Instance, Task, TaskScore, Template
from promptintern.tasks.spec import TASK_FILE, TaskFolderError, check_folder, read_task_file

BUILTIN_DIR = Path(__file__).resolve().parent
#: The paper's three tasks (the tables' columns, the leaderboard's tasks).
PAPER_TASKS = ("mbpp", "nl2f", "nl2bash")
INCLUDE_ENV = "PROMPTINTERN_INCLUDE_PATH"


@dataclass(frozen=True)
class Registration:
    name: str
    factory: Callable[..., Task]
    folder: Path | None = None


_REGISTRY: dict[str, Registration] = {}
_ENV_SEEN: set[str] = set()


def register_task(name: str, factory: Callable[..., Task], folder: Path | None = None) -> None:
    """Register ``factory(template=..., **options) -> Task`` under ``name``; a name is registered once
    (re-registering the same folder is a no-op)."""
    old = _REGISTRY.get(name)
    if old is not None:
        if folder is not None and old.folder == folder:
            return
        where = f" by {old.folder}" if old.folder else ""
        raise ValueError(f"task {name!r} is already registered{where}")
    _REGISTRY[name] = Registration(name, factory, folder)


def register_folder(folder: str | os.PathLike) -> str:
    """Validate and register one task folder; returns its task name."""
    folder = Path(folder).expanduser().resolve()
    if not (folder / TASK_FILE).is_file():
        raise TaskFolderError(f"{folder}: not a task folder (no {TASK_FILE})")
    for reg in _REGISTRY.values():
        if reg.folder == folder:
            return reg.name
    if folder.parent == BUILTIN_DIR:
        spec = read_task_file(folder / TASK_FILE)
    else:
        spec = check_folder(folder)
    if spec.python_class:
        module_name, _, cls_name = spec.python_class.partition(":")

        def factory(_m=module_name, _c=cls_name, **kwargs) -> Task:
            return getattr(import_module(_m), _c)(**kwargs)
    else:
        from promptintern.tasks.folder import FolderTask

        def factory(_f=folder, _s=spec, **kwargs) -> Task:
            return FolderTask(_f, _s, **kwargs)

    register_task(spec.name, factory, folder)
    return spec.name


def include_path(directory: str | os.PathLike) -> list[str]:
    """Register every task folder under ``directory`` (itself included, searched recursively)."""
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise TaskFolderError(f"{root}: include path is not a directory")
    return [register_folder(p.parent) for p in sorted(root.rglob(TASK_FILE))]


def _ensure_loaded() -> None:
    if not any(r.folder and r.folder.parent == BUILTIN_DIR for r in _REGISTRY.values()):
        for name in PAPER_TASKS:
            register_folder(BUILTIN_DIR / name)
    for entry in filter(None, os.environ.get(INCLUDE_ENV, "").split(os.pathsep)):
        if entry not in _ENV_SEEN:
            _ENV_SEEN.add(entry)
            include_path(entry)


def task_names() -> tuple[str, ...]:
    """Every registered task name (built-ins first)."""
    _ensure_loaded()
    return tuple(_REGISTRY)


def resolve_task(ref: str | os.PathLike) -> str:
    """The registered name of ``ref``: a task name, or a task folder (registered on first use)."""
    _ensure_loaded()
    ref = str(ref)
    if ref in _REGISTRY:
        return ref
    if Path(ref).expanduser().is_dir():
        return register_folder(ref)
    if os.sep in ref or ref.startswith("."):
        raise TaskFolderError(f"{ref}: no such task folder")
    raise ValueError(f"unknown task {ref!r}; choose from {', '.join(task_names())} or give a task folder")


def get_task(ref: str | os.PathLike, **kwargs) -> Task:
    """Instantiate a task by name or folder; ``template="extended"`` selects the long template variant."""
    return _REGISTRY[resolve_task(ref)].factory(**kwargs)


def task_folder(name: str) -> Path | None:
    """The folder a registered task was registered from (None for a factory registered in Python)."""
    return _REGISTRY[resolve_task(name)].folder


def task_title(name: str) -> str:
    """A registered task's short title (``NL2F``); the name itself when it is not registered."""
    try:
        return get_task(name).title
    except ValueError:
        return name


__all__ = [
    "INCLUDE_ENV",
    "PAPER_TASKS",
    "TEMPLATE_VARIANTS",
    "Instance",
    "Task",
    "TaskFolderError",
    "TaskScore",
    "Template",
    "get_task",
    "include_path",
    "register_folder",
    "register_task",
    "resolve_task",
    "task_folder",
    "task_names",
    "task_title",
]
