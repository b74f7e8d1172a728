"""Figures next to the tables (matplotlib, Agg backend, PNG written atomically).

* ``pareto-<task>.png``: metric vs mean input tokens (log scale) of every configuration with a result, the
  Pareto front (no other configuration is both cheaper and better) drawn as a step line. The paper shows
  these trade-offs as tables only; the figure is this suite's addition.
* ``accuracy-<task>.png``: the task's primary metric vs mean input tokens (log scale), one point per
  configuration (method, variant) of the accuracy tables (every table but the latency one), with its 95 %
  interval as a vertical bar; points are numbered, the numbers keyed to the rows' labels beside the axes.
* ``latency-<task>.png``: Table 8's latency through the server (``latency_source`` ``server``) vs mean input
  tokens (log scale), one point per row: the whole request (circle, numbered as above) and the time to the
  first token (triangle).
* ``schedules.png``: τ (template rate) and k (number of examples, floored) per stage for each schedule
  pattern of paper Table 6, with the profile's number of stages and rate; the continuous curve is drawn
  behind the stage values.

Rows of one configuration over several training seeds are first combined into one
(:func:`promptintern.harness.seeds.combine`: the seed mean, its interval over seeds and instances).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from promptintern.harness.seeds import combine
from promptintern.harness.store import RunRow
from promptintern.methods.schedule import Schedule, example_counts
from promptintern.profile import Profile
from promptintern.tasks import task_title

PATTERNS = ("linear", "exponential", "inverse_exponential")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish_tokens_plot(plt, fig, ax, path, *, title: str, ylabel: str, legend: str | None) -> Path:
    """Log x axis of mean input tokens, labels, grid, optional legend; the figure saved and closed."""
    ax.set_xscale("log")
    ax.set_xlabel("mean input tokens per instance (log)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if legend:
        ax.legend(loc=legend, fontsize=8)
    try:
        return _save(fig, Path(path))
    finally:
        plt.close(fig)


def _save(fig, path: Path) -> Path:
    """Render ``fig`` to PNG bytes, then replace ``path`` atomically."""
    from promptintern.io import atomic_write_with

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return atomic_write_with(path, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points (tokens, metric) not dominated by a cheaper-or-equal point with a higher-or-equal metric."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def pareto_plot(rows: Sequence[RunRow], task: str, path: str | Path) -> Path | None:
    """Metric vs input tokens for ``task``'s ok rows (one point per method/variant); None if no rows."""
    points: dict[tuple[str, str], RunRow] = {}
    for r in rows:
        if r.task == task and r.status == "ok" and r.value is not None and r.input_tokens_mean:
            points.setdefault((r.method, r.variant), r)
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    xs = [r.input_tokens_mean for r in points.values()]
    ys = [r.value for r in points.values()]
    ax.scatter(xs, ys, color="tab:blue", zorder=3)
    labels: dict[tuple[float, float], list[str]] = {}  # coinciding points share one label
    for r in points.values():
        labels.setdefault((r.input_tokens_mean, r.value), []).append(
            r.method + (f"/{r.variant}" if r.variant else "")
        )
    for xy, names in labels.items():
        ax.annotate(", ".join(names), xy, fontsize=7, xytext=(4, 3), textcoords="offset points")
    front = pareto_front(list(zip(xs, ys, strict=True)))
    ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="tab:red", label="Pareto front")
    metric = next(iter(points.values())).metric or "metric"
    title = f"{task_title(task)}: {metric} vs input tokens ({next(iter(points.values())).profile})"
    return _finish_tokens_plot(plt, fig, ax, path, title=title, ylabel=metric, legend="lower right")


def combine_seeds(rows: Sequence[RunRow]) -> list[RunRow]:
    """One row per (table, method, variant, task): the rows of its seeds combined, in first-seen order."""
    groups: dict[tuple[str, str, str, str], list[RunRow]] = {}
    for r in rows:
        groups.setdefault((r.table_id, r.method, r.variant, r.task), []).append(r)
    return [combine(group) for group in groups.values()]


def _table_order(table_id: str) -> tuple[int, str]:
    return (len(table_id), table_id)


def _name(row: RunRow) -> str:
    return row.label or (row.method + (f"/{row.variant}" if row.variant else ""))


def _per_config(rows: Sequence[RunRow], task: str, usable) -> list[RunRow]:
    """``task``'s usable ok rows, one per (method, variant) (the lowest-numbered table's)."""
    found: dict[tuple[str, str], RunRow] = {}
    for r in sorted(rows, key=lambda r: _table_order(r.table_id)):
        if r.task == task and r.status == "ok" and r.input_tokens_mean and usable(r):
            found.setdefault((r.method, r.variant), r)
    return list(found.values())


def _label_points(ax, points: Sequence[tuple[float, float, str]]) -> None:
    """Number the points (by tokens, then value) and list ``number  name`` beside the axes; points that
    (nearly) coincide share one label (``1, 2``)."""
    import math

    ys = [y for _, y, _ in points]
    span = (max(ys) - min(ys)) or 1.0
    near: dict[tuple[float, float], list[tuple[float, float, int]]] = {}
    key = []
    for i, (x, y, name) in enumerate(sorted(points, key=lambda p: (p[0], p[1])), start=1):
        near.setdefault((round(50 * math.log10(x)), round(30 * y / span)), []).append((x, y, i))
        key.append(f"{i}  {name}")
    for group in near.values():
        ax.annotate(", ".join(str(i) for _, _, i in group), group[0][:2], fontsize=7, xytext=(4, 3),
                    textcoords="offset points")  # fmt: skip
    ax.text(1.02, 1.0, "\n".join(key), transform=ax.transAxes, va="top", ha="left", fontsize=7)


def accuracy_plot(rows: Sequence[RunRow], task: str, path: str | Path) -> Path | None:
    """``task``'s metric (with its interval) vs mean input tokens, one point per (method, variant) of ``rows``
    (rows of one seed each; see :func:`combine_seeds`); None when no row has a value."""
    points = _per_config(rows, task, lambda r: r.value is not None)
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 4.8))
    for r in points:
        if r.ci_lo is not None and r.ci_hi is not None:
            ax.errorbar(
                [r.input_tokens_mean],
                [r.value],
                yerr=[[max(r.value - r.ci_lo, 0.0)], [max(r.ci_hi - r.value, 0.0)]],
                fmt="none",
                ecolor="tab:gray",
                capsize=3,
                zorder=2,
            )
    ax.scatter([r.input_tokens_mean for r in points], [r.value for r in points], color="tab:blue", zorder=3)
    _label_points(ax, [(r.input_tokens_mean, r.value, _name(r)) for r in points])
    metric = points[0].metric or "metric"
    title = f"{task_title(task)}: {metric} vs input tokens ({points[0].profile})"
    return _finish_tokens_plot(plt, fig, ax, path, title=title, ylabel=f"{metric} (95 % interval)", legend=None)


def latency_plot(rows: Sequence[RunRow], task: str, path: str | Path) -> Path | None:
    """``task``'s latency measured through the server (and TTFT where recorded) vs mean input tokens, one
    point per (method, variant); None when no row was measured."""
    points = _per_config(rows, task, lambda r: r.latency_source == "server" and r.latency_s_mean is not None)
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 4.8))
    xs = [r.input_tokens_mean for r in points]
    ax.scatter(xs, [r.latency_s_mean for r in points], color="tab:blue", marker="o", zorder=3,
               label="latency per request")  # fmt: skip
    ttft = [r for r in points if r.ttft_s_mean is not None]
    if ttft:
        ax.scatter([r.input_tokens_mean for r in ttft], [r.ttft_s_mean for r in ttft], color="tab:orange",
                   marker="^", zorder=3, label="time to first token")  # fmt: skip
        for r in ttft:
            ax.plot([r.input_tokens_mean] * 2, [r.ttft_s_mean, r.latency_s_mean], color="tab:gray", alpha=0.4)
    _label_points(ax, [(r.input_tokens_mean, r.latency_s_mean, _name(r)) for r in points])
    title = f"{task_title(task)}: latency vs input tokens ({points[0].profile})"
    return _finish_tokens_plot(plt, fig, ax, path, title=title, ylabel="seconds per request", legend="upper left")


def render_accuracy_latency(rows: Sequence[RunRow], out: str | Path) -> list[Path]:
    """``accuracy-<task>.png`` (rows of every table but the latency ones) and ``latency-<task>.png`` (rows
    measured through the server) for each task with usable rows; seeds combined first. Returns the paths."""
    out = Path(out)
    rows = combine_seeds(rows)
    latency_tables = {r.table_id for r in rows if r.latency_source is not None}
    accuracy = [r for r in rows if r.table_id not in latency_tables]
    paths = []
    for task in sorted({r.task for r in rows}):
        for p in (
            accuracy_plot(accuracy, task, out / f"accuracy-{task}.png"),
            latency_plot(rows, task, out / f"latency-{task}.png"),
        ):
            if p is not None:
                paths.append(p)
    return paths


def schedule_plot(profile: Profile, path: str | Path, shots: int = 10) -> Path:
    """τ and k per stage for each pattern (``shots`` = k at stage 1) with the profile's stages and rate."""
    stages = profile.method.stages
    rate = profile.method.template_schedule.rate
    plt = _pyplot()
    fig, (ax_tau, ax_k) = plt.subplots(1, 2, figsize=(9.6, 3.8))
    stage_axis = list(range(1, stages + 1))
    for pattern, color in zip(PATTERNS, ("tab:blue", "tab:orange", "tab:green"), strict=True):
        if stages > 1:
            fine = Schedule(pattern, 1.0, 0.0, 101, rate).values()
            grid = [1 + (stages - 1) * i / 100 for i in range(101)]
            ax_tau.plot(grid, fine, color=color, alpha=0.3)
            ax_k.plot(grid, [shots * v for v in fine], color=color, alpha=0.3)
            tau = Schedule(pattern, 1.0, 0.0, stages, rate)
            k = Schedule(pattern, float(shots), 0.0, stages, rate)
        else:
            tau = Schedule("constant", 1.0, 1.0, 1)
            k = Schedule("constant", float(shots), float(shots), 1)
        ax_tau.plot(stage_axis, tau.values(), color=color, marker="o", label=pattern)
        ax_k.plot(stage_axis, example_counts(k), color=color, marker="s", label=pattern)
    ax_tau.set_title("template compression rate τ (S_tmp)")
    ax_k.set_title(f"number of examples k (S_egs, from {shots})")
    for ax in (ax_tau, ax_k):
        ax.set_xlabel("stage")
        ax.set_xticks(stage_axis)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"schedule patterns over {stages} stages (rate {rate:g}, profile {profile.name})")
    try:
        return _save(fig, Path(path))
    finally:
        plt.close(fig)


def render_plots(rows: Sequence[RunRow], profile: Profile, out: str | Path) -> list[Path]:
    """``pareto-<task>.png``, ``accuracy-<task>.png`` and ``latency-<task>.png`` for each task with results
    and ``schedules.png`` (seeds of a configuration combined first); returns the paths written."""
    out = Path(out)
    rows = combine_seeds(rows)
    paths = []
    for task in sorted({r.task for r in rows}):
        p = pareto_plot(rows, task, out / f"pareto-{task}.png")
        if p is not None:
            paths.append(p)
    paths += render_accuracy_latency(rows, out)
    shots = max((spec.shots for spec in profile.tasks.values() if spec.shots), default=10)
    paths.append(schedule_plot(profile, out / "schedules.png", shots=shots))
    return paths
