"""Stage schedules for the template compression rate (S_tmp) and the number of examples (S_egs).

A :class:`Schedule` maps stage ``s = 0 .. N-1`` to a value through ``t = s / (N - 1)`` in [0, 1]
(paper Table 6 patterns; ``r`` is :attr:`Schedule.rate`, > 0, default 3):

* ``linear``:               v(t) = start + (end - start) * t
* ``exponential``:          v(t) = end + (start - end) * (exp(-r t) - exp(-r)) / (1 - exp(-r))
  (moves fast early, then levels off towards ``end``)
* ``inverse_exponential``:  v(t) = start + (end - start) * (exp(r t) - 1) / (exp(r) - 1)
  (moves slowly early, then fast towards ``end``)
* ``constant``:             v(t) = start  (``end`` must equal ``start``)
* ``step``:                 v(t) = start for t < 1, end at the last stage (ablations: keep a component
  unchanged through training and drop it only in the final, query-only stage)

All are monotone in ``t`` and hit the endpoints exactly (the first and last values are set to ``start`` and
``end`` verbatim, not computed). A 1-stage schedule is ``[start]`` and needs ``start == end``.

Example counts are integers: :func:`example_counts` **floors** each value (after a 1e-9 tolerance for
float error), so the paper's linear 5 -> 0 over 3 stages (5, 2.5, 0) gives 5-2-0 and 10 -> 0 gives 10-5-0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from numbers import Real
from typing import Any

PATTERNS = ("linear", "exponential", "inverse_exponential", "constant", "step")
DEFAULT_RATE = 3.0
_FIELDS = ("pattern", "start", "end", "stages", "rate")


def _shape(pattern: str, t: float, rate: float) -> float:
    """Fraction of the way from start to end at ``t`` in [0, 1] (0 at t=0, 1 at t=1)."""
    if pattern == "linear":
        return t
    if pattern == "exponential":
        return 1.0 - (math.exp(-rate * t) - math.exp(-rate)) / (1.0 - math.exp(-rate))
    if pattern == "inverse_exponential":
        return math.expm1(rate * t) / math.expm1(rate)
    if pattern == "step":
        return 1.0 if t >= 1.0 else 0.0
    return 0.0  # constant


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"schedule field {name!r} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Schedule:
    """Per-stage values of one prompt component (template rate or example count) over ``stages`` stages."""

    pattern: str
    start: float
    end: float
    stages: int
    rate: float = DEFAULT_RATE

    def __post_init__(self) -> None:
        if self.pattern not in PATTERNS:
            raise ValueError(
                f"schedule field 'pattern' must be one of {', '.join(PATTERNS)}, got {self.pattern!r}"
            )
        for name in ("start", "end", "rate"):
            object.__setattr__(self, name, _number(name, getattr(self, name)))
        if isinstance(self.stages, bool) or not isinstance(self.stages, int) or self.stages < 1:
            raise ValueError(f"schedule field 'stages' must be an integer >= 1, got {self.stages!r}")
        if self.rate <= 0:
            raise ValueError(f"schedule field 'rate' must be > 0, got {self.rate!r}")
        if self.pattern == "constant" and self.end != self.start:
            raise ValueError(f"schedule field 'end' must equal start ({self.start}) for a constant schedule")
        if self.stages == 1 and self.end != self.start:
            raise ValueError("schedule field 'stages': a 1-stage schedule needs start == end")

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> Schedule:
        """Build from a config mapping; ``end`` defaults to ``start`` for ``constant``, ``rate`` to 3."""
        if not isinstance(config, Mapping):
            raise ValueError(f"schedule config must be a mapping, got {type(config).__name__}")
        unknown = sorted(set(config) - set(_FIELDS))
        if unknown:
            raise ValueError(f"schedule field {unknown[0]!r} is unknown; expected {', '.join(_FIELDS)}")
        values = dict(config)
        if values.get("pattern") == "constant":
            values.setdefault("end", values.get("start"))
        missing = [name for name in _FIELDS[:4] if name not in values]
        if missing:
            raise ValueError(f"schedule field {missing[0]!r} is missing")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def values(self) -> list[float]:
        """One value per stage; the first is ``start`` and the last ``end`` exactly."""
        n = self.stages
        if n == 1:
            return [self.start]
        out = [
            self.start + (self.end - self.start) * _shape(self.pattern, s / (n - 1), self.rate)
            for s in range(n)
        ]
        out[0], out[-1] = self.start, self.end
        return out

    def value(self, stage: int) -> float:
        """The value at 0-based ``stage``."""
        if not 0 <= stage < self.stages:
            raise IndexError(f"stage {stage} out of range for a {self.stages}-stage schedule")
        return self.values()[stage]

    def describe(self) -> str:
        """One line for logs and tables, e.g. ``linear 5->0 over 3 stages: 5, 2.5, 0``."""
        rate = f"(rate={self.rate:g})" if self.pattern in ("exponential", "inverse_exponential") else ""
        vals = ", ".join(f"{v:.4g}" for v in self.values())
        return f"{self.pattern}{rate} {self.start:g}->{self.end:g} over {self.stages} stages: {vals}"


def example_counts(schedule: Schedule) -> list[int]:
    """Integer k per stage: ``floor(v + 1e-9)`` of each value (5, 2.5, 0 -> 5, 2, 0).

    The endpoints must be non-negative integers, so the first and last counts are exactly start and end.
    """
    for name in ("start", "end"):
        v = getattr(schedule, name)
        if v < 0 or v != int(v):
            raise ValueError(
                f"schedule field {name!r} must be a non-negative integer for example counts, got {v:g}"
            )
    return [math.floor(v + 1e-9) for v in schedule.values()]
