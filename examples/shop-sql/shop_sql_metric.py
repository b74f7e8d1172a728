"""Execution match for shop-sql: run the predicted and the gold query on the shop database, compare results.

``metric: "shop_sql_metric:execution_match"`` in task.yaml. A prediction scores 1.0 when its result equals the
reference's: the same rows (as tuples, column names ignored, numbers compared after rounding to 6 decimals),
in the same order when the reference has ORDER BY, as multisets otherwise. Anything else scores 0.0: an SQL
error, more than one statement, a write or PRAGMA/ATTACH (refused by an authorizer), a query running past
TIME_LIMIT_S, or more than MAX_ROWS rows.

The database is built once per process from database.sql beside this file (stdlib sqlite3, in memory).
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections import Counter
from functools import cache, lru_cache
from pathlib import Path

DATABASE_SQL = Path(__file__).resolve().with_name("database.sql")
TIME_LIMIT_S = 2.0
MAX_ROWS = 10_000

_ALLOWED = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, 33}  # 33: SQLITE_RECURSIVE
_LOCK = threading.Lock()
_ORDER_BY = re.compile(r"\border\s+by\b", re.IGNORECASE)
_FENCE = re.compile(r"^```[\w-]*\s*\n?|\n?```\s*$")


def _authorize(action, *_):
    return sqlite3.SQLITE_OK if action in _ALLOWED else sqlite3.SQLITE_DENY


@cache
def _connection() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    conn.executescript(DATABASE_SQL.read_text(encoding="utf-8"))
    conn.set_authorizer(_authorize)  # from here on: reads only
    return conn


def _normal(value):
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return round(float(value), 6) + 0.0  # 2 == 2.0; -0.0 -> 0.0
    return value


def run_query(sql: str) -> tuple[tuple, ...]:
    """The rows of one read-only SELECT (normalised), or an exception."""
    sql = _FENCE.sub("", sql.strip()).strip()
    if not sql:
        raise ValueError("empty query")
    with _LOCK:
        conn = _connection()
        deadline = time.monotonic() + TIME_LIMIT_S
        conn.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)
        try:
            cursor = conn.execute(sql)  # raises on a second statement
            rows = cursor.fetchmany(MAX_ROWS + 1)
        finally:
            conn.set_progress_handler(None, 0)
    if len(rows) > MAX_ROWS:
        raise ValueError(f"more than {MAX_ROWS} rows")
    return tuple(tuple(_normal(v) for v in row) for row in rows)


@lru_cache(maxsize=4096)
def _reference_rows(reference: str) -> tuple[tuple, ...]:
    return run_query(reference)


def execution_match(prediction: str, reference: str, record: dict | None = None) -> float:
    """1.0 when ``prediction`` returns the same result as ``reference`` on the shop database, else 0.0."""
    expected = _reference_rows(reference)  # a broken reference is the data's fault: let it raise
    try:
        got = run_query(prediction)
    except (sqlite3.Error, ValueError, OverflowError, MemoryError):
        return 0.0
    if _ORDER_BY.search(reference):
        return float(got == expected)
    return float(Counter(got) == Counter(expected))
