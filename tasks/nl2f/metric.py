"""NL2Formula exact match.

``em`` (primary) follows NL2Formula's own normalisation: outside double-quoted string literals the formula is
lower-cased and every run of whitespace becomes one space; inside ``"..."`` the text is kept exactly (case and
spaces matter there, and Excel's doubled quote ``""`` stays inside the literal); the ends are stripped; then
the two strings must be equal.  ``em_lenient`` is the suite's earlier, more forgiving form (lower case
everywhere, no whitespace anywhere) and ``em_raw`` compares after trimming the ends only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from promptintern.tasks.base import Instance
from promptintern.tasks.metrics import Metric, pairs, register_metric

#: Bumped whenever a score could change (a cache key can include it; see ``Task.metric_version``).
#: 1: lower case + all whitespace removed.  2: NL2Formula's normalisation (this module's ``normalise``).
METRIC_VERSION = "2"
SIGNATURE = (
    "nl2f-em|v2|norm=nl2formula(lower-outside-quotes+collapse-whitespace-outside-quotes+strip)"
    "|lenient=lower+strip-all-whitespace|raw=strip"
)
METRICS = ("em", "em_lenient", "em_raw")

#: A double-quoted literal (``""`` inside is an escaped quote); an unterminated one runs to the end.
_LITERAL = re.compile(r'("(?:[^"]|"")*(?:"|$))')
_SPACE = re.compile(r"\s+")


def normalise(formula: str) -> str:
    """NL2Formula's comparison form: lower case and single spaces outside string literals, ends stripped."""
    parts = _LITERAL.split(formula.strip())
    # re.split with one group alternates: outside, literal, outside, literal, ..., outside
    out = [part if i % 2 else _SPACE.sub(" ", part.lower()) for i, part in enumerate(parts)]
    return "".join(out).strip()


def normalise_lenient(formula: str) -> str:
    """The lenient form: lower case everywhere, no whitespace anywhere (metric version 1's ``em``)."""
    return "".join(formula.lower().split())


@register_metric("nl2formula_em")
class NL2FormulaEM(Metric):
    """``em`` (NL2Formula normalisation, primary), ``em_lenient`` and ``em_raw`` (trimmed ends), all 0-100."""

    primary = "em"
    field = "em"
    extra_fields = ("em_lenient", "em_raw")
    label = "EM"
    version = METRIC_VERSION

    def rows(self, task, instances: Sequence[Instance], predictions: Sequence[str], **_) -> list[dict]:
        rows = pairs(instances, predictions)
        for r in rows:
            pred, ref = r["prediction"], r["reference"]
            r["em"] = float(normalise(pred) == normalise(ref))
            r["em_lenient"] = float(normalise_lenient(pred) == normalise_lenient(ref))
            r["em_raw"] = float(pred.strip() == ref.strip())
        return rows

    def signature(self, rows) -> str:
        return SIGNATURE
