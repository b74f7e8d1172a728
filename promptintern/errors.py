"""User-facing errors of the command line: one ``error: ...`` line on stderr, no traceback.

A :class:`UserError` (or a subclass: a missing sandbox, a bad path) is a problem the user can fix; the
``promptintern`` command prints it as one line and exits with status 2. ``--debug`` (or
``PROMPTINTERN_DEBUG=1``) adds the traceback. With ``--json`` the error is also printed to standard output as
``{"error": "..."}`` (plus ``problems`` when the error lists several).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import NoReturn

DEBUG_ENV = "PROMPTINTERN_DEBUG"


class UserError(Exception):
    """A problem with the user's input or machine, reported as one line (exit status 2)."""

    exit_code = 2


def debug_enabled() -> bool:
    """``--debug`` was given (the CLI sets ``$PROMPTINTERN_DEBUG``, which child processes inherit)."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def message(exc: BaseException) -> str:
    """The text of ``exc`` for the ``error:`` line: OS errors name the file and say what went wrong."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename is not None else ""
        text = f"{where}{exc.strerror.lower()}"
        if exc.filename2 is not None:
            text += f" ({exc.filename2})"
        return text
    return str(exc) or type(exc).__name__


def report(exc: BaseException | str, *, as_json: bool = False, show_traceback: bool | None = None) -> None:
    """Print ``error: <message>`` on stderr (and ``{"error": ...}`` on stdout when ``as_json``); with
    ``--debug`` the traceback of ``exc`` comes first."""
    text = exc if isinstance(exc, str) else message(exc)
    if show_traceback is None:
        show_traceback = debug_enabled()
    if show_traceback and isinstance(exc, BaseException):
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    if as_json:
        payload: dict = {"error": text}
        problems = getattr(exc, "problems", None)
        if isinstance(problems, list):
            payload["problems"] = [str(p) for p in problems]
        sys.stdout.write(json.dumps(payload, ensure_ascii=False) + "\n")
        sys.stdout.flush()
    sys.stderr.write(f"error: {text}\n")
    sys.stderr.flush()


def fail(exc: BaseException | str, *, as_json: bool = False, code: int = 2) -> NoReturn:
    """:func:`report` ``exc`` and exit with ``code`` (for commands that handle their own errors)."""
    import typer

    report(exc, as_json=as_json)
    raise typer.Exit(code)


def check_input_file(path: str | Path, what: str = "file", option: str | None = None) -> Path:
    """``path`` if it is a readable file; else a :class:`UserError` naming ``option`` (e.g. ``--predictions``)
    and ``path`` and saying what is wrong."""
    path = Path(path)
    label = f"{option} {path}" if option else str(path)
    if not path.exists():
        raise UserError(f"{label}: no such {what}; check the path")
    if path.is_dir():
        raise UserError(f"{label} is a directory, not a {what}; give the {what} inside it")
    if not os.access(path, os.R_OK):
        raise UserError(f"{label}: permission denied; the {what} is not readable")
    return path


def check_output_file(path: str | Path, option: str = "--out") -> Path:
    """``path`` if a file can be written there (an existing file, or a new one in a folder that exists or can
    be created); else a :class:`UserError`. Checked before long work, so it does not fail at the end."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path} is a directory; give a file path")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise UserError(f"{option} {path}: permission denied; the file is not writable")
        return path
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{option} {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: permission denied; cannot write in {parent}")
    return path
