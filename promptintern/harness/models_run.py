"""``reproduce`` over a profile's models (``--models``; the paper's five in the ``paper`` profile).

Each model runs the tables as a ``reproduce`` of its own: the profile with the model's training overrides (e.g.
4-bit for Mixtral) on top of the shared and per-task training settings, its tables under
``results/<profile>/<model name>/``. :func:`render_model_tables` then writes ``table<id>-models.md`` beside them:
one row per model and one column per row of the table (metric and mean input tokens per task), as the paper's
Tables 2–4 and 8 lay them out.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from promptintern.harness.store import ResultsStore, RunRow
from promptintern.harness.tables import TableSpec, metric_title
from promptintern.io import atomic_write_text
from promptintern.profile import ModelSpec, Profile


def model_slug(model: ModelSpec) -> str:
    """A folder name for ``model`` (its paper name, else its id)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", model.name or model.id).strip("-") or "model"


def model_overrides(profile: Profile, model: ModelSpec) -> dict[str, Any]:
    """Profile overrides that put ``model``'s training settings over the shared ones and every task's own."""
    train = model.train.model_dump(exclude_none=True)
    if not train:
        return {}
    return {"train": train, "tasks": {task: {"train": train} for task in profile.tasks}}


def reproduce_models(
    run: Callable[..., dict[str, Any]],
    profile: Profile,
    models: Sequence[ModelSpec],
    out: Path,
    specs: Sequence[TableSpec],
    store: ResultsStore,
    **options: Any,
) -> list[dict[str, Any]]:
    """``run`` (:func:`promptintern.harness.reproduce.reproduce`) once per model into ``out/<model>/``, then the
    per-model tables into ``out``; returns the runs' summaries."""
    from promptintern.harness.sizing import apply_overrides

    summaries = []
    for model in models:
        per_model = apply_overrides(profile, model_overrides(profile, model))
        summaries.append(run(per_model, model=model.id, out=out / model_slug(model), store=store, **options))
    render_model_tables(store, specs, out, profile=profile.name, models=models)
    return summaries


def _cell(rows: Sequence[RunRow], latency: bool) -> str:
    """Seed mean of the metric (Table 8's layout: of the latency in seconds) with the mean input tokens."""
    ok = [r for r in rows if r.status == "ok" and (r.latency_s_mean if latency else r.value) is not None]
    if not ok:
        return "—"
    value = statistics.fmean((r.latency_s_mean if latency else r.value) for r in ok)
    tokens = [r.input_tokens_mean for r in ok if r.input_tokens_mean is not None]
    shown = f"{value:.2f} s" if latency else f"{value:.1f}"
    return shown + (f" ({statistics.fmean(tokens):,.0f})" if tokens else "")


def render_model_tables(
    store: ResultsStore, specs: Sequence[TableSpec], out: Path, *, profile: str, models: Sequence[ModelSpec]
) -> list[Path]:
    """``out/table<id>-models.md`` per spec: rows = models, columns = (task, table row): metric (input tokens),
    the mean over training seeds (Table 8's layout: latency); "—" where the model has no result (the model's own
    table says why)."""
    paths = []
    for spec in specs:
        columns = [(task, row) for task in spec.tasks for row in spec.rows]
        head = ["model", *(f"{metric_title(task)}: {row.label}" for task, row in columns)]
        what = "latency per request" if spec.layout == "latency" else "metric"
        lines = [f"# {spec.title}: one row per model", "", f"Profile `{profile}`; {what} (mean input tokens),",
                 "seed-averaged; each model's own table (and its footnotes) is in its folder.", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
        for model in models:
            rows = store.rows(spec.id, profile, model=model.id)
            cells = [
                _cell([r for r in rows if r.task == task and r.method == row.method and r.variant == row.variant],
                      spec.layout == "latency")  # fmt: skip
                for task, row in columns
            ]
            link = f"[{model.name or model.id}]({model_slug(model)}/table{spec.id}.md)"
            lines.append(f"| {link} | " + " | ".join(cells) + " |")
        paths.append(atomic_write_text(out / f"table{spec.id}-models.md", "\n".join(lines) + "\n"))
    return paths


__all__ = ["model_overrides", "model_slug", "render_model_tables", "reproduce_models"]
