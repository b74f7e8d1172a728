"""MBPP (Austin et al., 2021): NL description + three asserts -> Python function; pass@1 in a sandbox.

Standard splits by task_id: prompt 1-10, test 11-510, validation 511-600, train 601-974.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from promptintern.paths import data_file
from promptintern.tasks.base import Instance, Task

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
    """Standard splits by task_id; code extracted from fences; scored by the ``python_tests`` metric."""

    splits = ("train", "validation", "test", "prompt")

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
