"""The claims table: each claim of the paper (``benchmarks/tables/claims.yaml``) as a paired comparison of two
configurations on the same test instances, with a verdict.

A claim compares row ``a`` with row ``b`` (``method`` or ``method/variant``) of one task, using every stored
training seed of each. ``greater`` and ``equivalent`` claims use the task's metric: the difference of the
seed-averaged scores and its 95 % interval from a two-stage bootstrap that resamples the seeds of each side and
the test instances, shared by both sides (:meth:`~promptintern.tasks.metrics.Metric.seeded_interval`).
``reduction`` and ``speedup`` claims use a per-instance quantity (input tokens and cost from ``predictions.jsonl``,
latency from the Table 8 server measurement) and a ratio of means, resampling instances. Every interval resamples
a task's instance groups whole (paraphrases of one question, :mod:`promptintern.evaluation.stats`). Verdicts:

* ``greater``: ``reproduced`` when the interval lies above 0, ``contradicted`` below 0, else ``inconclusive``
  (the interval holds both zero and the paper's direction).
* ``equivalent``: ``reproduced`` when the interval lies inside ``[-margin, margin]``, ``contradicted`` when it
  lies entirely outside, else ``inconclusive``.
* ``reduction`` / ``speedup``: against the claim's threshold in the same way as ``greater`` against 0.
* ``not run``: a row is missing, did not run, or lacks its per-instance records; the reason says which.

A ``greater`` or ``equivalent`` comparison in which every seed of both rows scores 0 (e.g. a small model that
never matches an NL2F formula exactly) is ``inconclusive`` whatever its interval, with a ``note``: its interval is
[0, 0], which would otherwise read as equivalence reproduced, but the metric cannot separate the rows at all.

:func:`write_claims` writes ``claims.json`` (one object per claim and task: ``claim``, ``task``, ``a``, ``b``,
``diff``, ``ci_low``, ``ci_high``, ``n_test``, ``seeds``, ``verdict``, ``primary``, ``paper`` and a few more) and
``claims.md``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from promptintern.harness.seeds import instance_rows, metric_for, on_shared_instances, seeds_of, split_groups
from promptintern.harness.store import RunRow
from promptintern.harness.tables import SPEC_DIR, SpecError
from promptintern.io import atomic_write_text, write_json

CLAIMS_FILE = SPEC_DIR / "claims.yaml"
RESAMPLES = 2000
VERDICTS = ("reproduced", "contradicted", "inconclusive", "not run")
#: The lowest score of every task metric (BLEU, EM, pass@1): two rows both there have nothing to compare.
FLOOR = 0.0
#: Price-file line the cost claim bills requests at (the paper's fine-tuned GPT-3.5 rows).
COST_MODEL = "ft:gpt-3.5-turbo"


class ClaimSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    claim: str
    kind: Literal["greater", "equivalent", "reduction", "speedup"]
    a: str
    b: str | tuple[str, ...]
    primary: bool = False
    margin: float | None = None
    quantity: Literal["input_tokens", "latency_s", "cost_usd"] | None = None
    threshold: float = 0.0
    paper: dict[str, str] = {}

    @field_validator("b")
    @classmethod
    def _b(cls, v):
        return tuple(v) if isinstance(v, list | tuple) else v

    def model_post_init(self, _: Any) -> None:
        if self.kind == "equivalent" and self.margin is None:
            raise ValueError(f"claim {self.id}: kind equivalent needs a margin")
        if self.kind in ("reduction", "speedup") and self.quantity is None:
            raise ValueError(f"claim {self.id}: kind {self.kind} needs a quantity")

    def paper_for(self, task: str) -> str | None:
        return self.paper.get(task) or self.paper.get("all")

    @property
    def candidates(self) -> tuple[str, ...]:
        return self.b if isinstance(self.b, tuple) else (self.b,)


def load_claims(path: str | Path | None = None) -> list[ClaimSpec]:
    """The claim specs of ``path`` (default ``benchmarks/tables/claims.yaml``); SpecError names the entry."""
    path = Path(path) if path is not None else CLAIMS_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"{path}: {exc}") from exc
    out = []
    for i, entry in enumerate(data.get("claims") or []):
        try:
            out.append(ClaimSpec.model_validate(entry))
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "entry"
            raise SpecError(f"{path}: claims[{i}].{where}: {err['msg']}") from None
    return out


# -- rows -------------------------------------------------------------------------------------------------


def _name(row: RunRow) -> str:
    return f"{row.method}/{row.variant}" if row.variant else row.method


def runs_by_config(rows: Iterable[RunRow]) -> dict[tuple[str, str], list[RunRow]]:
    """(task, method[/variant]) -> one row per seed (rows shown in several tables counted once; ok rows
    preferred, and among them Table 8's, which also holds the latency measurement)."""
    chosen: dict[tuple[str, str, int], RunRow] = {}

    def rank(r: RunRow) -> tuple[bool, bool]:  # ok first, then the copy that holds Table 8's measurement
        return (r.status == "ok", bool((r.provenance or {}).get("latency_file")))

    for r in rows:
        key = (r.task, _name(r), r.seed)
        if key not in chosen or rank(r) > rank(chosen[key]):
            chosen[key] = r
    out: dict[tuple[str, str], list[RunRow]] = {}
    for (task, name, _), r in sorted(chosen.items(), key=lambda kv: kv[0]):
        out.setdefault((task, name), []).append(r)
    return out


class _Missing(Exception):
    """A row a claim needs is missing or unusable: ``row`` names it, ``why`` says what is wrong."""

    def __init__(self, row: str, why: str) -> None:
        super().__init__(f"{row}: {why}")
        self.row, self.why = row, why


def _ok_runs(runs, task: str, name: str) -> list[RunRow]:
    rows = runs.get((task, name))
    if not rows:
        raise _Missing(name, f"not run yet: no result for {task} in the results store")
    ok = [r for r in rows if r.status == "ok"]
    if not ok:
        raise _Missing(name, f"{rows[0].status}: {rows[0].reason}")
    return ok


def _scores(rows: Sequence[RunRow], name: str) -> list[list[dict]]:
    per_seed = [instance_rows(r) for r in rows]
    if not all(per_seed):
        raise _Missing(name, "per-instance scores (scores.jsonl) are not available")
    return per_seed  # type: ignore[return-value]


def _seed_mean(rows: Sequence[RunRow]) -> float:
    return float(np.mean([r.value for r in rows]))


def _paired(metric, sa: list[list[dict]], sb: list[list[dict]], b_name: str):
    """Both sides' per-seed rows on the test instances they share (a row the sizing gave more instances is
    compared on the other's), and each side's seed-mean metric there: ``(sa, sb, a_value, b_value)``."""
    shared = on_shared_instances([*sa, *sb])
    if not shared[0]:
        raise _Missing(b_name, "no test instance in common with the other side")
    pa, pb = shared[: len(sa)], shared[len(sa) :]

    def value(runs: list[list[dict]]) -> float:
        everything = np.arange(len(runs[0]))
        return float(np.mean([metric.statistic(run)(everything) for run in runs]))

    return pa, pb, value(pa), value(pb)


# -- per-instance quantities (reduction / speedup) ------------------------------------------------------------


def _predictions(row: RunRow) -> dict[str, dict]:
    path = Path(row.directory or "") / "predictions.jsonl"
    try:
        return {
            rec["task_id"]: rec
            for rec in (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        }
    except (OSError, json.JSONDecodeError, KeyError):
        raise _Missing(_name(row), "predictions.jsonl is not available") from None


def _latencies(row: RunRow) -> list[float]:
    file = (row.provenance or {}).get("latency_file")
    if not file:
        raise _Missing(_name(row), "no Table 8 server measurement")
    try:
        data = json.loads(Path(file).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise _Missing(_name(row), f"latency file {file} is not available") from None
    requests = data.get("requests", {}).get((row.provenance or {}).get("latency_row", _name(row)))
    if not requests:
        raise _Missing(_name(row), "the latency file holds no requests for it")
    return [float(r["total_s"]) for r in requests]


def _per_instance(rows: Sequence[RunRow], quantity: str) -> dict[Any, float]:
    """Seed-averaged per-instance values of ``quantity`` by instance (Table 8's latency: by request position,
    the first test instances of every row), in the first seed's order."""
    if quantity == "latency_s":
        return dict(enumerate(_latencies(rows[0])))  # measured once per row (first seed's adapter)
    from promptintern.evaluation.cost import load_prices

    prices = load_prices()
    seeds = [_predictions(r) for r in rows]
    ids = list(seeds[0])

    def value(rec: dict) -> float:
        if quantity == "input_tokens":
            return float(rec["input_tokens"])
        return prices.cost(COST_MODEL, float(rec["input_tokens_cl100k"]), float(rec["output_tokens_cl100k"]))

    try:
        return {i: float(np.mean([value(s[i]) for s in seeds])) for i in ids}
    except KeyError as exc:
        raise _Missing(_name(rows[0]), f"predictions lack {exc}") from None


def _on_shared(a_by_id: dict[Any, float], b_by_id: dict[Any, float]) -> tuple[list, np.ndarray, np.ndarray]:
    """The instances both sides have, in ``a_by_id``'s order, and both sides' values there."""
    ids = [i for i in a_by_id if i in b_by_id]
    a = np.asarray([a_by_id[i] for i in ids], dtype=float)
    return ids, a, np.asarray([b_by_id[i] for i in ids], dtype=float)


def _instance_groups(task: str, rows: Sequence[RunRow], keys: Sequence, quantity: str) -> list[str] | None:
    """The bootstrap cluster of each instance in ``keys`` (Table 8's latencies are keyed by request position:
    the run's first test instances, in its predictions' order); None where the task has no groups."""
    groups = split_groups(task)
    if not groups:
        return None
    try:
        ids = list(_predictions(rows[0]))[: len(keys)] if quantity == "latency_s" else list(keys)
    except _Missing:
        return None
    if len(ids) < len(keys):
        return None
    return [groups.get(str(i), f"instance {i}") for i in ids]


def _ratio_interval(a: np.ndarray, b: np.ndarray, fn,
                    groups: Sequence[str] | None = None) -> tuple[float, float, float]:  # fmt: skip
    """``fn(mean a, mean b)`` over paired instances, with its bootstrap interval (instance groups resampled
    whole where ``groups`` labels them, as every other interval of the suite)."""
    from promptintern.evaluation.stats import bootstrap_ci

    lo, hi = bootstrap_ci(len(a), lambda idx: fn(a[idx].mean(), b[idx].mean()), resamples=RESAMPLES, groups=groups)
    return fn(a.mean(), b.mean()), lo, hi


# -- verdicts ---------------------------------------------------------------------------------------------


def verdict(spec: ClaimSpec, lo: float, hi: float) -> str:
    if spec.kind == "equivalent":
        m = float(spec.margin or 0.0)
        if -m <= lo and hi <= m:
            return "reproduced"
        return "contradicted" if hi < -m or lo > m else "inconclusive"
    bar = spec.threshold if spec.kind in ("reduction", "speedup") else 0.0
    if lo > bar:
        return "reproduced"
    return "contradicted" if hi < bar else "inconclusive"


def evaluate_claim(spec: ClaimSpec, task: str, runs) -> dict[str, Any]:
    """One claim on one task: the JSON record of the claims table."""
    record: dict[str, Any] = {
        "id": spec.id, "claim": spec.claim, "task": task, "kind": spec.kind, "a": spec.a,
        "b": spec.b if isinstance(spec.b, str) else None, "diff": None, "ci_low": None, "ci_high": None,
        "n_test": None, "seeds": None, "verdict": "not run", "reason": None, "primary": spec.primary,
        "paper": spec.paper_for(task), "unit": None, "a_value": None, "b_value": None,
    }  # fmt: skip
    try:
        a_rows = _ok_runs(runs, task, spec.a)
        available = {}
        for name in spec.candidates:
            try:
                available[name] = _ok_runs(runs, task, name)
            except _Missing as exc:
                if len(spec.candidates) == 1:
                    raise
                record.setdefault("skipped", []).append(str(exc))
        if not available:
            raise _Missing(" / ".join(spec.candidates), f"none has a result for {task}")
        if spec.kind in ("greater", "equivalent"):
            metric = metric_for(task)
            sa = _scores(a_rows, spec.a)
            paired = {}
            for name, rows in available.items():
                try:
                    paired[name] = _paired(metric, sa, _scores(rows, name), name)
                except _Missing as exc:
                    if len(available) == 1:
                        raise
                    record.setdefault("skipped", []).append(str(exc))
            if not paired:
                raise _Missing(" / ".join(available), "none has per-instance scores shared with a")
            b_name = max(paired, key=lambda n: paired[n][3])  # the best candidate on the instances a shares
            b_rows = available[b_name]
            pa, pb, a_value, b_value = paired[b_name]
            lo, hi = metric.seeded_interval(pa, pb, resamples=RESAMPLES)
            record |= {"diff": a_value - b_value, "n_test": len(pa[0]), "unit": metric.title,
                       "a_value": a_value, "b_value": b_value}  # fmt: skip
        else:
            b_name = max(available, key=lambda n: _seed_mean(available[n]))
            b_rows = available[b_name]
            ids, a_vals, b_vals = _on_shared(_per_instance(a_rows, spec.quantity),
                                             _per_instance(b_rows, spec.quantity))  # fmt: skip
            if not len(a_vals):
                raise _Missing(b_name, f"no {spec.quantity} on an instance that {spec.a} has")
            groups = _instance_groups(task, a_rows, ids, spec.quantity)
            if spec.kind == "reduction":
                diff, lo, hi = _ratio_interval(a_vals, b_vals, lambda x, y: 100.0 * (1.0 - x / y), groups)
                unit = "% less"
            else:
                diff, lo, hi = _ratio_interval(a_vals, b_vals, lambda x, y: y / x, groups)
                unit = "x"
            record |= {"diff": diff, "n_test": len(a_vals), "unit": unit,
                       "a_value": float(a_vals.mean()), "b_value": float(b_vals.mean()),
                       "quantity": spec.quantity, "threshold": spec.threshold}  # fmt: skip
        record["b"] = b_name
        record["seeds"] = {"a": seeds_of(a_rows), "b": seeds_of(b_rows)}
        record |= {"ci_low": lo, "ci_high": hi, "verdict": verdict(spec, lo, hi)}
        if spec.kind in ("greater", "equivalent") and record["a_value"] == record["b_value"] == FLOOR:
            record["verdict"] = "inconclusive"
            record["note"] = (f"both rows score {FLOOR:g} {record['unit']} with every seed on the "
                              f"{record['n_test']} shared instances: the metric cannot separate them here")
        if spec.kind == "equivalent":
            record["margin"] = spec.margin
            record["tokens_ratio"] = _tokens_ratio(b_rows, a_rows)
    except _Missing as exc:
        record["reason"], record["missing_row"], record["missing_why"] = str(exc), exc.row, exc.why
    return record


def _tokens_ratio(b_rows: Sequence[RunRow], a_rows: Sequence[RunRow]) -> float | None:
    a, b = a_rows[0].input_tokens_mean, b_rows[0].input_tokens_mean
    return b / a if a and b else None


def evaluate_claims(rows: Iterable[RunRow], tasks: Sequence[str], specs: Sequence[ClaimSpec] | None = None) -> list[dict]:
    """Every claim on every task (``not run`` records included)."""
    runs = runs_by_config(rows)
    specs = load_claims() if specs is None else specs
    return [evaluate_claim(spec, task, runs) for spec in specs for task in tasks]


# -- rendering ---------------------------------------------------------------------------------------------


def _ours(r: dict) -> str:
    """The measured comparison of a record as cell text: ``+3.2 BLEU [-1.0, +7.4] (12.1 vs 8.9)``."""
    lo, hi, unit = r["ci_low"], r["ci_high"], r.get("unit")
    if unit == "x":
        return f"{r['diff']:.2f}x [{lo:.2f}, {hi:.2f}]"
    if unit == "% less":
        return f"{r['diff']:.1f} % less [{lo:.1f}, {hi:.1f}]"
    return f"{r['diff']:+.1f} {unit} [{lo:+.1f}, {hi:+.1f}] ({r['a_value']:.1f} vs {r['b_value']:.1f})"


def render_markdown(records: Sequence[dict], title: str = "Claims") -> str:
    lines = [
        f"# {title}",
        "",
        "| claim | task | a | b | ours [95 % CI] | n | seeds a / b | verdict | paper |",
        "| --- | --- | --- | --- | --- | ---: | --- | --- | --- |",
    ]
    notes: list[str] = []
    for r in records:
        if r["verdict"] == "not run":
            reason = r.get("missing_why") or r["reason"] or ""
            if reason not in notes:
                notes.append(reason)
            ours = f"— [{notes.index(reason) + 1}] ({r.get('missing_row') or '?'})"
        else:
            ours = _ours(r)
        seeds = r.get("seeds") or {}
        seed_text = " / ".join(",".join(map(str, seeds.get(k, []))) for k in ("a", "b")) if seeds else "—"
        name = f"**({r['id']}) {r['claim']}**" if r["primary"] else f"({r['id']}) {r['claim']}"
        result = f"{r['verdict']} (both {FLOOR:g})" if r.get("note") else r["verdict"]
        lines.append(
            f"| {name} | {r['task']} | {r['a']} | {r['b'] or '—'} | {ours} | {r['n_test'] or '—'} | {seed_text} "
            f"| {result} | {r['paper'] or '—'} |"
        )
    lines += [
        "",
        "Bold: the primary claims (a)–(c). Intervals: 95 % percentile bootstrap (2,000 resamples) over the test",
        "instances (groups of related instances resampled whole where a task has them: NL2F-Spider's paraphrases,",
        "NL2Bash's pairs that share a description; the data cards say why), paired",
        "between a and b, and over the training seeds of rows trained with several. greater:",
        "reproduced when the interval lies above 0, contradicted below 0, else inconclusive; equivalent: reproduced",
        "within ± the margin; reduction / speedup: against the threshold. Against a list of rows (claim c), b is",
        "the one with the best seed-averaged score.",
    ]
    ran = sum(1 for r in records if r["primary"] and r["verdict"] != "not run")
    if ran > 1:
        lines += ["", f"Each interval covers 95 % on its own, not adjusted for the {ran} primary comparisons that ran: "
                  f"a wrong verdict", f"among them is more likely than 5 % (up to 1 − 0.95^{ran} = "
                  f"{1 - 0.95**ran:.0%} if they were independent)."]
    if any(r.get("note") for r in records):
        lines += ["", f"inconclusive (both {FLOOR:g}): every seed of both rows scores {FLOOR:g}, so the interval is "
                  f"[{FLOOR:g}, {FLOOR:g}] but", "the metric cannot separate the rows; no verdict either way."]
    if notes:
        lines += ["", "Not run:", ""] + [f"{i}. {n}" for i, n in enumerate(notes, 1)]
    return "\n".join(lines) + "\n"


def write_claims(records: Sequence[dict], out: str | Path, title: str = "Claims") -> list[Path]:
    out = Path(out)
    return [write_json(out / "claims.json", list(records)), atomic_write_text(out / "claims.md", render_markdown(records, title))]


__all__ = ["ClaimSpec", "evaluate_claim", "evaluate_claims", "load_claims", "render_markdown", "verdict", "write_claims"]
