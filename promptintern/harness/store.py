"""Results store: one SQLite file holding a row per (table, method, variant, model, task, seed, profile).

The file (default ``$PROMPTINTERN_HOME/results.sqlite``) runs in WAL mode so readers never block the
runner; every :meth:`ResultsStore.record` is one transaction that upserts the row by its key, so a rerun
replaces a row instead of duplicating it. ``schema_version`` holds one version per component; other
modules may add their own tables through :attr:`ResultsStore.connection` and register a version there.
Rows carry the metric with its 95 % interval, token counts and ratios (``tau_all`` and ``compression_x``
relative to the template-only prompt as in the paper, ``tau_full`` relative to template + k shots), rates,
latency, cost (the model's own price, and the paper's fine-tuned GPT prices on cl100k counts), a status
(``ok`` | ``not run`` | ``failed``) with its reason, and a provenance JSON blob
(:mod:`promptintern.harness.provenance`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from promptintern.harness.provenance import utc_now
from promptintern.paths import home

SCHEMA_VERSION = 2
STATUSES = ("ok", "not run", "failed")
KEY = ("table_id", "method", "variant", "model", "task", "seed", "profile")


@dataclass
class RunRow:
    """One cell group of a paper table: a configuration's result on one task."""

    table_id: str
    method: str
    task: str
    model: str
    profile: str
    seed: int = 0
    variant: str = ""
    label: str = ""
    status: str = "ok"
    reason: str | None = None
    metric: str | None = None
    value: float | None = None
    ci_lo: float | None = None
    ci_hi: float | None = None
    n: int | None = None
    input_tokens_mean: float | None = None
    output_tokens_mean: float | None = None
    full_tokens_mean: float | None = None
    #: Mean input tokens of the template-only prompt on the same test instances (the paper's × reference).
    template_tokens_mean: float | None = None
    #: input tokens / template-only tokens (the paper's τ_all); ``compression_x`` is its inverse (the × column).
    tau_all: float | None = None
    compression_x: float | None = None
    #: input tokens / template + k shots tokens (this suite's earlier τ_all).
    tau_full: float | None = None
    rate_requested: float | None = None
    rate_achieved: float | None = None
    shots: int | None = None
    latency_s_mean: float | None = None
    #: Table 8: ``server`` (measured through the OpenAI-compatible server, :mod:`..latency_table`), else the
    #: experiment's own generation; ``not measured: <reason>`` when a row has none.
    latency_source: str | None = None
    ttft_s_mean: float | None = None
    tpot_s_mean: float | None = None
    latency_output_tokens_mean: float | None = None
    latency_n: int | None = None
    cost_usd_per_instance: float | None = None
    #: The request billed as the paper's API models would: cl100k counts of the actual input and output.
    input_tokens_cl100k_mean: float | None = None
    output_tokens_cl100k_mean: float | None = None
    cost_ft_gpt35_usd_per_instance: float | None = None
    cost_ft_gpt4_usd_per_instance: float | None = None
    settings_key: str | None = None
    directory: str | None = None
    wall_s: float | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"run row status must be one of {', '.join(STATUSES)}, got {self.status!r}")
        for name in ("table_id", "method", "task", "model", "profile"):
            if not str(getattr(self, name) or "").strip():
                raise ValueError(f"run row field {name!r} must be a non-empty string")
        self.table_id = str(self.table_id)
        if self.status != "ok" and not self.reason:
            raise ValueError(f"run row with status {self.status!r} needs a reason")

    @property
    def key(self) -> tuple:
        return tuple(getattr(self, k) for k in KEY)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> RunRow:
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown run row field(s): {', '.join(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_COLUMNS = [f.name for f in fields(RunRow)]
_TYPES = {"seed": "INTEGER NOT NULL", "n": "INTEGER", "shots": "INTEGER"}
_TEXT = {"table_id", "method", "variant", "task", "model", "profile", "label", "status", "reason", "metric"}
_TEXT |= {"settings_key", "directory", "provenance", "created_at"}


def _column_sql(name: str) -> str:
    if name in _TYPES:
        return f"{name} {_TYPES[name]}"
    kind = "TEXT" if name in _TEXT else "REAL"
    not_null = " NOT NULL" if name in KEY or name in ("status", "created_at") else ""
    return f"{name} {kind}{not_null}"


_RUNS_SQL = (
    "CREATE TABLE IF NOT EXISTS runs (\n  "
    + ",\n  ".join(_column_sql(c) for c in _COLUMNS)
    + f",\n  CHECK (status IN ({', '.join(repr(s) for s in STATUSES)})),"
    + f"\n  PRIMARY KEY ({', '.join(KEY)})\n)"
)


class StoreError(ValueError):
    """The results store file is not a database or was written by a newer schema."""


class ResultsStore:
    """SQLite results store (see the module docstring). Use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else home() / "results.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.connection = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
            self.connection.execute("PRAGMA journal_mode=WAL")
            self.connection.execute("PRAGMA busy_timeout=60000")
            with self.transaction() as con:
                con.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version "
                    "(component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
                )
                con.execute(_RUNS_SQL)
                self._check_version(con, "runs", SCHEMA_VERSION)
                self._add_missing_columns(con)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"results store {self.path}: {exc}") from exc

    def _check_version(self, con: sqlite3.Connection, component: str, version: int) -> None:
        row = con.execute("SELECT version FROM schema_version WHERE component = ?", (component,)).fetchone()
        if row is None:
            con.execute("INSERT INTO schema_version VALUES (?, ?)", (component, version))
        elif row[0] > version:
            raise StoreError(
                f"results store {self.path}: table {component!r} has schema version {row[0]}, this code "
                f"understands up to {version}; upgrade promptintern or use another --store file"
            )

    def _add_missing_columns(self, con: sqlite3.Connection) -> None:
        """Migrate a store written by an older schema: add the columns it lacks (values NULL)."""
        present = {row[1] for row in con.execute("PRAGMA table_info(runs)")}
        for name in _COLUMNS:
            if name not in present:
                con.execute(f"ALTER TABLE runs ADD COLUMN {_column_sql(name)}")
        con.execute("UPDATE schema_version SET version = ? WHERE component = 'runs' AND version < ?",
                    (SCHEMA_VERSION, SCHEMA_VERSION))

    def transaction(self):
        """``with store.transaction() as con:`` runs the block in one ``BEGIN IMMEDIATE`` transaction."""
        return _Transaction(self.connection)

    def record(self, row: RunRow | Mapping[str, Any]) -> RunRow:
        """Insert or replace the row with the same key (one transaction); returns the stored row."""
        if not isinstance(row, RunRow):
            row = RunRow.from_mapping(row)
        row.created_at = row.created_at or utc_now()
        values = row.to_dict()
        values["provenance"] = json.dumps(values["provenance"], sort_keys=True, default=str)
        cols = ", ".join(_COLUMNS)
        marks = ", ".join("?" for _ in _COLUMNS)
        updates = ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS if c not in KEY)
        sql = (
            f"INSERT INTO runs ({cols}) VALUES ({marks}) "
            f"ON CONFLICT ({', '.join(KEY)}) DO UPDATE SET {updates}"
        )
        with self.transaction() as con:
            con.execute(sql, [values[c] for c in _COLUMNS])
        return row

    def rows(
        self,
        table_id: str | int | None = None,
        profile: str | None = None,
        *,
        model: str | None = None,
        task: str | None = None,
    ) -> list[RunRow]:
        """Stored rows in insertion order, filtered by any of table, profile, model and task."""
        where, args = [], []
        for name, value in (("table_id", table_id), ("profile", profile), ("model", model), ("task", task)):
            if value is not None:
                where.append(f"{name} = ?")
                args.append(str(value))
        sql = f"SELECT {', '.join(_COLUMNS)} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        out = []
        for values in self.connection.execute(sql + " ORDER BY rowid", args):
            data = dict(zip(_COLUMNS, values, strict=True))
            data["provenance"] = json.loads(data["provenance"] or "{}")
            out.append(RunRow(**data))
        return out

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Transaction:
    def __init__(self, con: sqlite3.Connection) -> None:
        self.con = con

    def __enter__(self) -> sqlite3.Connection:
        self.con.execute("BEGIN IMMEDIATE")
        return self.con

    def __exit__(self, exc_type, exc, tb) -> None:
        self.con.execute("COMMIT" if exc_type is None else "ROLLBACK")
