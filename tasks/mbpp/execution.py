"""Run MBPP candidates against their test asserts in the execution sandbox (pass@1 scoring).

Each job is ``(task_id, code, test_setup_code, test_list)``.  The program is the candidate, then the
setup code, then the asserts; the sandbox runner adds the completion proof (a per-run nonce printed
only after the program's top level returned), so a candidate that exits early or fakes output fails.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

from promptintern import logs
from promptintern.sandbox import Backend, ExecResult, Limits, get_backend

#: Defaults for MBPP.  All 500 test-split references pass even at 3 processes, 200 MB and 16 fds; the
#: slowest (task 123) needs about 4.5 s.
MBPP_LIMITS = Limits(cpu_s=10, wall_s=20, memory_mb=1024, nproc=32, fsize_mb=10, nofile=64, output_bytes=64 * 1024)

Job = tuple[str, str, str, Sequence[str]]


@dataclass
class ExecutionOutcome:
    """Verdict for one candidate; ``status`` is the sandbox's (passed/failed/timeout/error)."""

    task_id: str
    passed: bool
    status: str
    detail: str
    duration_s: float


def _lines(text: str) -> str:
    return (text or "").replace("\r\n", "\n").replace("\r", "\n").strip("\n")


def build_program(code: str, test_setup_code: str, test_list: Sequence[str]) -> str:
    """Candidate, setup code and asserts as one program (the sandbox appends the sentinel check)."""
    parts = [_lines(code), _lines(test_setup_code), "\n".join(_lines(test) for test in test_list)]
    return "\n\n".join(part for part in parts if part.strip()) + "\n"


def describe(result: ExecResult, program: str) -> str:
    """Short human-readable reason, naming the failing program line when the traceback has one."""
    if result.status != "failed":
        return result.detail
    lines = re.findall(r'File "<program>", line (\d+)', result.stderr)
    if not lines:
        return result.detail
    source = program.split("\n")
    number = int(lines[-1])
    where = source[number - 1].strip() if 0 < number <= len(source) else ""
    return f"{result.detail} at line {number}: {where}"[:300]


def _run_one(backend: Backend, job: Job, limits: Limits) -> ExecutionOutcome:
    task_id, code, setup, tests = job
    program = build_program(code, setup, tests)
    try:
        result = backend.run(program, limits)
    except Exception as exc:  # noqa: BLE001 - one broken run must not sink the whole evaluation
        return ExecutionOutcome(str(task_id), False, "error", f"{type(exc).__name__}: {exc}", 0.0)
    return ExecutionOutcome(str(task_id), result.passed, result.status, describe(result, program), result.duration_s)


def run_candidates(
    jobs: Iterable[Job],
    *,
    backend: str | Backend = "bwrap",
    unsafe: bool = False,
    workers: int | None = None,
    limits: Limits | None = None,
    progress: bool = True,
) -> list[ExecutionOutcome]:
    """Execute every job in parallel (bounded thread pool); outcomes come back in input order."""
    jobs = list(jobs)
    sandbox = backend if isinstance(backend, Backend) else get_backend(backend, unsafe=unsafe)
    limits = limits or MBPP_LIMITS
    workers = max(1, workers or min(4, os.cpu_count() or 1))
    outcomes: list[ExecutionOutcome | None] = [None] * len(jobs)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(_run_one, sandbox, job, limits): i for i, job in enumerate(jobs)}
        for future in logs.track(as_completed(futures), f"MBPP exec ({sandbox.name})", total=len(jobs),
                                 enabled=progress):  # fmt: skip
            outcomes[futures[future]] = future.result()
    return [outcome for outcome in outcomes if outcome is not None]
