"""``promptintern reproduce``: run every experiment the paper tables need, record rows, render tables + plots.

The table specs (:mod:`promptintern.harness.tables`) list (task, method, variant) cells; variants are profile
overrides (:func:`apply_overrides`). Each distinct experiment runs once however many tables show it (the
run directory is keyed by the settings hash, so rows shared between tables are one cached run, and a killed
reproduce resumes where it stopped). Per row: ``exp.unavailable()`` -> status ``not run`` with the reason;
an exception -> ``failed`` with the error, and the run goes on. As in the paper, τ_all divides a row's mean
input tokens by those of the TEMPLATE-ONLY prompt (``ft-template``'s prompt) and the × column is its
inverse; ``tau_full`` divides by the full prompt (template + k shots, ``zero-shot-full``). Both references
are counted with the model's tokenizer on the same test instances. Cost per instance uses
:mod:`promptintern.evaluation.cost`: the model's own price, and the fine-tuned gpt-3.5-turbo / gpt-4 prices on the
cl100k counts of the actual inputs and outputs (how the paper's API rows were billed).

Per-profile sizing (``benchmarks/tables/reproduce.yaml``) restricts tasks, shrinks subsets and skips rows
so the ``cpu`` profile fits its time budget; skipped cells are recorded as ``not run`` with the reason,
never dropped. ``--full`` ignores the sizing. Tables are written to ``results/<profile>/tableN.{md,csv,json}``
with ``pareto-<task>.png``, ``schedules.png``, ``reproduce-log.json`` (this invocation: wall time per experiment
and the compute time of the run that produced each result) and ``reproduce-history.jsonl`` (one line per
invocation, appended, so a cached rerun does not hide the wall time of the run that computed the results).
"""

from __future__ import annotations

import dataclasses
import gc
import sys
import time
import traceback
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from promptintern import logs
from promptintern.evaluation.cost import Prices, load_prices
from promptintern.harness.archive import ROWS_FILE, export_runs
from promptintern.harness.provenance import collect, utc_now
from promptintern.harness.sizing import Job, apply_overrides, load_sizing, plan
from promptintern.harness.store import ResultsStore, RunRow
from promptintern.harness.tables import (
    RowSpec,
    SpecError,
    TableSpec,
    load_specs,
    render_all,
)
from promptintern.io import append_jsonl, write_json
from promptintern.profile import Profile, ProfileError, load_profile

FULL_PROMPT = "zero-shot-full"
TEMPLATE_ONLY = "ft-template"
#: Price-file lines of the paper's fine-tuned API models, used for the cost columns of every row.
FT_GPT35, FT_GPT4 = "ft:gpt-3.5-turbo", "ft:gpt-4"


# -- running --------------------------------------------------------------------------------------------


def _say(msg: str, progress: bool) -> None:
    """One step of the run as a ``[reproduce HH:MM:SS] ...`` line on stderr (``--quiet``: the log file only)."""
    logs.step(msg, "reproduce", show=progress)


def _duration(seconds: float) -> str:
    """``42.3 s``, ``12 min 5 s`` or ``1 h 02 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class ReferenceTokens:
    """Mean input tokens of a reference prompt (``method``'s inference prompt) per task, counted once."""

    def __init__(self, base: Profile, model: str | None, method: str) -> None:
        self.base, self.model, self.method, self.cache = base, model, method, {}

    def __call__(self, task: str, profile: Profile | None = None) -> float | None:
        """The reference's mean over the test instances of ``profile`` (a job's; default the base profile), so
        a row that the sizing gives more test instances is compared on its own instances."""
        limit = (profile or self.base).task(task).test_limit
        if (task, limit) not in self.cache:
            from promptintern.harness.experiment import Experiment

            base = self.base
            if limit != base.task(task).test_limit:
                base = apply_overrides(base, {"tasks": {task: {"test_limit": limit}}})
            try:
                exp = Experiment(task, self.method, base, self.model)
                prompts = exp.inference_prompts()
                self.cache[task, limit] = sum(exp.token_counter.count_prompt(p) for p in prompts) / len(prompts)
            except Exception as exc:  # noqa: BLE001 - the ratios are then left empty, the rows still record
                why = f"{type(exc).__name__}: {exc}"
                print(f"{self.method} token reference for {task} unavailable: {why}", file=sys.stderr)
                self.cache[task, limit] = None
        return self.cache[task, limit]


def ratio(input_tokens: float | None, reference_tokens: float | None) -> float | None:
    """Input tokens of a configuration / input tokens of a reference prompt (None if either is unknown)."""
    if input_tokens is None or not reference_tokens:
        return None
    return input_tokens / reference_tokens


def tau_all(input_tokens: float | None, template_tokens: float | None) -> float | None:
    """The paper's τ_all: input tokens / input tokens of the template-only prompt."""
    return ratio(input_tokens, template_tokens)


def compute_seconds(result: dict[str, Any] | None, wall: float) -> float:
    """Seconds the experiment's phases took when they ran (``timings_s`` of its cached ``scores.json``).

    A rerun served from the cache takes ``wall`` ~0 s; the stored row keeps the compute time of the run
    that produced the numbers.  Falls back to ``wall`` when the result has no timings.
    """
    timings = (result or {}).get("timings_s") or {}
    return round(sum(timings.values()) if timings else wall, 3)


def _run_job(job: Job, progress: bool) -> tuple[str, str | None, dict[str, Any] | None]:
    if job.error:
        return "failed", job.error, None
    exp = job.experiment
    try:
        reason = exp.unavailable()
        if reason:
            return "not run", reason, None
        return "ok", None, exp.evaluate(progress=progress)
    except Exception as exc:  # noqa: BLE001 - recorded as a failed row; the other rows go on
        try:
            exp.directory.mkdir(parents=True, exist_ok=True)
            (exp.directory / "reproduce-error.txt").write_text(traceback.format_exc(), encoding="utf-8")
        except OSError:
            pass
        return "failed", f"{type(exc).__name__}: {exc}", None


def _row(
    spec: TableSpec,
    row: RowSpec,
    task: str,
    *,
    profile: Profile,
    model: str,
    status: str,
    reason: str | None,
    seed: int | None = None,
    **fields: Any,
) -> RunRow:
    return RunRow(
        table_id=spec.id,
        method=row.method,
        variant=row.variant,
        task=task,
        model=model,
        profile=profile.name,
        seed=profile.seed if seed is None else seed,
        label=row.label,
        status=status,
        reason=reason,
        **fields,
    )


def _result_fields(
    job: Job, result: dict[str, Any], full: float | None, template: float | None, prices: Prices
) -> dict[str, Any]:
    exp = job.experiment
    lo, hi = result.get("ci95") or (None, None)
    tmpl = result.get("template") or {}
    out_tokens = result.get("output_tokens_mean")
    tokens = result.get("input_tokens_mean")
    billed_in, billed_out = result.get("input_tokens_cl100k_mean"), result.get("output_tokens_cl100k_mean")
    compression = ratio(template, tokens)

    def billed(line: str) -> float | None:
        return None if billed_in is None else prices.cost(line, billed_in, billed_out or 0.0)

    return {
        "metric": result.get("primary"),
        "value": result.get("value"),
        "ci_lo": lo,
        "ci_hi": hi,
        "n": result.get("n"),
        "input_tokens_mean": tokens,
        "output_tokens_mean": out_tokens,
        "full_tokens_mean": full,
        "template_tokens_mean": template,
        "tau_all": tau_all(tokens, template),
        "compression_x": compression,
        "tau_full": ratio(tokens, full),
        "rate_requested": tmpl.get("rate_requested"),
        "rate_achieved": tmpl.get("rate_achieved"),
        "shots": tmpl.get("shots"),
        "latency_s_mean": result.get("latency_s_mean"),
        "cost_usd_per_instance": prices.cost(exp.model, tokens or 0.0, out_tokens or 0.0),
        "input_tokens_cl100k_mean": billed_in,
        "output_tokens_cl100k_mean": billed_out,
        "cost_ft_gpt35_usd_per_instance": billed(FT_GPT35),
        "cost_ft_gpt4_usd_per_instance": billed(FT_GPT4),
        "settings_key": result.get("settings_key", exp.key),
    }


def _server_latency(specs, jobs, store: ResultsStore, base: Profile, model: str, progress: bool) -> None:
    """Table 8's latency through the OpenAI-compatible server (:mod:`.latency_table`), written into its rows."""
    from promptintern.harness.latency_table import measure_task, row_fields

    for spec in (s for s in specs if s.layout == "latency"):
        for task in spec.tasks:
            stored = {
                (r.method, r.variant): r
                for r in store.rows(spec.id, base.name, model=model, task=task)
                if r.seed == base.seed
            }
            rows = {}
            for job in (j for j in jobs if j.seed == base.seed):
                for cell_spec, row in job.cells:
                    found = stored.get((row.method, row.variant))
                    if (
                        cell_spec.id == spec.id
                        and job.task == task
                        and found is not None
                        and found.status == "ok"
                    ):
                        rows[row.id] = (job.experiment, found)
            if not rows:
                continue
            n = min(base.latency_instances, *(len(e.test_set) for e, _ in rows.values()))
            _say(f"table {spec.id} {task}: latency of {len(rows)} rows x {n} instances through the server", progress)
            t0 = time.perf_counter()
            # per-instance lines only on a terminal; a log gets the start and end lines
            measured = measure_task(task, {name: e for name, (e, _) in rows.items()}, n,
                                    progress and logs.stderr_is_terminal())  # fmt: skip
            _say(f"table {spec.id} {task}: latency measured in {_duration(time.perf_counter() - t0)}", progress)
            for name, (_, found) in rows.items():
                where = {"latency_file": measured[name].get("file"), "latency_row": name}
                prov = {**found.provenance, **{k: v for k, v in where.items() if v}}
                store.record(dataclasses.replace(found, **row_fields(measured[name]), provenance=prov))


def _render(store: ResultsStore, specs, out: Path, base: Profile, model: str, command: str | None):
    """Tables, plots, the claims table and the exported runs of the stored rows; (files, rows)."""
    from promptintern.harness import plots
    from promptintern.harness.claims import evaluate_claims, write_claims

    paths, rows = render_all(store, specs, out, profile=base.name, model=model, command=command)
    paths += plots.render_plots(rows, base, out)
    present = {r.task for r in rows}
    tasks = [t for t in dict.fromkeys(t for spec in specs for t in spec.tasks) if t in present]  # the tables' order
    paths += write_claims(evaluate_claims(rows, tasks), out, title=f"Claims of the paper on the {base.name} profile")
    paths += export_runs(rows, out)
    return paths, rows


def archived_rows(reuse: tuple[str, ...], status: str = "ok") -> dict[str, RunRow]:
    """Rows of ``status`` exported to the ``reuse`` folders (``rows.jsonl``: earlier sittings, other profiles), by
    settings key (the first folder holding a key wins); an ok row only with its run folder."""
    from promptintern.harness.archive import ArchiveError, read_rows

    found: dict[str, RunRow] = {}
    for folder in map(Path, reuse):
        try:
            rows = read_rows(folder) if (folder / ROWS_FILE).is_file() else []
        except ArchiveError as exc:
            print(f"ignoring {folder / ROWS_FILE}: {exc}", file=sys.stderr)
            continue
        for r in rows:
            key = r.settings_key  # a row without a result has it in its provenance only
            key = key if status == "ok" else key or (r.provenance or {}).get("settings_key")
            if r.status == status and key and (r.directory or status != "ok"):
                found.setdefault(key, r)
    return found


def _from_archive(job: Job, archived: dict[str, RunRow], store: ResultsStore) -> RunRow | None:
    """Record ``job``'s cells from the exported results of an earlier sitting when its run is not in this home
    (the same settings key: the same experiment); the row, or None when the job must run."""
    exp = job.experiment
    if exp is None or job.error or exp.key not in archived or (exp.directory / "scores.json").is_file():
        return None
    old = archived[exp.key]
    for spec, row in job.cells:
        store.record(dataclasses.replace(old, table_id=spec.id, label=row.label, method=row.method,
                                         variant=row.variant, task=job.task, seed=job.seed,
                                         profile=exp.profile.name))  # fmt: skip
    return old


def rebuild(folder: str | Path, *, specs=None, out: str | Path | None = None, store: ResultsStore | None = None,
            command: str | None = None, tasks: Sequence[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """``--from-results``: the store, tables, plots and claims rebuilt from an exported results folder, no
    training or generation. ``out``: default the folder itself; an ``out`` that already holds exported results
    keeps them, the folder's rows replacing those with the same key (a finished one is not replaced by one that did
    not finish), and renders them all: how a piece run in another clone or home is added. ``tasks``: only those
    tasks' rows of the folder."""
    from promptintern.harness.archive import import_runs, read_rows

    folder = Path(folder)
    own = store is None
    store = store or ResultsStore()
    try:
        rows = import_runs(folder, store, tasks=tasks or None)
        if not rows:
            raise SpecError(f"{folder / ROWS_FILE} holds no rows" + (f" of {', '.join(tasks)}" if tasks else ""))
        if out is not None and Path(out).resolve() != folder.resolve() and (Path(out) / ROWS_FILE).is_file():
            rows += _keep_held(read_rows(out), rows, store)
        first = rows[0]
        try:
            base = load_profile(first.profile)
        except ProfileError:  # a profile file that is not at hand: its name and model suffice to render
            base = Profile.model_validate({"name": first.profile, "model": first.model})
        specs = specs or load_specs(None)
        target = Path(out) if out is not None else folder
        paths, shown = _render(store, specs, target, base, first.model, command)
        return {"profile": first.profile, "model": first.model, "rows": {s: sum(r.status == s for r in shown)
                for s in ("ok", "not run", "failed")}, "files": [str(p) for p in paths]}  # fmt: skip
    finally:
        if own:
            store.close()


def _keep_held(held: list[RunRow], piece: list[RunRow], store: ResultsStore) -> list[RunRow]:
    """Record the rows of ``held`` (a results folder's) that ``piece`` does not replace: other keys, and finished
    rows where the piece's row with that key did not finish. Returns them."""
    status = {r.key: r.status for r in piece}
    kept = [r for r in held if r.key not in status or (r.status == "ok" and status[r.key] != "ok")]
    for row in kept:
        store.record(row)
    return kept


def setup_run(profile: str | Profile, tables, spec_dir, sizing, tasks, backend):
    """(profile, specs, sizing, base profile) of a reproduce call: the sizing's overrides applied, ``tasks``
    replacing every table's tasks (and the sizing's task subset), ``backend`` every experiment's."""
    profile = load_profile(profile) if isinstance(profile, str) else profile
    specs = load_specs(tables, spec_dir)
    size = None if sizing is False else load_sizing(profile.name, None if sizing in (None, True) else sizing)
    if tasks:
        from promptintern.tasks import resolve_task

        chosen = tuple(resolve_task(t) for t in tasks)
        specs = [spec.model_copy(update={"tasks": chosen}) for spec in specs]
        size = dataclasses.replace(size, tasks=None) if size else None
    base = apply_overrides(profile, size.overrides if size else None)
    if backend is not None:
        base = apply_overrides(base, {"generation": {"backend": backend}})
    return profile, specs, size, base


def reproduce(
    profile: Profile | str,
    tables: str | Iterable[str | int] | None = None,
    progress: bool = True,
    *,
    model: str | None = None,
    out: str | Path | None = None,
    prices: str | Path | None = None,
    store: ResultsStore | None = None,
    spec_dir: str | Path | None = None,
    sizing: str | Path | bool | None = None,
    command: str | None = None,
    tasks: Iterable[str] | None = None,
    backend: str | None = None,
) -> dict[str, Any]:
    """Run, record and render ``tables`` (default: every spec) for ``profile``; returns a summary.

    ``sizing``: None/True uses ``benchmarks/tables/reproduce.yaml``, a path another file, False none.
    ``tasks``: names or folders that replace every table's tasks (the sizing's task subset is then ignored).
    ``backend``: the generation backend of every experiment (``generation.backend``; gist and prefix-cached
    rows stay on hf).
    ``store``: default ``$PROMPTINTERN_HOME/results.sqlite``. ``out``: default ``results/<profile>``.
    """
    started = time.perf_counter()
    profile, specs, size, base = setup_run(profile, tables, spec_dir, sizing, tasks, backend)
    price_list = load_prices(prices)
    model_name = model or base.model
    price_list.price(model_name)  # fail before any work if the model has no price and there is no default
    own_store = store is None
    store = store or ResultsStore()
    out = Path(out) if out is not None else Path("results") / profile.name
    try:
        work = plan(specs, base, model, size)
        where = f"; library warnings in {logs.log_file()}" if logs.log_file() else ""
        _say(f"profile {base.name}, model {model_name}, tables {', '.join(str(s.id) for s in specs)}: "
             f"{len(work.jobs)} experiments, {len(work.fixed)} cells not run by the sizing; "
             f"results in {out}{where}", progress)  # fmt: skip
        for spec, row, task, reason in work.fixed:
            prov = collect(seed=base.seed, wall_s=0.0, settings_key=None)
            store.record(
                _row(
                    spec,
                    row,
                    task,
                    profile=base,
                    model=model_name,
                    status="not run",
                    reason=reason,
                    provenance=prov,
                )
            )
        full_tokens = ReferenceTokens(base, model, FULL_PROMPT)
        template_tokens = ReferenceTokens(base, model, TEMPLATE_ONLY)
        archived = archived_rows(size.reuse if size else ())
        log = []
        for i, job in enumerate(work.jobs, 1):
            kept = _from_archive(job, archived, store)
            if kept is not None:
                _say(f"{i}/{len(work.jobs)} {job.name}: {kept.status} (kept: exported by an earlier run)", progress)
                log.append({"experiment": job.name, "status": kept.status, "reason": kept.reason, "wall_s": 0.0,
                            "compute_s": kept.wall_s or 0.0, "archived": True})  # fmt: skip
                continue
            _say(f"{i}/{len(work.jobs)} {job.name}: start", progress)
            t0 = time.perf_counter()
            status, reason, result = _run_job(job, progress)
            wall = time.perf_counter() - t0
            compute = compute_seconds(result, wall)
            fields: dict[str, Any] = {}
            if result is not None:
                fields = _result_fields(
                    job, result, full_tokens(job.task, job.profile), template_tokens(job.task, job.profile),
                    price_list,
                )
            exp = job.experiment
            prov = collect(
                seed=job.seed,
                wall_s=round(wall, 3),
                compute_s=compute,
                settings_key=exp.key if exp is not None and job.error is None else None,
                timings_s=(result or {}).get("timings_s"),
                overrides=job.overrides,
                sizing=size.source if size else None,
                prices_as_of=price_list.as_of,
            )
            computed = (result or {}).get("provenance")
            if (
                computed
            ):  # git, packages and hardware of the run that computed the result; this run's git kept
                prov = {**prov, **computed, "recorded_git": prov["git"]}
            recorded = [
                _row(spec, row, job.task, profile=base, model=model_name, status=status, reason=reason,
                     seed=job.seed, directory=str(exp.directory) if exp is not None else None, wall_s=compute,
                     provenance=prov, **fields)  # fmt: skip
                for spec, row in job.cells
            ]
            for one in recorded:
                store.record(one)
            if result is not None or status == "not run":  # exported as it finishes (a result, or the reason
                export_runs(recorded, out)  # it cannot run here): a run stopped later keeps it in `out`
            brief = f"{result['primary']} {result['value']:.2f}" if result else reason
            _say(f"{i}/{len(work.jobs)} {job.name}: {status} ({brief}) in {_duration(wall)}", progress)
            log.append(
                {
                    "experiment": job.name,
                    "status": status,
                    "reason": reason,
                    "wall_s": round(wall, 3),
                    "compute_s": compute,
                }
            )
            gc.collect()
        _server_latency(specs, [j for j in work.jobs if j.experiment is not None and
                                (j.experiment.directory / "scores.json").is_file()],
                        store, base, model_name, progress)  # fmt: skip
        _say(f"rendering tables, plots and claims into {out}", progress)
        paths, rows = _render(store, specs, out, base, model_name, command)
        total = time.perf_counter() - started
        counts = {s: sum(r.status == s for r in rows) for s in ("ok", "not run", "failed")}
        summary = {
            "profile": base.name,
            "model": model_name,
            "tables": [s.id for s in specs],
            "experiments": log,
            "rows": counts,
            "wall_s": round(total, 3),
            "compute_s": round(sum(e["compute_s"] for e in log), 3),
            "finished_at": utc_now(),
            "command": command,
            "store": str(store.path),
        }
        paths.append(write_json(out / "reproduce-log.json", summary))
        paths.append(append_jsonl(out / "reproduce-history.jsonl", summary))
        summary["files"] = [str(p) for p in paths]
        _say(f"done in {_duration(total)}: rows {', '.join(f'{v} {k}' for k, v in counts.items())}; "
             f"{len(paths)} files in {out}", progress)  # fmt: skip
        return summary
    finally:
        if own_store:
            store.close()
