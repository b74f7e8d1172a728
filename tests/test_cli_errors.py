"""User errors of the CLI: one plain ``error:`` line on stderr (no traceback unless --debug), a non-zero exit,
``{"error": ...}`` on stdout with --json; plain switches, -h, --version and lm-eval's task names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from promptintern.cli import _mount_sandbox, app
from promptintern.errors import UserError, check_output_file

_mount_sandbox()
runner = CliRunner()


@pytest.fixture
def cli(tmp_path):
    """Run ``python -m promptintern.cli ARGS`` with its own PROMPTINTERN_HOME; ``path`` replaces $PATH."""
    home = tmp_path / "home"

    def run(*args, path: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
        environ = {k: v for k, v in os.environ.items() if k != "PROMPTINTERN_DEBUG"}
        environ |= {"PROMPTINTERN_HOME": str(home), **(env or {})}
        if path is not None:
            environ["PATH"] = path
        return subprocess.run(
            [sys.executable, "-m", "promptintern.cli", *map(str, args)],
            capture_output=True, text=True, env=environ, cwd=tmp_path, timeout=120,
        )  # fmt: skip

    return run


def one_error_line(res: subprocess.CompletedProcess, code: int = 2) -> str:
    """The only line on stderr, checked to be a plain ``error:`` line without a traceback."""
    assert res.returncode == code, (res.returncode, res.stderr)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr + res.stdout and "╭" not in res.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture
def no_sandbox_path(tmp_path) -> str:
    """A $PATH without bwrap and with a ``docker`` client that has no engine to talk to."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(
        "#!/bin/sh\necho 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
        "Is the docker daemon running?' >&2\nexit 1\n"
    )
    docker.chmod(0o755)
    return str(bin_dir)


# -- paths ------------------------------------------------------------------------------------------------


def test_missing_predictions_file(cli):
    line = one_error_line(cli("eval", "--task", "nl2bash", "--predictions", "missing.jsonl"))
    assert "--predictions missing.jsonl" in line and "no such" in line


def test_predictions_directory(cli, tmp_path):
    (tmp_path / "preds").mkdir()
    line = one_error_line(cli("eval", "--task", "nl2bash", "--predictions", "preds/"))
    assert "--predictions preds" in line and "is a directory" in line


def test_out_directory_is_refused_before_scoring(cli, tmp_path, no_sandbox_path):
    (tmp_path / "rows").mkdir()
    # MBPP without bwrap would fail when scoring starts: the --out error must come first
    line = one_error_line(cli("eval", "-t", "mbpp", "--oracle", "--out", "rows/", path=no_sandbox_path))
    assert "--out rows" in line and "is a directory" in line
    assert list((tmp_path / "rows").iterdir()) == []


def test_check_output_file(tmp_path):
    assert check_output_file(tmp_path / "new" / "deeper" / "rows.jsonl") == tmp_path / "new" / "deeper" / "rows.jsonl"
    assert not (tmp_path / "new").exists()  # checked, not created
    (tmp_path / "a-file").write_text("")
    with pytest.raises(UserError, match="a-file is not a directory"):
        check_output_file(tmp_path / "a-file" / "rows.jsonl")
    with pytest.raises(UserError, match="--out .* is a directory"):
        check_output_file(tmp_path)


# -- sandboxes --------------------------------------------------------------------------------------------


def test_mbpp_without_bubblewrap(cli, no_sandbox_path):
    line = one_error_line(cli("eval", "-t", "mbpp", "--oracle", path=no_sandbox_path))
    assert "bubblewrap" in line and "apt-get install bubblewrap" in line and "--sandbox docker" in line


def test_docker_sandbox_without_engine(cli, no_sandbox_path):
    line = one_error_line(cli("eval", "-t", "mbpp", "--oracle", "--sandbox", "docker", path=no_sandbox_path))
    assert "Docker engine" in line and "--sandbox bwrap" in line


def test_submit_docker_sandbox_without_engine(cli, tmp_path, no_sandbox_path):
    from promptintern.evaluation.scoring import oracle_predictions
    from promptintern.tasks import get_task

    sub = tmp_path / "sub"
    (sub / "predictions").mkdir(parents=True)
    refs = oracle_predictions(get_task("mbpp").load("test"))
    (sub / "predictions" / "mbpp.jsonl").write_text(
        "".join(json.dumps({"task_id": tid, "prediction": ref}) + "\n" for tid, ref in refs.items())
    )
    (sub / "submission.yaml").write_text("name: x\nmodel: m\nmethod: promptintern\ncontact: a@example.org\n")
    store = tmp_path / "store.sqlite"
    res = cli("submit", sub, "--sandbox", "docker", "--store", store, "--json", path=no_sandbox_path)
    line = one_error_line(res)
    assert "Docker engine" in line
    assert json.loads(res.stdout) == {"error": line.removeprefix("error: ")}
    assert not store.exists()


# -- --json, --debug --------------------------------------------------------------------------------------


def test_json_errors_go_to_stdout_too(cli):
    res = cli("eval", "--task", "nl2bash", "--predictions", "missing.jsonl", "--json")
    line = one_error_line(res)
    assert json.loads(res.stdout) == {"error": line.removeprefix("error: ")}
    usage = cli("data", "stats", "--json", "--bogus")
    assert "No such option: --bogus" in one_error_line(usage)
    assert "--bogus" in json.loads(usage.stdout)["error"]


def test_debug_shows_the_traceback(cli):
    for res in (
        cli("--debug", "eval", "--task", "nl2bash", "--predictions", "missing.jsonl"),
        cli("eval", "--task", "nl2bash", "--predictions", "missing.jsonl", env={"PROMPTINTERN_DEBUG": "1"}),
    ):
        assert res.returncode == 2
        assert "Traceback (most recent call last)" in res.stderr and "UserError" in res.stderr
        assert res.stderr.strip().splitlines()[-1].startswith("error: --predictions missing.jsonl")


def test_debug_flag_is_not_left_in_the_environment():
    before = os.environ.pop("PROMPTINTERN_DEBUG", None)
    try:
        res = runner.invoke(app, ["--debug", "eval", "--task", "nl2bash", "--predictions", "missing.jsonl"])
        assert res.exit_code == 2 and "Traceback" in res.output
        assert "PROMPTINTERN_DEBUG" not in os.environ
    finally:
        if before is not None:
            os.environ["PROMPTINTERN_DEBUG"] = before


def test_verbose_configures_logging(monkeypatch):
    import promptintern.logs

    calls = []
    monkeypatch.setattr(promptintern.logs, "configure", lambda verbose=False: calls.append(verbose))
    args = ["eval", "--task", "nl2bash", "--predictions", "missing.jsonl"]
    assert runner.invoke(app, ["-v", *args]).exit_code == 2
    assert runner.invoke(app, ["--verbose", *args]).exit_code == 2
    assert runner.invoke(app, args).exit_code == 2
    assert calls == [True, True, False]


# -- stores and profiles ----------------------------------------------------------------------------------


def test_leaderboard_refuses_a_missing_store(cli, tmp_path):
    line = one_error_line(cli("leaderboard", "--store", "typo.sqlite"))
    assert "--store typo.sqlite" in line and "no such results store" in line
    assert not (tmp_path / "typo.sqlite").exists()
    line = one_error_line(cli("leaderboard"))
    assert "no results store at" in line and "promptintern submit" in line
    assert not (tmp_path / "home" / "results.sqlite").exists()


def test_schedule_pattern_error_names_file_and_field(tmp_path):
    from promptintern.profile import ProfileError, load_profile

    path = tmp_path / "bad.yaml"
    path.write_text("extends: smoke\nmethod:\n  template_schedule: {pattern: linearr}\n  example_pattern: stepp\n")
    with pytest.raises(ProfileError) as info:
        load_profile(str(path))
    text = str(info.value)
    assert text.startswith(f"{path}: ")
    assert "method.template_schedule.pattern: unknown schedule pattern 'linearr'" in text
    assert "method.example_pattern: unknown schedule pattern 'stepp'" in text
    assert "Value error" not in text
    path.write_text("extends: smoke\nmethod:\n  template_schedule: {pattern: constant, start: 1.0}\n")
    with pytest.raises(ProfileError, match=r"method\.template_schedule: a constant schedule needs end == start"):
        load_profile(str(path))


# -- usage errors and help --------------------------------------------------------------------------------


def test_usage_errors_are_one_plain_line(cli):
    assert "No such option: --bogus" in one_error_line(cli("eval", "--task", "nl2bash", "--bogus"))
    assert "Missing option '--task'" in one_error_line(cli("eval"))
    line = one_error_line(cli("data", "stats", "--json", "true"))
    assert "unexpected extra argument" in line and "true" in line
    line = one_error_line(cli("data", "export", "--task", "nl2f"))
    assert "Missing option '--references'" in line


def _commands(group, prefix=()):
    for name, command in group.commands.items():
        yield (*prefix, name)
        if hasattr(command, "commands"):
            yield from _commands(command, (*prefix, name))


def test_every_help_shows_switches_without_a_value_and_takes_h():
    import typer

    root = typer.main.get_command(app)
    paths = [(), *_commands(root)]
    assert ("lm-eval",) in paths and ("reproduce",) in paths and ("data", "export") in paths
    for path in paths:
        shown = runner.invoke(app, [*path, "--help"])
        assert shown.exit_code == 0, (path, shown.output)
        assert "<bool>" not in shown.output, path
        assert runner.invoke(app, [*path, "-h"]).output == shown.output, path
    export = runner.invoke(app, ["data", "export", "--help"]).output
    assert "*  --references" in export  # marked required


def test_version(cli):
    from importlib.metadata import version

    res = cli("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"promptintern {version('promptintern')}"


# -- lm-eval task names -----------------------------------------------------------------------------------


def test_lm_eval_accepts_its_own_task_names():
    from promptintern.harness.lm_eval_cli import _task_refs

    assert _task_refs(["promptintern_nl2bash"], None) == (["nl2bash"], "query")
    assert _task_refs(["promptintern_nl2bash_full", "nl2f"], None) == (["nl2bash", "nl2f"], "full")
    assert _task_refs(["nl2bash"], None) == (["nl2bash"], "query")
    assert _task_refs(["promptintern_full"], None) == (None, "full")
    assert _task_refs(None, "full") == (None, "full")
    with pytest.raises(UserError, match="separate runs"):
        _task_refs(["promptintern_nl2bash_full", "promptintern_nl2f"], None)
    with pytest.raises(UserError, match="--prompt is query"):
        _task_refs(["promptintern_nl2bash_full"], "query")
    res = runner.invoke(app, ["lm-eval", "-t", "promptintern_nl2bash", "--print-include-path"])
    assert res.exit_code == 0, res.output
    assert (Path(res.stdout.strip()) / "promptintern_nl2bash.yaml").is_file()
