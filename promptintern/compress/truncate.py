"""A deterministic, model-free compressor for tests and as a naive baseline.

Units are whitespace words (``str.split``).  Two modes, both keeping the original spacing and line breaks
between the words they keep:

* ``"head"`` (default): the first ``ceil(rate * n)`` words of the text, i.e. the text cut after that word.
* ``"lines"``: the first ``ceil(rate * m)`` words of every line with ``m`` words, so each line (and the
  text's layout) survives proportionally; blank lines are kept.

``ceil`` guarantees ``rate_achieved >= rate`` in head mode (and per line in lines mode).
"""

from __future__ import annotations

import math
import re
from typing import Any

from promptintern.compress.base import BaseCompressor, CompressionResult

_WORD = re.compile(r"\S+")
MODES = ("head", "lines")


def keep_count(n: int, rate: float) -> int:
    """``ceil(rate * n)``, robust to float noise such as ``0.3 * 10 == 3.0000000000000004``."""
    return min(n, math.ceil(round(rate * n, 9)))


def _head(text: str, rate: float) -> str:
    spans = [m.end() for m in _WORD.finditer(text)]
    k = keep_count(len(spans), rate)
    return text[: spans[k - 1]] if k else ""


class TruncateCompressor(BaseCompressor):
    """Keeps leading words (``mode="head"``) or leading words of every line (``mode="lines"``)."""

    name = "truncate"
    unit = "words"

    def __init__(self, mode: str = "head"):
        if mode not in MODES:
            raise ValueError(f"truncate mode must be one of {MODES}, got {mode!r}")
        self.mode = mode

    def fingerprint(self) -> dict[str, Any]:
        return {"backend": self.name, "mode": self.mode}

    def _compress(self, text: str, rate: float, *, question: str | None) -> CompressionResult:
        if self.mode == "head":
            out = _head(text, rate)
        else:
            lines = [_head(line, rate) for line in text.split("\n")]
            out = "\n".join(lines).strip("\n")
        return self.result(text, out, rate, mode=self.mode)
