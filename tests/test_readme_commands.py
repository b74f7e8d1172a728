"""Every command README.md shows is exercised here.

The commands are read from README.md itself: each line of a ``bash`` fenced block (comments stripped, ``\\``
continuations joined) and every inline code span that starts like a command (``promptintern ...``, ``make ...``,
``PROFILE=...``, ``tox ...``, ``accelerate launch ...``). Every one must be claimed by a case below
(:func:`test_every_readme_command_has_a_case` fails on a new command without one, and
:func:`test_no_case_for_a_command_readme_no_longer_shows` on a stale case). A case does one of:

* run it for real, as a subprocess of the installed ``promptintern`` script, from a scratch folder (``cwd``,
  with ``examples`` linked to the repository's, so README's relative paths work and default outputs such as
  ``results/<profile>/`` land there) under the test's ``$PROMPTINTERN_HOME``, and require exit 0;
* run it with a substitution that keeps its code path but makes it small (listed in the case's ``sub``): the
  tiny random model for the embedded one, the ``smoke`` profile and a one-row table spec for the ``cpu`` /
  ``cpu-full`` / example profiles, a loopback HTTP mirror of the data root for the network, ``--limit``;
* where it cannot run here at all (a GPU, ``make setup`` installing packages, the test suite itself), parse its
  real arguments with click's parser (:func:`parse`, which raises on an unknown option or a bad value) and name
  the test that covers its code path.

Placeholders of README's usage lines (``T``, ``[--json]``, ``a|b``) are filled with concrete values, and every
README ``promptintern`` command without placeholders is also parsed as written
(:func:`test_concrete_readme_commands_parse`). Cases that load the embedded model are marked ``integration``.
"""

from __future__ import annotations

import configparser
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import typer
from conftest import BWRAP_ERROR

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
COMMAND_PREFIXES = ("promptintern ", "make ", "PROFILE=", "tox ", "accelerate launch ")
TIMEOUT_S = 600


# ----------------------------------------------------------------------------------------- README commands
def _inline_spans(markdown: str) -> list[str]:
    """CommonMark code spans: a run of n backticks up to the next run of exactly n; line ends become spaces."""
    spans, i = [], 0
    while (start := markdown.find("`", i)) != -1:
        n = len(markdown[start:]) - len(markdown[start:].lstrip("`"))
        close = re.compile(rf"(?<!`){'`' * n}(?!`)")
        end = close.search(markdown, start + n)
        if end is None:
            i = start + n
            continue
        spans.append(" ".join(markdown[start + n : end.start()].split()))
        i = end.end()
    return spans


def readme_commands(text: str | None = None) -> list[str]:
    """The commands README.md shows, whitespace-normalised, in order, without duplicates."""
    text = README.read_text(encoding="utf-8") if text is None else text
    commands, prose, block, lang = [], [], None, ""
    for line in text.splitlines():
        fence = re.match(r"^\s*```(\w*)\s*$", line)
        if block is None and fence:
            block, lang = [], fence.group(1)
        elif block is not None and line.strip().startswith("```"):
            if lang in ("bash", "sh", "shell", "console"):
                for cmd in "\n".join(block).replace("\\\n", " ").splitlines():
                    cmd = re.sub(r"(^|\s)#.*$", "", cmd).strip()
                    if cmd:
                        commands.append(" ".join(cmd.split()))
            block = None
        elif block is not None:
            block.append(line)
        else:
            prose.append(line)
    commands += [s.replace("\\|", "|") for s in _inline_spans("\n".join(prose)) if s.startswith(COMMAND_PREFIXES)]
    return list(dict.fromkeys(commands))


# ----------------------------------------------------------------------------------------------- the cases
@dataclass(frozen=True)
class Case:
    covers: tuple[str, ...]  # the README commands, as readme_commands() spells them
    run: Callable[[Workspace], None]
    sub: str  # what differs from the README command(s), and why; "" when run exactly as written
    integration: bool = False  # loads the embedded model
    needs_bwrap: bool = False


CASES: list[Case] = []


def case(*covers: str, sub: str = "", integration: bool = False, needs_bwrap: bool = False):
    def register(fn):
        CASES.append(Case(covers, fn, sub, integration, needs_bwrap))
        return fn

    return register


TINY_SPEC = """id: "9"
title: "Table 9: README check"
tasks: [nl2f]
rows:
  - {label: Query only, method: zero-shot}
"""


class Workspace:
    """A scratch working directory for one case, with the resources its commands need, made on demand."""

    def __init__(self, tmp: Path, request: pytest.FixtureRequest):
        self.tmp, self.request = tmp, request
        self.cwd = tmp / "cwd"
        self.cwd.mkdir()
        (self.cwd / "examples").symlink_to(REPO / "examples", target_is_directory=True)

    @functools.cached_property
    def tiny(self) -> str:
        return str(self.request.getfixturevalue("tiny_model_dir"))

    @functools.cached_property
    def spec(self) -> str:
        """A one-row table spec (zero-shot on NL2F-Spider): reproduce's whole path, seconds with the tiny model."""
        path = self.tmp / "specs" / "table9.yaml"
        path.parent.mkdir()
        path.write_text(TINY_SPEC, encoding="utf-8")
        return str(path)

    @functools.cached_property
    def tiny_profile(self) -> str:
        """The smoke profile with the tiny model (what tests pass with --model, for commands that take none)."""
        path = self.tmp / "smoke-tiny.yaml"
        path.write_text(f"name: smoke-tiny\nextends: smoke\nmodel: {self.tiny}\n", encoding="utf-8")
        return str(path)

    @functools.cached_property
    def mirror(self) -> str:
        """The data root served over HTTP on 127.0.0.1, laid out as <mirror>/<dataset>/<file> like --mirror."""
        from promptintern.paths import data_file

        root = data_file("mbpp", "mbpp.jsonl").parents[1]

        class Quiet(SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.request.addfinalizer(lambda: (server.shutdown(), server.server_close()))
        return f"http://127.0.0.1:{server.server_address[1]}"

    def sh(self, *argv: str, cwd: Path | None = None, stdin: str | None = None,
           check: bool = True) -> subprocess.CompletedProcess:  # fmt: skip
        proc = subprocess.run(
            [str(a) for a in argv], cwd=cwd or self.cwd, input=stdin, capture_output=True, text=True,
            timeout=TIMEOUT_S,
        )  # fmt: skip
        assert not check or proc.returncode == 0, f"{' '.join(map(str, argv))}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return self.sh(*promptintern_exe(), *args, stdin=stdin)


def promptintern_exe() -> list[str]:
    script = Path(sys.executable).with_name("promptintern")
    return [str(script)] if script.exists() else [sys.executable, "-m", "promptintern.cli"]


@functools.cache
def root_command() -> Any:
    from promptintern import cli

    if not any(group.name == "sandbox" for group in cli.app.registered_groups):
        cli._mount_sandbox()  # main() mounts it before running
    return typer.main.get_command(cli.app)


def parse(*args: str, partial: bool = False) -> Any:
    """Parse ``promptintern ARGS`` down to the leaf command with click's parser (typer's), running nothing;
    returns the leaf's context. Raises a usage error on an unknown command or option or a bad value, and (unless
    ``partial``: a command named in prose by some of its options) on a missing required option."""
    command = root_command()
    ctx = command.make_context("promptintern", list(args))
    while hasattr(command, "resolve_command"):  # a group
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        name, command, rest = command.resolve_command(ctx, rest)
        try:
            ctx = command.make_context(name, rest, parent=ctx)
        except Exception as exc:  # typer bundles its own click: match the class by name
            if partial and type(exc).__name__ == "MissingParameter":  # raised only after every option parsed
                return None
            raise
    assert not ctx.args, f"promptintern {' '.join(args)}: unparsed {ctx.args}"
    return ctx


def check_profile(name: str) -> None:
    from promptintern.profile import load_profile

    load_profile(str(REPO / name) if name.endswith(".yaml") else name)


def need_make() -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")


def make(*args: str, cwd: Path = REPO) -> str:
    """``make -n`` (print the recipes, run nothing) with this interpreter's venv; returns the recipe lines."""
    need_make()
    proc = subprocess.run(
        ["make", "-n", "-f", str(REPO / "Makefile"), f"VENV={sys.prefix}", *args],
        cwd=cwd, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def parse_recipe_commands(recipes: str) -> int:
    """Parse every ``promptintern`` command of ``make -n`` output; returns how many there were."""
    found = 0
    for line in recipes.splitlines():
        words = line.split()
        for i, word in enumerate(words):
            if Path(word).name == "promptintern":
                parse(*words[i + 1 :])
                found += 1
                break
    return found


# ---- Set up on a fresh machine / Development ----------------------------------------------------------
@case(
    "make setup reproduce", "make setup test", "make setup",
    sub="dry run (make -n): `setup` installs system packages with apt and a .venv with pip. Its pieces are what "
    "CI runs (.ci/run: `make setup`, `make lint`, `make test`); `reproduce` runs in case_make_reproduce.",
)  # fmt: skip
def case_make_setup(w: Workspace) -> None:
    assert "pip install" in make("setup")
    assert parse_recipe_commands(make("setup", "reproduce")) == 2  # sandbox selftest, reproduce
    assert "pytest" in make("setup", "test")


@case(
    "make test-fast", "make test",
    sub="dry run (make -n): they run this test suite (CI: .ci/run runs `make test`); checked to call pytest with "
    "the marker selections README describes.",
)  # fmt: skip
def case_make_tests(w: Workspace) -> None:
    assert re.search(r"pytest -q$", make("test-fast"), re.M)
    assert "-m \"integration or not integration\"" in make("test")


@case("make lint")
def case_make_lint(w: Workspace) -> None:
    need_make()
    w.sh("make", "-f", REPO / "Makefile", f"VENV={sys.prefix}", "lint", cwd=REPO)


@case(
    "make bench",
    sub="dry run (make -n) plus a check that pytest-benchmark is installed: the suites take minutes "
    "(tox -e bench runs them).",
)  # fmt: skip
def case_make_bench(w: Workspace) -> None:
    assert "pytest benchmarks --benchmark-only" in make("bench")
    import pytest_benchmark  # noqa: F401


@case("tox -e tests,lint,bench", sub="`tox config` for those environments (tox resolves them, runs nothing).")
def case_tox(w: Workspace) -> None:
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(REPO / "tox.ini")
    assert {"testenv:tests", "testenv:lint", "testenv:bench"} <= set(ini.sections())
    tox = Path(sys.executable).with_name("tox")
    if not tox.exists():
        pytest.skip("tox is not installed")
    out = w.sh(tox, "config", "-c", REPO / "tox.ini", "--workdir", w.tmp / "tox", "-e", "tests,lint,bench",
               "-k", "commands").stdout  # fmt: skip
    assert "pytest benchmarks --benchmark-only" in out and "ruff check ." in out


@case(
    "make reproduce",
    sub="PROFILE = the smoke profile with the tiny model, TABLES = a one-row table spec, run from a scratch "
    "folder (results/ lands there): the same recipe (sandbox self test, then promptintern reproduce).",
    needs_bwrap=True,
)  # fmt: skip
def case_make_reproduce(w: Workspace) -> None:
    need_make()
    w.sh("make", "-f", REPO / "Makefile", f"VENV={sys.prefix}", "reproduce", f"PROFILE={w.tiny_profile}",
         f"TABLES={w.spec}")  # fmt: skip
    assert (w.cwd / "results" / "smoke-tiny" / "table9.md").is_file()


@case(
    "PROFILE=paper make reproduce",
    sub="needs a GPU: `make -n` with PROFILE=paper, its promptintern commands parsed and the paper profile "
    "loaded; reproduce's code path runs in case_make_reproduce and tests/test_reproduce.py.",
)  # fmt: skip
def case_make_reproduce_paper(w: Workspace) -> None:
    recipes = make("reproduce", "PROFILE=paper")
    assert "reproduce --profile paper --tables 1,2,3,4,5,6,7,8" in recipes
    assert parse_recipe_commands(recipes) == 2
    check_profile("paper")


# ---- reproduce -----------------------------------------------------------------------------------------
@case(
    "promptintern reproduce --profile cpu",
    "promptintern reproduce --profile cpu-full",
    "promptintern reproduce --profile {smoke,cpu,paper} [--tables 1,2,...]",
    "promptintern reproduce [--profile P] [--tables 1,2,...] [--full] [-t T ...] [--backend B]",
    sub="--profile smoke --model TINY --tables <one-row spec> (the cpu profile takes ~45 min on the embedded "
    "model); the README arguments are parsed as written and the cpu, cpu-full and paper profiles loaded.",
)  # fmt: skip
def case_reproduce(w: Workspace) -> None:
    for profile in ("cpu", "cpu-full", "smoke", "paper"):
        parse("reproduce", "--profile", profile, "--tables", "1,2")
        check_profile(profile)
    parse("reproduce", "--profile", "cpu", "--tables", "5", "--full", "-t", "nl2bash", "-t", "nl2f",
          "--backend", "llamacpp")  # fmt: skip
    w.cli("reproduce", "--profile", "smoke", "--model", w.tiny, "--tables", w.spec, "--full", "-t", "nl2f",
          "--backend", "hf", "--quiet")  # fmt: skip
    assert (w.cwd / "results" / "smoke" / "table9.md").is_file()


@case(
    "promptintern reproduce --from-results results/cpu",
    sub="on a copy of results/cpu (it rewrites the folder it reads).",
)
def case_reproduce_from_results(w: Workspace) -> None:
    shutil.copytree(REPO / "results" / "cpu", w.cwd / "results" / "cpu")
    w.cli("reproduce", "--from-results", "results/cpu")
    assert (w.cwd / "results" / "cpu" / "claims.md").is_file()


@case(
    "promptintern reproduce --from-results other-clone/results/cpu-full --out results/cpu-full --tasks nl2f",
    sub="on copies of results/cpu (NL2Bash, smaller) for both folders, --tasks nl2bash.",
)
def case_reproduce_add_a_piece(w: Workspace) -> None:
    for folder in ("results/cpu-full", "other-clone/results/cpu-full"):
        shutil.copytree(REPO / "results" / "cpu", w.cwd / folder)
    rows = (w.cwd / "results/cpu-full/rows.jsonl").read_text().splitlines()
    w.cli("reproduce", "--from-results", "other-clone/results/cpu-full", "--out", "results/cpu-full", "--tasks",
          "nl2bash")  # fmt: skip
    assert len((w.cwd / "results/cpu-full/rows.jsonl").read_text().splitlines()) == len(rows)
    assert "--tasks nl2bash" in (w.cwd / "results/cpu-full/table1.md").read_text()


@case(
    "promptintern reproduce --profile cpu-full --dry-run",
    sub="run as written, with a copy of results/cpu beside it (a folder of the cpu-full sizing's reuse).",
)
def case_reproduce_dry_run(w: Workspace) -> None:
    shutil.copytree(REPO / "results" / "cpu", w.cwd / "results" / "cpu")
    listing = w.cli("reproduce", "--profile", "cpu-full", "--dry-run").stdout
    assert "  kept     nl2bash/ft-none seed 0 " in listing and "  to run   mbpp/gist" in listing
    assert not (w.cwd / "results" / "cpu-full").exists()  # nothing recorded or written


@case(
    "promptintern plan --profile paper [--tables 1,2,...] [--tasks T,...] [--models M,...] [--json]",
    "promptintern plan --profile paper [--models M,...] [--json]",
    sub="--models Llama2-7B,GPT-3.5-turbo-0125 --tables 7 --tasks nl2bash (the whole paper plan expands 360 rows, "
    "~40 s; tests/test_memory_plan.py covers it); the README arguments are parsed as written.",
)  # fmt: skip
def case_plan(w: Workspace) -> None:
    parse("plan", "--profile", "paper", "--tables", "1,2", "--tasks", "nl2bash", "--models", "Llama2-7B", "--json")
    out = json.loads(w.cli("plan", "--profile", "paper", "--models", "Llama2-7B,GPT-3.5-turbo-0125", "--tables", "7",
                           "--tasks", "nl2bash", "--json").stdout)  # fmt: skip
    assert {r["model"] for r in out["rows"]} == {"Llama2-7B", "GPT-3.5-turbo-0125"} and out["totals"]["gpu_hours"] > 0


@case(
    "promptintern --debug <command>",
    "promptintern -v <command>",
    sub="<command>: `eval --task nl2bash --predictions MISSING` (an error: --debug adds the traceback) and "
    "`data stats -t nl2bash` (-v: the same stdout).",
)  # fmt: skip
def case_global_options(w: Workspace) -> None:
    missing = str(w.tmp / "missing.jsonl")
    plain = w.sh(*promptintern_exe(), "eval", "--task", "nl2bash", "--predictions", missing, check=False)
    debug = w.sh(*promptintern_exe(), "--debug", "eval", "--task", "nl2bash", "--predictions", missing, check=False)
    assert plain.returncode == debug.returncode == 2 and "Traceback" in debug.stderr
    assert len(plain.stderr.strip().splitlines()) == 1 and "Traceback" not in plain.stderr
    quiet, verbose = (w.cli(*pre, "data", "stats", "-t", "nl2bash", "--json") for pre in ((), ("-v",)))
    assert json.loads(quiet.stdout) == json.loads(verbose.stdout)


# ---- data ----------------------------------------------------------------------------------------------
@case(
    "promptintern data fetch",
    "promptintern data fetch [--dataset D] [--mirror URL]",
    "promptintern data fetch [--dataset D] [--mirror URL] [--dest DIR]",
    sub="--mirror http://127.0.0.1:PORT, a local HTTP server of the data root (no network here); the same "
    "download, sha256 check and atomic write as from the public URLs (tests/test_fetch.py).",
)  # fmt: skip
def case_data_fetch(w: Workspace) -> None:
    report = json.loads(w.cli("data", "fetch", "--mirror", w.mirror, "--json").stdout)
    assert report["skipped"] == [] and "spider/dev.json" in report["fetched"] and "mbpp/mbpp.jsonl" in report["fetched"]
    dest = w.tmp / "dest"
    report = json.loads(w.cli("data", "fetch", "--dataset", "mbpp", "--mirror", w.mirror, "--dest", dest,
                              "--json").stdout)  # fmt: skip
    assert report["fetched"] == ["mbpp/mbpp.jsonl"] and (dest / "mbpp" / "mbpp.jsonl").is_file()


@case("promptintern data stats --json", "promptintern data stats [-t T ...] [--json]")
def case_data_stats(w: Workspace) -> None:
    stats = json.loads(w.cli("data", "stats", "--json").stdout)
    assert stats["mbpp"] == {"train": 374, "validation": 90, "test": 500, "prompt": 10}
    assert stats["nl2bash"] == {"train": 8088, "validation": 604, "test": 621}
    assert stats["nl2f"] == {"train": 265, "validation": 36, "test": 52}
    w.cli("data", "stats", "-t", "nl2f", "-t", "./examples/shop-sql")  # the table, not JSON


@case("promptintern data export --task T [--split S] --references [--out F]")
def case_data_export(w: Workspace) -> None:
    w.cli("data", "export", "--task", "nl2f", "--split", "validation", "--references", "--out", "refs.jsonl")
    assert len((w.cwd / "refs.jsonl").read_text().splitlines()) == 36


@case("promptintern --include-path DIR <command> ...")
def case_include_path(w: Workspace) -> None:
    stats = json.loads(w.cli("--include-path", "examples", "data", "stats", "-t", "shop-sql", "--json").stdout)
    assert set(stats) == {"shop-sql"}


# ---- prompts and tokens --------------------------------------------------------------------------------
@case(
    "promptintern prompt --task nl2f --id spider-dev-117 --model embedded",
    sub="--model TINY (the tiny random model has a chat template too): the embedded one runs in "
    "test_readme_command_integration.",
)  # fmt: skip
def case_prompt_example(w: Workspace) -> None:
    out = w.cli("prompt", "--task", "nl2f", "--id", "spider-dev-117", "--model", w.tiny).stdout
    assert "<|im_start|>" in out and "[TABLE]" in out


@case("promptintern prompt --task nl2f --id spider-dev-117 --model embedded", integration=True)
def case_prompt_example_embedded(w: Workspace) -> None:
    assert "<|im_start|>" in w.cli("prompt", "--task", "nl2f", "--id", "spider-dev-117", "--model", "embedded").stdout


@case("promptintern prompt --task T --id ID [--split S] [--query-only] [--model M]")
def case_prompt(w: Workspace) -> None:
    full = w.cli("prompt", "--task", "nl2f", "--id", "spider-dev-117").stdout
    query = w.cli("prompt", "--task", "nl2f", "--id", "spider-dev-117", "--split", "test", "--query-only").stdout
    assert len(query) < len(full) and query.strip() in full


@case(
    "promptintern show-prompts --task T --id ID [--profile P]",
    sub="--profile = smoke with the tiny model (show-prompts has no --model; smoke's model is the embedded one).",
)
def case_show_prompts(w: Workspace) -> None:
    refs = w.cli("data", "export", "--task", "nl2f", "--split", "train", "--references").stdout
    train_id = json.loads(refs.splitlines()[0])["task_id"]
    out = w.cli("show-prompts", "--task", "nl2f", "--id", train_id, "--profile", w.tiny_profile).stdout
    assert out.count("===== stage") == 3


@case(
    "promptintern tokens --task ./examples/shop-sql --profile smoke",
    "promptintern tokens --task T [--profile P] [--json]",
    sub="--model TINY: the smoke profile's model is the embedded one (run as written in "
    "test_readme_command_integration).",
)  # fmt: skip
def case_tokens(w: Workspace) -> None:
    w.cli("tokens", "--task", "./examples/shop-sql", "--profile", "smoke", "--model", w.tiny)
    out = json.loads(w.cli("tokens", "--task", "nl2f", "--profile", "smoke", "--model", w.tiny, "--json").stdout)
    assert out["n"] == 52


@case("promptintern tokens --task ./examples/shop-sql --profile smoke", integration=True)
def case_tokens_embedded(w: Workspace) -> None:
    w.cli("tokens", "--task", "./examples/shop-sql", "--profile", "smoke")


@case(
    "promptintern tokens --task T --model openai:gpt-4 --json",
    "promptintern tokens --template extended",
    sub="--profile smoke (truncation compressor): the default cpu profile compresses with the embedded model "
    "(run as written in test_readme_command_integration).",
)  # fmt: skip
def case_tokens_cl100k(w: Workspace) -> None:
    out = json.loads(w.cli("tokens", "--task", "nl2f", "--profile", "smoke", "--model", "openai:gpt-4", "--json").stdout)
    assert "cl100k_base" in out["tokenizer"] and "paper" in out
    extended = json.loads(w.cli("tokens", "--task", "nl2f", "--profile", "smoke", "--model", "openai:gpt-4",
                                "--template", "extended", "--json").stdout)  # fmt: skip
    assert extended["template"] == "extended"
    assert extended["mean_input_tokens"]["template only"] > out["mean_input_tokens"]["template only"]


@case("promptintern tokens --task T --model openai:gpt-4 --json", "promptintern tokens --template extended",
      integration=True)  # fmt: skip
def case_tokens_cl100k_cpu(w: Workspace) -> None:
    w.cli("tokens", "--task", "nl2f", "--model", "openai:gpt-4", "--json")
    w.cli("tokens", "--task", "nl2f", "--template", "extended", "--json")


# ---- train, generate, run, agree, eval -----------------------------------------------------------------
@case(
    "promptintern train --task T --method M --profile P [--model X]",
    "promptintern train|generate|run --method M",
    "promptintern generate --task T --method M --profile P [--backend hf|llamacpp|openai|auto] [--limit N] [--out F]",
    "promptintern lm-eval [-t T ...] [--prompt query|full] [--model M] [--adapter DIR] [--limit N] [--print-include-path]",
    sub="--profile smoke --model TINY --limit 2 (seconds instead of the cpu profile's minutes); lm-eval serves "
    "the trained adapter (--adapter).",
)  # fmt: skip
def case_train_generate(w: Workspace) -> None:
    adapter = w.cli("train", "--task", "nl2bash", "--method", "ft-none", "--profile", "smoke", "--model", w.tiny)
    adapter = adapter.stdout.strip().splitlines()[-1]
    assert (Path(adapter) / "adapter_config.json").is_file()
    w.cli("generate", "--task", "nl2bash", "--method", "ft-none", "--profile", "smoke", "--model", w.tiny,
          "--backend", "hf", "--limit", "2", "--out", "preds.jsonl")  # fmt: skip
    assert len((w.cwd / "preds.jsonl").read_text().splitlines()) == 2
    for backend in ("hf", "llamacpp", "openai", "auto"):
        parse("generate", "--task", "nl2bash", "--method", "promptintern", "--profile", "cpu", "--backend", backend)
    out = json.loads(w.cli("lm-eval", "-t", "nl2bash", "--model", w.tiny, "--adapter", adapter, "--limit", "1",
                           "--json").stdout)  # fmt: skip
    assert out


@case(
    "promptintern run --task ./examples/shop-sql --method promptintern --profile ./examples/shop-sql/profile.yaml --baseline zero-shot-full",
    "promptintern run --task T --method M --profile P [--backend B] [--baseline M2] [--price-model X] [--json]",
    sub="--profile smoke --model TINY instead of examples/shop-sql/profile.yaml (9 min on the embedded model); "
    "that profile is loaded and the README arguments parsed as written.",
)  # fmt: skip
def case_run(w: Workspace) -> None:
    check_profile("examples/shop-sql/profile.yaml")
    out = json.loads(w.cli("run", "--task", "./examples/shop-sql", "--method", "promptintern", "--profile", "smoke",
                           "--model", w.tiny, "--backend", "hf", "--baseline", "zero-shot-full", "--price-model",
                           "ft:gpt-4o-mini", "--json").stdout)  # fmt: skip
    assert out["comparison"]["reference"]["method"] == "zero-shot-full"


@case(
    "promptintern agree",
    "promptintern agree -t T [-t T2 ...] --method M --profile P [--backends hf,llamacpp] [--limit 100]",
    sub="--profile smoke --model TINY --backends hf,auto --limit 2 (llamacpp needs the model as GGUF, which the "
    "tiny one has not; tests/test_llamacpp.py covers it), --out in the scratch folder.",
)  # fmt: skip
def case_agree(w: Workspace) -> None:
    parse("agree", "-t", "nl2bash", "-t", "nl2f", "--method", "zero-shot", "--profile", "cpu", "--backends",
          "hf,llamacpp", "--limit", "100")  # fmt: skip
    out = w.cli("agree", "-t", "nl2bash", "-t", "nl2f", "--method", "zero-shot", "--profile", "smoke", "--model",
                w.tiny, "--backends", "hf,auto", "--limit", "2", "--out", "agreement").stdout  # fmt: skip
    assert "agree" in out and (w.cwd / "agreement.md").is_file()


@case(
    "promptintern eval --task ./examples/shop-sql --oracle",
    "promptintern eval --task T [--split S] (--predictions F | --oracle) [--partial] [--extract] [--json] [--out F] "
    "[--sandbox bwrap|docker] [--unsafe-no-sandbox]",
)  # fmt: skip
def case_eval(w: Workspace) -> None:
    assert "100.00" in w.cli("eval", "--task", "./examples/shop-sql", "--oracle").stdout
    w.cli("data", "export", "--task", "nl2f", "--split", "validation", "--references", "--out", "refs.jsonl")
    lines = (w.cwd / "refs.jsonl").read_text().splitlines()[:5]
    (w.cwd / "part.jsonl").write_text("\n".join(lines) + "\n")
    out = json.loads(w.cli("eval", "--task", "nl2f", "--split", "validation", "--predictions", "part.jsonl",
                           "--partial", "--extract", "--json", "--out", "rows.jsonl").stdout)  # fmt: skip
    assert out["n"] == 5 and (w.cwd / "rows.jsonl").is_file()
    # MBPP code runs in the --sandbox backend; --unsafe-no-sandbox selects the subprocess one (references only).
    mbpp = json.loads(w.cli("eval", "--task", "mbpp", "--split", "prompt", "--oracle", "--unsafe-no-sandbox",
                            "--json").stdout)  # fmt: skip
    assert mbpp["n"] == 10 and mbpp["failures"] == []
    parse("eval", "--task", "mbpp", "--oracle", "--sandbox", "docker")


# ---- sandbox -------------------------------------------------------------------------------------------
@case("promptintern sandbox selftest --json", needs_bwrap=True)
def case_sandbox_selftest(w: Workspace) -> None:
    assert json.loads(w.cli("sandbox", "selftest", "--json").stdout)["ok"] is True


@case(
    "promptintern sandbox selftest [--backend bwrap|docker|subprocess] [--unsafe-no-sandbox] [--json]",
    sub="parsed only: bwrap runs in case_sandbox_selftest; docker needs an engine (tests/test_sandbox.py checks its argv); "
    "the subprocess backend would run the hostile candidates (fork bomb, ...) unisolated.",
)  # fmt: skip
def case_sandbox_selftest_backends(w: Workspace) -> None:
    for backend in ("bwrap", "docker"):
        parse("sandbox", "selftest", "--backend", backend, "--json")
    parse("sandbox", "selftest", "--backend", "subprocess", "--unsafe-no-sandbox", "--json")


@case(
    "promptintern sandbox run FILE|- [--backend bwrap|docker|subprocess] [--unsafe-no-sandbox] [--wall S] [--memory MB]",
    sub="docker parsed only (no engine here).",
    needs_bwrap=True,
)  # fmt: skip
def case_sandbox_run(w: Workspace) -> None:
    (w.cwd / "ok.py").write_text("assert sum(range(4)) == 6\nprint('fine')\n")
    assert "fine" in w.cli("sandbox", "run", "ok.py", "--wall", "5", "--memory", "512").stdout
    assert "fine" in w.cli("sandbox", "run", "-", stdin="print('fine')\n").stdout
    out = w.cli("sandbox", "run", "ok.py", "--backend", "subprocess", "--unsafe-no-sandbox").stdout
    assert "fine" in out
    parse("sandbox", "run", "ok.py", "--backend", "docker")


# ---- submissions, leaderboard, lm-eval -----------------------------------------------------------------
@case("promptintern submit DIR|TAR.GZ [--json]", "promptintern leaderboard --format md|json|html [--out F]")
def case_submit_leaderboard(w: Workspace) -> None:
    sub = w.cwd / "submission"
    (sub / "predictions").mkdir(parents=True)
    w.cli("data", "export", "--task", "nl2f", "--references", "--out", sub / "predictions" / "nl2f.jsonl")
    (sub / "submission.yaml").write_text("name: readme\nmodel: gpt-4\nmethod: promptintern\ncontact: a@example.org\n")
    assert json.loads(w.cli("submit", "submission", "--json").stdout)
    shutil.make_archive(str(w.cwd / "again"), "gztar", root_dir=sub)
    w.cli("submit", "again.tar.gz")  # identical content: recognised, exit 0
    assert "readme" in w.cli("leaderboard", "--format", "md").stdout
    json.loads(w.cli("leaderboard", "--format", "json").stdout)
    w.cli("leaderboard", "--format", "html", "--out", "board.html")
    assert (w.cwd / "board.html").read_text().lstrip().lower().startswith("<!doctype html")


@case(
    "promptintern lm-eval --task ./examples/shop-sql --model PATH",
    "promptintern lm-eval [-t T ...] [--prompt query|full] [--model M] [--adapter DIR] [--limit N] [--print-include-path]",
    sub="PATH = TINY, --limit 2 (the whole test split through lm-evaluation-harness takes minutes); --prompt full "
    "parsed only (tests/test_lm_eval.py runs it); --adapter runs in case_train_generate.",
)  # fmt: skip
def case_lm_eval(w: Workspace) -> None:
    w.cli("lm-eval", "--task", "./examples/shop-sql", "--model", w.tiny, "--limit", "2")
    assert Path(w.cli("lm-eval", "-t", "nl2f", "-t", "nl2bash", "--print-include-path").stdout.strip()).is_dir()
    parse("lm-eval", "-t", "nl2f", "--prompt", "full", "--model", "embedded", "--adapter", "adapter-dir", "--limit", "3")


@case(
    "accelerate launch -m promptintern.cli train ...",
    sub="one CPU process (--num_processes 1 --cpu), train --profile smoke --model TINY: the same entry point "
    "accelerate starts on every GPU.",
)  # fmt: skip
def case_accelerate(w: Workspace) -> None:
    accelerate = Path(sys.executable).with_name("accelerate")
    if not accelerate.exists():
        pytest.skip("accelerate is not installed")
    w.sh(accelerate, "launch", "--num_processes", "1", "--num_machines", "1", "--cpu", "--mixed_precision", "no",
         "--dynamo_backend", "no", "-m", "promptintern.cli", "train", "--task", "nl2bash", "--method", "ft-none",
         "--profile", "smoke", "--model", w.tiny)  # fmt: skip


# ----------------------------------------------------------------------------------------------- the tests
def _case_id(c: Case) -> str:
    return c.run.__name__.removeprefix("case_")


@pytest.mark.parametrize(
    "c", [pytest.param(c, id=_case_id(c)) for c in CASES if not c.integration]
)
def test_readme_command(c: Case, tmp_path, request) -> None:
    if c.needs_bwrap and BWRAP_ERROR and not os.environ.get("CI"):
        pytest.skip(f"bubblewrap unusable: {BWRAP_ERROR}")
    c.run(Workspace(tmp_path, request))


@pytest.mark.integration
@pytest.mark.parametrize("c", [pytest.param(c, id=_case_id(c)) for c in CASES if c.integration])
def test_readme_command_integration(c: Case, tmp_path, request) -> None:
    c.run(Workspace(tmp_path, request))


def test_every_readme_command_has_a_case() -> None:
    handled = {cmd for c in CASES for cmd in c.covers}
    missing = [cmd for cmd in readme_commands() if cmd not in handled]
    assert not missing, "README.md shows commands no case in tests/test_readme_commands.py runs:\n" + "\n".join(missing)


def test_no_case_for_a_command_readme_no_longer_shows() -> None:
    shown = set(readme_commands())
    stale = sorted({cmd for c in CASES for cmd in c.covers} - shown)
    assert not stale, "cases for commands README.md no longer shows:\n" + "\n".join(stale)


def test_concrete_readme_commands_parse() -> None:
    """Every README ``promptintern`` command written without placeholders parses as written."""
    placeholder = re.compile(r"[\[\]|{}<>]|\.\.\.|(^|\s)[A-Z][A-Z0-9_.]*(\s|$)")
    concrete = [c for c in readme_commands() if c.startswith("promptintern ") and not placeholder.search(c)]
    assert len(concrete) >= 10
    for command in concrete:
        parse(*command.split()[1:], partial=command in PROSE_REFERENCES)


#: Commands README names in running text by their distinguishing options only (a required ``--task`` left out).
PROSE_REFERENCES = {"promptintern agree", "promptintern tokens --template extended"}


def test_extractor_reads_blocks_continuations_and_spans() -> None:
    text = (
        "Run `promptintern data stats --json` or ``make\nlint``; `promptintern.tasks` is a module.\n\n"
        "```bash\nmake setup          # comment\npromptintern run --task a \\\n    --profile b  # note\n```\n"
        "```\npromptintern not-a-bash-block\n```\n"
        "| `promptintern eval (--predictions F \\| --oracle)` | x |\n"
    )
    assert readme_commands(text) == [
        "make setup",
        "promptintern run --task a --profile b",
        "promptintern data stats --json",
        "make lint",
        "promptintern eval (--predictions F | --oracle)",
    ]
