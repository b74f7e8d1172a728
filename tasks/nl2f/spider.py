"""NL2F-Spider: Spider dev questions whose single-table SQL converts to an Excel formula.

The converter reads Spider's structured ``sql`` parse (see :func:`convert`) and follows NL2Formula's
rules: row selection is ``FILTER``, conjunctions are products of conditions, conditional aggregates are the
``*IFS`` functions, ``DISTINCT`` is ``UNIQUE``, ``ORDER BY`` is ``SORT``/``SORTBY``, ``LIMIT`` is ``TAKE``
and several result columns are ``HSTACK``-ed.  A whole data column is written as its header cell (``B1``
is column B, rows 2 to the end).  Queries the rules cannot express are skipped and counted by reason.

The built dataset is cached under ``cache_dir("datasets")``, keyed by a hash of the source files, the
builder version and the split options.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sqlite3
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptintern.io import write_json
from promptintern.paths import cache_dir, data_file
from promptintern.tasks.nl2f.table import cell_text, column_ref, looks_numeric, make_grid

DATASET_NAME = "NL2F-Spider"
BUILDER_VERSION = 1
SEED = 2024
FRACTIONS = (0.75, 0.10, 0.15)
SPLITS = ("train", "validation", "test")

#: Every Excel function the converter can emit (``documents.yaml`` documents each of them).
FUNCTIONS = (
    "FILTER", "UNIQUE", "ROWS", "COUNTA", "COUNTIFS", "SUMIFS", "AVERAGEIFS", "MAXIFS", "MINIFS",
    "SUM", "AVERAGE", "MAX", "MIN", "SORT", "SORTBY", "TAKE", "HSTACK",
)  # fmt: skip

# Spider's parse vocabularies (indexes used in the ``sql`` dict).
AGG_OPS = ("none", "max", "min", "count", "sum", "avg")
WHERE_OPS = ("not", "between", "=", ">", "<", ">=", "<=", "!=", "in", "like", "is", "exists")
_EXCEL_OP = {"=": "=", ">": ">", "<": "<", ">=": ">=", "<=": "<=", "!=": "<>"}
_IFS = {"sum": "SUMIFS", "avg": "AVERAGEIFS", "max": "MAXIFS", "min": "MINIFS"}
_PLAIN = {"sum": "SUM", "avg": "AVERAGE", "max": "MAX", "min": "MIN"}


class Unsupported(Exception):
    """A query the NL2Formula rules cannot express; ``reason`` is a short key used in the counts."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Schema:
    """One Spider database schema from ``tables.json`` (original table and column names)."""

    db_id: str
    tables: tuple[str, ...]
    #: Spider column id -> (table index, position in that table, name); id 0 is ``*``.
    columns: tuple[tuple[int, int, str], ...]

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any]) -> Schema:
        seen: Counter[int] = Counter()
        cols = []
        for t, name in entry["column_names_original"]:
            cols.append((t, seen[t], name))
            seen[t] += 1
        return cls(entry["db_id"], tuple(entry["table_names_original"]), tuple(cols))

    def table_columns(self, table: int) -> list[str]:
        return [name for t, _, name in self.columns if t == table]


@dataclass(frozen=True)
class Conversion:
    """A converted query: the formula, the table it reads and a short kind label."""

    formula: str
    table: int
    kind: str


@dataclass(frozen=True)
class Cond:
    column: int  # Spider column id
    op: str  # key of _EXCEL_OP
    value: float | str


# -- conversion -------------------------------------------------------------------------------------


def _literal(value: float | str) -> str:
    if isinstance(value, str):
        return '"' + value.replace('"', '""') + '"'
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _criterion(cond: Cond) -> str:
    """An ``*IFS`` criterion string; text is escaped for the ``* ? ~`` wildcards."""
    op = "" if cond.op == "=" else _EXCEL_OP[cond.op]
    if isinstance(cond.value, str):
        text = re.sub(r"([~*?])", r"~\1", cond.value)
    else:
        text = _literal(cond.value)
    return '"' + (op + text).replace('"', '""') + '"'


def _value(raw: Any, numeric_column: bool) -> float | str:
    if isinstance(raw, dict):
        raise Unsupported("nested_query")
    if isinstance(raw, list):
        raise Unsupported("column_comparison")
    if isinstance(raw, (int, float)):
        return float(raw)
    text = str(raw)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1]
    if numeric_column and looks_numeric(text):
        return float(text)
    return text


def _plain_column(val_unit: Sequence[Any]) -> tuple[int, bool]:
    """(column id, DISTINCT flag) of a val_unit that is a bare column; raise otherwise."""
    unit_op, col_unit, _ = val_unit
    if unit_op != 0:
        raise Unsupported("arithmetic")
    agg, col_id, distinct = col_unit
    if agg != 0:
        raise Unsupported("nested_aggregate")
    return col_id, bool(distinct)


def _conditions(where: Sequence[Any], numeric: Mapping[int, bool]) -> list[Cond]:
    if any(isinstance(part, str) and part.lower() == "or" for part in where[1::2]):
        raise Unsupported("or_condition")
    conds: list[Cond] = []
    for not_op, op_id, val_unit, v1, v2 in where[::2]:
        if isinstance(v1, dict) or isinstance(v2, dict):
            raise Unsupported("nested_query")
        op = WHERE_OPS[op_id]
        if not_op:
            raise Unsupported("not_condition")
        if op in ("like", "in", "is", "exists"):
            raise Unsupported(f"{op}_condition")
        col, _ = _plain_column(val_unit)
        is_num = numeric.get(col, False)
        if op == "between":
            conds += [Cond(col, ">=", _value(v1, is_num)), Cond(col, "<=", _value(v2, is_num))]
        else:
            conds.append(Cond(col, op, _value(v1, is_num)))
    return conds


def query_table(sql: Mapping[str, Any]) -> int:
    """Index of the single table a supported query reads; raises :class:`Unsupported` otherwise."""
    if sql.get("intersect") or sql.get("union") or sql.get("except"):
        raise Unsupported("set_operation")
    units = sql["from"]["table_units"]
    if any(kind != "table_unit" for kind, _ in units):
        raise Unsupported("subquery_in_from")
    if len(units) != 1:
        raise Unsupported("join")
    if sql.get("groupBy") or sql.get("having"):
        raise Unsupported("group_by")
    return units[0][1]


@dataclass(frozen=True)
class _Parts:
    """Column references, FILTER masks and *IFS criteria of one query."""

    schema: Schema
    conds: list[Cond]

    def ref(self, col: int) -> str:
        return column_ref(self.schema.columns[col][1])

    def mask(self, extra: Sequence[str] = ()) -> str:
        parts = [f"{self.ref(c.column)}{_EXCEL_OP[c.op]}{_literal(c.value)}" for c in self.conds] + list(
            extra
        )
        return parts[0] if len(parts) == 1 else "*".join(f"({p})" for p in parts)

    def criteria(self) -> str:
        return ",".join(f"{self.ref(c.column)},{_criterion(c)}" for c in self.conds)


def convert(
    sql: Mapping[str, Any],
    schema: Schema,
    numeric: Mapping[int, bool] | None = None,
    nullable: Mapping[int, bool] | None = None,
) -> Conversion:
    """Convert a Spider ``sql`` parse to an Excel formula or raise :class:`Unsupported`.

    ``numeric[col]``: the column holds numbers (numeric-looking text literals are compared as numbers);
    ``nullable[col]``: the column has blanks (``COUNT(col)`` and ``COUNT(DISTINCT col)`` then skip them).
    """
    table = query_table(sql)
    conds = _conditions(sql["where"], numeric or {})
    distinct, items = sql["select"]
    selected = [(AGG_OPS[agg], *_plain_column(vu)) for agg, vu in items]
    used = [col for _, col, _ in selected if col != 0] + [c.column for c in conds]
    if any(schema.columns[col][0] != table for col in used):
        raise Unsupported("column_of_other_table")
    parts = _Parts(schema, conds)
    aggs = [agg for agg, _, _ in selected]
    if all(a != "none" for a in aggs):
        formula, kind = _aggregates(sql, selected, parts, nullable or {})
    elif any(a != "none" for a in aggs):
        raise Unsupported("mixed_aggregate")
    else:
        formula, kind = _selection(sql, bool(distinct), [col for _, col, _ in selected], parts)
    return Conversion(formula, table, "+".join((["filter"] if conds else []) + kind) or "select")


def _aggregates(sql, selected, parts: _Parts, nullable) -> tuple[str, list[str]]:
    """COUNT -> ROWS/COUNTA/COUNTIFS/ROWS(UNIQUE(...)); SUM/AVG/MAX/MIN -> plain or *IFS; several -> HSTACK.

    The result is one row, so a LIMIT is irrelevant and ignored.
    """
    if sql.get("orderBy"):
        raise Unsupported("order_by_with_aggregate")
    out, kind = [], []
    for agg, col, dist in selected:
        ref = parts.ref(col)
        if agg == "count":
            kind.append("count")
            if dist:
                blanks = [f'{ref}<>""'] if nullable.get(col) else []
                out.append(
                    f"ROWS(UNIQUE({f'FILTER({ref},{parts.mask(blanks)})' if parts.conds or blanks else ref}))"
                )
            elif parts.conds:
                extra = f',{ref},"<>"' if col != 0 and nullable.get(col) else ""
                out.append(f"COUNTIFS({parts.criteria()}{extra})")
            else:
                out.append("ROWS(A1)" if col == 0 else f"COUNTA({ref})")
            continue
        kind.append("aggregate")
        if col == 0:
            raise Unsupported("aggregate_of_star")
        if dist:
            raise Unsupported("aggregate_distinct")
        out.append(f"{_IFS[agg]}({ref},{parts.criteria()})" if parts.conds else f"{_PLAIN[agg]}({ref})")
    formula = out[0] if len(out) == 1 else f"HSTACK({','.join(out)})"
    return formula, list(dict.fromkeys(kind))


def _selection(sql, distinct: bool, cols: list[int], parts: _Parts) -> tuple[str, list[str]]:
    """Row selection: HSTACK columns, FILTER, UNIQUE, SORT/SORTBY, TAKE (in that order)."""
    if 0 in cols:
        raise Unsupported("select_star")
    refs = [parts.ref(c) for c in cols]
    expr = refs[0] if len(refs) == 1 else f"HSTACK({','.join(refs)})"
    kind = ["columns"] if len(refs) > 1 else []
    if parts.conds:
        expr = f"FILTER({expr},{parts.mask()})"
    if distinct:
        expr = f"UNIQUE({expr})"
        kind.append("distinct")
    if sql.get("orderBy"):
        direction, keys = sql["orderBy"]
        order = "" if direction == "asc" else ",-1"
        key_cols = []
        for vu in keys:
            if vu[1][0] != 0:
                raise Unsupported("order_by_aggregate")
            key_cols.append(_plain_column(vu)[0])
        if any(parts.schema.columns[k][0] != parts.schema.columns[cols[0]][0] for k in key_cols):
            raise Unsupported("column_of_other_table")
        if len(key_cols) == 1 and key_cols[0] in cols:
            index = cols.index(key_cols[0]) + 1
            expr = f"SORT({expr})" if index == 1 and not order else f"SORT({expr},{index}{order})"
        else:
            if distinct:
                raise Unsupported("distinct_sorted_by_other_column")
            by = [f"FILTER({parts.ref(k)},{parts.mask()})" if parts.conds else parts.ref(k) for k in key_cols]
            if len(by) > 1 or order:
                by = [f"{k},{order[1:] or 1}" for k in by]
            expr = f"SORTBY({expr},{','.join(by)})"
        kind.append("sort")
    if sql.get("limit") is not None:
        expr = f"TAKE({expr},{int(sql['limit'])})"
        kind.append("take")
    return expr, kind


# -- database tables --------------------------------------------------------------------------------


def read_table(db_path: Path, table: str, columns: Sequence[str]) -> list[tuple[Any, ...]]:
    """All rows of ``table`` (rowid order), checking its columns match the schema's order."""
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        con.text_factory = lambda b: b.decode("utf-8", "replace")
        info = con.execute(f'PRAGMA table_info("{table}")').fetchall()
        names = [row[1] for row in info]
        if [n.lower() for n in names] != [c.lower() for c in columns]:
            raise Unsupported("schema_mismatch")
        return [tuple(r) for r in con.execute(f'SELECT * FROM "{table}"')]
    finally:
        con.close()


def _column_facts(schema: Schema, table: int, rows: Sequence[Sequence[Any]]) -> tuple[dict, dict]:
    """Per column id: does the sheet column hold only numbers; does it have blank cells."""
    numeric, nullable = {}, {}
    for col_id, (t, pos, _) in enumerate(schema.columns):
        if t != table:
            continue
        cells = [cell_text(r[pos]).strip() for r in rows]
        present = [c for c in cells if c]
        numeric[col_id] = bool(present) and all(looks_numeric(c) for c in present)
        nullable[col_id] = len(present) < len(cells)
    return numeric, nullable


# -- grouping and splitting ---------------------------------------------------------------------------


def normalise_sql(query: str) -> str:
    """Gold SQL in a canonical spelling: lower case, single quotes, no spacing around punctuation."""
    text = query.strip().rstrip(";").lower().replace('"', "'")
    text = " ".join(text.split())
    return re.sub(r"\s*([(),=<>!])\s*", r"\1", text)


def paraphrase_groups(records: Sequence[Mapping[str, str]]) -> list[int]:
    """Group ids joining records that share db + normalised SQL, db + formula or db + question."""
    parent = list(range(len(records)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple[str, str, str], int] = {}
    for i, r in enumerate(records):
        keys = (
            ("sql", r["db_id"], normalise_sql(r["query"])),
            ("formula", r["db_id"], "".join(r["formula"].lower().split())),
            ("question", r["db_id"], " ".join(r["question"].lower().split())),
        )
        for key in keys:
            j = first.setdefault(key, i)
            parent[find(i)] = find(j)
    return [find(i) for i in range(len(records))]


def grouped_split(
    groups: Sequence[int], seed: int = SEED, fractions: Sequence[float] = FRACTIONS
) -> list[str]:
    """Assign a split to each item so that items of one group share a split.

    Groups are shuffled with ``seed`` and poured into train, then validation, then test until each split
    reaches its share of the items.
    """
    if len(fractions) != len(SPLITS) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions must be {len(SPLITS)} numbers summing to 1, got {fractions}")
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    order = sorted(members, key=lambda g: members[g][0])
    random.Random(seed).shuffle(order)
    n = len(groups)
    bounds = [round(n * sum(fractions[: k + 1])) for k in range(len(SPLITS))]
    out = [""] * n
    filled = 0
    for g in order:
        split = (
            next(s for s, b in zip(SPLITS, bounds, strict=True) if filled < b) if filled < n else SPLITS[-1]
        )
        for i in members[g]:
            out[i] = split
        filled += len(members[g])
    return out


# -- building and caching ---------------------------------------------------------------------------


def source_files() -> list[Path]:
    """The Spider files the builder reads: dev.json, tables.json and every database file."""
    root = data_file("spider")
    dbs = sorted((root / "database").glob("*/*.sqlite"))
    return [root / "dev.json", root / "tables.json", *dbs]


def _cache_key(seed: int) -> str:
    h = hashlib.sha256(f"{DATASET_NAME}|v{BUILDER_VERSION}|seed={seed}|fractions={FRACTIONS}".encode())
    root = data_file("spider")
    for path in source_files():
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def build(seed: int = SEED) -> dict[str, Any]:
    """Convert the Spider dev set (no caching): ``{"instances", "tables", "report"}``."""
    root = data_file("spider")
    dev = json.loads((root / "dev.json").read_text(encoding="utf-8"))
    schemas = {
        e["db_id"]: Schema.from_entry(e) for e in json.loads((root / "tables.json").read_text("utf-8"))
    }
    tables: dict[str, list[list[str]]] = {}
    facts: dict[str, tuple[dict, dict]] = {}
    skipped: Counter[str] = Counter()
    records: list[dict[str, Any]] = []
    for index, ex in enumerate(dev):
        db_id = ex["db_id"]
        db_path = root / "database" / db_id / f"{db_id}.sqlite"
        try:
            if db_id not in schemas:
                raise Unsupported("no_schema")
            if not db_path.exists():
                raise Unsupported("no_database")
            schema = schemas[db_id]
            t = query_table(ex["sql"])
            key = f"{db_id}/{schema.tables[t]}"
            if key not in tables:
                columns = schema.table_columns(t)
                rows = read_table(db_path, schema.tables[t], columns)
                tables[key] = make_grid(columns, rows)
                facts[key] = _column_facts(schema, t, rows)
            if len(tables[key]) <= 2:
                raise Unsupported("empty_table")
            conv = convert(ex["sql"], schema, *facts[key])
        except Unsupported as exc:
            skipped[exc.reason] += 1
            continue
        records.append(
            {
                "id": f"spider-dev-{index}",
                "dev_index": index,
                "db_id": db_id,
                "table": schema.tables[conv.table],
                "question": ex["question"],
                "query": ex["query"],
                "formula": conv.formula,
                "kind": conv.kind,
            }
        )
    groups = paraphrase_groups(records)
    for r, g, split in zip(records, groups, grouped_split(groups, seed), strict=True):
        r["group"] = f"g{g}"
        r["split"] = split
    used = {f"{r['db_id']}/{r['table']}" for r in records}
    report = {
        "dataset": DATASET_NAME,
        "builder_version": BUILDER_VERSION,
        "seed": seed,
        "source_questions": len(dev),
        "converted": len(records),
        "skipped": dict(sorted(skipped.items(), key=lambda kv: (-kv[1], kv[0]))),
        "splits": {s: sum(r["split"] == s for r in records) for s in SPLITS},
        "groups": len(set(groups)),
        "kinds": dict(Counter(r["kind"] for r in records).most_common()),
    }
    return {"instances": records, "tables": {k: v for k, v in tables.items() if k in used}, "report": report}


def load_dataset(seed: int = SEED) -> dict[str, Any]:
    """The built dataset, from the cache when the sources, builder version and options are unchanged."""
    path = cache_dir("datasets") / f"nl2f-spider-{_cache_key(seed)}.json"
    if path.exists():
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    data = build(seed)
    write_json(path, data, indent=None)
    return data


def build_report(seed: int = SEED) -> dict[str, Any]:
    """Counts of the NL2F-Spider build: converted, skipped by reason, split sizes, groups, kinds."""
    return load_dataset(seed)["report"]
