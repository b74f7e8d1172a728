"""Paper table specs (``benchmarks/tables/tableN.yaml``) and their rendering from the results store.

A spec names the table, its caption, the tasks (one column group each) and the rows: a label, a method of
:mod:`promptintern.methods.registry` registry and, for variants of a method, a ``variant`` name with profile
``overrides``. :func:`render_markdown` lays a table out like the paper: per task ``metric | tokens | ×``
(layout ``tasks``; × = template-only tokens / the row's tokens, the paper's definition; with ``rates: true``
also the template rate requested → achieved) or ``latency | speedup | cost`` (layout ``latency``, Table 8:
speedup against the first ``reference`` method with a result; cost at fine-tuned gpt-3.5-turbo prices on
cl100k counts, and the cost saving of the ``saving`` row against the reference below the table). Cells show the metric with its 95 % interval, ``not run: reason``
or ``failed: reason``; a footer gives n, the commits, package versions and hardware the rows were computed
with, the render date and the command. :func:`write_table` writes ``tableN.md``, ``.csv`` (one line per row
× task) and ``.json`` atomically. Unlike the paper, every number comes from this suite's own runs on the
profile's model and subsets.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from promptintern.harness.provenance import describe_hardware, environment, utc_now
from promptintern.harness.store import ResultsStore, RunRow
from promptintern.io import atomic_write_text, write_json
from promptintern.paths import REPO_ROOT
from promptintern.tasks import task_title

#: Table specs: ``benchmarks/tables`` in a checkout; installed as ``promptintern/experiments`` from a wheel.
SPEC_DIR = next(
    (d for d in (REPO_ROOT / "benchmarks" / "tables", Path(__file__).parents[1] / "experiments") if d.is_dir()),
    REPO_ROOT / "benchmarks" / "tables",
)
#: Longest reason shown in a Markdown cell (CSV and JSON keep the whole text).
MD_REASON_CHARS = 160
CSV_FIELDS = (
    "table",
    "label",
    "method",
    "variant",
    "task",
    "status",
    "metric",
    "value",
    "ci_lo",
    "ci_hi",
    "n",
    "input_tokens_mean",
    "template_tokens_mean",
    "compression_x",
    "tau_all",
    "tau_full",
    "rate_requested",
    "rate_achieved",
    "latency_s_mean",
    "ttft_s_mean",
    "tpot_s_mean",
    "latency_output_tokens_mean",
    "latency_n",
    "latency_source",
    "speedup",
    "cost_usd_per_instance",
    "input_tokens_cl100k_mean",
    "output_tokens_cl100k_mean",
    "cost_ft_gpt35_usd_per_instance",
    "cost_ft_gpt4_usd_per_instance",
    "reason",
)


class SpecError(ValueError):
    """A table spec is missing or invalid; the message names the file and the field."""


class RowSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str = Field(min_length=1)
    method: str
    variant: str = ""
    overrides: dict[str, Any] = Field(default_factory=dict)

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        from promptintern.methods.registry import method_names

        if v not in method_names():
            raise ValueError(f"unknown method {v!r}; choose from {', '.join(method_names())}")
        return v

    @property
    def id(self) -> str:
        """``method`` or ``method/variant``."""
        return f"{self.method}/{self.variant}" if self.variant else self.method


class TableSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    title: str
    caption: str = ""
    layout: Literal["tasks", "latency"] = "tasks"
    #: Speedup / cost-saving reference (layout ``latency``): the first of these methods (plain rows) with a result.
    reference: tuple[str, ...] = ("zero-shot-full",)
    #: Layout ``tasks``: show the template rate requested → achieved per task (Table 1's compressors).
    rates: bool = False
    #: Layout ``latency``: the row (``method`` or ``method/variant``) whose cost saving against the reference
    #: is stated below the table (the paper's headline 88.3 %).
    saving: str | None = None
    tasks: tuple[str, ...] = Field(min_length=1)
    rows: tuple[RowSpec, ...] = Field(min_length=1)
    path: str = ""

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from promptintern.tasks import task_names

        bad = [t for t in v if t not in task_names()]
        if bad:
            raise ValueError(f"unknown task(s) {', '.join(bad)}; choose from {', '.join(task_names())}")
        return v

    def model_post_init(self, _context: Any) -> None:
        seen: dict[str, str] = {}
        for row in self.rows:
            if row.overrides and not row.variant:
                raise ValueError(f"row {row.label!r}: rows with overrides need a variant name")
            if row.id in seen:
                raise ValueError(f"rows {seen[row.id]!r} and {row.label!r} are both {row.id!r}")
            seen[row.id] = row.label


def _spec_path(name: str | int | Path, spec_dir: Path) -> Path:
    path = Path(str(name))
    if path.suffix in (".yaml", ".yml"):
        return path
    stem = str(name) if str(name).startswith("table") else f"table{name}"
    return spec_dir / f"{stem}.yaml"


def load_spec(name: str | int | Path, spec_dir: str | Path | None = None) -> TableSpec:
    """A spec by number (``1``, ``"table1"``) from ``spec_dir`` (default ``benchmarks/tables``) or by path."""
    path = _spec_path(name, Path(spec_dir) if spec_dir else SPEC_DIR)
    if not path.is_file():
        raise SpecError(f"no table spec {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"{path}: {exc}") from exc
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping at the top level")
    try:
        return TableSpec.model_validate({**data, "id": str(data.get("id", "")), "path": str(path)})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise SpecError(f"{path}: {problems}") from None


def parse_tables(tables: str | Iterable[str | int] | None, spec_dir: str | Path | None = None) -> list[str]:
    """``"1,2,5"`` / ``[1, 2]`` / None (every ``table*.yaml`` in ``spec_dir``) -> spec names."""
    if tables is None:
        found = (Path(spec_dir) if spec_dir else SPEC_DIR).glob("table*.yaml")
        stems = sorted((p.stem for p in found), key=lambda s: (len(s), s))
        return [s.removeprefix("table") for s in stems]
    items = tables.split(",") if isinstance(tables, str) else [str(t) for t in tables]
    out = [t.strip() for t in items if t.strip()]
    if not out:
        raise SpecError(f"no tables in {tables!r}; give numbers like 1,2,5")
    return out


def load_specs(tables: str | Iterable[str | int] | None = None, spec_dir=None) -> list[TableSpec]:
    return [load_spec(t, spec_dir) for t in parse_tables(tables, spec_dir)]


# -- cells --------------------------------------------------------------------------------------------


def _md_text(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip().replace("|", "\\|")
    return text if len(text) <= MD_REASON_CHARS else text[: MD_REASON_CHARS - 1].rstrip() + "…"


def _num(v: float | None, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def _metric_cell(row: RunRow | None) -> str:
    if row is None:
        return "—"
    if row.status != "ok":
        return f"{row.status}: {_md_text(row.reason or '')}"
    if row.value is None:
        return "—"
    if row.ci_lo is None or row.ci_hi is None:
        return f"{row.value:.1f}"
    return f"{row.value:.1f} [{row.ci_lo:.1f}, {row.ci_hi:.1f}]"


def _ok(row: RunRow | None) -> RunRow | None:
    return row if row is not None and row.status == "ok" else None


def metric_title(task: str) -> str:
    """How the task's primary metric is printed (``EM``, ``BLEU``, ``pass@1``), from its registration."""
    from promptintern.tasks import get_task

    return get_task(task).metric.title


def header(spec: TableSpec) -> list[str]:
    cols = ["Method"]
    for t in spec.tasks:
        name = task_title(t)
        if spec.layout == "latency":
            cols += [
                f"{name} latency (s)",
                f"{name} TTFT (s)",
                f"{name} TPOT (ms)",
                f"{name} out tok",
                f"{name} speedup",
                f"{name} $/1K inst (ft gpt-3.5)",
            ]
        else:
            cols += [f"{name} {metric_title(t)}", f"{name} tokens", f"{name} ×"]
            if spec.rates:
                cols.append(f"{name} τ req → ach")
    return cols


class _Grid:
    """Store rows of one table indexed by (method, variant, task), with the latency references."""

    def __init__(self, spec: TableSpec, rows: Sequence[RunRow]) -> None:
        self.spec = spec
        self.cells = {(r.method, r.variant, r.task): r for r in rows}
        self.reference: dict[str, RunRow] = {}
        for task in spec.tasks:
            for method in spec.reference:
                ref = _ok(self.cells.get((method, "", task)))
                if ref is not None and ref.latency_s_mean:
                    self.reference[task] = ref
                    break

    def get(self, row: RowSpec, task: str) -> RunRow | None:
        return self.cells.get((row.method, row.variant, task))

    def speedup(self, row: RunRow | None) -> float | None:
        ref = self.reference.get(row.task) if row is not None else None
        if _ok(row) is None or ref is None or not row.latency_s_mean:
            return None
        return ref.latency_s_mean / row.latency_s_mean

    def md_cells(self, row: RowSpec, task: str) -> list[str]:
        r = self.get(row, task)
        ok = _ok(r)
        if self.spec.layout == "latency":
            if ok is None:
                return [_metric_cell(r) if r is not None else "—"] + ["—"] * 5
            speed = self.speedup(ok)
            cost = ok.cost_ft_gpt35_usd_per_instance
            source = ok.latency_source or ""
            latency = source.removeprefix("not measured: ") if source.startswith("not measured") else None
            return [
                _md_text(latency[:80]) if latency else _num(ok.latency_s_mean, ".3f"),
                _num(ok.ttft_s_mean, ".3f"),
                _num(None if ok.tpot_s_mean is None else 1000 * ok.tpot_s_mean, ".1f"),
                _num(ok.latency_output_tokens_mean, ".1f"),
                "—" if speed is None else f"{speed:.2f}×",
                _num(None if cost is None else 1000 * cost, ".3f"),
            ]
        times = ok and ok.compression_x
        cells = [_metric_cell(r), _num(ok and ok.input_tokens_mean, ".1f"), "—" if not times else f"{times:.1f}×"]
        if self.spec.rates:
            cells.append(_rates(ok))
        return cells

    def saving(self, task: str) -> tuple[RunRow, RunRow, float] | None:
        """(row, reference, 1 - cost(row) / cost(reference)) at fine-tuned gpt-3.5 prices, if both ran."""
        if not self.spec.saving or task not in self.reference:
            return None
        method, _, variant = self.spec.saving.partition("/")
        row, ref = _ok(self.cells.get((method, variant, task))), self.reference[task]
        if row is None or not row.cost_ft_gpt35_usd_per_instance or not ref.cost_ft_gpt35_usd_per_instance:
            return None
        return row, ref, 1 - row.cost_ft_gpt35_usd_per_instance / ref.cost_ft_gpt35_usd_per_instance


def _rates(row: RunRow | None) -> str:
    """Template rate requested → achieved (the compressor's own unit), or — where no template is compressed."""
    if row is None or row.rate_requested is None or row.rate_achieved is None:
        return "—"
    if row.rate_requested in (0.0, 1.0) and row.rate_achieved == row.rate_requested:
        return f"{row.rate_requested:g} (none)"
    return f"{row.rate_requested:.2f} → {row.rate_achieved:.2f}"


# -- rendering ----------------------------------------------------------------------------------------


def _footer(rows: Sequence[RunRow], command: str | None, rendered_at: str) -> list[str]:
    lines = []
    ns = sorted({(r.task, r.n) for r in rows if r.status == "ok" and r.n is not None})
    if ns:
        lines.append(
            "Test instances per cell: " + ", ".join(f"{task_title(t)} n = {n}" for t, n in ns) + "."
        )
    seeds = sorted({r.seed for r in rows})
    prov = [r.provenance for r in rows if r.provenance]
    env = prov[0] if prov else environment()
    commits = sorted(
        {
            f"{(p.get('git') or {}).get('commit') or 'unknown'}"[:12]
            + (" (dirty)" if (p.get("git") or {}).get("dirty") else "")
            for p in prov
        }
    )
    packages = env.get("packages") or {}
    versions = ", ".join(f"{k} {v}" for k, v in packages.items() if v)
    hardware = sorted({describe_hardware(p["hardware"]) for p in prov if p.get("hardware")})
    if not hardware:
        hardware = [describe_hardware(env.get("hardware") or {})]
    lines.append(
        f"Provenance: commit {', '.join(commits) or 'none recorded'}; "
        f"seed {', '.join(map(str, seeds)) or '—'}; "
        f"python {env.get('python')}, {versions}; hardware: {'; '.join(hardware)}; rendered {rendered_at}."
    )
    if command:
        lines.append(f"Command: `{command}`")
    return lines


def render_markdown(
    spec: TableSpec,
    rows: Sequence[RunRow],
    *,
    profile: str,
    model: str,
    command: str | None = None,
    rendered_at: str | None = None,
) -> str:
    grid = _Grid(spec, rows)
    cols = header(spec)
    aligns = ["---"] + ["---:"] * (len(cols) - 1)
    lines = [f"# {spec.title}", ""]
    if spec.caption:
        lines += [spec.caption.strip(), ""]
    lines += [f"Profile `{profile}`, model `{model}`.", ""]
    lines += ["| " + " | ".join(cols) + " |", "| " + " | ".join(aligns) + " |"]
    for row in spec.rows:
        cells = [_md_text(row.label)]
        for task in spec.tasks:
            cells += grid.md_cells(row, task)
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if spec.layout == "latency":
        refs = [f"{task_title(t)}: {r.label or r.method}" for t, r in grid.reference.items()]
        lines += [f"Speedup reference: {'; '.join(refs) if refs else 'none with a result'}.", ""]
        for task in spec.tasks:
            found = grid.saving(task)
            if found:
                row, ref, saved = found
                lines += [
                    f"{task_title(task)}: {row.label or row.method} costs {100 * saved:.1f} % less "
                    f"than {ref.label or ref.method} at fine-tuned gpt-3.5-turbo prices (cl100k counts of the "
                    "actual inputs and outputs; the paper reports 88.3 % lower cost, baseline not stated).",
                    "",
                ]
    lines += _footer(rows, command, rendered_at or utc_now())
    return "\n".join(lines) + "\n"


def _csv_num(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return format(v, ".6g")
    return str(v)


def records(spec: TableSpec, rows: Sequence[RunRow]) -> list[dict[str, Any]]:
    """One flat record per (spec row, task), in table order (missing results get status ``missing``)."""
    grid = _Grid(spec, rows)
    out = []
    for row in spec.rows:
        for task in spec.tasks:
            r = grid.get(row, task)
            base = {
                "table": spec.id,
                "label": row.label,
                "method": row.method,
                "variant": row.variant,
                "task": task,
            }
            if r is None:
                out.append(base | {"status": "missing"})
                continue
            data = r.to_dict()
            data.pop("provenance")
            found = grid.saving(task)
            out.append(
                base
                | {k: v for k, v in data.items() if k not in base and k != "label"}
                | {"speedup": grid.speedup(r)}
                | ({"cost_saving_vs_reference": found[2]} if found and found[0] is r else {})
            )
    return out


def render_csv(spec: TableSpec, rows: Sequence[RunRow]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for rec in records(spec, rows):
        line = {k: _csv_num(rec.get(k)) for k in CSV_FIELDS}
        line["reason"] = " ".join(line["reason"].split())  # one line per record; JSON keeps the raw text
        writer.writerow(line)
    return buf.getvalue()


def render_json(
    spec: TableSpec,
    rows: Sequence[RunRow],
    *,
    profile: str,
    model: str,
    command: str | None = None,
    rendered_at: str | None = None,
) -> dict[str, Any]:
    commits = sorted({str((r.provenance.get("git") or {}).get("commit")) for r in rows if r.provenance})
    return {
        "table": spec.id,
        "title": spec.title,
        "caption": spec.caption,
        "layout": spec.layout,
        "profile": profile,
        "model": model,
        "columns": header(spec),
        "records": records(spec, rows),
        "provenance": {
            "commits": commits,
            "rows": {f"{r.method}/{r.variant}/{r.task}": r.provenance for r in rows},
        },
        "command": command,
        "rendered_at": rendered_at,
        "spec": spec.path,
    }


def write_table(
    spec: TableSpec,
    rows: Sequence[RunRow],
    out: str | Path,
    *,
    profile: str,
    model: str,
    command: str | None = None,
    rendered_at: str | None = None,
) -> list[Path]:
    """Write ``table{id}.md/.csv/.json`` under ``out`` (atomic writes); returns the paths."""
    out = Path(out)
    rendered_at = rendered_at or utc_now()
    kw = {"profile": profile, "model": model, "command": command, "rendered_at": rendered_at}
    stem = out / f"table{spec.id}"
    return [
        atomic_write_text(stem.with_suffix(".md"), render_markdown(spec, rows, **kw)),
        atomic_write_text(stem.with_suffix(".csv"), render_csv(spec, rows)),
        write_json(stem.with_suffix(".json"), render_json(spec, rows, **kw)),
    ]


def render_all(
    store: ResultsStore,
    specs: Sequence[TableSpec],
    out: str | Path,
    *,
    profile: str,
    model: str,
    command: str | None = None,
) -> list[Path]:
    """Render every spec from the store rows of (table, profile, model) into ``out``."""
    rendered_at = utc_now()
    paths: list[Path] = []
    for spec in specs:
        rows = store.rows(spec.id, profile, model=model)
        paths += write_table(
            spec, rows, out, profile=profile, model=model, command=command, rendered_at=rendered_at
        )
    return paths
