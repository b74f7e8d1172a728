"""Atomic file writes (temporary file in the target folder, then ``os.replace``) and file hashing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` so that readers see the old file or the complete new one, never a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2, sort_keys: bool = False) -> Path:
    """Atomically write ``obj`` as JSON (UTF-8, non-JSON values via ``str``)."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=False, default=str)
    return atomic_write_text(path, text + "\n")


def append_jsonl(path: str | os.PathLike, obj: Any) -> Path:
    """Append ``obj`` as one JSON line; the file is rewritten atomically (for small logs, not predictions)."""
    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    line = json.dumps(obj, ensure_ascii=False, default=str)
    return atomic_write_text(path, old + line + "\n")


def atomic_write_with(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Atomically create ``path`` with ``write(temporary_path)`` (e.g. ``torch.save``, a copy)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy ``src`` to ``dst`` atomically."""
    return atomic_write_with(dst, lambda tmp: shutil.copyfile(src, tmp))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
