"""Console output: third-party warnings, log records and progress bars go to the log file, not to stderr
(:mod:`promptintern.logs`); ``verbose`` echoes them; our own bars are drawn on a terminal only."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from promptintern import logs

#: Third-party console noise: warnings, deprecation notes, tqdm bars ("  3%|▎  | 8/240").
NOISE = ("Warning", "deprecated", "%|", "[transformers]", "--metadata")


@pytest.fixture
def quiet(monkeypatch):
    """:func:`logs.configure` undone after the test (handlers, hooks, patched tqdm, environment)."""
    for name in (logs.LOG_ENV, "TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(name, raising=False)
    import tqdm  # noqa: F401 - imported before TQDM_DISABLE is set, which it would keep as its default
    logs._reset()
    yield logs.configure
    logs._reset()


def _third_party_records() -> None:
    from transformers.utils import logging as hf_logging

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("quiet-test: `past_key_values` is deprecated", FutureWarning, stacklevel=1)
    hf_logging.get_logger("transformers.quiet_test").warning("quiet-test: this argument is deprecated")
    logging.getLogger("lm_eval.api.task").warning("quiet-test: kwargs can be passed to `--metadata`")


def test_configure_sends_warnings_and_library_logs_to_the_file(quiet, capfd):
    path = quiet()
    assert path.parent == Path(os.environ["PROMPTINTERN_HOME"]) / "logs"
    assert quiet() == path  # idempotent
    _third_party_records()
    out, err = capfd.readouterr()
    assert "quiet-test" not in err and "quiet-test" not in out
    text = path.read_text(encoding="utf-8")
    assert "FutureWarning: quiet-test: `past_key_values` is deprecated" in text
    assert "transformers.quiet_test: quiet-test: this argument is deprecated" in text
    assert "lm_eval.api.task: quiet-test: kwargs can be passed to `--metadata`" in text
    assert os.environ[logs.LOG_ENV] == str(path)  # child processes log to the same file


def test_verbose_echoes_them_on_stderr(quiet, capfd):
    path = quiet(verbose=True)
    _third_party_records()
    err = capfd.readouterr().err
    assert "FutureWarning: quiet-test: `past_key_values` is deprecated" in err
    assert "[transformers.quiet_test] warning: quiet-test: this argument is deprecated" in err
    assert "--metadata" in err
    assert "quiet-test: this argument is deprecated" in path.read_text(encoding="utf-8")


def test_our_warnings_stay_on_the_console_and_steps_reach_the_file(quiet, capfd):
    path = quiet()
    ours = logging.getLogger("promptintern.quiet_test")
    ours.warning("quiet-test: %d prompts cut", 3)
    ours.info("quiet-test: stage details")
    logs.step("1/2 nl2bash/promptintern: start", "reproduce")
    logs.step("kept out of the console", "reproduce", show=False)
    err = capfd.readouterr().err.splitlines()
    assert err[0] == "warning: quiet-test: 3 prompts cut"
    assert len(err) == 2 and err[1].startswith("[reproduce ") and err[1].endswith("] 1/2 nl2bash/promptintern: start")
    text = path.read_text(encoding="utf-8")
    assert "INFO promptintern.quiet_test: quiet-test: stage details" in text
    assert "reproduce: 1/2 nl2bash/promptintern: start" in text and "kept out of the console" in text


def test_tqdm_is_disabled_off_a_terminal(quiet, capfd):
    from tqdm import tqdm
    from tqdm.auto import tqdm as auto_tqdm

    quiet()
    assert os.environ["TQDM_DISABLE"] == "1" and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    for cls in (tqdm, auto_tqdm):
        bar = cls(range(3), disable=False, desc="quiet-test bar")  # asks for a bar: still none
        assert bar.disable and list(bar) == [0, 1, 2]
    assert "quiet-test bar" not in capfd.readouterr().err
    logs._reset()
    assert not tqdm(range(3), disable=False, file=sys.stdout).disable  # undone


def test_progress_is_a_no_op_off_a_terminal(quiet, capfd):
    path = quiet()
    with logs.progress(10, "quiet-test step") as bar:
        bar.advance(3)
        bar.update(5)
        assert not bar.drawn
    assert list(logs.track(iter(range(4)), "quiet-test track")) == [0, 1, 2, 3]
    assert capfd.readouterr().err == ""
    text = path.read_text(encoding="utf-8")
    assert "quiet-test step: start (10)" in text and "quiet-test step: finished in" in text


def test_progress_draws_one_display_for_nested_steps_on_a_terminal(monkeypatch):
    monkeypatch.setattr(logs, "_terminal", lambda: True)
    with logs.progress(4, "outer") as outer:
        live = logs._live
        with logs.progress(None, "inner") as inner:
            assert inner.drawn and logs._live is live  # one live display (rich allows only one)
        outer.advance(4)
        assert outer.drawn and live.tasks[0].completed == 4
        with logs.progress(2, "off", enabled=False) as off:
            assert not off.drawn
    assert logs._live is None and logs._open == 0


def test_after_import_runs_a_hook_once_when_the_module_is_imported(tmp_path, monkeypatch):
    (tmp_path / "quiet_probe_module.py").write_text("VALUE = 1\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    try:
        logs.after_import("quiet_probe_module", lambda m: seen.append(m.VALUE))
        assert seen == []
        import quiet_probe_module

        assert seen == [1] and "exec_module" not in vars(quiet_probe_module.__loader__)
        logs.after_import("quiet_probe_module", lambda m: seen.append(2))  # already imported: now
        assert seen == [1, 2]
    finally:
        sys.modules.pop("quiet_probe_module", None)
        logs._reset()


def test_training_and_generation_print_nothing_but_our_lines(quiet, capfd, tiny_model_dir, one_torch_thread):
    """Trainer log dicts (``{'train_runtime': ...}``), its tqdm bar and the generate bar: off the console."""
    from promptintern.harness.experiment import Experiment
    from promptintern.profile import load_profile

    path = quiet()
    exp = Experiment("nl2bash", "ft-none", load_profile("smoke"), model=str(tiny_model_dir))
    exp.evaluate(progress=True)
    out, err = capfd.readouterr()
    assert out == ""
    assert not any(noise in err for noise in (*NOISE, "train_runtime", "'loss'", "it/s")), err
    text = path.read_text(encoding="utf-8")
    assert "stage 1, step" in text and "train_runtime" in text  # the Trainer's logs, in the file
    assert "generate nl2bash/ft-none: finished in" in text


def _run(home: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python *args`` with ``PROMPTINTERN_HOME=home``, stdout and stderr captured (not a terminal)."""
    env = {k: v for k, v in os.environ.items() if k not in (logs.LOG_ENV, "TQDM_DISABLE")}
    env["PROMPTINTERN_HOME"] = str(home)
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=Path(__file__).resolve().parents[1])  # fmt: skip


def test_a_fresh_process_is_quiet_before_the_libraries_load(tmp_path):
    """configure() first, as the CLI does: transformers, tqdm and huggingface_hub load after it (import hooks)."""
    code = textwrap.dedent(
        """
        import sys, warnings
        from promptintern import logs
        path = logs.configure()
        assert "transformers" not in sys.modules and "tqdm" not in sys.modules
        from transformers.utils import logging as hf_logging
        from transformers import AutoConfig  # noqa: F401
        hf_logging.get_logger("transformers.probe").warning("probe: this is deprecated")
        warnings.warn("probe: `is_gradient_checkpointing` is deprecated", FutureWarning)
        from tqdm.auto import tqdm
        for _ in tqdm(range(3), desc="probe bar", disable=False):
            pass
        for _ in hf_logging.tqdm(range(3), desc="probe hf bar"):
            pass
        print(path)
        """
    )
    res = _run(tmp_path / "home", "-c", code)
    assert res.returncode == 0, res.stderr
    assert not any(noise in res.stderr for noise in NOISE), res.stderr
    assert "probe" not in res.stderr
    text = Path(res.stdout.strip()).read_text(encoding="utf-8")
    assert "probe: this is deprecated" in text and "FutureWarning: probe:" in text


@pytest.mark.integration
def test_tokens_on_a_fresh_home_prints_no_library_output(tmp_path):
    """The issue's check: the embedded model's first use (GGUF conversion) through ``promptintern tokens``."""
    home = tmp_path / "fresh-home"
    res = _run(home, "-m", "promptintern.cli", "tokens", "-t", "nl2bash", "--profile", "smoke", "--json", timeout=900)
    assert res.returncode == 0, res.stderr
    assert not any(noise in res.stderr for noise in NOISE), res.stderr
    assert "converting" in res.stderr  # our one line about the first use
    assert len(res.stderr.splitlines()) <= 2, res.stderr
    assert '"mean_input_tokens"' in res.stdout
    (log,) = (home / "logs").iterdir()  # the CLI configured the log file of this home
    assert "first use of the embedded model" in log.read_text(encoding="utf-8")
