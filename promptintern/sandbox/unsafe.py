"""Plain-subprocess backend: NO isolation.  Only for trusted code or machines where nothing else runs.

It still applies the rlimits, the wall-clock deadline with a process-group kill, and a best-effort
sweep of processes carrying the run id (in argv or environment), which catches double-forked daemons
that did not scrub both.  There is no network, filesystem or pid isolation, and as root the process
limit is not enforced by the kernel.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

from .limits import RUN_ENV, Backend, Run, SandboxError, kill_until_gone, marked_processes

log = logging.getLogger(__name__)

WARNING = (
    "UNSAFE: the 'subprocess' sandbox backend runs untrusted generated code directly on this machine "
    "with NO network, filesystem or process isolation (only rlimits and a timeout)."
)


def _banner() -> None:
    log.warning(WARNING)
    try:
        from rich.console import Console
        from rich.panel import Panel

        Console(stderr=True).print(Panel(WARNING, title="NO SANDBOX", style="bold red"))
    except Exception:  # rich missing or no terminal: the log line above is still there
        print(f"!!! {WARNING} !!!", file=sys.stderr)


class UnsafeSubprocessBackend(Backend):
    """Runs the bootstrap as a direct child; requires ``unsafe=True``."""

    name = "subprocess"

    def __init__(self, *, unsafe: bool = False, python: str | None = None):
        if not unsafe:
            raise SandboxError(
                "the 'subprocess' backend executes untrusted code WITHOUT a sandbox; pass unsafe=True "
                "(CLI: --unsafe-no-sandbox) if you really mean it, or use backend='bwrap'/'docker'"
            )
        self.python = python or sys.executable
        if os.geteuid() == 0:
            log.warning("running as root: RLIMIT_NPROC is not enforced, a fork bomb is not contained")
        _banner()

    def command(self, run: Run) -> list[str]:
        run.state["workdir"] = tempfile.mkdtemp(prefix="promptintern-unsafe-")
        return run.bootstrap_argv(self.python)

    def popen_kwargs(self, run: Run) -> dict[str, Any]:
        workdir = run.state["workdir"]
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir,
               RUN_ENV: run.run_id}
        return {"env": env, "cwd": workdir}

    def reap(self, run: Run, proc: subprocess.Popen | None) -> None:
        run.state["reaped"] = kill_until_gone(lambda: marked_processes(run.run_id))
        if "workdir" in run.state:
            shutil.rmtree(run.state["workdir"], ignore_errors=True)
