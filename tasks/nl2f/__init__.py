"""NL2F: natural language + spreadsheet table -> Excel formula.

Two sources: ``spider`` (default) builds NL2F-Spider from the Spider dev set (:mod:`.spider`);
``nl2formula`` reads the official NL2Formula release (:mod:`.nl2formula`) from ``path`` or
``$PROMPTINTERN_NL2FORMULA``.  The metric is NL2Formula's exact match (:mod:`.metric`).

A query shows the first ``table_rows`` data rows of its table (default :data:`.table.DEFAULT_TABLE_ROWS`);
:meth:`NL2FTask.shrink` re-renders a query with one row fewer, for prompts that do not fit the context.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from typing import Any

from promptintern.tasks.base import Instance, Task
from promptintern.tasks.nl2f import metric, nl2formula, spider
from promptintern.tasks.nl2f.table import DEFAULT_TABLE_ROWS, GridRef, data_rows, render_query, rows_shown

SOURCES = ("spider", "nl2formula")

_TAG = re.compile(r"\[FORMULA\](.*?)(?:\[/FORMULA\]|$)", re.S | re.I)
_FENCE = re.compile(r"```[^\n`]*\n(.*?)(?:```|$)", re.S)
_CALL = re.compile(r"^[A-Za-z][A-Za-z0-9_.]*\s*\(")
_EMBEDDED_EQ = re.compile(r"(?:^|(?<=[\s:`'\"]))=\s*(?:[A-Za-z][A-Za-z0-9_.]*\s*\(|\$?[A-Za-z]{1,3}\$?\d)")
_EMBEDDED_CALL = re.compile(r"\b[A-Z][A-Z0-9.]*\(")
_LABEL = re.compile(r"^(?:excel\s+)?formula\s*:\s*", re.I)


def _depth(text: str) -> int:
    """Open-parenthesis count outside string literals."""
    depth, quoted = 0, False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif not quoted:
            depth += (ch == "(") - (ch == ")")
    return depth


def _pick_line(text: str) -> str:
    """The formula in a block of text: the first formula-looking line, completed while parens are open."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    found = None
    for test in (
        lambda s: s if s.startswith("=") else None,
        lambda s: s if _CALL.match(_LABEL.sub("", s)) else None,
        lambda s: s[m.start() :] if (m := _EMBEDDED_EQ.search(s)) else None,
        lambda s: s[m.start() :] if (m := _EMBEDDED_CALL.search(s)) else None,
    ):
        found = next(((i, hit) for i, s in enumerate(lines) if (hit := test(s)) is not None), None)
        if found:
            break
    index, formula = found or (0, lines[0])
    for extra in lines[index + 1 :]:
        if _depth(formula) <= 0:
            break
        formula += extra
    return _cut_prose(formula)


def _cut_prose(text: str) -> str:
    """Drop words that follow a complete leading function call, as in ``=SUM(D1) which adds ...``."""
    start = len(text) - len(text.lstrip("= "))
    if not _CALL.match(text[start:]):
        return text
    depth, quoted = 0, False
    for i, ch in enumerate(text[start:], start):
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in "()":
            depth += 1 if ch == "(" else -1
            if depth == 0:
                rest = text[i + 1 :]
                return text[: i + 1] if re.match(r"\s+[A-Za-z]", rest) else text
    return text


def extract_formula(output: str) -> str:
    """The formula in raw model output: ``[FORMULA]`` tags, else a code fence, else the formula line."""
    text = output.strip()
    if m := _TAG.search(text):
        text = m.group(1)
    elif m := _FENCE.search(text):
        text = m.group(1)
    formula = _LABEL.sub("", _pick_line(text)).strip().strip("`").strip()
    formula = formula.lstrip("=").strip()
    if formula.endswith((").", ");")):
        formula = formula[:-1]
    return formula


class NL2FTask(Task):
    """NL2F with NL2F-Spider (default) or the official NL2Formula release as data."""

    metric_version = metric.METRIC_VERSION

    def __init__(
        self,
        source: str = "spider",
        path: str | os.PathLike | None = None,
        table_rows: int | None = DEFAULT_TABLE_ROWS,
        seed: int = spider.SEED,
        template: str = "paper",
    ):
        super().__init__(template=template)
        if source not in SOURCES:
            raise ValueError(f"unknown NL2F source {source!r}; choose from {', '.join(SOURCES)}")
        if table_rows is not None and (not isinstance(table_rows, int) or table_rows < 0):
            raise ValueError(f"table_rows must be a non-negative integer or None, got {table_rows!r}")
        if path is not None and source != "nl2formula":
            raise ValueError("path is only used with source='nl2formula'")
        self.source = source
        self.path = path
        self.table_rows = table_rows
        self.seed = seed
        self._spider: dict[str, Any] | None = None

    @property
    def display_name(self) -> str:
        return "NL2F-Spider" if self.source == "spider" else "NL2F (NL2Formula)"

    # -- data -------------------------------------------------------------------------------------
    def load(self, split: str) -> list[Instance]:
        self.check_split(split)
        if self.source == "nl2formula":
            return [self._from_record(r, split) for r in nl2formula.load_split(split, self.path)]
        if self._spider is None:
            self._spider = spider.load_dataset(self.seed)
        tables = self._spider["tables"]
        out = []
        for r in self._spider["instances"]:
            if r["split"] != split:
                continue
            grid = tables[f"{r['db_id']}/{r['table']}"]
            shown = rows_shown(grid, self.table_rows)
            meta = {
                "source": "spider",
                "db_id": r["db_id"],
                "table": r["table"],
                "kind": r["kind"],
                "sql": r["query"],
                "dev_index": r["dev_index"],
                "group": r["group"],
                "n_rows": data_rows(grid),
                **self._shrink_meta(r["question"], grid, shown),
            }
            out.append(
                Instance(
                    r["id"], split, render_query(r["question"], grid, shown, r["table"]), r["formula"], meta,
                    group=r["group"],
                )
            )
        return out

    @staticmethod
    def _shrink_meta(question: str, grid: list[list[str]], shown: int) -> dict[str, Any]:
        """What :meth:`shrink` needs: the question, the grid (by reference) and the data rows shown."""
        return {"question": question, "grid": GridRef(grid), "table_rows_shown": shown}

    def _from_record(self, r: nl2formula.Record, split: str) -> Instance:
        meta = {
            "source": "nl2formula",
            "db_id": None,
            "table": r.table_name,
            "level": r.level,
            "n_rows": data_rows(r.grid),
        }
        shown = rows_shown(r.grid, self.table_rows)
        meta |= self._shrink_meta(r.question, r.grid, shown)
        query = render_query(r.question, r.grid, shown, r.table_name)
        return Instance(r.id, split, query, r.formula, meta)

    def shrink(self, instance: Instance) -> Instance | None:
        """``instance`` with its table re-serialised showing one data row fewer (id, reference and the other
        fields unchanged), or None when it shows no data row (or was not loaded by an NL2F task)."""
        meta = instance.meta
        shown, ref = meta.get("table_rows_shown"), meta.get("grid")
        if not isinstance(shown, int) or shown <= 0 or not isinstance(ref, GridRef) or "question" not in meta:
            return None
        query = render_query(meta["question"], ref.grid, shown - 1, meta.get("table") or "")
        return replace(instance, query=query, meta={**meta, "table_rows_shown": shown - 1})

    # -- evaluation -------------------------------------------------------------------------------
    def extract(self, output: str) -> str:
        return extract_formula(output)


__all__ = ["NL2FTask", "extract_formula"]
