"""MBPP (Austin et al., 2021): NL description + three asserts -> Python function; pass@1 in a sandbox.

Standard splits by task_id: prompt 1-10, test 11-510, validation 511-600, train 601-974.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from promptintern.paths import data_file
from promptintern.tasks.base import Instance, Task, TaskScore

SPLIT_RANGES = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974)}
FIELDS = ("task_id", "text", "code", "test_list", "test_setup_code", "challenge_test_list")


def read_mbpp(path) -> list[dict[str, Any]]:
    """All records of ``mbpp.jsonl``; malformed lines raise ``ValueError`` naming file, line and field."""
    records = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
            for key in FIELDS:
                if key not in rec:
                    raise ValueError(f"{path}:{lineno}: field {key!r} is missing")
            if not isinstance(rec["task_id"], int):
                raise ValueError(f"{path}:{lineno}: field 'task_id' must be an integer")
            if not isinstance(rec["test_list"], list) or not rec["test_list"]:
                raise ValueError(f"{path}:{lineno}: field 'test_list' must be a non-empty list")
            records.append(rec)
    return records


def render_query(text: str, tests: Sequence[str]) -> str:
    """The paper's MBPP question: the description, then the three test cases."""
    return text.strip() + "\nYour code should pass these tests:\n" + "\n".join(t.strip() for t in tests)


class MBPPTask(Task):
    name = "mbpp"
    display_name = "MBPP"
    splits = ("train", "validation", "test", "prompt")
    primary_metric = "pass@1"
    max_new_tokens = 384
    paper_shots = (5, 2, 0)

    def load(self, split: str) -> list[Instance]:
        self.check_split(split)
        lo, hi = SPLIT_RANGES[split]
        out = []
        for rec in read_mbpp(data_file("mbpp", "mbpp.jsonl")):
            if lo <= rec["task_id"] <= hi:
                code = rec["code"].replace("\r\n", "\n").strip()
                meta = {k: rec[k] for k in ("test_list", "test_setup_code", "challenge_test_list")}
                query = render_query(rec["text"], rec["test_list"])
                out.append(Instance(str(rec["task_id"]), split, query, code, meta))
        return out

    def extract(self, output: str) -> str:
        from promptintern.tasks.mbpp.extract import extract_code

        return extract_code(output)

    def score(
        self,
        instances: Sequence[Instance],
        predictions: Mapping[str, str],
        *,
        backend: str = "bwrap",
        unsafe: bool = False,
        workers: int | None = None,
        progress: bool = True,
        **_: Any,
    ) -> TaskScore:
        """pass@1 (0-100): a prediction passes when all asserts ran and held inside the sandbox."""
        from promptintern.tasks.mbpp.execution import run_candidates

        preds = self.predictions_for(instances, predictions)
        jobs = [
            (i.id, p, i.meta["test_setup_code"], list(i.meta["test_list"])) for i, p in zip(instances, preds, strict=True)
        ]
        outcomes = run_candidates(jobs, backend=backend, unsafe=unsafe, workers=workers, progress=progress)
        rows = [
            {
                "id": o.task_id,
                "passed": o.passed,
                "status": o.status,
                "detail": o.detail,
                "duration_s": o.duration_s,
            }
            for o in outcomes
        ]
        broken = [o for o in outcomes if o.status == "error"]
        if broken:  # the sandbox failed to start: not a verdict on the candidate
            raise RuntimeError(f"sandbox error on {len(broken)} candidate(s), e.g. {broken[0].task_id}: {broken[0].detail}")
        passed = sum(o.passed for o in outcomes)
        n = len(outcomes)
        metrics = {"pass@1": 100.0 * passed / n if n else 0.0, "passed": float(passed), "n": float(n)}
        return TaskScore(
            self.name, metrics, rows, self.primary_metric, signature=f"mbpp|sandbox:{backend}|n:{n}"
        )
