"""Sandbox: bwrap containment (self test), result classification, limits, docker argv, unsafe gating."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time

import pytest
from conftest import BWRAP_ERROR, needs_bwrap
from typer.testing import CliRunner

from promptintern.sandbox import (
    ExecResult,
    Limits,
    SandboxError,
    SandboxUnavailable,
    get_backend,
    run_python,
)
from promptintern.sandbox import cli as sandbox_cli
from promptintern.sandbox.docker import DockerBackend
from promptintern.sandbox.limits import BOOTSTRAP, Run, is_alive, marked_processes
from promptintern.sandbox.selftest import CASES
from promptintern.sandbox.unsafe import UnsafeSubprocessBackend

FAST = Limits(cpu_s=2, wall_s=3, memory_mb=512, nproc=16)

CHILD_AND_SLEEP = """
import os, time
if os.fork() == 0:
    time.sleep(60)
    os._exit(0)
time.sleep(60)
"""


def survivors(run_id: str, wait_s: float = 2.0) -> list[int]:
    """Live processes carrying ``run_id`` once SIGKILLs already sent have had ``wait_s`` to land."""
    deadline = time.monotonic() + wait_s
    while True:
        alive = [pid for pid in marked_processes(run_id) if is_alive(pid)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.02)


@pytest.fixture(scope="module")
def bwrap():
    return get_backend("bwrap")


@pytest.fixture(scope="module")
def report():
    if BWRAP_ERROR and not os.environ.get("CI"):
        pytest.skip(BWRAP_ERROR)
    from promptintern.sandbox.selftest import selftest

    return selftest("bwrap")


@pytest.fixture
def unsafe():
    return UnsafeSubprocessBackend(unsafe=True)


# --- self test -------------------------------------------------------------------------------------


def test_selftest_ok_under_bwrap(report):
    assert report["ok"], json.dumps(report, indent=1)
    assert report["leftover_processes"] == [] and report["canary_alive"]
    assert report["duration_s"] < 60
    json.dumps(report)  # JSON-able


@pytest.mark.parametrize("case", [c.name for c in CASES])
def test_selftest_case(report, case):
    row = next(r for r in report["cases"] if r["case"] == case)
    if case == "benign":
        assert row["status"] == "passed", row
    else:
        assert row["contained"] and row["scored_fail"], row
    assert row["ok"], row


# --- classification and the sentinel ----------------------------------------------------------------


@needs_bwrap
def test_pass_needs_exit_zero_and_sentinel(bwrap):
    result = run_python("print('hi')\nassert 1 + 1 == 2\n", backend=bwrap, limits=FAST)
    assert isinstance(result, ExecResult)
    assert (result.status, result.returncode, result.sentinel_seen) == ("passed", 0, True)
    assert result.stdout == "hi\n" and "promptintern" not in result.stdout


@needs_bwrap
@pytest.mark.parametrize("early", ["import os; os._exit(0)", "import sys; sys.exit(0)", "exit()", "raise SystemExit"])
def test_early_exit_fails(bwrap, early):
    result = run_python(f"{early}\nassert False\n", backend=bwrap, limits=FAST)
    assert result.status == "failed" and result.returncode == 0 and not result.sentinel_seen


@needs_bwrap
def test_spoofed_sentinel_fails(bwrap):
    spoof = "import os, sys\nsys.stdout.write('\\n#<promptintern:done:' + '0' * 32 + '>\\n')\nsys.stdout.flush()\nos._exit(0)\n"
    result = run_python(spoof, backend=bwrap, limits=FAST)
    assert result.status == "failed" and not result.sentinel_seen


def test_nonce_is_not_in_argv_or_program():
    run = Run(Limits())
    argv = run.bootstrap_argv("python")
    assert run.nonce not in " ".join(argv) and run.run_id in argv
    assert run.nonce not in BOOTSTRAP


@needs_bwrap
def test_failures_and_errors_are_described(bwrap):
    assert run_python("assert 1 == 2\n", backend=bwrap, limits=FAST).detail == "AssertionError"
    assert "SyntaxError" in run_python("def f(:\n", backend=bwrap, limits=FAST).detail
    assert run_python("x = bytearray(2 << 30)\n", backend=bwrap, limits=FAST).detail == "MemoryError"


@needs_bwrap
def test_output_is_capped(bwrap):
    limits = Limits(wall_s=5, output_bytes=1000)
    result = run_python("import sys\nsys.stdout.write('x' * 5_000_000)\nsys.stderr.write('y' * 5_000_000)\n",
                        backend=bwrap, limits=limits)
    assert result.status == "passed"  # the sentinel is found in the tail even past the cap
    assert len(result.stdout) < 1100 and "truncated" in result.stdout
    assert len(result.stderr) < 1100 and "truncated" in result.stderr


@needs_bwrap
def test_file_size_and_cpu_limits(bwrap):
    big = run_python("open('/tmp/f', 'wb').write(b'0' * (20 << 20))\n", backend=bwrap,
                     limits=Limits(wall_s=5, fsize_mb=10))
    assert big.status == "failed" and "File too large" in big.detail
    spin = run_python("while True:\n    pass\n", backend=bwrap, limits=Limits(cpu_s=1, wall_s=5))
    assert spin.status == "timeout" and "CPU" in spin.detail


@needs_bwrap
def test_wall_timeout_kills_everything_bwrap(bwrap):
    result = run_python(CHILD_AND_SLEEP, backend=bwrap, limits=Limits(wall_s=1))
    assert result.status == "timeout" and result.duration_s < 3
    assert survivors(result.run_id) == []


def test_timeout_kills_process_group(tmp_path):
    """With no reaping at all, the process-group SIGKILL alone must take the forked child down."""

    class GroupKillOnly(UnsafeSubprocessBackend):
        def reap(self, run, proc):
            shutil.rmtree(run.state["workdir"], ignore_errors=True)

    backend = GroupKillOnly(unsafe=True)
    result = backend.run(CHILD_AND_SLEEP, Limits(wall_s=1))
    assert result.status == "timeout" and result.duration_s < 3
    assert survivors(result.run_id) == []


def test_unsafe_runs_with_limits_and_reaps_daemons(unsafe):
    assert unsafe.run("assert 2 + 2 == 4\n", FAST).status == "passed"
    daemon = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\nos._exit(0)\n"
    result = unsafe.run(daemon, FAST)
    assert result.status == "failed" and survivors(result.run_id) == []


# --- backend selection -----------------------------------------------------------------------------


def test_unsafe_requires_explicit_flag(caplog):
    with pytest.raises(SandboxError, match="unsafe=True"):
        get_backend("subprocess")
    with pytest.raises(SandboxError):
        run_python("pass", backend="subprocess")
    with caplog.at_level(logging.WARNING):
        backend = get_backend("subprocess", unsafe=True)
    assert backend.name == "subprocess" and "UNSAFE" in caplog.text


def test_unknown_backend():
    with pytest.raises(ValueError, match="bwrap"):
        get_backend("chroot")


def test_missing_bwrap_is_explained(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap"):
        get_backend("bwrap")


def test_spawn_failure_is_an_error():
    backend = UnsafeSubprocessBackend(unsafe=True, python="/nonexistent/python")
    result = backend.run("pass", FAST)
    assert result.status == "error" and not result.passed


# --- docker ----------------------------------------------------------------------------------------


def test_docker_argv_is_exact():
    backend = DockerBackend(check=False)
    run = Run(Limits(cpu_s=10, wall_s=10, memory_mb=1024, nproc=32, fsize_mb=10, nofile=64), run_id="abc123")
    argv = backend.command(run)
    assert argv == [
        "docker", "run", "--rm", "-i", "--name", "promptintern-sandbox-abc123",
        "--label", "promptintern.sandbox=1", "--network=none", "--read-only", "--cap-drop=ALL",
        "--security-opt=no-new-privileges", "--user=65534:65534", "--workdir=/tmp",
        "--tmpfs=/tmp:rw,nosuid,nodev,noexec,size=64m", "--cpus=1",
        "--env", "HOME=/tmp", "--env", "PROMPTINTERN_SANDBOX_RUN=abc123",
        "--pids-limit=32", "--memory=1024m", "--memory-swap=1024m",
        "promptintern-sandbox:latest",
        "python", "-I", "-B", "-X", "utf8", "-c", BOOTSTRAP, "abc123", "10", "1024", "0", "10", "64",
    ]
    assert run.nonce not in " ".join(argv)
    other = DockerBackend("python:3.11-slim", check=False).command(run)
    assert "python:3.11-slim" in other and "--privileged" not in other


def _docker_engine() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _docker_engine(), reason="no Docker engine (docker info failed)")
def test_docker_live():
    try:
        backend = get_backend("docker")
    except SandboxUnavailable:
        backend = get_backend("docker", image="python:3.11-slim")
    assert run_python("assert 1 == 1\n", backend=backend, limits=FAST).status == "passed"
    assert run_python("import os; os._exit(0)\n", backend=backend, limits=FAST).status == "failed"


# --- CLI -------------------------------------------------------------------------------------------


def test_cli_selftest_exit_codes(monkeypatch):
    import promptintern.sandbox.selftest as st

    runner = CliRunner()
    good = {"backend": "bwrap", "ok": True, "cases": [], "leftover_processes": [], "canary_alive": True,
            "duration_s": 0.1}
    monkeypatch.setattr(st, "selftest", lambda backend, unsafe=False: good)
    result = runner.invoke(sandbox_cli.app, ["selftest", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["ok"] is True
    monkeypatch.setattr(st, "selftest", lambda backend, unsafe=False: {**good, "ok": False})
    assert runner.invoke(sandbox_cli.app, ["selftest"]).exit_code == 1


def test_cli_refuses_unsafe_without_flag():
    result = CliRunner().invoke(sandbox_cli.app, ["selftest", "--backend", "subprocess"])
    assert result.exit_code == 2


@needs_bwrap
def test_interpreter_under_tmp_is_visible(tmp_path):
    """A venv under /tmp (e.g. a CI checkout) must stay visible beneath the sandbox's private /tmp."""
    import subprocess
    import sys

    from promptintern.sandbox.bwrap import BwrapBackend

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    backend = BwrapBackend(python=str(venv / "bin" / "python"))
    result = run_python("import sys, os; print(sys.prefix); open('/tmp/scratch', 'w').write('x')",
                        backend=backend, limits=Limits(wall_s=20, cpu_s=10))
    assert result.passed, result.stderr
    assert result.stdout.strip() == str(venv)
