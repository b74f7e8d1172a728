"""Leaderboard of recorded submissions (:mod:`promptintern.harness.submissions`) as Markdown, JSON or one HTML file.

Per task: the primary metric with its 95 % bootstrap interval, the submitter-reported input tokens per
instance and the cost per instance from :mod:`promptintern.evaluation.cost`. Only models the price list names
(exactly, or without ``openai:``) get a cost; every other model gets a blank cost and a note, since the
price list's ``default`` (0, meant for the suite's own local runs) would claim a free API. The HTML is one
static file with no network access: inline CSS, vanilla-JS sortable columns (click a header; again to
reverse; blanks stay last) and an inline SVG plot of the metric against input tokens, one panel per task.
Contacts are never rendered. The PromptIntern paper has no leaderboard; this is the suite's own.
"""

from __future__ import annotations

import html
import json
import math
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from promptintern.evaluation.cost import Prices, load_prices
from promptintern.tasks import PAPER_TASKS, get_task

FORMATS = ("md", "json", "html")
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")


@dataclass
class Cell:
    """One submission's result on one task."""

    metric: str
    value: float
    ci_lo: float | None
    ci_hi: float | None
    n: int
    input_tokens_mean: float | None
    output_tokens_mean: float | None
    latency_s_mean: float | None
    signature: str | None
    version: str
    cost_usd_per_instance: float | None = None
    cost_note: str | None = None


@dataclass
class Entry:
    id: int
    name: str
    model: str
    method: str
    profile: str | None
    created_at: str
    content_hash: str
    tasks: dict[str, Cell] = field(default_factory=dict)


@dataclass
class Leaderboard:
    entries: list[Entry]
    tasks: list[str]
    prices: Prices
    notes: list[str]


# -- data ----------------------------------------------------------------------------------------------
def _known_price(prices: Prices, model: str):
    for name in (model, model.removeprefix("openai:")):
        if name in prices.models:
            return prices.models[name]
    return None


def price_cell(cell: Cell, model: str, prices: Prices) -> None:
    """Fill ``cell``'s cost (USD per instance) or leave it blank with the reason in ``cost_note``."""
    price = _known_price(prices, model)
    if price is None:
        cell.cost_note = f"no price for model {model!r} in the price list (as of {prices.as_of})"
    elif cell.input_tokens_mean is None:
        cell.cost_note = "the predictions report no input_tokens"
    else:
        out = cell.output_tokens_mean or 0.0
        cell.cost_usd_per_instance = cell.input_tokens_mean / 1000 * price.input + out / 1000 * price.output
        if cell.output_tokens_mean is None and price.output:
            cell.cost_note = "input tokens only (the predictions report no output_tokens)"


def load(store_path: str | Path | None = None, prices_path: str | Path | None = None) -> Leaderboard:
    """Every recorded submission (oldest first) with costs from the price list (``prices_path`` merged)."""
    from promptintern.harness.store import ResultsStore
    from promptintern.harness.submissions import ensure_tables

    prices = load_prices(prices_path)
    with ResultsStore(store_path) as store:
        ensure_tables(store)
        con = store.connection
        entries = {
            row[0]: Entry(*row)
            for row in con.execute(
                "SELECT id, name, model, method, profile, created_at, content_hash FROM submissions ORDER BY id"
            )
        }
        for row in con.execute(
            "SELECT submission_id, task, metric, value, ci_lo, ci_hi, n, input_tokens_mean, output_tokens_mean,"
            " latency_s_mean, signature, task_version FROM submission_scores ORDER BY submission_id, task"
        ):
            entries[row[0]].tasks[row[1]] = Cell(*row[2:])
    notes: list[str] = []
    for entry in entries.values():
        for task, cell in entry.tasks.items():
            price_cell(cell, entry.model, prices)
            if cell.cost_note:
                notes.append(
                    f"{entry.name} / {task}: cost {'blank' if cell.cost_usd_per_instance is None else 'partial'}: {cell.cost_note}"
                )
    used = {t for e in entries.values() for t in e.tasks}
    tasks = [t for t in PAPER_TASKS if t in used] + sorted(used - set(PAPER_TASKS))
    return Leaderboard(list(entries.values()), tasks, prices, notes)


def _display(task: str) -> str:
    try:
        return get_task(task).display_name or task
    except ValueError:
        return task


def _num(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _cost(value: float | None) -> str:
    return "" if value is None else f"{value:.3g}" if value else "0"


def _metric_text(cell: Cell | None) -> str:
    if cell is None:
        return ""
    ci = f" [{cell.ci_lo:.1f}, {cell.ci_hi:.1f}]" if cell.ci_lo is not None and cell.ci_hi is not None else ""
    return f"{cell.value:.1f}{ci}"


def _columns(board: Leaderboard) -> list[tuple[str, str, Any]]:
    """``(header, type, getter(entry) -> (text, sort value))`` for every column."""
    cols: list[tuple[str, str, Any]] = [
        ("#", "number", lambda e: (str(e.id), e.id)),
        ("name", "text", lambda e: (e.name, e.name)),
        ("model", "text", lambda e: (e.model, e.model)),
        ("method", "text", lambda e: (e.method, e.method)),
    ]
    for task in board.tasks:
        label = _display(task)
        metric = next((e.tasks[task].metric for e in board.entries if task in e.tasks), "")

        def get(e: Entry, t: str = task, kind: str = "metric") -> tuple[str, float | None]:
            cell = e.tasks.get(t)
            if cell is None:
                return "", None
            if kind == "metric":
                return _metric_text(cell), cell.value
            if kind == "tokens":
                return _num(cell.input_tokens_mean), cell.input_tokens_mean
            return _cost(cell.cost_usd_per_instance), cell.cost_usd_per_instance

        cols.append((f"{label} {metric} (95% CI)", "number", get))
        cols.append((f"{label} input tokens/inst.", "number", lambda e, t=task: get(e, t, "tokens")))
        cols.append((f"{label} USD/inst.", "number", lambda e, t=task: get(e, t, "cost")))
    cols.append(("submitted", "text", lambda e: (e.created_at, e.created_at)))
    return cols


# -- renderers -----------------------------------------------------------------------------------------
def render_json(board: Leaderboard) -> str:
    data = {
        "tasks": board.tasks,
        "prices": {"as_of": board.prices.as_of, "source": board.prices.source},
        "entries": [asdict(e) for e in board.entries],
        "notes": board.notes,
    }
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


_MD_TABLE = str.maketrans({"\\": "\\\\", "|": "\\|"})
_MD_INLINE = str.maketrans({c: "\\" + c for c in "\\|`*_[]~"})


def _md(text: str, *, inline: bool = True) -> str:
    """``text`` as one Markdown table cell. Submitters choose names, models and methods, so the text is
    HTML-escaped as :func:`render_html` escapes it (``<b>`` stays text), line breaks become spaces and
    other control characters U+FFFD (no row is split, no terminal escape gets through), and ``\\`` and
    ``|`` are backslash-escaped (no cell is split); with ``inline``, so are the emphasis, code, link and
    strike-through characters `` ` * _ [ ] ~``."""
    text = " ".join(text.splitlines())
    text = "".join("\ufffd" if unicodedata.category(ch) == "Cc" else ch for ch in text)
    return html.escape(text, quote=False).translate(_MD_INLINE if inline else _MD_TABLE)


def render_markdown(board: Leaderboard) -> str:
    cols = _columns(board)
    lines = [
        "# PromptIntern suite leaderboard",
        "",
        f"{len(board.entries)} submission(s). Metric with 95 % bootstrap CI on each task's test split; input "
        f"tokens per instance as reported by the submitter; cost from the price list as of "
        f"{_md(board.prices.as_of)}.",
        "",
        "| " + " | ".join(_md(c[0]) for c in cols) + " |",
        "| " + " | ".join("---:" if c[1] == "number" else "---" for c in cols) + " |",
    ]
    for e in board.entries:
        # number cells are this module's own formatting ("100.0 [99.1, 100.0]"): cell escaping only
        lines.append("| " + " | ".join(_md(c[2](e)[0], inline=c[1] != "number") for c in cols) + " |")
    if board.notes:
        lines += ["", "Notes:", ""] + [f"- {_md(n)}" for n in board.notes]
    return "\n".join(lines) + "\n"


def _ticks(top: float, count: int = 5) -> list[float]:
    """Round ticks from 0 whose last one is >= ``top``."""
    raw = top / count if top > 0 else 1.0
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    return [i * step for i in range(math.ceil(top / step - 1e-9) + 1)]


def render_plot(board: Leaderboard, width: int = 340, height: int = 260) -> str:
    """Inline SVG: one panel per task, metric (y, 0-100) against input tokens per instance (x)."""
    colors = {e.id: PALETTE[i % len(PALETTE)] for i, e in enumerate(board.entries)}
    left, right, top, bottom = 48, 16, 40, 40
    pw, ph = width - left - right, height - top - bottom
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="plot" role="img" width="{width * max(len(board.tasks), 1)}"'
        f' height="{height}" font-family="sans-serif" font-size="11">',
        "<title>metric against input tokens per instance</title>",
    ]
    for k, task in enumerate(board.tasks):
        pts = [(e, e.tasks[task]) for e in board.entries if task in e.tasks]
        xs = [c.input_tokens_mean for _, c in pts if c.input_tokens_mean is not None]
        x_max = _ticks(max(xs) * 1.1 if xs and max(xs) > 0 else 1.0)[-1]
        ox = k * width + left
        metric = pts[0][1].metric if pts else ""
        parts.append(f'<g class="panel" data-task="{html.escape(task)}">')
        parts.append(
            f'<text x="{ox + pw / 2}" y="14" text-anchor="middle" font-weight="bold">'
            f"{html.escape(_display(task))}</text>"
        )
        parts.append(f'<rect x="{ox}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>')
        for v in _ticks(100):
            y = top + ph - v / 100 * ph
            parts.append(
                f'<line x1="{ox}" x2="{ox + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
                f'<text x="{ox - 4}" y="{y + 4:.1f}" text-anchor="end">{v:g}</text>'
            )
        for v in _ticks(x_max):
            x = ox + v / x_max * pw
            parts.append(f'<text x="{x:.1f}" y="{top + ph + 14}" text-anchor="middle">{v:g}</text>')
        parts.append(
            f'<text x="{ox + pw / 2}" y="{height - 6}" text-anchor="middle">input tokens / instance</text>'
        )
        parts.append(
            f'<text transform="translate({ox - 36},{top + ph / 2}) rotate(-90)" text-anchor="middle">'
            f"{html.escape(metric)}</text>"
        )
        missing = 0
        for e, c in pts:
            if c.input_tokens_mean is None:
                missing += 1
                continue
            x, y = ox + c.input_tokens_mean / x_max * pw, top + ph - c.value / 100 * ph
            right = x > ox + 0.6 * pw  # label on the left of points near the right edge
            label = html.escape(e.name)
            parts.append(
                f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{colors[e.id]}">'
                f"<title>{label}: {c.value:.1f} at {c.input_tokens_mean:.1f} tokens</title></circle>"
                f'<text x="{x + (-7 if right else 7):.1f}" y="{y - 6:.1f}" fill="{colors[e.id]}"'
                f' text-anchor="{"end" if right else "start"}">{label}</text>'
            )
        if missing:
            parts.append(
                f'<text x="{ox + 4}" y="{top + 12}" fill="#666">{missing} without input tokens</text>'
            )
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px}
th{background:#f0f0f0;cursor:pointer;user-select:none;white-space:nowrap}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}tbody tr:nth-child(even){background:#fafafa}
.notes{color:#555;font-size:13px}"""

_JS = """(function () {
  var table = document.getElementById("leaderboard");
  var body = table.tBodies[0];
  var heads = table.tHead.rows[0].cells;
  function sortBy(th) {
    var col = th.cellIndex, numeric = th.dataset.type === "number";
    var asc = th.getAttribute("aria-sort") !== "ascending";
    for (var i = 0; i < heads.length; i++) heads[i].removeAttribute("aria-sort");
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.value, y = b.cells[col].dataset.value;
      if (x === "" || y === "") return (x === "") - (y === "");
      var c = numeric ? Number(x) - Number(y) : x.localeCompare(y);
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  for (var i = 0; i < heads.length; i++) {
    heads[i].addEventListener("click", function () { sortBy(this); });
    heads[i].addEventListener("keydown", function (ev) { if (ev.key === "Enter") sortBy(this); });
  }
})();"""


def render_html(board: Leaderboard) -> str:
    cols = _columns(board)
    esc = html.escape
    head = "".join(f'<th tabindex="0" data-type="{t}" scope="col">{esc(h)}</th>' for h, t, _ in cols)
    rows = []
    for e in board.entries:
        cells = []
        for _, kind, get in cols:
            text, value = get(e)
            sort = "" if value is None else (repr(float(value)) if kind == "number" else str(value))
            cls = ' class="num"' if kind == "number" else ""
            cells.append(f'<td{cls} data-value="{esc(sort)}">{esc(text)}</td>')
        rows.append(f'<tr data-id="{e.id}">' + "".join(cells) + "</tr>")
    notes = "".join(f"<li>{esc(n)}</li>" for n in board.notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>PromptIntern suite leaderboard</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>
<body><h1>PromptIntern suite leaderboard</h1>
<p>{len(board.entries)} submission(s). Metric with 95&nbsp;% bootstrap CI on each task's test split; input tokens
per instance as reported by the submitter; cost in USD per instance from the price list as of
{esc(board.prices.as_of)}. Click a column header to sort.</p>
<table id="leaderboard"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>
{f'<ul class="notes">{notes}</ul>' if notes else ""}
<h2>Metric against input tokens</h2>
{render_plot(board)}
<script>{_JS}</script>
</body></html>
"""


RENDERERS = {"md": render_markdown, "json": render_json, "html": render_html}


def render(fmt: str, store_path: str | Path | None = None, prices_path: str | Path | None = None) -> str:
    """The leaderboard of the store at ``store_path`` (default results store) in format ``fmt``."""
    if fmt not in RENDERERS:
        raise ValueError(f"unknown leaderboard format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return RENDERERS[fmt](load(store_path, prices_path))
