"""Where data, caches and stored results live.

Data root: ``$PROMPTINTERN_DATA``, else ``../shared/data`` beside the repository, else the user cache
filled by ``promptintern data fetch``.  Everything the suite writes goes under ``$PROMPTINTERN_HOME``
(default ``~/.local/share/promptintern``).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


class DataNotFoundError(FileNotFoundError):
    """Raised when a dataset file cannot be located in any data root."""


def home() -> Path:
    """Directory for caches, built datasets, runs and the results store."""
    env = os.environ.get("PROMPTINTERN_HOME")
    path = Path(env).expanduser() if env else Path.home() / ".local" / "share" / "promptintern"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir(kind: str) -> Path:
    """A named cache folder under :func:`home` (e.g. ``datasets``, ``compressed``)."""
    path = home() / "cache" / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def fetched_data_dir() -> Path:
    """Where ``promptintern data fetch`` stores downloads."""
    return home() / "data"


def data_roots() -> list[Path]:
    """Candidate data roots, in priority order."""
    env = os.environ.get("PROMPTINTERN_DATA")
    if env:
        return [Path(env).expanduser()]
    return [REPO_ROOT.parent / "shared" / "data", fetched_data_dir()]


def data_file(dataset: str, *parts: str) -> Path:
    """Path of ``<root>/<dataset>/<parts...>`` in the first root that has it."""
    tried = []
    for root in data_roots():
        path = root.joinpath(dataset, *parts)
        if path.exists():
            return path
        tried.append(str(path))
    raise DataNotFoundError(
        f"{dataset}/{'/'.join(parts)} not found; tried: {', '.join(tried)}. "
        "Set PROMPTINTERN_DATA or run `promptintern data fetch`."
    )
