"""Bubblewrap backend (the default).

The sandbox gets a fresh, read-only root holding only ``/usr`` (plus the ``/bin``, ``/lib*`` links),
the dynamic-linker cache and time zone, and the interpreter's install directories (venv and base
prefix), all read-only; a new procfs, a minimal ``/dev``, size-capped private tmpfs ``/tmp`` and
``/sandbox`` (the working directory); new pid, ipc, uts, net and cgroup namespaces; a cleared
environment; ``--die-with-parent`` and ``--new-session``.

RLIMIT_NPROC is only enforced for a non-root *host* uid, so a per-run uid is chosen:

* **as root**, bwrap runs privileged (it can bind ``/root/...`` interpreters), keeps only
  CAP_SETUID/SETGID/SETPCAP, and ``setpriv`` switches the program to a random uid in
  ``[1.6e9, 1.6e9 + 2**24)`` with no groups, no capabilities (bounding set emptied) and
  no-new-privs.  The fork limit therefore counts this run's processes only, and after the run every
  process still owned by that uid is killed;
* **as a normal user**, bwrap runs unprivileged in a new user namespace (``--disable-userns`` forbids
  nested ones).  The bootstrap sets RLIMIT_NPROC after the namespace exists, and the kernel counts
  processes per user namespace, so the limit again covers this run only.

Either way the program runs under bwrap's pid-namespace init: when the program exits or the process
group is killed, the kernel kills everything left in the namespace, double-forked daemons included.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys

from .limits import (
    RUN_ENV,
    Backend,
    Limits,
    Run,
    SandboxUnavailable,
    kill_until_gone,
    marked_processes,
    process_uids,
)

UID_BASE, UID_SPAN = 1_600_000_000, 1 << 24
SCRATCH_BYTES = 64 << 20
_PROBES: dict[tuple, str] = {}


def interpreter_dirs(python: str) -> list[str]:
    """Minimal set of directories that make ``python`` (and, for ``sys.executable``, its venv) work."""
    dirs = {os.path.dirname(os.path.dirname(p)) for p in (os.path.abspath(python), os.path.realpath(python))}
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        dirs |= {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    dirs |= {os.path.realpath(d) for d in dirs}
    dirs = {os.path.abspath(d) for d in dirs if d}
    outside_usr = [d for d in dirs if d != "/" and d != "/usr" and not d.startswith("/usr/")]
    return sorted(d for d in outside_usr if not any(d.startswith(o + "/") for o in outside_usr))


def _system_mounts() -> list[str]:
    argv = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = "/" + name
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    argv += ["--perms", "0755", "--dir", "/etc"]
    for path in ("/etc/ld.so.cache", "/etc/localtime"):
        argv += ["--ro-bind-try", path, path]
    return argv


def _ro_binds(dirs: list[str]) -> list[str]:
    """Bind ``dirs`` read-only, first creating their ancestors world-traversable (bwrap defaults to 0700)."""
    argv, made = [], {"/", "/etc", "/usr", "/tmp", "/sandbox"}
    for path in dirs:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            parent = "/" + "/".join(parts[:i])
            if parent not in made:
                made.add(parent)
                argv += ["--perms", "0755", "--dir", parent]
        argv += ["--ro-bind", path, path]
    return argv


class BwrapBackend(Backend):
    """Runs programs under bubblewrap; see the module docstring for the isolation it provides."""

    name = "bwrap"

    def __init__(self, *, python: str | None = None, extra_ro_binds: tuple[str, ...] = (), check: bool = True):
        bwrap = shutil.which("bwrap")
        if not bwrap:
            raise SandboxUnavailable(
                "the bwrap sandbox needs bubblewrap, which is not installed (no `bwrap` on PATH): "
                "`apt-get install bubblewrap` (Debian/Ubuntu) or `dnf install bubblewrap` (Fedora), "
                "or choose the docker sandbox (--sandbox docker)"
            )
        self.bwrap, self.python = bwrap, python or sys.executable
        self.privileged = os.geteuid() == 0
        self.setpriv = shutil.which("setpriv") or ""
        if self.privileged and not self.setpriv:
            raise SandboxUnavailable(
                "the bwrap sandbox running as root needs `setpriv` to drop to an unprivileged uid: "
                "`apt-get install util-linux` (Debian/Ubuntu) or `dnf install util-linux` (Fedora)"
            )
        self.binds = interpreter_dirs(self.python) + [os.path.abspath(p) for p in extra_ro_binds]
        if check:
            self.check()

    def check(self) -> None:
        """Run a trivial program once per configuration; raise :class:`SandboxUnavailable` if it fails."""
        key = (self.privileged, self.python, tuple(self.binds))
        if key not in _PROBES:
            result = self.run("print('ok')", Limits(wall_s=30, cpu_s=10))
            _PROBES[key] = "" if result.passed and result.stdout.strip() == "ok" else (
                f"{result.detail}; stderr: {' '.join(result.stderr.split())[-500:]}")
        if _PROBES[key]:
            raise SandboxUnavailable(
                f"bwrap could not run a test program: {_PROBES[key]}. Unprivileged user namespaces must be "
                "enabled for non-root use (sysctl kernel.unprivileged_userns_clone=1; on Ubuntu 24.04+ "
                "kernel.apparmor_restrict_unprivileged_userns=0), or run inside a VM/container that allows them."
            )

    def command(self, run: Run) -> list[str]:
        argv = [self.bwrap, "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net",
                "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--clearenv", "--hostname", "sandbox"]
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/sandbox", "TMPDIR": "/tmp", "LANG": "C.UTF-8",
               RUN_ENV: run.run_id}
        for key, value in env.items():
            argv += ["--setenv", key, value]
        argv += _system_mounts() + ["--proc", "/proc", "--dev", "/dev"]
        for scratch in ("/tmp", "/sandbox"):
            argv += ["--perms", "1777", "--size", str(SCRATCH_BYTES), "--tmpfs", scratch]
        # after the scratch tmpfs, so an interpreter installed under /tmp (a CI checkout) stays visible
        argv += _ro_binds(self.binds)
        argv += ["--remount-ro", "/", "--chdir", "/sandbox"]
        if self.privileged:
            uid = run.state["uid"] = UID_BASE + secrets.randbelow(UID_SPAN)
            argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID",
                     "--cap-add", "CAP_SETPCAP", "--", self.setpriv, f"--reuid={uid}", f"--regid={uid}",
                     "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
        else:
            argv += ["--unshare-user", "--disable-userns", "--uid", "65534", "--gid", "65534",
                     "--cap-drop", "ALL", "--"]
        return argv + run.bootstrap_argv(self.python)

    def reap(self, run: Run, proc: subprocess.Popen | None) -> None:
        """After a normal exit the pid namespace is already gone.  After we killed bwrap, its init dies
        by PDEATHSIG a moment later: wait for everything carrying the run id (and, as root, the uid)."""
        uid = run.state.get("uid")
        killed = proc is None or proc.returncode is None or proc.returncode < 0

        def leftovers() -> list[int]:
            owned = [pid for pid, owner in process_uids().items() if owner == uid] if uid is not None else []
            return owned + (marked_processes(run.run_id) if killed else [])

        run.state["reaped"] = kill_until_gone(leftovers)
