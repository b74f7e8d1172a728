"""Sandbox throughput: MBPP test-split references (candidate + setup + asserts) through bubblewrap.

Timed: ``run_candidates`` on the first 8 references with 2 workers (sandbox start, Python start-up, the
asserts, teardown). Skipped with the reason when bubblewrap cannot run here. ``extra_info``: programs,
workers, programs per second, the slowest program's own duration.
"""

import pytest

from promptintern.sandbox import SandboxUnavailable, get_backend
from promptintern.tasks.mbpp.execution import run_candidates

PROGRAMS, WORKERS = 8, 2


@pytest.fixture(scope="module")
def bwrap():
    try:
        return get_backend("bwrap")
    except SandboxUnavailable as exc:
        pytest.skip(f"bubblewrap unusable: {exc}")


def test_sandbox_references(benchmark, bwrap, mbpp):
    _, _, test = mbpp
    jobs = [
        (i.id, i.reference, i.meta["test_setup_code"], list(i.meta["test_list"])) for i in test[:PROGRAMS]
    ]

    def run():
        return run_candidates(jobs, backend=bwrap, workers=WORKERS, progress=False)

    outcomes = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    stats = getattr(benchmark, "stats", None)
    mean = stats.stats.mean if stats is not None else None
    benchmark.extra_info.update(
        programs=len(jobs),
        workers=WORKERS,
        programs_per_s=round(len(jobs) / mean, 2) if mean else None,
        slowest_program_s=round(max(o.duration_s for o in outcomes), 3),
    )
    assert [o.status for o in outcomes] == ["passed"] * len(jobs), [
        o.detail for o in outcomes if not o.passed
    ]
