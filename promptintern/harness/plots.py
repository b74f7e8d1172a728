"""Figures next to the tables (matplotlib, Agg backend, PNG written atomically).

* ``pareto-<task>.png``: metric vs mean input tokens (log scale) of every configuration with a result, the
  Pareto front (no other configuration is both cheaper and better) drawn as a step line. The paper shows
  these trade-offs as tables only; the figure is this suite's addition.
* ``schedules.png``: τ (template rate) and k (number of examples, floored) per stage for each schedule
  pattern of paper Table 6, with the profile's number of stages and rate; the continuous curve is drawn
  behind the stage values.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from promptintern.harness.store import RunRow
from promptintern.methods.schedule import Schedule, example_counts
from promptintern.profile import Profile

PATTERNS = ("linear", "exponential", "inverse_exponential")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    """Render ``fig`` to PNG bytes, then replace ``path`` atomically."""
    import os
    import tempfile

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(buf.getvalue())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
    ax.set_xscale("log")
    metric = next(iter(points.values())).metric or "metric"
    ax.set_xlabel("mean input tokens per instance (log)")
    ax.set_ylabel(metric)
    ax.set_title(f"{task}: {metric} vs input tokens ({next(iter(points.values())).profile})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    try:
        return _save(fig, Path(path))
    finally:
        plt.close(fig)


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
    """``pareto-<task>.png`` for each task with results and ``schedules.png``; returns the paths written."""
    out = Path(out)
    paths = []
    for task in sorted({r.task for r in rows}):
        p = pareto_plot(rows, task, out / f"pareto-{task}.png")
        if p is not None:
            paths.append(p)
    shots = max((spec.shots for spec in profile.tasks.values() if spec.shots), default=10)
    paths.append(schedule_plot(profile, out / "schedules.png", shots=shots))
    return paths
