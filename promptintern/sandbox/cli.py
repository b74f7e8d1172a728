"""``promptintern sandbox ...``: self test and one-off runs of the execution sandbox."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from promptintern.errors import check_input_file, fail

from . import BACKENDS, Limits, SandboxError, get_backend

app = typer.Typer(help="Sandboxed execution of untrusted generated code.", no_args_is_help=True)
console = Console()

BACKEND_HELP = f"Sandbox backend: {', '.join(BACKENDS)}."
UNSAFE_HELP = "Allow the 'subprocess' backend, which runs code WITHOUT any isolation."


@app.command()
def selftest(
    backend: str = typer.Option("bwrap", "--backend", "-b", help=BACKEND_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    unsafe_no_sandbox: bool = typer.Option(False, "--unsafe-no-sandbox", help=UNSAFE_HELP),
) -> None:
    """Run hostile candidates (network, file access, fork/memory bombs, early exits, ...) and check
    each is contained and scored FAIL while a benign program passes.  Exit code 1 if not ok."""
    from .selftest import selftest as run_selftest

    try:
        report = run_selftest(backend, unsafe=unsafe_no_sandbox)
    except (SandboxError, ValueError) as exc:
        fail(exc, as_json=as_json)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        _print_report(report)
    raise typer.Exit(0 if report["ok"] else 1)


@app.command()
def run(
    path: Path = typer.Argument(..., help="Python file to run ('-' for stdin)."),
    backend: str = typer.Option("bwrap", "--backend", "-b", help=BACKEND_HELP),
    wall_s: float = typer.Option(10.0, "--wall", help="Wall-clock limit in seconds."),
    memory_mb: int = typer.Option(1024, "--memory", help="Address-space limit in MiB."),
    unsafe_no_sandbox: bool = typer.Option(False, "--unsafe-no-sandbox", help=UNSAFE_HELP),
) -> None:
    """Run one program in the sandbox and print its outcome; exit code 0 only if it passed."""
    program = sys.stdin.read() if str(path) == "-" else check_input_file(path, "Python file").read_text()
    try:
        sandbox = get_backend(backend, unsafe=unsafe_no_sandbox)
    except (SandboxError, ValueError) as exc:
        fail(exc)
    result = sandbox.run(program, Limits(wall_s=wall_s, cpu_s=wall_s, memory_mb=memory_mb))
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    color = "green" if result.passed else "red"
    Console(stderr=True).print(f"[{color}]{result.status}[/] ({result.detail}; {result.duration_s:.2f}s)")
    raise typer.Exit(0 if result.passed else 1)


def _print_report(report: dict) -> None:
    table = Table(title=f"sandbox self test: {report['backend']}")
    for column in ("case", "ok", "contained", "scored fail", "status", "detail"):
        table.add_column(column, overflow="fold")
    ok = {True: "[green]ok[/]", False: "[bold red]FAIL[/]", None: "skipped"}
    yes = {True: "yes", False: "no", None: "-"}
    for row in report["cases"]:
        table.add_row(row["case"], ok[row["ok"]], yes[row["contained"]], yes[row["scored_fail"]], row["status"],
                      row["detail"])
    console.print(table)
    console.print(f"leftover processes: {report['leftover_processes'] or 'none'}; "
                  f"canary alive: {report['canary_alive']}; {report['duration_s']}s")
    console.print("[bold green]OK[/]" if report["ok"] else "[bold red]NOT OK[/]")


if __name__ == "__main__":
    app()
