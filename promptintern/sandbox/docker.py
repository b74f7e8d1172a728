"""Docker backend: one throw-away container per run, with the flags of the usual "official runner".

``--network=none --read-only --cap-drop=ALL --security-opt=no-new-privileges --pids-limit --memory
--tmpfs /tmp --user nobody``.  The process limit is the container's pids cgroup (RLIMIT_NPROC would
count every uid-65534 process on the host, so the bootstrap's is disabled).  Killing ``docker run``
does not stop its container, so a run that did not end cleanly is followed by ``docker rm -f``.
Build the default image with::

    docker build -t promptintern-sandbox:latest -f promptintern/sandbox/runner.Dockerfile promptintern/sandbox
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

from .limits import RUN_ENV, Backend, Run, SandboxUnavailable

DEFAULT_IMAGE = "promptintern-sandbox:latest"
FALLBACK_IMAGE = "python:3.11-slim"
DOCKERFILE = Path(__file__).with_name("runner.Dockerfile")
SCRATCH_MB = 64


class DockerBackend(Backend):
    """Runs each program in ``docker run --rm -i <hardening flags> IMAGE python BOOTSTRAP``."""

    name = "docker"

    def __init__(self, image: str = DEFAULT_IMAGE, *, docker: str = "docker", python: str = "python",
                 user: str = "65534:65534", check: bool = True):
        self.image, self.docker, self.python, self.user = image, docker, python, user
        if check:
            self.check()

    def check(self) -> None:
        """Raise :class:`SandboxUnavailable` unless the engine answers and the image exists."""
        if not shutil.which(self.docker):
            raise SandboxUnavailable(
                f"the docker sandbox needs Docker, but `{self.docker}` is not on PATH: install Docker "
                "(https://docs.docker.com/engine/install/) or choose the bwrap sandbox (--sandbox bwrap)"
            )
        if _quiet([self.docker, "info"]) != 0:
            raise SandboxUnavailable(
                "the docker sandbox needs a running Docker engine, but `docker info` failed: start the engine "
                "(e.g. `sudo systemctl start docker`) or choose the bwrap sandbox (--sandbox bwrap)"
            )
        if _quiet([self.docker, "image", "inspect", self.image]) != 0:
            raise SandboxUnavailable(
                f"image {self.image!r} not found: `docker build -t {DEFAULT_IMAGE} -f {DOCKERFILE} {DOCKERFILE.parent}`"
                f" or pass image={FALLBACK_IMAGE!r} (after `docker pull {FALLBACK_IMAGE}`)"
            )

    @staticmethod
    def container_name(run: Run) -> str:
        return f"promptintern-sandbox-{run.run_id}"

    def command(self, run: Run) -> list[str]:
        limits = run.limits
        argv = [self.docker, "run", "--rm", "-i", "--name", self.container_name(run),
                "--label", "promptintern.sandbox=1", "--network=none", "--read-only", "--cap-drop=ALL",
                "--security-opt=no-new-privileges", f"--user={self.user}", "--workdir=/tmp",
                f"--tmpfs=/tmp:rw,nosuid,nodev,noexec,size={SCRATCH_MB}m", "--cpus=1",
                "--env", "HOME=/tmp", "--env", f"{RUN_ENV}={run.run_id}"]
        if limits.nproc > 0:
            argv.append(f"--pids-limit={limits.nproc}")
        if limits.memory_mb > 0:
            argv += [f"--memory={limits.memory_mb}m", f"--memory-swap={limits.memory_mb}m"]
        inner = Run(dataclasses.replace(limits, nproc=0), run.run_id, run.nonce)
        return argv + [self.image] + inner.bootstrap_argv(self.python)

    def reap(self, run: Run, proc: subprocess.Popen | None) -> None:
        if proc is not None and proc.returncode is not None and proc.returncode >= 0:
            return  # the client exited by itself, so --rm removed the container
        _quiet([self.docker, "rm", "-f", self.container_name(run)])


def _quiet(argv: list[str]) -> int:
    try:
        return subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60).returncode
    except (OSError, subprocess.TimeoutExpired):
        return -1
