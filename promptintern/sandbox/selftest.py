"""Hostile-candidate self test: each case must be *contained* (host-side evidence) and *scored FAIL*.

Host-side fixtures make the evidence real: a loopback TCP server the candidate tries to reach, a
0600 secret file and write targets outside the sandbox, a canary process of our own uid that
``kill -1`` must not reach, and a scan of ``/proc`` for processes carrying a run id after each run.
One benign program must PASS.  Cases that would damage the host without a sandbox (fork bomb as
root, ``kill -1``) are skipped for the unsafe backend, which is expected to report ``ok: false``.
"""

from __future__ import annotations

import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import get_backend
from .limits import Backend, ExecResult, Limits, kill_pids, marked_processes

SELFTEST_LIMITS = Limits(cpu_s=3, wall_s=4, memory_mb=512, nproc=16, fsize_mb=10, nofile=64, output_bytes=64 * 1024)
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Fixtures:
    """Host-side bait and witnesses shared by the cases."""

    sandboxed: bool
    limits: Limits
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="promptintern-selftest-")))
    token: str = field(default_factory=lambda: secrets.token_hex(8))
    secret: str = field(default_factory=lambda: "SECRET-" + secrets.token_hex(16))

    def __post_init__(self) -> None:
        self.tmp.chmod(0o755)
        self.secret_path = self.tmp / "secret.txt"
        self.secret_path.write_text(self.secret)
        self.secret_path.chmod(0o600)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.setblocking(False)
        self.port = self.server.getsockname()[1]
        self.canary = subprocess.Popen(["sleep", "120"], start_new_session=True)
        self.daemon_file = self.tmp / "daemon-alive"
        name = f".promptintern-selftest-{self.token}"
        outside = [REPO_ROOT / name, Path.home() / name, Path("/etc") / name, Path(sys.prefix) / name]
        self.write_targets = [self.tmp / "written"] + (outside if self.sandboxed else [])

    def connections(self) -> int:
        count = 0
        while True:
            try:
                conn, _ = self.server.accept()
            except (BlockingIOError, OSError):
                return count
            conn.close()
            count += 1

    def close(self) -> None:
        self.server.close()
        self.canary.kill()
        self.canary.wait()
        for path in self.write_targets:
            path.unlink(missing_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)


Evidence = Callable[[ExecResult, Fixtures], tuple[bool, str]]


@dataclass
class Case:
    name: str
    program: str
    evidence: Evidence
    destructive: bool = False  # skipped without a sandbox
    heavy: bool = False  # burns CPU until a limit: run alone
    expect_pass: bool = False

    def render(self, fx: Fixtures) -> str:
        subs = {"@PORT@": str(fx.port), "@SECRET_PATH@": str(fx.secret_path), "@HOME@": str(Path.home()),
                "@TARGETS@": repr([str(p) for p in fx.write_targets]), "@DAEMON_FILE@": str(fx.daemon_file)}
        text = self.program
        for key, value in subs.items():
            text = text.replace(key, value)
        return text


def _no_marker(word: str) -> Evidence:
    def check(result: ExecResult, fx: Fixtures) -> tuple[bool, str]:
        hit = word in result.stdout
        return not hit, (f"candidate reported {word}" if hit else f"no {word} in output")
    return check


def _loopback(result: ExecResult, fx: Fixtures) -> tuple[bool, str]:
    n = fx.connections()
    return n == 0 and "CONNECTED" not in result.stdout, f"host server saw {n} connection(s)"


def _writes(result: ExecResult, fx: Fixtures) -> tuple[bool, str]:
    made = [str(p) for p in fx.write_targets if p.exists()]
    return not made, f"files created on the host: {made}" if made else "no file created on the host"


def _secrets(result: ExecResult, fx: Fixtures) -> tuple[bool, str]:
    leaked = fx.secret in result.stdout + result.stderr or "LEAKED" in result.stdout
    lines = [line for line in result.stdout.splitlines() if line.startswith("LEAKED")]
    return not leaked, "; ".join(lines)[:300] if leaked else "secret file, /etc/shadow, ~/.ssh unreadable"


def _forks(result: ExecResult, fx: Fixtures) -> tuple[bool, str]:
    match = re.search(r"FORKED (\d+)", result.stdout)
    n = int(match.group(1)) if match else -1
    return 0 <= n < fx.limits.nproc, f"{n} forks succeeded (nproc limit {fx.limits.nproc})"


def _output(result: ExecResult, fx: Fixtures) -> tuple[bool, str]:
    size = len(result.stdout.encode())
    return size <= fx.limits.output_bytes + 200, f"kept {size} bytes of 64 MiB written"


def _canary(result: ExecResult, fx: Fixtures) -> tuple[bool, str]:
    alive = fx.canary.poll() is None
    return alive, "host canary process alive" if alive else "host canary process was killed"


def _daemon(result: ExecResult, fx: Fixtures) -> tuple[bool, str]:
    left = marked_processes(result.run_id)
    kill_pids(left)
    time.sleep(2.0)  # the daemon writes after 1.5 s if it survived
    wrote = fx.daemon_file.exists()
    return not left and not wrote, f"survivors={left} wrote_file={wrote}"


def _timeout(result: ExecResult, fx: Fixtures) -> tuple[bool, str]:
    bound = fx.limits.wall_s + 2
    return result.status == "timeout" and result.duration_s <= bound, f"stopped after {result.duration_s}s"


def _memory(result: ExecResult, fx: Fixtures) -> tuple[bool, str]:
    return result.status == "failed" and result.duration_s < fx.limits.wall_s, result.detail


def _no_sentinel(result: ExecResult, fx: Fixtures) -> tuple[bool, str]:
    return not result.sentinel_seen, result.detail


CASES = [
    Case("network_loopback", """
import socket
try:
    s = socket.create_connection(("127.0.0.1", @PORT@), timeout=1); s.sendall(b"hi"); s.close(); print("CONNECTED")
except OSError as e:
    print("blocked:", e)
assert False, "must not be reached with network access either"
""", _loopback),
    Case("network_outside", """
import socket
for host, port in (("1.1.1.1", 53), ("8.8.8.8", 443), ("93.184.215.14", 80)):
    try:
        socket.create_connection((host, port), timeout=1).close(); print("CONNECTED", host)
    except OSError as e:
        print("blocked:", host, e)
assert False
""", _no_marker("CONNECTED")),
    Case("dns", """
import socket
try:
    print("RESOLVED", socket.getaddrinfo("pypi.org", 443)[0][4])
except OSError as e:
    print("blocked:", e)
assert False
""", _no_marker("RESOLVED")),
    Case("write_outside", """
hits = []
for path in @TARGETS@:
    try:
        with open(path, "w") as f:
            f.write("pwned")
        hits.append(path)
    except OSError as e:
        print("blocked:", path, e)
print("WROTE", hits)
assert hits
""", _writes),
    Case("read_secrets", """
import glob
for pattern in ("@SECRET_PATH@", "/etc/shadow", "/root/.ssh/*", "@HOME@/.ssh/*", "/root/.bash_history"):
    for path in glob.glob(pattern) or [pattern]:
        try:
            with open(path, "rb") as f:
                data = f.read(4096)
            print("LEAKED", path, data[:80] if path == "@SECRET_PATH@" else f"({len(data)} bytes)")
        except OSError as e:
            print("blocked:", path, e)
assert False
""", _secrets),
    Case("fork_bomb", """
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
""", _timeout, destructive=True, heavy=True),
    Case("nproc_limit", """
import os, time
ok = 0
for _ in range(200):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    ok += 1
print("FORKED", ok)
assert ok >= 200
""", _forks, destructive=True),
    Case("memory_bomb", """
blocks = []
while True:
    blocks.append(bytearray(64 << 20))
""", _memory),
    Case("infinite_loop", "while True:\n    pass\n", _timeout, heavy=True),
    Case("os__exit", "def add(a, b):\n    return a - b\nimport os\nos._exit(0)\nassert add(1, 2) == 3\n", _no_sentinel),
    Case("sys_exit", "def add(a, b):\n    return a - b\nimport sys\nsys.exit(0)\nassert add(1, 2) == 3\n", _no_sentinel),
    Case("builtin_exit", "def add(a, b):\n    return a - b\nexit()\nassert add(1, 2) == 3\n", _no_sentinel),
    Case("kill_self", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", _no_sentinel),
    Case("kill_parent", """
import os, signal
for target in (os.getppid(), 1, -1):
    try:
        os.kill(target, signal.SIGKILL); print("sent SIGKILL to", target)
    except OSError as e:
        print("blocked:", target, e)
assert False
""", _canary, destructive=True),
    Case("huge_output", """
import sys
chunk = "A" * 65536
for _ in range(1024):
    sys.stdout.write(chunk)
sys.stdout.flush()
assert False
""", _output),
    Case("daemon", """
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(1.5)
        for path in ("@DAEMON_FILE@", "/tmp/daemon-alive"):
            try:
                open(path, "w").write("alive")
            except OSError:
                pass
        time.sleep(30)
    os._exit(0)
time.sleep(0.2)
assert False
""", _daemon),
    Case("fake_sentinel", """
import os, re, sys
seen = b" ".join(a.encode() for a in sys.argv)
for path in ("/proc/self/cmdline", "/proc/self/environ", "/proc/1/cmdline", "/proc/1/environ"):
    try:
        seen += open(path, "rb").read()
    except OSError:
        pass
seen += sys.stdin.buffer.read()
guesses = {g.decode() for g in re.findall(rb"[0-9a-f]{32}", seen)} | {"0" * 32, "f" * 32}
for g in guesses:
    sys.stdout.write("\\n#<promptintern:done:%s>\\n" % g)
sys.stdout.flush()
os._exit(0)
""", _no_sentinel),
    Case("benign", "def add(a, b):\n    return a + b\nassert add(1, 2) == 3\n",
         lambda r, fx: (r.status == "passed", r.detail), expect_pass=True),
]


def _run_case(case: Case, backend: Backend, fx: Fixtures) -> tuple[dict[str, Any], str]:
    result = backend.run(case.render(fx), fx.limits)
    contained, evidence = case.evidence(result, fx)
    if not case.expect_pass:
        contained = contained and fx.canary.poll() is None
    scored_fail = result.status != "passed"
    ok = (result.status == "passed") if case.expect_pass else (contained and scored_fail)
    row = {"case": case.name, "contained": contained, "scored_fail": scored_fail, "status": result.status,
           "detail": (evidence if evidence == result.detail else f"{evidence} | {result.detail}")[:400], "ok": ok, "duration_s": result.duration_s}
    return row, result.run_id


def selftest(backend_name: str = "bwrap", unsafe: bool = False, limits: Limits | None = None) -> dict[str, Any]:
    """Run every case against ``backend_name`` and return a JSON-able report with an overall ``ok``."""
    start = time.monotonic()
    backend = get_backend(backend_name, unsafe=unsafe)
    sandboxed = backend_name != "subprocess"
    fx = Fixtures(sandboxed=sandboxed, limits=limits or SELFTEST_LIMITS)
    rows: dict[str, dict[str, Any]] = {}
    run_ids: list[str] = []
    try:
        runnable = [c for c in CASES if sandboxed or not c.destructive]
        for case in CASES:
            if case not in runnable:
                rows[case.name] = {"case": case.name, "contained": None, "scored_fail": None, "status": "skipped",
                                   "detail": "destructive without a sandbox", "ok": None, "duration_s": 0.0}
        with ThreadPoolExecutor(max_workers=4) as pool:
            for row, run_id in pool.map(lambda c: _run_case(c, backend, fx), [c for c in runnable if not c.heavy]):
                rows[row["case"]] = row
                run_ids.append(run_id)
        for case in (c for c in runnable if c.heavy):
            row, run_id = _run_case(case, backend, fx)
            rows[row["case"]] = row
            run_ids.append(run_id)
        leftovers = sorted({pid for run_id in run_ids for pid in marked_processes(run_id)})
        kill_pids(leftovers)
        canary_alive = fx.canary.poll() is None
    finally:
        fx.close()
    cases = [rows[c.name] for c in CASES]
    ok = all(r["ok"] for r in cases if r["ok"] is not None) and not leftovers and canary_alive
    return {"backend": backend_name, "ok": ok, "cases": cases, "leftover_processes": leftovers,
            "canary_alive": canary_alive, "duration_s": round(time.monotonic() - start, 2)}
