"""Paper table specs (``benchmarks/tables/tableN.yaml``) and their rendering from the results store.

A spec names the table, its caption, the tasks (one column group each) and the rows: a label, a method of
:mod:`promptintern.methods.registry` registry and, for variants of a method, a ``variant`` name with profile
``overrides``. :func:`render_markdown` lays a table out like the paper: per task ``metric | tokens | ×``
(layout ``tasks``; × = template-only tokens / the row's tokens, the paper's definition; with ``rates: true``
also the template rate requested → achieved) or ``latency | TTFT | TPOT | out tok | speedup | cost`` (layout
``latency``, Table 8: speedup against the first ``reference`` method with a result; cost at fine-tuned
gpt-3.5-turbo prices on cl100k counts, and the cost saving of the ``saving`` row against the reference below
the table).

A cell is the store rows of one (method, variant, task) over training seeds, combined by
:func:`promptintern.harness.seeds.combine`: the metric is the seed mean with its 95 % interval
(``12.3 [10.0, 14.6]``; over several seeds the interval resamples seeds and test instances), tokens, ratios,
latency and cost come from the combined row. A cell without a result shows ``—`` and a footnote number
(``—¹``); the footnotes under the table give each distinct reason once (``¹ not run: <reason>``,
``failed: <reason>``, ``missing: ...`` for a cell with no stored row, ``latency not measured: ...``; seeds
that did not run beside ones that did are footnoted on the value). Below the table: the test instances per
task (n), the training seeds (rows or cells over other seeds than the usual ones marked ``†``, ``‡``, ...),
then a footer with the commits, package versions and hardware the rows were computed with, the render date
and the command. :func:`write_table` writes ``tableN.md``, ``.csv`` (one line per row × task, ``seeds``
separated by ``;``, the full reason) and ``.json`` (the same records, ``seeds`` as a list) atomically.
Unlike the paper, every number comes from this suite's own runs on the profile's model and subsets.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from promptintern.harness.provenance import describe_hardware, environment, utc_now
from promptintern.harness.seeds import combine, seeds_of
from promptintern.harness.store import ResultsStore, RunRow
from promptintern.io import atomic_write_text, write_json
from promptintern.paths import REPO_ROOT
from promptintern.tasks import task_title

#: Table specs: ``benchmarks/tables`` in a checkout; installed as ``promptintern/experiments`` from a wheel.
SPEC_DIR = next(
    (d for d in (REPO_ROOT / "benchmarks" / "tables", Path(__file__).parents[1] / "experiments") if d.is_dir()),
    REPO_ROOT / "benchmarks" / "tables",
)
#: Longest row label shown in a Markdown cell.
MD_REASON_CHARS = 160
CSV_FIELDS = (
    "table",
    "label",
    "method",
    "variant",
    "task",
    "seeds",
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

_SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")
#: Markers of the rows (or cells) whose seeds differ from the table's usual ones, in order of use.
SEED_MARKS = ("†", "‡", "§", "¶", "‖")
#: Combined rows of several seeds by the rows' contents: the tables' three renderings bootstrap once.
_COMBINED: dict[tuple, RunRow] = {}


def _md_text(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip().replace("|", "\\|")
    return text if len(text) <= MD_REASON_CHARS else text[: MD_REASON_CHARS - 1].rstrip() + "…"


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _num(v: float | None, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def _seed_list(seeds: Iterable[int]) -> str:
    return ", ".join(map(str, seeds))


class Footnotes:
    """Numbered notes under a table: identical texts share one number, numbered in order of first use."""

    def __init__(self) -> None:
        self.texts: dict[str, int] = {}

    def mark(self, text: str) -> str:
        """The superscript number of ``text`` (``¹``), adding it on first use."""
        text = _one_line(text)
        number = self.texts.setdefault(text, len(self.texts) + 1)
        return str(number).translate(_SUPERSCRIPT)

    def lines(self) -> list[str]:
        """One paragraph per note: ``¹ not run: <full reason>``."""
        out: list[str] = []
        for text, number in self.texts.items():
            out += [f"{str(number).translate(_SUPERSCRIPT)} {text}", ""]
        return out


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


class _Cell:
    """The store rows of one (method, variant, task) over training seeds and their combined row."""

    def __init__(self, rows: Sequence[RunRow]) -> None:
        self.rows = sorted(rows, key=lambda r: r.seed)
        ok = [r for r in self.rows if r.status == "ok"]
        #: Seeds behind the shown row: the ok ones, else every seed tried.
        self.seeds = seeds_of(ok or self.rows)
        #: Rows of seeds that did not run next to ok ones (their value is left out of the mean).
        self.not_ok = [r for r in self.rows if r.status != "ok"] if ok else []
        self.row = _combine(self.rows) if len(ok) > 1 else combine(self.rows)


def _combine(rows: Sequence[RunRow]) -> RunRow:
    """:func:`.seeds.combine`, remembered for rows with the same contents."""
    key = tuple(json.dumps(r.to_dict(), sort_keys=True, default=str) for r in rows)
    if key not in _COMBINED:
        if len(_COMBINED) >= 1024:
            _COMBINED.clear()
        _COMBINED[key] = combine(rows)
    return _COMBINED[key]


def missing_reason(table: str, profile: str | None = None) -> str:
    """Why a cell has no result at all (nothing has run it into this store or results folder), with the command
    that runs it where the profile is known."""
    text = "not run yet: no result in the results store"
    if profile:
        text += (f"; `promptintern reproduce --profile {profile} --tables {table}` runs it (`--tasks` for some "
                 "tasks only; finished experiments are kept)")  # fmt: skip
    return text


class _Grid:
    """Store rows of one table grouped by (method, variant, task) over seeds (:func:`.seeds.combine`), with
    the latency references; ``profile`` names the command of a missing cell's reason."""

    def __init__(self, spec: TableSpec, rows: Sequence[RunRow], profile: str | None = None) -> None:
        self.spec, self.profile = spec, profile
        groups: dict[tuple[str, str, str], list[RunRow]] = {}
        for r in rows:
            groups.setdefault((r.method, r.variant, r.task), []).append(r)
        self.groups = {key: _Cell(group) for key, group in groups.items()}
        self.cells = {key: cell.row for key, cell in self.groups.items()}
        self.reference: dict[str, RunRow] = {}
        for task in spec.tasks:
            for method in spec.reference:
                ref = _ok(self.cells.get((method, "", task)))
                if ref is not None and ref.latency_s_mean and _served(ref):
                    self.reference[task] = ref
                    break

    def get(self, row: RowSpec, task: str) -> RunRow | None:
        return self.cells.get((row.method, row.variant, task))

    def usual_n(self, task: str) -> float | None:
        """The number of test instances most results of ``task`` in this table have (ties: the smallest)."""
        counts: dict[float, int] = {}
        for row in self.spec.rows:
            if (r := _ok(self.get(row, task))) is not None and r.n:
                counts[r.n] = counts.get(r.n, 0) + 1
        return min(counts, key=lambda n: (-counts[n], n)) if counts else None

    def cell(self, row: RowSpec, task: str) -> _Cell | None:
        return self.groups.get((row.method, row.variant, task))

    def speedup(self, row: RunRow | None) -> float | None:
        ref = self.reference.get(row.task) if row is not None else None
        if _ok(row) is None or ref is None or not row.latency_s_mean or not _served(row):
            return None
        return ref.latency_s_mean / row.latency_s_mean

    def seed_marks(self) -> tuple[dict[tuple[int, ...], str], str]:
        """Marker per seed list of the ok cells and the line stating them: the most common single-seed list
        (else the most common list) is unmarked, every other list gets a marker of :data:`SEED_MARKS`."""
        counts: dict[tuple[int, ...], int] = {}
        shown = [c for row in self.spec.rows for t in self.spec.tasks if (c := self.cell(row, t)) is not None]
        for cell in shown:
            if cell.row.status == "ok":
                key = tuple(cell.seeds)
                counts[key] = counts.get(key, 0) + 1
        if not counts:
            seeds = sorted({r.seed for cell in shown for r in cell.rows})
            return {}, f"Training seeds: {_seed_list(seeds) or '—'} (no cell has a result)."
        base = min(counts, key=lambda k: (len(k) > 1, -counts[k]))
        others = [k for k in counts if k != base]
        marks = {k: SEED_MARKS[i % len(SEED_MARKS)] * (1 + i // len(SEED_MARKS)) for i, k in enumerate(others)}
        parts = [f"{_seed_list(k)} where marked {m}" for k, m in marks.items()]
        parts.append(f"{_seed_list(base)} {'otherwise' if parts else 'for every result'}")
        line = f"Training seeds: {'; '.join(parts)}."
        if any(len(k) > 1 for k in counts):
            line += (
                " A result over several seeds is their mean, its 95 % interval resampling seeds and test"
                " instances."
            )
        return marks, line

    def row_seed_mark(self, row: RowSpec, marks: dict[tuple[int, ...], str]) -> str | None:
        """The row's seed marker when all its results share one seed list (else each cell carries its own)."""
        found = {
            marks.get(tuple(c.seeds), "")
            for t in self.spec.tasks
            if (c := self.cell(row, t)) is not None and c.row.status == "ok"
        }
        return found.pop() if len(found) == 1 else None

    def md_cells(
        self, row: RowSpec, task: str, notes: Footnotes, marks: dict[tuple[int, ...], str] | None = None
    ) -> list[str]:
        """The row's Markdown cells for ``task``: results, or ``—`` with a footnote saying why not. ``marks``:
        seed markers to put on this cell's value (None: the row label carries them)."""
        cell = self.cell(row, task)
        r = cell.row if cell is not None else None
        ok = _ok(r)
        width = 6 if self.spec.layout == "latency" else 3 + self.spec.rates
        if ok is None:
            text = missing_reason(self.spec.id, self.profile) if r is None else f"{r.status}: {r.reason}"
            return ["—" + notes.mark(text)] + ["—"] * (width - 1)
        mark = (marks or {}).get(tuple(cell.seeds), "")
        usual, n_mark = self.usual_n(task), ""
        if ok.n and usual and ok.n != usual:
            which = "this row more" if ok.n > usual else "those rows more"
            n_mark = notes.mark(
                f"over {ok.n:g} test instances, most of the table's results over {usual:g} (the reproduce sizing's "
                f"row_overrides give {which} for a claim's power); claims pair rows on the instances both have"
            )
        for other in cell.not_ok:
            mark += notes.mark(f"{other.status} (seed {other.seed}): {other.reason}")
        if self.spec.layout == "latency":
            speed = self.speedup(ok)
            cost = ok.cost_ft_gpt35_usd_per_instance
            source = ok.latency_source or ""
            if source.startswith("not measured"):
                latency = "—" + notes.mark("latency " + source)
            elif not _served(ok):  # e.g. kept from an archive without adapters: no server to measure it with
                latency = "—" + notes.mark("latency not measured through the server (only the in-process "
                                           "generation time is recorded, which is not comparable)")  # fmt: skip
            else:
                latency = _num(ok.latency_s_mean, ".3f")
            return [
                latency + mark,
                _num(ok.ttft_s_mean, ".3f"),
                _num(None if ok.tpot_s_mean is None else 1000 * ok.tpot_s_mean, ".1f"),
                _num(ok.latency_output_tokens_mean, ".1f"),
                "—" if speed is None else f"{speed:.2f}×",
                _num(None if cost is None else 1000 * cost, ".3f") + n_mark,  # latency: the same first instances
            ]
        times = ok.compression_x
        cells = [_metric_value(ok) + mark + n_mark, _num(ok.input_tokens_mean, ".1f"), "—" if not times else f"{times:.1f}×"]
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


def _served(row: RunRow) -> bool:
    """Table 8's latency of ``row`` was measured through the server (the only comparable measurement)."""
    return row.latency_source == "server"


def _metric_value(row: RunRow) -> str:
    """``value [ci_lo, ci_hi]`` of an ok row (``—`` without a value)."""
    if row.value is None:
        return "—"
    if row.ci_lo is None or row.ci_hi is None:
        return f"{row.value:.1f}"
    return f"{row.value:.1f} [{row.ci_lo:.1f}, {row.ci_hi:.1f}]"


def _rates(row: RunRow | None) -> str:
    """Template rate requested → achieved (the compressor's own unit), or — where no template is compressed."""
    if row is None or row.rate_requested is None or row.rate_achieved is None:
        return "—"
    if row.rate_requested in (0.0, 1.0) and row.rate_achieved == row.rate_requested:
        return f"{row.rate_requested:g} (none)"
    return f"{row.rate_requested:.2f} → {row.rate_achieved:.2f}"


# -- rendering ----------------------------------------------------------------------------------------


def _counts(values: Iterable[float | int | None]) -> str:
    """Distinct counts, sorted, as integers where whole (the store keeps some counts as REAL)."""
    found = sorted({v for v in values if v is not None})
    return ", ".join(str(int(v)) if float(v).is_integer() else f"{v:g}" for v in found)


def _n_line(grid: _Grid) -> str:
    """Test instances per task of the results shown (a list where rows differ; latency requests too)."""
    parts = []
    for task in grid.spec.tasks:
        shown = [r for row in grid.spec.rows if (r := _ok(grid.get(row, task))) is not None]
        ns = _counts(r.n for r in shown)
        if ns:
            text = f"{task_title(task)} n = {ns}" + (" (differs by row)" if "," in ns else "")
        else:
            text = f"{task_title(task)} n = — ({'not recorded' if shown else 'no result'})"
        latency = _counts(r.latency_n for r in shown)
        if grid.spec.layout == "latency" and latency:
            text += f" (latency: {latency} requests per row)"
        parts.append(text)
    return "Test instances per task: " + "; ".join(parts) + "."


def _footer(rows: Sequence[RunRow], command: str | None, rendered_at: str) -> list[str]:
    lines = []
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
    grid = _Grid(spec, rows, profile)
    notes = Footnotes()
    marks, seeds_line = grid.seed_marks()
    cols = header(spec)
    aligns = ["---"] + ["---:"] * (len(cols) - 1)
    lines = [f"# {spec.title}", ""]
    if spec.caption:
        lines += [spec.caption.strip(), ""]
    lines += [f"Profile `{profile}`, model `{model}`.", ""]
    lines += ["| " + " | ".join(cols) + " |", "| " + " | ".join(aligns) + " |"]
    for row in spec.rows:
        row_mark = grid.row_seed_mark(row, marks)
        cells = [_md_text(row.label) + (row_mark or "")]
        for task in spec.tasks:
            cells += grid.md_cells(row, task, notes, None if row_mark is not None else marks)
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += notes.lines()
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
    lines += [_n_line(grid), "", seeds_line, ""]
    lines += _footer(rows, command, rendered_at or utc_now())
    return "\n".join(lines) + "\n"


def _csv_num(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return format(v, ".6g")
    if isinstance(v, list):
        return ";".join(map(str, v))
    return str(v)


def records(spec: TableSpec, rows: Sequence[RunRow], profile: str | None = None) -> list[dict[str, Any]]:
    """One flat record per (spec row, task), in table order (missing results get status ``missing`` and
    :func:`missing_reason`): the cell's row combined over seeds (``seeds``: the seeds combined), seeds that did
    not run under ``seeds_not_ok``."""
    grid = _Grid(spec, rows, profile)
    out = []
    for row in spec.rows:
        for task in spec.tasks:
            cell = grid.cell(row, task)
            base = {
                "table": spec.id,
                "label": row.label,
                "method": row.method,
                "variant": row.variant,
                "task": task,
            }
            if cell is None:
                out.append(base | {"seeds": [], "status": "missing", "reason": missing_reason(spec.id, profile)})
                continue
            r = cell.row
            data = r.to_dict()
            data.pop("provenance")
            found = grid.saving(task)
            extra: dict[str, Any] = {}
            if cell.not_ok:
                extra["seeds_not_ok"] = [
                    {"seed": o.seed, "status": o.status, "reason": o.reason} for o in cell.not_ok
                ]
            out.append(
                base
                | {"seeds": list(cell.seeds)}
                | {k: v for k, v in data.items() if k not in base and k != "label"}
                | {"speedup": grid.speedup(r)}
                | ({"cost_saving_vs_reference": found[2]} if found and found[0] is r else {})
                | extra
            )
    return out


def render_csv(spec: TableSpec, rows: Sequence[RunRow], profile: str | None = None) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for rec in records(spec, rows, profile):
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
    per_cell: dict[tuple[str, str, str], int] = {}
    for r in rows:
        per_cell[(r.method, r.variant, r.task)] = per_cell.get((r.method, r.variant, r.task), 0) + 1

    def key(r: RunRow) -> str:  # method/variant/task, with /seed-N where a cell has several seeds' rows
        name = f"{r.method}/{r.variant}/{r.task}"
        return name + (f"/seed-{r.seed}" if per_cell[(r.method, r.variant, r.task)] > 1 else "")

    return {
        "table": spec.id,
        "title": spec.title,
        "caption": spec.caption,
        "layout": spec.layout,
        "profile": profile,
        "model": model,
        "columns": header(spec),
        "records": records(spec, rows, profile),
        "provenance": {
            "commits": commits,
            "rows": {key(r): r.provenance for r in rows},
        },
        "command": command,
        "rendered_at": rendered_at,
        "spec": spec.path,
    }


def spec_cells(spec: TableSpec, rows: Sequence[RunRow]) -> list[RunRow]:
    """The rows that are cells of ``spec``: (method, variant, task) among its rows x tasks, in their order."""
    wanted = {(r.method, r.variant, t) for r in spec.rows for t in spec.tasks}
    return [r for r in rows if (r.method, r.variant, r.task) in wanted]


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
    """Write ``table{id}.md/.csv/.json`` under ``out`` (atomic writes); returns the paths.

    Only the rows that are cells of ``spec`` enter the files, provenance included: a store may hold rows of this
    table for tasks or rows the spec does not show (a piece run with ``--tasks`` records every table it touches).
    """
    rows = spec_cells(spec, rows)
    out = Path(out)
    rendered_at = rendered_at or utc_now()
    kw = {"profile": profile, "model": model, "command": command, "rendered_at": rendered_at}
    stem = out / f"table{spec.id}"
    return [
        atomic_write_text(stem.with_suffix(".md"), render_markdown(spec, rows, **kw)),
        atomic_write_text(stem.with_suffix(".csv"), render_csv(spec, rows, profile)),
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
) -> tuple[list[Path], list[RunRow]]:
    """Render every spec from the store rows of (table, profile, model) into ``out``; (paths, the rows that are
    cells of the specs, in spec order)."""
    rendered_at = utc_now()
    paths: list[Path] = []
    cells: list[RunRow] = []
    for spec in specs:
        rows = spec_cells(spec, store.rows(spec.id, profile, model=model))
        paths += write_table(
            spec, rows, out, profile=profile, model=model, command=command, rendered_at=rendered_at
        )
        cells += rows
    return paths, cells
