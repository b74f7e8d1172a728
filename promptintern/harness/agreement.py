"""Do two generation backends give the same metric? One experiment served by each (same adapter, prompts and
test instances), scored, and compared with a paired bootstrap interval of the metric difference.

The backends agree when the 95 % paired interval of ``metric(a) - metric(b)`` contains 0: any difference
between them is then within what resampling the test instances produces. The report also gives how many
predictions are identical, which is the stricter figure (greedy decoding on the same weights; llama.cpp runs the
GGUF's quantized weights, HF the same weights de-quantized, so small logit differences can flip a token).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from promptintern.io import write_json


def _rows(exp) -> list[dict]:
    import json

    return [
        json.loads(line) for line in (exp.directory / "scores.jsonl").read_text().splitlines() if line.strip()
    ]


def _predictions(exp) -> dict[str, str]:
    """The raw model outputs of a run by instance id (what the two backends generated)."""
    import json

    lines = (exp.directory / "predictions.jsonl").read_text().splitlines()
    return {r["task_id"]: r["output"] for r in map(json.loads, filter(str.strip, lines))}


def agreement(
    task: str, method: str, profile, *, backends: Sequence[str] = ("hf", "llamacpp"), limit: int = 100,
    model: str | None = None, progress: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Run ``method`` on the first ``limit`` test instances of ``task`` with each of two ``backends`` (cached
    like any run) and compare their metric, paired."""
    from promptintern.harness.experiment import Experiment

    if len(backends) != 2:
        raise ValueError(f"compare exactly two backends, got {list(backends)}")
    runs = [
        Experiment(task, method, profile, model=model, full_test=True, limit=limit, backend_override=b)
        for b in backends
    ]
    results = [exp.evaluate(progress=progress) for exp in runs]
    rows = [_rows(exp) for exp in runs]
    metric = runs[0].task.metric
    lo, hi = metric.paired_interval(rows[0], rows[1])
    preds = [_predictions(exp) for exp in runs]
    same = sum(preds[0][k] == preds[1].get(k) for k in preds[0])
    return {
        "task": runs[0].task_name,
        "method": method,
        "profile": profile.name,
        "model": runs[0].model,
        "n": len(rows[0]),
        "metric": metric.primary,
        "backends": [r["backend"] for r in results],
        "values": [r["value"] for r in results],
        "ci95": [r["ci95"] for r in results],
        "diff": results[0]["value"] - results[1]["value"],
        "paired_ci95": [lo, hi],
        "agree": lo <= 0.0 <= hi,
        "identical_predictions": same,
        "latency_s_mean": [r.get("latency_s_mean") for r in results],
        "output_tokens_mean": [r.get("output_tokens_mean") for r in results],
        "runs": [str(exp.directory) for exp in runs],
    }


def write_report(reports: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    """``out.json`` (every report) and ``out.md`` (one line per task)."""
    lines = [
        "# Backend agreement",
        "",
        "Each row: one method served by two backends on the same test instances; paired 95 % bootstrap interval",
        "of the metric difference (agree = it contains 0). Command: `promptintern agree` (see README).",
        "",
        "| task | method | n | metric | a | b | diff [paired 95 % CI] | agree | identical predictions | s/inst a, b |",
        "| --- | --- | ---: | --- | ---: | ---: | --- | --- | ---: | --- |",
    ]
    for r in reports:
        (a, b), (lo, hi) = r["values"], r["paired_ci95"]
        lat = ", ".join("—" if v is None else f"{v:.3f}" for v in r["latency_s_mean"])
        lines.append(
            f"| {r['task']} | {r['method']} | {r['n']} | {r['metric']} | {r['backends'][0]} {a:.2f} | "
            f"{r['backends'][1]} {b:.2f} | {r['diff']:+.2f} [{lo:+.2f}, {hi:+.2f}] | {'yes' if r['agree'] else 'NO'} | "
            f"{r['identical_predictions']}/{r['n']} | {lat} |"
        )
    md = out.with_suffix(".md")
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text("\n".join(lines) + "\n")
    return [write_json(out.with_suffix(".json"), list(reports)), md]
