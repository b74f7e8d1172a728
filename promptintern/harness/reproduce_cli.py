"""``promptintern reproduce``'s command line: options, ``--from-results``, ``--dry-run``, one run per model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from promptintern.harness.reproduce import rebuild, reproduce
from promptintern.harness.store import ResultsStore
from promptintern.harness.tables import load_specs
from promptintern.profile import load_profile


def profile_option(default: str):
    return typer.Option(default, "--profile", help="smoke, cpu, paper, or a profile YAML path.")


def tables_option():
    return typer.Option("1,2,3,4,5,6,7,8", "--tables", help="Comma-separated paper table numbers.")


def reproduce_cmd(
    profile: str = profile_option("cpu"),
    tables: str = tables_option(),
    out: Path | None = typer.Option(None, "--out", help="Output folder (default: results/<profile>)."),
    prices: Path | None = typer.Option(
        None, "--prices", help="Price YAML merged over promptintern/evaluation/prices.yaml."
    ),
    model: str | None = typer.Option(
        None, "--model", help="Override the profile's model: 'embedded', a HF id or a path."
    ),
    full: bool = typer.Option(
        False, "--full", help="Ignore benchmarks/tables/reproduce.yaml (all tasks and rows)."
    ),
    tasks: list[str] = typer.Option(
        None, "--task", "-t", help="A task name or folder replacing the tables' tasks; repeatable."
    ),
    tasks_list: str | None = typer.Option(
        None, "--tasks", help="Comma-separated task names or folders (the same as repeating --task)."
    ),
    backend: str | None = typer.Option(
        None,
        "--backend",
        help="Generation backend of every experiment: hf, llamacpp, openai or auto (default: the profile's).",
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output on stderr."),
    from_results: Path | None = typer.Option(
        None,
        "--from-results",
        help="Rebuild the store, tables, plots and claims from an exported results folder (e.g. results/cpu-full) "
        "without training or generating; with --tasks, only those tasks' rows (merging a piece into --out).",
    ),
    models: str | None = typer.Option(
        None, "--models", help="Comma-separated models of the profile (ids or paper names): one run per model, "
        "tables under results/<profile>/<model>/ and one row per model in table<id>-models.md (default for a "
        "profile that lists models and no --model: all of them).",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="List every experiment and whether it is kept (exported by an earlier sitting), "
        "done, trained or started in this home, or still to run; run and record nothing.",
    ),
    yes: bool = typer.Option(False, "--yes", help="Run even when the plan exceeds --max-gpu-hours or --max-usd."),
    max_gpu_hours: float = typer.Option(24.0, "--max-gpu-hours", help="Ask before a plan of more GPU hours."),
    max_usd: float = typer.Option(50.0, "--max-usd", help="Ask before a plan of more API dollars."),
) -> None:
    """Run every experiment of the paper tables (cached), record them in the results store, render tables.

    A profile that lists models (``paper``) is priced first (``promptintern plan``): over ``--max-gpu-hours`` or
    ``--max-usd`` it asks on a terminal and stops elsewhere unless ``--yes``."""
    import contextlib

    tasks = [*(tasks or ()), *(t.strip() for t in (tasks_list or "").split(",") if t.strip())]
    if dry_run:
        if from_results is not None or models:
            raise typer.BadParameter("--dry-run lists one model's experiments: leave out --from-results and --models")
        from promptintern.harness.dry_run import format_job_states, job_states

        with contextlib.redirect_stdout(sys.stderr):
            states = job_states(profile, tables, model=model, sizing=False if full else None, tasks=tasks or None,
                                backend=backend)  # fmt: skip
        typer.echo(format_job_states(states), nl=False)
        return
    if from_results is not None:
        from promptintern.tasks import resolve_task

        names = [resolve_task(t) for t in tasks]
        command = (f"promptintern reproduce --from-results {from_results}" + (f" --out {out}" if out else "")
                   + (f" --tasks {','.join(names)}" if names else ""))  # fmt: skip
        with contextlib.redirect_stdout(sys.stderr):
            summary = rebuild(from_results, specs=load_specs(tables), out=out, command=command, tasks=names)
        typer.echo(json.dumps(summary, indent=2))
        return

    base = load_profile(profile)
    names = [m.strip() for m in (models or "").split(",") if m.strip()]
    chosen = None
    if names or (base.models and model is None):
        from promptintern.harness.plan import profile_models

        chosen = profile_models(base, names)
    if base.models:
        from promptintern.harness.plan import build_plan, confirm_plan, format_table

        planned = [m.id for m in chosen] if chosen else [model] if model else None
        with contextlib.redirect_stdout(sys.stderr):
            estimate = build_plan(profile, tables, tasks or None, planned)
        typer.echo(format_table(estimate), err=True)
        confirm_plan(estimate, max_gpu_hours, max_usd, yes)  # raises PlanNotConfirmed (a one-line error)

    parts = ["promptintern reproduce", f"--profile {profile}", f"--tables {tables}"]
    parts += [f"--{k} {v}" for k, v in (("out", out), ("prices", prices), ("model", model)) if v is not None]
    parts += ["--full"] if full else []
    parts += [f"--task {t}" for t in tasks or ()]
    parts += [f"--backend {backend}"] if backend else []
    options = dict(progress=not quiet, prices=prices, sizing=False if full else None, tasks=tasks or None,
                   backend=backend)  # fmt: skip
    if chosen is not None:
        from promptintern.harness.models_run import reproduce_models

        parts += [f"--models {models}"] if models else []
        with contextlib.redirect_stdout(sys.stderr), ResultsStore() as store:
            runs = reproduce_models(reproduce, base, chosen, Path(out) if out else Path("results") / base.name,
                                    load_specs(tables), store, tables=tables, command=" ".join(parts), **options)  # fmt: skip
        keep = ("profile", "model", "rows", "wall_s")
        typer.echo(json.dumps([{k: summary[k] for k in keep} for summary in runs], indent=2))
        return
    with contextlib.redirect_stdout(sys.stderr):  # library chatter stays off stdout
        summary = reproduce(
            profile,
            tables,
            progress=not quiet,
            model=model,
            out=out,
            prices=prices,
            sizing=False if full else None,
            command=" ".join(parts),
            tasks=tasks or None,
            backend=backend,
        )
    typer.echo(json.dumps({k: summary[k] for k in ("profile", "model", "rows", "wall_s", "files")}, indent=2))
