"""The NL2Formula grid and its prompt serialisation.

A grid is a list of rows of strings laid out like a spreadsheet: row 0 is ``["", "A", "B", ...]`` (column
letters), row 1 is ``["1", <header cells>]`` and every later row starts with its own row number, so data
row ``i`` (0-based) sits in spreadsheet row ``i + 2``.  A formula refers to a whole data column by its header
cell: ``B1`` means "every data value in column B" (rows 2 to the last row).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

#: Longest cell text shown in a prompt; longer cells are cut and end in "...".
CELL_CHARS = 60
#: Data rows shown in a prompt by default: 5 puts the suite's cl100k token counts next to the paper's (query
#: only 286, template only 680, template + 10 shots 3,540 tokens; Table 3); see README.md, "Prompt".
DEFAULT_TABLE_ROWS = 5

_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


def column_letter(index: int) -> str:
    """Spreadsheet letters of a 0-based column index: 0 -> A, 25 -> Z, 26 -> AA."""
    if index < 0:
        raise ValueError(f"column index must be >= 0, got {index}")
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(ord("A") + rem) + letters
    return letters


def column_ref(index: int) -> str:
    """The reference of a whole data column: its header cell, e.g. ``B1`` for index 1."""
    return f"{column_letter(index)}1"


def cell_text(value: Any) -> str:
    """A database value as the text of a cell: NULL is empty, integral floats lose their ``.0``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def make_grid(header: Sequence[Any], rows: Iterable[Sequence[Any]]) -> list[list[str]]:
    """Build a grid from a header and data rows; cells are :func:`cell_text` without outer spaces."""
    width = len(header)
    grid = [[""] + [column_letter(j) for j in range(width)], ["1"] + [cell_text(h).strip() for h in header]]
    for i, row in enumerate(rows):
        if len(row) != width:
            raise ValueError(f"data row {i} has {len(row)} cells, expected {width}")
        grid.append([str(i + 2)] + [cell_text(v).strip() for v in row])
    return grid


def check_grid(grid: Any) -> str | None:
    """Why ``grid`` is not a valid NL2Formula grid, or None when it is."""
    if not isinstance(grid, list) or len(grid) < 2:
        return "must be a list of at least 2 rows (column letters, header)"
    for r, row in enumerate(grid):
        if not isinstance(row, list) or not all(isinstance(c, (str, int, float)) or c is None for c in row):
            return f"row {r} must be a list of cell strings"
    width = len(grid[0])
    if width < 2:
        return "row 0 must hold at least one column letter"
    expected = [""] + [column_letter(j) for j in range(width - 1)]
    if [cell_text(c).strip() for c in grid[0]] != expected:
        return f"row 0 must be {expected[:4] + ['...'] if width > 4 else expected}"
    for r, row in enumerate(grid[1:], 1):
        if len(row) != width:
            return f"row {r} has {len(row)} cells, expected {width}"
        label = cell_text(row[0]).strip()
        if label.endswith(".0"):
            label = label[:-2]
        if label != str(r):
            return f"row {r} must start with its row number {r}, got {row[0]!r}"
    return None


def data_rows(grid: Sequence[Sequence[str]]) -> int:
    """Number of data rows (rows below the header)."""
    return max(len(grid) - 2, 0)


def rows_shown(grid: Sequence[Sequence[Any]], max_rows: int | None) -> int:
    """How many data rows a query shows: all of them, or the first ``max_rows``."""
    n = data_rows(grid)
    return n if max_rows is None else min(n, max_rows)


class GridRef:
    """A grid held by reference (never copied) in ``Instance.meta``, with a short repr; equal by content."""

    __slots__ = ("grid",)

    def __init__(self, grid: Sequence[Sequence[Any]]):
        self.grid = grid

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GridRef) and (other.grid is self.grid or other.grid == self.grid)

    __hash__ = None  # mutable content

    def __repr__(self) -> str:
        width = len(self.grid[0]) - 1 if self.grid else 0
        return f"GridRef({data_rows(self.grid)} data rows x {width} columns)"


def _shown(cell: Any) -> str:
    text = " ".join(cell_text(cell).split()).replace("|", "/")
    return text if len(text) <= CELL_CHARS else text[: CELL_CHARS - 3] + "..."


def serialise_grid(
    grid: Sequence[Sequence[Any]], max_rows: int | None = DEFAULT_TABLE_ROWS, name: str = ""
) -> str:
    """The grid as prompt text: a caption line with the row count, then one ``| ... |`` line per row.

    Only the first ``max_rows`` data rows are written (all of them when ``max_rows`` is None); the caption
    says how many data rows the full table has and where they are, so a formula can target all of them.
    """
    if max_rows is not None and max_rows < 0:
        raise ValueError(f"max_rows must be >= 0 or None, got {max_rows}")
    n = data_rows(grid)
    shown = rows_shown(grid, max_rows)
    caption = f"{name}: " if name else ""
    caption += f"{n} data row{'s' if n != 1 else ''}"
    if n:
        caption += f" in rows 2-{n + 1}"
    if shown < n:
        caption += f", first {shown} shown"
    lines = [caption]
    for row in grid[: shown + 2]:
        lines.append("| " + " | ".join(_shown(c) for c in row) + " |")
    return "\n".join(lines)


def render_query(question: str, grid: Sequence[Sequence[Any]], max_rows: int | None, name: str = "") -> str:
    """The paper's NL2F input: ``[NL] question [/NL]`` then ``[TABLE] grid [/TABLE]``."""
    return (
        f"[NL] {' '.join(question.split())} [/NL]\n[TABLE] {serialise_grid(grid, max_rows, name)}\n[/TABLE]"
    )


def looks_numeric(text: str) -> bool:
    """Whether a cell text is a plain decimal number (what a spreadsheet would store as a number)."""
    return bool(_NUMBER.match(text.strip()))
