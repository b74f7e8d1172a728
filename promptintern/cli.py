"""The ``promptintern`` command line."""

from __future__ import annotations

import json
import os
import sys
from importlib import metadata
from pathlib import Path

# llama.cpp (the llamacpp backend, in this process) and torch share OpenMP; spinning worker threads made
# llama.cpp decoding 7-13x slower on a busy 2-core machine. Set before either library loads; a value the
# caller exported wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import click  # noqa: E402
import typer  # noqa: E402
import typer._click.exceptions as typer_click  # noqa: E402 (typer 0.29 raises its own copy of click's exceptions)
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup, TyperOption

from promptintern.errors import DEBUG_ENV, UserError, check_input_file, check_output_file, report
from promptintern.tasks import get_task, task_names


def _plain_switches() -> None:
    """typer 0.29 shows ``<bool>`` beside every flag in ``--help``, as if ``--json true`` were accepted; show
    switches (``--json``, ``--oracle``, ``--help``, ...) with no value type, as the switches they are."""
    shown = TyperOption.display_type_rich
    if getattr(shown, "plain_switches", False):
        return

    def display_type_rich(self, ctx):
        return None if getattr(self, "is_bool_flag", False) else shown(self, ctx)

    display_type_rich.plain_switches = True
    TyperOption.display_type_rich = display_type_rich


_plain_switches()


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that are the user's to fix: printed as one ``error:`` line, exit status 2."""
    from promptintern.baselines import BaselineUnavailable
    from promptintern.serving.models import ModelNotFoundError
    from promptintern.tasks.fetch import FetchError

    return (
        UserError,
        FetchError,
        ModelNotFoundError,
        BaselineUnavailable,
        ValueError,
        FileNotFoundError,  # DataNotFoundError included
        IsADirectoryError,
        NotADirectoryError,
        PermissionError,
        FileExistsError,
    )


def _usage_message(exc: Exception) -> str:
    text = " ".join(exc.format_message().split()).rstrip(".")
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, (typer_click.UsageError, click.UsageError)) and ctx is not None:
        text += f" (see '{ctx.command_path} --help')"
    return text


def _wants_json(argv: list[str]) -> bool:
    return "--json" in (argv[: argv.index("--")] if "--" in argv else argv)


class CliGroup(TyperGroup):
    """The root command: every error is one plain ``error: ...`` line on stderr (and ``{"error": ...}`` on
    stdout with ``--json``), usage errors included; user errors exit with 2, a traceback only with
    ``--debug`` / ``$PROMPTINTERN_DEBUG=1``. Unexpected exceptions (bugs) keep their traceback."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        argv = list(sys.argv[1:] if args is None else args)
        as_json = _wants_json(argv)
        debug_before = os.environ.get(DEBUG_ENV)
        try:
            try:
                rv = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
                code = rv if isinstance(rv, int) and not isinstance(rv, bool) else 0
            except (typer_click.NoArgsIsHelpError, click.exceptions.NoArgsIsHelpError):
                code = 2  # the help is already printed
            except (typer_click.ClickException, click.ClickException) as exc:
                report(_usage_message(exc), as_json=as_json)
                code = exc.exit_code
            except (typer.Abort, click.Abort):
                report("aborted", as_json=as_json)
                code = 1
            except _user_errors() as exc:
                report(exc, as_json=as_json)
                code = 2
        finally:  # --debug exported it for child processes; an in-process caller (a test) gets it back
            if debug_before is None:
                os.environ.pop(DEBUG_ENV, None)
            else:
                os.environ[DEBUG_ENV] = debug_before
        sys.exit(code)


HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(
    cls=CliGroup,
    help="PromptIntern reproducibility suite.",
    no_args_is_help=True,
    add_completion=False,
    context_settings=HELP_OPTIONS,
)
data_app = typer.Typer(help="Datasets: statistics and download.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console(stderr=True)


def _mount_sandbox() -> None:
    from promptintern.sandbox.cli import app as sandbox_app

    app.add_typer(sandbox_app, name="sandbox", help="Sandbox for untrusted code: self test.")


def _emit(obj, as_json: bool, table: Table | None = None) -> None:
    if as_json or table is None:
        typer.echo(json.dumps(obj, indent=2, ensure_ascii=False))
    else:
        Console().print(table)


TASK_HELP = "A task name (mbpp, nl2f, nl2bash or one registered with --include-path) or a task folder."


def _task_option() -> str:
    return typer.Option(..., "--task", "-t", help=TASK_HELP)


def _version() -> str:
    try:
        return metadata.version("promptintern")
    except metadata.PackageNotFoundError:  # a source tree that is not installed
        from promptintern import __version__

        return __version__


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"promptintern {_version()}")
        raise typer.Exit()


@app.callback()
def _main(
    include_path: list[Path] = typer.Option(
        None,
        "--include-path",
        help="Register every task folder (a folder with task.yaml) under DIR; repeatable. "
        "Also read from $PROMPTINTERN_INCLUDE_PATH.",
    ),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Show library warnings and logs on stderr (else they go to a log file)."
    ),
    debug: bool = typer.Option(
        False, "--debug", help=f"Print the traceback of an error (also ${DEBUG_ENV}=1)."
    ),
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
    ),
) -> None:
    """PromptIntern reproducibility suite."""
    from promptintern import logs
    from promptintern.tasks import INCLUDE_ENV
    from promptintern.tasks import include_path as register_under

    if debug:  # child processes (reproduce workers, lm-eval) show tracebacks too
        os.environ[DEBUG_ENV] = "1"
    logs.configure(verbose=verbose)
    for directory in include_path or ():
        register_under(directory)
    if include_path:  # child processes (reproduce workers, lm-eval) see the same tasks
        entries = [str(Path(d).resolve()) for d in include_path]
        old = os.environ.get(INCLUDE_ENV)
        os.environ[INCLUDE_ENV] = os.pathsep.join(entries + ([old] if old else []))


@data_app.command("stats")
def data_stats(
    tasks: list[str] = typer.Option(None, "--task", "-t", help=TASK_HELP + " Repeatable; default: all registered."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Number of examples per task and split."""
    stats, titles = {}, {}
    for ref in tasks or task_names():
        task = get_task(ref)
        stats[task.name] = {split: len(task.load(split)) for split in task.splits}
        titles[task.name] = task.display_name
    table = Table("task", "split", "examples", title="Dataset statistics")
    for name, splits in stats.items():
        for split, n in splits.items():
            table.add_row(titles[name], split, str(n))
    _emit(stats, as_json, table)


@data_app.command("fetch")
def data_fetch(
    dataset: list[str] = typer.Option(None, "--dataset", "-d", help="Datasets to fetch (default: all)."),
    mirror: str | None = typer.Option(None, help="Base URL laid out as <mirror>/<dataset>/<file>."),
    dest: Path | None = typer.Option(None, help="Target root (default: the user data cache)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Download datasets from their public sources (or a mirror), verifying sha256."""
    from rich.progress import Progress

    from promptintern.paths import fetched_data_dir
    from promptintern.tasks.fetch import fetch, file_specs

    dest = dest or fetched_data_dir()
    specs = file_specs(dataset or None)
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task("fetching", total=len(specs))
        report = fetch(dest, dataset or None, mirror, on_file=lambda spec, status: progress.advance(bar))
    report["dest"] = str(dest)
    _emit(report, as_json)
    if report["skipped"]:
        console.print(
            f"[yellow]{len(report['skipped'])} file(s) have no public URL; pass --mirror to fetch them."
        )


@app.command("eval")
def eval_cmd(
    task_name: str = _task_option(),
    split: str = typer.Option("test", help="Split to score."),
    predictions: Path | None = typer.Option(None, "--predictions", "-p", help="Predictions JSONL."),
    oracle: bool = typer.Option(False, "--oracle", help="Score the dataset's own references."),
    extract: bool = typer.Option(
        False, "--extract", help="Apply the task's answer extractor to predictions."
    ),
    partial: bool = typer.Option(False, "--partial", help="Score only the ids present in the file."),
    sandbox: str = typer.Option("bwrap", help="MBPP execution backend: bwrap or docker."),
    unsafe_no_sandbox: bool = typer.Option(
        False, "--unsafe-no-sandbox", help="Run MBPP code without isolation."
    ),
    workers: int | None = typer.Option(None, help="Parallel MBPP executions."),
    out: Path | None = typer.Option(None, help="Write per-instance rows as JSONL here."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Score predictions (or the references with --oracle) on a split."""
    from promptintern.evaluation.predictions import write_jsonl
    from promptintern.evaluation.scoring import evaluate, failures, load_predictions, oracle_predictions

    if oracle == (predictions is not None):
        raise typer.BadParameter("give exactly one of --predictions FILE or --oracle")
    if predictions is not None:
        check_input_file(predictions, "predictions file", "--predictions")
    if out is not None:  # before scoring (minutes for MBPP), not after
        check_output_file(out, "--out")
    task = get_task(task_name)
    instances = task.load(split)  # read once: validation and scoring share it
    preds = (  # a PredictionsError (every problem of the file) exits with 2
        oracle_predictions(instances)
        if oracle
        else load_predictions(task, instances, predictions, extract=extract, partial=partial)
    )
    backend = "subprocess" if unsafe_no_sandbox else sandbox
    score = evaluate(
        task,
        instances,
        preds,
        partial=partial and not oracle,
        backend=backend,
        unsafe=unsafe_no_sandbox,
        workers=workers,
    )
    if out:
        write_jsonl(out, score.per_instance)
    result = score.to_dict() | {"split": split, "oracle": oracle}
    if oracle:
        result["failures"] = failures(task, score)
    table = Table("metric", "value", title=f"{task.display_name} / {split}" + (" (oracle)" if oracle else ""))
    for key, val in score.metrics.items():
        table.add_row(key, f"{val:.2f}")
    _emit(result, as_json, table)


@app.command("prompt")
def prompt_cmd(
    task_name: str = _task_option(),
    instance_id: str = typer.Option(..., "--id", help="Instance id."),
    split: str = typer.Option("test"),
    template: bool = typer.Option(True, "--template/--query-only", help="Include the full template."),
    model: str | None = typer.Option(None, help="Render with this model's chat template (e.g. embedded)."),
) -> None:
    """Print one instance's rendered prompt."""
    from promptintern.prompting.prompt import build_prompt

    task = get_task(task_name)
    found = [i for i in task.load(split) if i.id == instance_id]
    if not found:
        raise typer.BadParameter(f"no instance {instance_id!r} in {task.name}/{split}")
    prompt = build_prompt(task, found[0], task.template() if template else None)
    tokenizer = None
    if model:
        from promptintern.serving.models import load_tokenizer

        tokenizer = load_tokenizer(model)
    typer.echo(prompt.render(tokenizer))


def _stdout_to_stderr():
    """Library chatter (Trainer logs, progress bars) goes to stderr so stdout holds only our output."""
    import contextlib

    return contextlib.redirect_stdout(sys.stderr)


def _experiment(task_name: str, method: str, profile: str, model: str | None, **options):
    from promptintern.harness.experiment import Experiment
    from promptintern.profile import load_profile

    return Experiment(task_name, method, load_profile(profile), model, **options)


def _method_option() -> str:
    from promptintern.methods.registry import method_names

    return typer.Option("promptintern", "--method", "-m", help=f"One of: {', '.join(method_names())}")


def _profile_option() -> str:
    return typer.Option("cpu", "--profile", help="smoke, cpu, paper, or a profile YAML path.")


def _backend_option() -> str | None:
    return typer.Option(
        None,
        "--backend",
        help="Generation backend: hf, llamacpp, openai (an OpenAI-compatible endpoint, the profile's "
        "generation.openai; default a local llama-cpp-python server) or auto (the faster of hf and llamacpp, "
        "measured on the first batch); default: the profile's generation.backend.",
    )


def _model_option() -> str | None:
    return typer.Option(None, "--model", help="Override the profile's model: 'embedded', a HF id or a path.")


@app.command("train")
def train_cmd(
    task_name: str = _task_option(),
    method: str = _method_option(),
    profile: str = _profile_option(),
    model: str | None = _model_option(),
) -> None:
    """Train (or resume) a method's LoRA adapter through its stages; prints the adapter path."""
    exp = _experiment(task_name, method, profile, model)
    with _stdout_to_stderr():
        adapter = exp.train()
    typer.echo(str(adapter) if adapter else f"method {method} has no training")


@app.command("generate")
def generate_cmd(
    task_name: str = _task_option(),
    method: str = _method_option(),
    profile: str = _profile_option(),
    model: str | None = _model_option(),
    backend: str | None = _backend_option(),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N test instances."),
    out: Path | None = typer.Option(None, help="Also copy the predictions JSONL here."),
) -> None:
    """Greedy predictions on the test subset with the method's inference prompt (trains first if needed)."""
    import shutil

    with _stdout_to_stderr():
        path = _experiment(task_name, method, profile, model, backend_override=backend, limit=limit).predict()
    if out:
        shutil.copyfile(path, out)
    typer.echo(str(out or path))


@app.command("agree")
def agree_cmd(
    tasks: list[str] = typer.Option(..., "--task", "-t", help="A task name or folder; repeatable."),
    method: str = _method_option(),
    profile: str = _profile_option(),
    model: str | None = _model_option(),
    backends: str = typer.Option("hf,llamacpp", "--backends", help="The two backends to compare, a,b."),
    limit: int = typer.Option(100, "--limit", min=1, help="The first N test instances of each task."),
    out: Path | None = typer.Option(
        None, help="Report path without suffix (default results/<profile>/backend-agreement)."
    ),
) -> None:
    """Serve one method with two backends on the same test instances; paired interval of the metric difference."""
    from promptintern.harness.agreement import agreement, write_report
    from promptintern.profile import load_profile

    loaded = load_profile(profile)
    pair = tuple(b.strip() for b in backends.split(","))
    with _stdout_to_stderr():
        reports = [agreement(t, method, loaded, backends=pair, limit=limit, model=model) for t in tasks]
    paths = write_report(reports, out or Path("results") / loaded.name / "backend-agreement")
    for r in reports:
        lo, hi = r["paired_ci95"]
        typer.echo(
            f"{r['task']}: {r['metric']} {r['backends'][0]} {r['values'][0]:.2f} vs {r['backends'][1]} "
            f"{r['values'][1]:.2f}, diff {r['diff']:+.2f} [{lo:+.2f}, {hi:+.2f}] (n={r['n']}): "
            f"{'agree' if r['agree'] else 'DISAGREE'}"
        )
    typer.echo(" ".join(str(p) for p in paths))


@app.command("run")
def run_cmd(
    task_name: str = _task_option(),
    method: str = _method_option(),
    profile: str = _profile_option(),
    model: str | None = _model_option(),
    backend: str | None = _backend_option(),
    baseline: str | None = typer.Option(
        None,
        "--baseline",
        help="Also run this method (e.g. zero-shot-full: the full prompt) and report the "
        "accuracy, input-token, latency and cost differences against it.",
    ),
    price_model: str = typer.Option(
        "ft:gpt-3.5-turbo", "--price-model", help="Model whose prices.yaml price bills the cl100k tokens."
    ),
    prices: Path | None = typer.Option(None, "--prices", help="A price file merged over prices.yaml."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Train, generate and score one experiment; every finished step is reused on a rerun."""
    exp = _experiment(task_name, method, profile, model, backend_override=backend)
    with _stdout_to_stderr():
        result = exp.evaluate()
    result["directory"] = str(exp.directory)
    table = Table("field", "value", title=f"{exp.task_name} / {method} / {exp.profile.name}")
    lo, hi = result["ci95"]
    table.add_row(result["primary"], f"{result['value']:.2f} [{lo:.2f}, {hi:.2f}]")
    table.add_row("input tokens (mean)", f"{result['input_tokens_mean']:.1f}")
    table.add_row("latency s (mean)", f"{result['latency_s_mean']:.3f}")
    table.add_row("n", str(result["n"]))
    if baseline:
        from promptintern.evaluation.compare import compare

        ref = _experiment(exp.task_name, baseline, profile, model, backend_override=backend)
        with _stdout_to_stderr():
            reference = ref.evaluate()
        report = compare(result, reference, price_model, str(prices) if prices else None)
        result["comparison"] = report
        table = _comparison_table(report, f"{exp.task_name}: {method} vs {baseline} ({exp.profile.name})")
    _emit(result, as_json, table)


def _comparison_table(report: dict, title: str) -> Table:
    def pct(x):
        return "n/a" if x is None else f"{100 * x:.1f} % less"

    ours, ref = report["method"], report["reference"]
    table = Table("", ours["method"], ref["method"], "difference", title=title)
    table.add_row(
        ours["metric"],
        *(f"{r['value']:.2f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]" for r in (ours, ref)),
        f"{report['accuracy_difference']:+.2f}",
    )
    table.add_row("input tokens (model)", f"{ours['input_tokens_mean']:.1f}", f"{ref['input_tokens_mean']:.1f}",
                  pct(report["input_token_saving"]))
    table.add_row("input tokens (cl100k)", *(f"{r['input_tokens_cl100k_mean'] or 0:.1f}" for r in (ours, ref)),
                  pct(report["input_token_saving_cl100k"]))
    speed = report["latency_speedup"]
    table.add_row("latency s (mean)", f"{ours['latency_s_mean']:.3f}", f"{ref['latency_s_mean']:.3f}",
                  "n/a" if speed is None else f"{speed:.2f}x faster")
    table.add_row(f"$ / 1K requests ({report['price_model']})",
                  *(f"{r['usd_per_1k_requests'] or 0:.4f}" for r in (ours, ref)), pct(report["cost_saving"]))
    table.add_row("n", str(ours["n"]), str(ref["n"]), "")
    return table


@app.command("tokens")
def tokens_cmd(
    task_name: str = _task_option(),
    profile: str = _profile_option(),
    model: str | None = _model_option(),
    template: str | None = typer.Option(
        None, "--template", help="Template variant: paper or extended (default: the profile's)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Mean input tokens over the whole test split per prompt configuration, with the model's tokenizer.

    With cl100k (``--model openai:gpt-4``) the paper's figures (Tables 2-4) are printed beside ours.
    """
    from promptintern.harness.experiment import Experiment
    from promptintern.harness.paper_figures import CONFIGURATIONS, compare
    from promptintern.profile import load_profile
    from promptintern.tasks import TEMPLATE_VARIANTS, resolve_task

    task_name = resolve_task(task_name)
    if template is not None and template not in TEMPLATE_VARIANTS:
        raise typer.BadParameter(f"choose from {', '.join(TEMPLATE_VARIANTS)}", param_hint="--template")
    prof = load_profile(profile)
    if template is not None:
        prof = prof.model_copy(update={"template": template})
    counter = None
    rows, fit = {}, {}
    with _stdout_to_stderr():
        for method, label in CONFIGURATIONS.items():
            exp = Experiment(task_name, method, prof, model, full_test=True)
            counter = exp.token_counter
            prompts = exp.inference_prompts()
            rows[label] = sum(counter.count_prompt(p) for p in prompts) / len(prompts)
            fit[label] = exp.inference_fit.to_dict()  # examples dropped, queries shrunk to fit the context
    full = rows[CONFIGURATIONS["zero-shot-full"]]
    result = {
        "task": task_name,
        "tokenizer": counter.name,
        "n": len(prompts),
        "mean_input_tokens": rows,
        "reduction_vs_full": {k: 1 - v / full for k, v in rows.items()},
        "template": prof.template,
        "shots": exp.shots,
        "context_fit": fit,
    }
    paper = compare(task_name, rows, counter.name)
    if paper is not None:
        result["paper"] = paper
    columns = ["configuration", "mean input tokens", "reduction"]
    if paper:
        columns += [f"paper ({paper['model']}, k={paper['shots']})", "vs paper"]
    table = Table(*columns, title=f"{task_name}: {counter.name}, {prof.template} template, k={exp.shots}")
    for k, v in rows.items():
        cells = [k, f"{v:.1f}", f"{100 * (1 - v / full):.1f} %"]
        if paper:
            cells += [str(paper["mean_input_tokens"][k]), f"{100 * paper['relative_difference'][k]:+.1f} %"]
        table.add_row(*cells)
    _emit(result, as_json, table)


@app.command("show-prompts")
def show_prompts_cmd(
    task_name: str = _task_option(),
    instance_id: str = typer.Option(..., "--id", help="A train instance id."),
    profile: str = _profile_option(),
) -> None:
    """Print one training instance's prompt at every PromptIntern stage (paper Figure 3)."""
    exp = _experiment(task_name, "promptintern", profile, None)
    inst = next((i for i in exp.bank if i.id == instance_id), None)
    if inst is None:
        raise typer.BadParameter(f"no train instance {instance_id!r} in {exp.task_name}")
    for plan, example in zip(exp.plans, exp.stage_examples([inst]), strict=True):
        typer.echo(f"===== stage {plan.index}: template rate {plan.tau:g}, {plan.shots} example(s) =====")
        typer.echo(example[0].prompt.to_text())


from promptintern.harness.lm_eval_cli import lm_eval_cmd  # noqa: E402 (imports lm_eval only when run)
from promptintern.harness.plan import plan_cmd  # noqa: E402
from promptintern.harness.reproduce_cli import reproduce_cmd  # noqa: E402
from promptintern.harness.submit_cli import data_export_cmd, leaderboard_cmd, submit_cmd  # noqa: E402

app.command("lm-eval")(lm_eval_cmd)
app.command("reproduce")(reproduce_cmd)
app.command("plan")(plan_cmd)
app.command("submit")(submit_cmd)
app.command("leaderboard")(leaderboard_cmd)
data_app.command("export")(data_export_cmd)


def main() -> None:
    """The ``promptintern`` console script (errors: see :class:`CliGroup`)."""
    _mount_sandbox()
    typer.main.get_command(app).main(prog_name="promptintern")


if __name__ == "__main__":
    main()
