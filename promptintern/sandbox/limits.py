"""Limits, results, and the supervision every backend shares.

A run has two halves:

* **inside** the sandbox, a tiny bootstrap (:data:`BOOTSTRAP`, run as ``python -I -B -c``) reads
  ``<nonce>\\n<program>`` from stdin, points fd 0 at ``/dev/null``, applies the rlimits, prints a
  *ready* marker, executes the program as ``__main__`` and, only if the program's top level returned
  normally, prints the *done* line carrying the nonce;
* **outside**, :meth:`Backend.run` feeds stdin, drains stdout/stderr incrementally (keeping at most
  ``output_bytes`` of each), enforces the wall-clock deadline by SIGKILLing the whole process group,
  then asks the backend to reap anything left behind.

Threat model of the done line (the "sentinel"): a PASS needs exit code 0 *and* the nonce, a fresh
128-bit value per run.  The nonce never appears in the program text, argv, the environment or any file,
so ``sys.exit``/``exit()``/``os._exit(0)`` before the tests end, a killed interpreter, printing a
guessed sentinel, or reading one's own source/``/proc/self/cmdline``/``environ`` all score FAIL.  It
does not stop a candidate that deliberately introspects the interpreter (frames, ``gc``) to recover
the nonce from the bootstrap's memory: nothing in-process can, since the tests must run in the
candidate's process.
"""

from __future__ import annotations

import os
import secrets
import selectors
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptintern.errors import UserError

#: Marker printed by the bootstrap before any program code runs (absent: the sandbox did not start).
READY = b"#<promptintern:ready>\n"
#: Prefix of the line printed after the program's top level returned normally.
DONE_PREFIX = b"#<promptintern:done:"
#: Name of the environment variable carrying the (non-secret) run id; also in the bootstrap argv.
RUN_ENV = "PROMPTINTERN_SANDBOX_RUN"
#: Seconds we keep draining pipes after the main process exited (a straggler may hold them open).
EXIT_GRACE_S = 0.5

BOOTSTRAP = r"""
import os, resource as R, sys, types
def _main(run_id, cpu, mem_mb, nproc, fsize_mb, nofile):
    data = sys.stdin.buffer.read()
    null = os.open(os.devnull, os.O_RDONLY); os.dup2(null, 0); os.close(null)
    nonce, _, src = data.partition(b"\n")
    del data
    R.setrlimit(R.RLIMIT_CORE, (0, 0))
    for res, value, scale, slack in ((R.RLIMIT_CPU, cpu, 1, 1), (R.RLIMIT_AS, mem_mb, 1 << 20, 0),
            (R.RLIMIT_NPROC, nproc, 1, 0), (R.RLIMIT_FSIZE, fsize_mb, 1 << 20, 0), (R.RLIMIT_NOFILE, nofile, 1, 0)):
        value, hard = int(float(value) * scale + 0.999), R.getrlimit(res)[1]
        if value > 0:
            top = value + slack if hard == R.RLIM_INFINITY else min(value + slack, hard)
            R.setrlimit(res, (min(value, top), top))
    os.write(1, READY)
    code = compile(src, "<program>", "exec", dont_inherit=True)
    main = types.ModuleType("__main__")
    sys.modules["__main__"] = main
    exec(code, main.__dict__)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os.write(1, b"\n" + DONE_PREFIX + nonce + b">\n")
_main(*sys.argv[1:])
""".replace("READY", repr(READY)).replace("DONE_PREFIX", repr(DONE_PREFIX))


class SandboxError(UserError, RuntimeError):
    """Base class for sandbox configuration errors (the CLI prints them as one ``error:`` line)."""


class SandboxUnavailable(SandboxError):
    """The requested backend cannot run on this machine (missing tool, disabled namespaces, no engine); the
    message says what to install or start, or which other backend to choose."""


@dataclass(frozen=True)
class Limits:
    """Per-run resource limits.  ``<= 0`` disables an rlimit (the wall clock always applies)."""

    cpu_s: float = 10.0
    wall_s: float = 10.0
    memory_mb: int = 1024
    nproc: int = 32
    fsize_mb: int = 10
    nofile: int = 64
    output_bytes: int = 64 * 1024

    def bootstrap_args(self) -> list[str]:
        return [str(self.cpu_s), str(self.memory_mb), str(self.nproc), str(self.fsize_mb), str(self.nofile)]


@dataclass
class ExecResult:
    """Outcome of one run.  ``status`` is ``passed``, ``failed``, ``timeout`` or ``error`` (infrastructure)."""

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float
    sentinel_seen: bool
    detail: str = ""
    run_id: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass
class Run:
    """Per-run context handed to backends: ids, the secret nonce, limits and backend scratch state."""

    limits: Limits
    run_id: str = field(default_factory=lambda: secrets.token_hex(8))
    nonce: str = field(default_factory=lambda: secrets.token_hex(16))
    state: dict[str, Any] = field(default_factory=dict)

    def bootstrap_argv(self, python: str) -> list[str]:
        """``python -I -B -X utf8 -c BOOTSTRAP <run_id> <limits...>`` (the run id marks the process)."""
        return [python, "-I", "-B", "-X", "utf8", "-c", BOOTSTRAP, self.run_id, *self.limits.bootstrap_args()]


class _Capture:
    """Stores the first ``cap`` bytes of a stream and always its last 256 bytes."""

    def __init__(self, cap: int) -> None:
        self.cap, self.head, self.tail, self.total = cap, bytearray(), deque(maxlen=256), 0

    def feed(self, chunk: bytes) -> None:
        room = self.cap - len(self.head)
        if room > 0:
            self.head += chunk[:room]
        self.tail.extend(chunk)
        self.total += len(chunk)

    @property
    def truncated(self) -> int:
        return self.total - len(self.head)


class Backend(ABC):
    """Runs ``python BOOTSTRAP`` somewhere; subclasses build the command and clean up after a run."""

    name: str = ""

    @abstractmethod
    def command(self, run: Run) -> list[str]:
        """The argv that starts the bootstrap inside this backend's isolation."""

    def popen_kwargs(self, run: Run) -> dict[str, Any]:
        """Extra :class:`subprocess.Popen` arguments (``env``, ``cwd``, ...)."""
        return {"env": {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}}

    def reap(self, run: Run, proc: subprocess.Popen | None) -> None:  # noqa: B027 - optional hook
        """Kill anything of this run that survived the process-group kill (default: nothing)."""

    def run(self, program: str, limits: Limits | None = None) -> ExecResult:
        """Execute ``program`` under ``limits`` and classify the outcome."""
        run = Run(limits or Limits())
        start = time.monotonic()
        try:
            argv = self.command(run)
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                start_new_session=True, close_fds=True, **self.popen_kwargs(run),
            )
        except (OSError, SandboxError) as exc:
            self.reap(run, None)
            return ExecResult("error", None, "", str(exc), time.monotonic() - start, False,
                              f"could not start {self.name} backend: {exc}", run.run_id)
        payload = run.nonce.encode() + b"\n" + program.encode("utf-8", "surrogateescape")
        try:
            out, err, timed_out = _pump(proc, payload, run.limits, start + run.limits.wall_s)
        finally:
            _kill_group(proc)
            proc.wait()
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
            self.reap(run, proc)
        return _classify(run, proc.returncode, out, err, timed_out, time.monotonic() - start)


def _pump(proc: subprocess.Popen, payload: bytes, limits: Limits, deadline: float):
    """Feed stdin and drain stdout/stderr until EOF, the deadline, or shortly after the main process exits."""
    out, err = _Capture(limits.output_bytes), _Capture(limits.output_bytes)
    sinks = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    stdin_fd, pending = proc.stdin.fileno(), memoryview(payload)
    with selectors.DefaultSelector() as sel:
        for fd in sinks:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        os.set_blocking(stdin_fd, False)
        sel.register(stdin_fd, selectors.EVENT_WRITE)
        exited_at = None
        while sel.get_map():
            now = time.monotonic()
            if now >= deadline:
                return out, err, True
            if exited_at is None and _has_exited(proc):
                exited_at = now
            if exited_at is not None and now - exited_at > EXIT_GRACE_S:
                break
            for key, _ in sel.select(min(deadline - now, 0.2)):
                fd = key.fd
                try:
                    if fd == stdin_fd:
                        pending = pending[os.write(fd, pending[:65536]):]
                        done = not pending
                    else:
                        chunk = os.read(fd, 65536)
                        sinks[fd].feed(chunk)
                        done = not chunk
                except BlockingIOError:
                    continue
                except OSError:  # EPIPE: the child stopped reading its program
                    done = True
                if done:
                    sel.unregister(fd)
                    if fd == stdin_fd:
                        proc.stdin.close()
    return out, err, False


def _has_exited(proc: subprocess.Popen) -> bool:
    """True once the child is a zombie; unlike ``poll()`` it does not reap, so its pgid stays reserved."""
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_of(returncode: int | None) -> int | None:
    """Signal that ended the program: negative codes (direct child) or 128+N (bwrap/docker propagate)."""
    if returncode is None:
        return None
    if returncode < 0:
        return -returncode
    if 128 < returncode < 128 + 65:
        return returncode - 128
    return None


def _classify(run: Run, rc: int | None, out: _Capture, err: _Capture, timed_out: bool, duration: float) -> ExecResult:
    stdout, stderr = bytes(out.head), bytes(err.head)
    started = stdout.startswith(READY)
    stdout = stdout[len(READY):] if started else stdout
    done = b"\n" + DONE_PREFIX + run.nonce.encode() + b">\n"
    sentinel = bytes(out.tail).endswith(done)
    if sentinel and stdout.endswith(done):
        stdout = stdout[: -len(done)]
    text_out, text_err = _text(stdout, out.truncated), _text(stderr, err.truncated)
    sig = _signal_of(rc)
    last = next((line for line in reversed(text_err.strip().splitlines()) if line.strip()), "")
    if timed_out:
        status, detail = "timeout", f"wall-clock limit of {run.limits.wall_s:g}s exceeded"
    elif not started:
        status, detail = "error", f"sandbox did not start (exit code {rc}): {last or 'no output'}"
    elif sig == signal.SIGXCPU:
        status, detail = "timeout", f"CPU limit of {run.limits.cpu_s:g}s exceeded"
    elif rc == 0 and sentinel:
        status, detail = "passed", "passed"
    elif rc == 0:
        status, detail = "failed", "exited with code 0 before the program finished (no sentinel)"
    elif sig is not None:
        status, detail = "failed", f"killed by {signal.Signals(sig).name}" + (f": {last}" if last else "")
    else:
        status, detail = "failed", last or f"exit code {rc}"
    return ExecResult(status, rc, text_out, text_err, round(duration, 3), sentinel, detail, run.run_id)


def _text(data: bytes, truncated: int) -> str:
    text = data.decode("utf-8", "replace")
    return text + (f"\n...[truncated {truncated} bytes]" if truncated else "")


def process_uids() -> dict[int, int]:
    """``{pid: euid}`` for every visible process (the owner of ``/proc/<pid>`` is its effective uid)."""
    found = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                found[int(entry.name)] = entry.stat(follow_symlinks=False).st_uid
            except OSError:
                pass
    return found


def marked_processes(marker: str) -> list[int]:
    """Pids (other than ours) whose cmdline or environment contains ``marker``."""
    needle, hits = marker.encode(), []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        for part in ("cmdline", "environ"):
            try:
                if needle in Path(entry.path, part).read_bytes():
                    hits.append(int(entry.name))
                    break
            except OSError:
                pass
    return hits


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def is_alive(pid: int) -> bool:
    """False for vanished and zombie processes (SIGKILL is asynchronous; zombies hold no resources)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:][:1] not in ("Z", "X", "")


def kill_until_gone(find: Callable[[], list[int]], timeout_s: float = 3.0) -> list[int]:
    """SIGKILL whatever ``find()`` lists until it lists nothing alive (or the timeout); return the pids."""
    killed: list[int] = []
    deadline = time.monotonic() + timeout_s
    while True:
        pids = [pid for pid in find() if pid != os.getpid() and is_alive(pid)]
        if not pids or time.monotonic() > deadline:
            return killed
        kill_pids(pids)
        killed += [pid for pid in pids if pid not in killed]
        time.sleep(0.01)
