"""What the suite writes where: results on stdout, our own steps, warnings and progress bars on stderr,
everything else in a log file.

:func:`configure` (called once per command by the CLI; ``-v`` passes ``verbose=True``) sends Python warnings
(:func:`logging.captureWarnings`), the records of third-party loggers (transformers, huggingface_hub, lm_eval,
llmlingua, torch, accelerate, peft, urllib3, ...) and llama.cpp's C log to ``$PROMPTINTERN_HOME/logs/
promptintern-YYYYMMDD.log`` instead of the console, and turns third-party progress bars off (tqdm,
transformers', huggingface_hub's). Our ``promptintern`` loggers show warnings on stderr (``-v``: info too).
``verbose=True`` also echoes third-party warnings on stderr and, on a terminal, leaves their bars on.

The environment variables set here (``TQDM_DISABLE``, ``HF_HUB_DISABLE_PROGRESS_BARS``,
``PROMPTINTERN_LOG_FILE``) reach child processes, so they log to the same file and stay as quiet.

:func:`progress` / :func:`track` draw one of our own bars (rich, with ETA) per long step, only when stderr is
a terminal; off a terminal they only write a start and an end line to the log file. :func:`step` prints one
timestamped line to stderr (and the log), e.g. ``make reproduce``'s experiment lines.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

LOG_ENV = "PROMPTINTERN_LOG_FILE"
#: Our loggers' root: its warnings are meant for the user and go to stderr as well as to the file.
OURS = "promptintern"
FILE_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"

_lock = threading.RLock()
_state: _State | None = None


class _State:
    def __init__(self, path: Path, verbose: bool) -> None:
        self.path = path
        self.verbose = verbose
        #: Third-party progress bars stay on (verbose on a terminal); otherwise tqdm & co. are off.
        self.third_party_bars = verbose and _terminal()
        self.handlers: list[logging.Handler] = []
        self.env: dict[str, str | None] = {}  # variables we set -> their value before (None: unset)
        self.levels: dict[str, int] = {}  # logger name -> level before
        self.undo: list[Callable[[], None]] = []


def _terminal() -> bool:
    stream = sys.stderr
    try:
        return bool(stream is not None and stream.isatty()) and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def stderr_is_terminal() -> bool:
    """Whether stderr is an interactive terminal (our progress bars are drawn only then)."""
    return _terminal()


def log_file() -> Path | None:
    """The log file :func:`configure` chose, or None before it ran."""
    return _state.path if _state is not None else None


def _default_path() -> Path:
    env = os.environ.get(LOG_ENV)
    if env:
        return Path(env)
    name = f"promptintern-{time.strftime('%Y%m%d')}.log"
    try:
        from promptintern.paths import home

        folder = home() / "logs"
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # an unwritable home: the log still goes somewhere
        folder = Path(tempfile.gettempdir()) / "promptintern-logs"
        folder.mkdir(parents=True, exist_ok=True)
    return folder / name


class _Stderr(logging.Handler):
    """Writes to the current ``sys.stderr`` (pytest's capture, rich's live redirect) at emit time."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr
            if stream is not None:
                stream.write(self.format(record) + "\n")
                stream.flush()
        except Exception:  # noqa: BLE001 - logging must not raise
            self.handleError(record)


class _ConsoleFilter(logging.Filter):
    """Ours: warnings (verbose: info); third-party: nothing (verbose: warnings); :func:`step` lines: never
    (they are printed already)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "console", True):
            return False
        verbose = _state is not None and _state.verbose
        ours = record.name == OURS or record.name.startswith(OURS + ".")
        if ours:
            return record.levelno >= (logging.INFO if verbose else logging.WARNING)
        return verbose and record.levelno >= logging.WARNING


class _ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if record.name == "py.warnings":
            return message.rstrip()
        if record.name == OURS or record.name.startswith(OURS + "."):
            return message if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {message}"
        return f"[{record.name}] {record.levelname.lower()}: {message}"


# -- after-import hooks: quieten a library the moment it is imported ---------------------------------------

_HOOKS: dict[str, Callable[[Any], None]] = {}


class _AfterImport:
    """A meta-path finder that runs ``_HOOKS[name](module)`` once module ``name`` has executed (delegating the
    finding and loading to the other finders)."""

    def find_spec(self, fullname: str, path=None, target=None):
        hook = _HOOKS.get(fullname)
        if hook is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        original = loader.exec_module

        def exec_module(module):
            try:
                original(module)
            finally:
                with contextlib.suppress(AttributeError):
                    del loader.exec_module  # back to the class's method
            _run_hook(fullname, module)

        loader.exec_module = exec_module
        return spec


_FINDER = _AfterImport()


def _run_hook(name: str, module: Any) -> None:
    hook = _HOOKS.pop(name, None)
    if hook is None:
        return
    try:
        hook(module)
    except Exception:  # noqa: BLE001 - a library's internals changed: stay loud rather than fail
        logging.getLogger(__name__).debug("quietening %s failed", name, exc_info=True)


def after_import(name: str, hook: Callable[[Any], None]) -> None:
    """Run ``hook(module)`` when module ``name`` is imported (now, if it already is); once."""
    with _lock:
        _HOOKS[name] = hook
        if name in sys.modules:
            _run_hook(name, sys.modules[name])
        elif _FINDER not in sys.meta_path:
            sys.meta_path.insert(0, _FINDER)


# -- the libraries -----------------------------------------------------------------------------------------


def _set_env(state: _State, name: str, value: str) -> None:
    if name not in state.env:
        state.env[name] = os.environ.get(name)
    os.environ[name] = value


def _quiet_tqdm(module: Any) -> None:
    """Every tqdm bar disabled, also those asking for ``disable=False`` (TQDM_DISABLE only sets the default)."""
    cls = module.tqdm
    original, saved = cls.__init__, vars(cls)["__init__"]  # saved: TQDM_* defaults as a partialmethod
    if getattr(original, "_promptintern_quiet", False):
        return

    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        if len(args) < 11:  # else ``disable`` (the 11th parameter, after ``iterable``) came positionally
            kwargs["disable"] = True
        original(self, *args, **kwargs)

    __init__._promptintern_quiet = True  # type: ignore[attr-defined]
    cls.__init__ = __init__
    if _state is not None:
        _state.undo.append(lambda: setattr(cls, "__init__", saved))


def _quiet_transformers(module: Any) -> None:
    """transformers' own stderr handler off, its records to the root logger (the file); its bars off."""
    module.disable_default_handler()
    module.enable_propagation()
    if _state is not None:
        _state.undo += [module.enable_default_handler, module.disable_propagation]
        if not _state.third_party_bars:
            module.disable_progress_bar()
            _state.undo.append(module.enable_progress_bar)


def _quiet_lm_eval(module: Any) -> None:
    """lm-eval's ``setup_logging`` would add its own stderr handler: its records go to the file instead."""
    module._LOGGING_CONFIGURED = True


def _quiet_hub(module: Any) -> None:
    module.disable_progress_bars()
    if _state is not None:
        _state.undo.append(module.enable_progress_bars)


#: ggml's ``ggml_log_level`` (ggml.h: NONE, DEBUG, INFO, WARN, ERROR, CONT = 0..5). llama-cpp-python 0.3.x still
#: maps the older order (INFO=1, WARN=2, ERROR=3), so with ``verbose=False`` it prints llama.cpp's warnings.
_LLAMA_LEVELS = {0: logging.INFO, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_llama_callback: Any = None  # the ctypes callback must outlive every llama.cpp call


def _quiet_llama(module: Any) -> None:
    """llama.cpp's C log (printed to stderr by llama-cpp-python's callback) to the ``llama_cpp`` logger."""
    global _llama_callback
    import ctypes

    import llama_cpp

    logger = logging.getLogger("llama_cpp")
    pending: list[str] = []
    last = [logging.DEBUG]

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        lvl = last[0] if level == 5 else _LLAMA_LEVELS.get(level, logging.INFO)
        last[0] = lvl
        if lvl < logging.WARNING:
            return
        pending.append(text.decode("utf-8", "replace"))
        if pending[-1].endswith("\n"):
            logger.log(lvl, "%s", "".join(pending).rstrip())
            pending.clear()

    _llama_callback = callback
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    if _state is not None:
        _state.undo.append(lambda: llama_cpp.llama_log_set(module.llama_log_callback, ctypes.c_void_p(0)))


# -- configure ---------------------------------------------------------------------------------------------


def configure(verbose: bool = False) -> Path:
    """Route warnings and third-party output to the log file (see the module doc); returns its path.

    Idempotent and cheap (imports no third-party library); a second call only changes ``verbose``.
    """
    global _state
    with _lock:
        if _state is not None:
            _state.verbose = _state.verbose or verbose
            return _state.path
        path = _default_path()
        state = _state = _State(path, verbose)

        file_handler = logging.FileHandler(path, encoding="utf-8", delay=True)
        file_handler.setFormatter(logging.Formatter(FILE_FORMAT))
        console = _Stderr()
        console.addFilter(_ConsoleFilter())
        console.setFormatter(_ConsoleFormatter())
        root = logging.getLogger()
        for handler in (file_handler, console):
            root.addHandler(handler)
            state.handlers.append(handler)
        ours = logging.getLogger(OURS)
        state.levels = {"": root.level, OURS: ours.level}
        if root.level == logging.NOTSET or root.level > logging.WARNING:
            root.setLevel(logging.WARNING)
        ours.setLevel(logging.INFO)
        logging.captureWarnings(True)

        _set_env(state, LOG_ENV, str(path))
        if not state.third_party_bars:
            _set_env(state, "TQDM_DISABLE", "1")
            _set_env(state, "HF_HUB_DISABLE_PROGRESS_BARS", "1")
            after_import("tqdm.std", _quiet_tqdm)
            after_import("huggingface_hub.utils", _quiet_hub)
        after_import("transformers.utils.logging", _quiet_transformers)
        after_import("lm_eval.utils", _quiet_lm_eval)
        after_import("llama_cpp._logger", _quiet_llama)
        return path


def _reset() -> None:
    """Undo :func:`configure` (tests)."""
    global _state
    with _lock:
        state, _state = _state, None
        _HOOKS.clear()
        if _FINDER in sys.meta_path:
            sys.meta_path.remove(_FINDER)
        if state is None:
            return
        for name, value in state.env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        for undo in reversed(state.undo):
            with contextlib.suppress(Exception):
                undo()
        root = logging.getLogger()
        for handler in state.handlers:
            root.removeHandler(handler)
            handler.close()
        for name, level in state.levels.items():
            logging.getLogger(name or None).setLevel(level)
        logging.captureWarnings(False)


# -- our own output ----------------------------------------------------------------------------------------

_steps = logging.getLogger(f"{OURS}.steps")


def step(message: str, prefix: str | None = None, *, show: bool = True) -> None:
    """One ``[prefix HH:MM:SS] message`` line on stderr (``show=False``: the log file only)."""
    stamp = time.strftime("%H:%M:%S")
    if show:
        head = f"{prefix} {stamp}" if prefix else stamp
        print(f"[{head}] {message}", file=sys.stderr, flush=True)
    _steps.info("%s%s", f"{prefix}: " if prefix else "", message, extra={"console": False})


class Bar:
    """One task of the shared live display; every method is a no-op when the bar is not drawn."""

    def __init__(self, progress: Any = None, task: Any = None) -> None:
        self._progress, self._task = progress, task

    @property
    def drawn(self) -> bool:
        return self._progress is not None

    def advance(self, n: float = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def update(self, completed: float | None = None, *, total: float | None = None) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=completed, total=total)


_live: Any = None  # the rich Progress drawing every open bar (nested steps share it)
_open = 0


def _progress_display():
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,  # the step lines (:func:`step`) are the record; a bar only shows the step running
    )


@contextlib.contextmanager
def progress(total: float | None, description: str, *, enabled: bool = True) -> Iterator[Bar]:
    """A progress bar with ETA for one long step, on stderr, only when stderr is a terminal (and ``enabled``);
    otherwise a no-op :class:`Bar`. The log file gets the step's start and end either way."""
    global _live, _open
    log = logging.getLogger(f"{OURS}.progress")
    log.info("%s: start (%s)", description, "?" if total is None else f"{total:g}", extra={"console": False})
    started = time.perf_counter()
    bar = Bar()
    if enabled and _terminal():
        with _lock:
            if _live is None:
                _live = _progress_display()
                _live.start()
            _open += 1
            bar = Bar(_live, _live.add_task(description, total=total))
    try:
        yield bar
    finally:
        if bar.drawn:
            with _lock:
                _open -= 1
                if _open == 0:
                    _live.stop()
                    _live = None
        wall = time.perf_counter() - started
        log.info("%s: finished in %.1f s", description, wall, extra={"console": False})


def track(
    iterable: Iterable[T], description: str, *, total: float | None = None, enabled: bool = True
) -> Iterator[T]:
    """``iterable``'s items, advancing a :func:`progress` bar by one per item."""
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with progress(total, description, enabled=enabled) as bar:
        for item in iterable:
            yield item
            bar.advance()


__all__ = [
    "Bar",
    "after_import",
    "configure",
    "log_file",
    "progress",
    "stderr_is_terminal",
    "step",
    "track",
]
