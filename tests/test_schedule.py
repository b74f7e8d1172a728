"""Stage schedules: patterns, exact endpoints, monotonicity, the paper's example counts, config parsing."""

from __future__ import annotations

import math

import pytest

from promptintern.methods.schedule import PATTERNS, Schedule, example_counts
from promptintern.tasks import get_task


def test_paper_example_counts_from_linear_schedules():
    assert Schedule("linear", 5, 0, 3).values() == [5.0, 2.5, 0.0]
    assert example_counts(Schedule("linear", 5, 0, 3)) == [5, 2, 0]
    assert example_counts(Schedule("linear", 10, 0, 3)) == [10, 5, 0]
    # the paper's k per task (MBPP 5 -> 5, 2, 0; NL2F and NL2Bash 10 -> 10, 5, 0) come from task.yaml
    assert [get_task(t).shots for t in ("mbpp", "nl2f", "nl2bash")] == [5, 10, 10]


def test_exact_values():
    e = math.exp
    mid_exp = (e(-1.5) - e(-3)) / (1 - e(-3))  # 1 - shape(0.5): decays fast early
    mid_inv = 1 - (e(1.5) - 1) / (e(3) - 1)  # decays slowly early
    assert Schedule("exponential", 1, 0, 3).values() == pytest.approx([1, mid_exp, 0], abs=1e-12)
    assert Schedule("inverse_exponential", 1, 0, 3).values() == pytest.approx([1, mid_inv, 0], abs=1e-12)
    assert mid_exp == pytest.approx(0.182426, abs=1e-6) and mid_inv == pytest.approx(0.817574, abs=1e-6)
    lin = Schedule("linear", 1.0, 0.3, 4).values()
    assert lin == pytest.approx([1.0, 1 - 0.7 / 3, 1 - 1.4 / 3, 0.3])
    assert Schedule("exponential", 1, 0, 5, rate=1.0).value(2) == pytest.approx(
        (e(-0.5) - e(-1)) / (1 - e(-1))
    )
    assert Schedule("constant", 0.5, 0.5, 4).values() == [0.5] * 4
    assert Schedule("linear", 7, 7, 1).values() == [7.0]


@pytest.mark.parametrize("pattern", PATTERNS[:3])
@pytest.mark.parametrize("start,end", [(1.0, 0.1), (0.1, 0.3), (10, 0), (0, 5)])
@pytest.mark.parametrize("stages", [2, 3, 7, 20])
def test_endpoints_exact_and_monotone(pattern, start, end, stages):
    values = Schedule(pattern, start, end, stages).values()
    assert len(values) == stages and values[0] == start and values[-1] == end
    steps = [b - a for a, b in zip(values, values[1:], strict=False)]
    assert all(d <= 0 for d in steps) if start > end else all(d >= 0 for d in steps)


def test_pattern_shapes_and_rate():
    lin, exp, inv = (Schedule(p, 1, 0, 9).values() for p in PATTERNS[:3])
    assert all(x < y < z for x, y, z in zip(exp[1:-1], lin[1:-1], inv[1:-1], strict=True))
    # mirror images: inverse(t) == 1 - exponential(1 - t) on a 1 -> 0 schedule
    assert inv == pytest.approx([1 - v for v in reversed(exp)], abs=1e-12)
    # a larger rate bends further away from linear
    gentle, steep = Schedule("exponential", 1, 0, 3, rate=0.5), Schedule("exponential", 1, 0, 3, rate=6)
    assert steep.value(1) < gentle.value(1) < 0.5


def test_value_and_describe():
    s = Schedule("linear", 5, 0, 3)
    assert [s.value(i) for i in range(3)] == s.values()
    with pytest.raises(IndexError):
        s.value(3)
    assert s.describe() == "linear 5->0 over 3 stages: 5, 2.5, 0"
    assert (
        Schedule("exponential", 1, 0.3, 3).describe().startswith("exponential(rate=3) 1->0.3 over 3 stages")
    )


def test_from_dict_and_round_trip():
    s = Schedule.from_dict({"pattern": "linear", "start": 10, "end": 0, "stages": 3})
    assert s == Schedule("linear", 10.0, 0.0, 3) and Schedule.from_dict(s.to_dict()) == s
    assert Schedule.from_dict({"pattern": "constant", "start": 1, "stages": 2}).values() == [1.0, 1.0]


@pytest.mark.parametrize(
    "config,field",
    [
        ({"pattern": "cosine", "start": 1, "end": 0, "stages": 3}, "pattern"),
        ({"pattern": "linear", "start": 1, "end": 0}, "stages"),
        ({"pattern": "linear", "end": 0, "stages": 3}, "start"),
        ({"pattern": "linear", "start": "1", "end": 0, "stages": 3}, "start"),
        ({"pattern": "linear", "start": 1, "end": None, "stages": 3}, "end"),
        ({"pattern": "linear", "start": 1, "end": 0, "stages": 0}, "stages"),
        ({"pattern": "linear", "start": 1, "end": 0, "stages": 2.0}, "stages"),
        ({"pattern": "linear", "start": 1, "end": 0, "stages": 3, "steps": 3}, "steps"),
        ({"pattern": "exponential", "start": 1, "end": 0, "stages": 3, "rate": 0}, "rate"),
        ({"pattern": "constant", "start": 1, "end": 0, "stages": 3}, "end"),
        ({"pattern": "linear", "start": 1, "end": 0, "stages": 1}, "stages"),
    ],
)
def test_from_dict_errors_name_the_field(config, field):
    with pytest.raises(ValueError, match=f"'{field}'"):
        Schedule.from_dict(config)


def test_example_counts_need_integer_endpoints():
    with pytest.raises(ValueError, match="'end'"):
        example_counts(Schedule("linear", 5, 0.5, 3))
    assert example_counts(Schedule("exponential", 10, 0, 4)) == [10, 3, 0, 0]
    assert example_counts(Schedule("inverse_exponential", 10, 0, 4)) == [10, 9, 6, 0]


def test_step_keeps_start_until_the_last_stage():
    assert Schedule("step", 1.0, 0.0, 3).values() == [1.0, 1.0, 0.0]
    assert Schedule("step", 0.3, 0.0, 4).values() == [0.3, 0.3, 0.3, 0.0]
    assert example_counts(Schedule("step", 5, 0, 3)) == [5, 5, 0]
