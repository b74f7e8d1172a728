"""CLI commands ``promptintern submit``, ``promptintern leaderboard`` and ``promptintern data export``.

Plain functions registered by :mod:`promptintern.cli` (``app.command("submit")(submit_cmd)``, ...). A
rejected submission prints every problem and exits with status 2, storing nothing.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from promptintern.errors import UserError, check_output_file, fail


def _store_option() -> Path | None:
    return typer.Option(None, "--store", help="Results store (default $PROMPTINTERN_HOME/results.sqlite).")


def submit_cmd(
    path: Path = typer.Argument(
        ..., help="Submission folder or .tar.gz (submission.yaml + predictions/<task>.jsonl)."
    ),
    store: Path | None = _store_option(),
    sandbox: str = typer.Option("bwrap", help="MBPP execution backend: bwrap or docker."),
    workers: int | None = typer.Option(None, help="Parallel MBPP executions."),
    as_json: bool = typer.Option(False, "--json", help="Print the outcome as JSON."),
) -> None:
    """Validate a leaderboard submission, score every task on its test split and record it once."""
    from promptintern.harness.submissions import SubmissionError, submit

    try:
        outcome = submit(
            path, store_path=store, backend=sandbox, workers=workers, progress=sys.stderr.isatty()
        )
    except SubmissionError as exc:
        fail(exc, as_json=as_json)
    if as_json:
        typer.echo(json.dumps(outcome.to_dict(), indent=2, ensure_ascii=False))
        return
    if outcome.status == "already present":
        typer.echo(
            f"already present: identical to submission #{outcome.id} ({outcome.name}), nothing recorded"
        )
    else:
        typer.echo(f"recorded submission #{outcome.id} ({outcome.name})")
    for r in outcome.results.values():
        typer.echo(
            f"  {r.task}: {r.metric} {r.value:.2f} [95% CI {r.ci_lo:.2f}, {r.ci_hi:.2f}] on {r.n} instances"
        )
    typer.echo(f"  content hash {outcome.content_hash}")


def leaderboard_cmd(
    fmt: str = typer.Option("md", "--format", "-f", help="md, json or html (one static file)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write here instead of standard output."),
    store: Path | None = _store_option(),
    prices: Path | None = typer.Option(None, "--prices", help="Price file merged over the packaged one."),
) -> None:
    """Render the leaderboard of recorded submissions."""
    from promptintern.harness.leaderboard import render
    from promptintern.io import atomic_write_text
    from promptintern.paths import home

    path = home() / "results.sqlite" if store is None else store  # ResultsStore's default
    if not path.is_file():  # opening it would create an empty store: a typo'd --store showed an empty board
        if store is not None:
            raise UserError(f"--store {store}: no such results store; check the path (`promptintern submit` "
                            "creates a store)")
        raise UserError(f"no results store at {path}: nothing has been submitted yet; record a submission "
                        "with `promptintern submit` first, or give --store")
    if out is not None:
        check_output_file(out, "--out")
    text = render(fmt, store, prices)
    if out is None:
        typer.echo(text, nl=False)
    else:
        atomic_write_text(out, text)
        umask = os.umask(0)
        os.umask(umask)
        out.chmod(0o666 & ~umask)  # a page to publish, not the private 0600 of a temporary file
        typer.echo(str(out), err=True)


def data_export_cmd(
    task: str = typer.Option(..., "--task", "-t", help="A task name or a task folder."),
    split: str = typer.Option("test", help="Split to export."),
    references: bool = typer.Option(
        ..., "--references", help="Export the gold references (required: the only export so far)."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write here instead of standard output."),
) -> None:
    """Write a split's references as a predictions JSONL (what `eval --oracle` scores)."""
    from promptintern.evaluation.predictions import write_jsonl
    from promptintern.evaluation.scoring import oracle_predictions
    from promptintern.harness.submissions import task_version
    from promptintern.tasks import get_task

    t = get_task(task)
    t.check_split(split)
    instances = t.load(split)
    records = [{"task_id": tid, "prediction": ref} for tid, ref in oracle_predictions(instances).items()]
    if out is None:
        for rec in records:
            typer.echo(json.dumps(rec, ensure_ascii=False))
    else:
        write_jsonl(out, records)
    where = f"{out}: " if out is not None else ""
    typer.echo(
        f"{where}{len(records)} references of {task}/{split} (split version {task_version(instances)})",
        err=True,
    )
