"""``promptintern reproduce --dry-run``: what a run with the same arguments would do, doing none of it.

A sitting of a long profile (``cpu-full``) starts by asking which experiments are already exported by earlier
sittings, which this home has finished or started, and which are still to run; :func:`job_states` answers from
the run's own plan and settings keys, so the list cannot disagree with what ``reproduce`` then does.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from promptintern.harness.reproduce import archived_rows, setup_run
from promptintern.harness.sizing import plan
from promptintern.profile import Profile

STATES = ("kept", "done", "trained", "started", "to run", "not run", "error")


def job_states(profile: str | Profile, tables=None, *, model: str | None = None, spec_dir=None, sizing=None,
               tasks: Iterable[str] | None = None, backend: str | None = None) -> dict[str, Any]:  # fmt: skip
    """What ``reproduce`` would do with the same arguments, doing none of it (``--dry-run``): per experiment
    ``kept`` (exported by an earlier sitting to a folder of the sizing's ``reuse``), ``done`` (finished in this
    home), ``trained`` (its adapter is in this home, e.g. trained as another row's teacher: the run generates),
    ``started`` (its adapter is partly trained in this home: the run resumes it), ``to run`` or
    ``error`` (the reason), or ``not run`` (an earlier sitting could not run it: its reason; the run tries
    again); and the cells the sizing does not run."""
    profile, specs, size, base = setup_run(profile, tables, spec_dir, sizing, tasks, backend)
    work = plan(specs, base, model, size)
    archived = archived_rows(size.reuse if size else ())
    refused = archived_rows(size.reuse if size else (), status="not run")
    jobs = []
    for job in work.jobs:
        exp, state, where = job.experiment, "to run", None
        if job.error or exp is None:
            state, where = "error", job.error
        elif (exp.directory / "scores.json").is_file():
            state, where = "done", str(exp.directory)
        elif exp.key in archived:
            state, where = "kept", str(archived[exp.key].directory)
        elif exp.trains and exp.train_directory.is_dir():  # its adapter, maybe trained for another row
            trained = (exp.train_directory / "adapter").is_dir()
            state, where = "trained" if trained else "started", str(exp.train_directory)
        elif exp.key in refused:
            state, where = "not run", refused[exp.key].reason
        jobs.append({"experiment": job.name, "state": state, "where": where})
    counts = {s: sum(j["state"] == s for j in jobs) for s in STATES}
    return {"profile": base.name, "model": model or base.model, "tables": [s.id for s in specs], "jobs": jobs,
            "counts": counts, "not_run_cells": len(work.fixed)}  # fmt: skip


def format_job_states(states: dict[str, Any]) -> str:
    """``job_states`` as lines for a terminal: one per experiment, then the counts."""
    width = max((len(j["experiment"]) for j in states["jobs"]), default=0)
    lines = [f"{states['profile']}, model {states['model']}, tables {', '.join(states['tables'])}: "
             f"{len(states['jobs'])} experiments"]  # fmt: skip
    lines += [f"  {j['state']:<8} {j['experiment']:<{width}}  {j['where'] or ''}".rstrip() for j in states["jobs"]]
    counts = ", ".join(f"{n} {s}" for s, n in states["counts"].items() if n)
    lines.append(f"{counts}; {states['not_run_cells']} cells not run by the sizing")
    return "\n".join(lines) + "\n"
