"""MBPP execution (program layout, verdicts, parallel order) and code extraction from model output."""

from __future__ import annotations

import ast
import json

import pytest
from conftest import needs_bwrap

from promptintern.paths import DataNotFoundError, data_file
from promptintern.tasks.mbpp.execution import MBPP_LIMITS, ExecutionOutcome, build_program, run_candidates
from promptintern.tasks.mbpp.extract import extract_code

ADD = "def add(a, b):\n    return a + b\n"
ADD_TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]


def test_build_program_layout():
    program = build_program("def f():\r\n    return K\r\n", "K = 3", ["assert f() == 3"])
    assert program == "def f():\n    return K\n\nK = 3\n\nassert f() == 3\n"
    assert build_program(ADD, "", ADD_TESTS).endswith("assert add(-1, 1) == 0\n")


def test_mbpp_limit_defaults():
    assert (MBPP_LIMITS.wall_s, MBPP_LIMITS.cpu_s, MBPP_LIMITS.memory_mb, MBPP_LIMITS.nproc) == (20, 10, 1024, 32)
    assert (MBPP_LIMITS.fsize_mb, MBPP_LIMITS.nofile, MBPP_LIMITS.output_bytes) == (10, 64, 64 * 1024)


@needs_bwrap
def test_verdicts():
    jobs = [
        ("ok", ADD, "", ADD_TESTS),
        ("wrong", "def add(a, b):\n    return a - b\n", "", ADD_TESTS),
        ("exit", "import sys\ndef add(a, b):\n    return 0\nsys.exit(0)\n", "", ADD_TESTS),
        ("setup", "def area(r):\n    return SCALE * r\n", "SCALE = 2", ["assert area(3) == 6"]),
        ("no_setup", "def area(r):\n    return SCALE * r\n", "", ["assert area(3) == 6"]),
        ("loop", "def add(a, b):\n    while True:\n        pass\n", "", ADD_TESTS),
    ]
    limits = MBPP_LIMITS.__class__(cpu_s=1, wall_s=3)
    out = {o.task_id: o for o in run_candidates(jobs, limits=limits, progress=False)}
    assert all(isinstance(o, ExecutionOutcome) for o in out.values())
    assert out["ok"].passed and out["ok"].status == "passed"
    assert not out["wrong"].passed and "AssertionError at line 4: assert add(1, 2) == 3" in out["wrong"].detail
    assert not out["exit"].passed and "no sentinel" in out["exit"].detail
    assert out["setup"].passed
    assert not out["no_setup"].passed and "NameError" in out["no_setup"].detail
    assert out["loop"].status == "timeout" and not out["loop"].passed


@needs_bwrap
def test_parallel_order_is_input_order():
    jobs = []
    for i in range(12):
        sleep = "import time\ntime.sleep(%s)\n" % (0.3 if i % 3 == 0 else 0)
        expected = i if i % 2 == 0 else -1
        jobs.append((f"t{i}", sleep + f"def ident():\n    return {i}\n", "", [f"assert ident() == {expected}"]))
    out = run_candidates(jobs, workers=4, progress=False)
    assert [o.task_id for o in out] == [f"t{i}" for i in range(12)]
    assert [o.passed for o in out] == [i % 2 == 0 for i in range(12)]


@needs_bwrap
def test_real_mbpp_references_pass():
    try:
        path = data_file("mbpp", "mbpp.jsonl")
    except DataNotFoundError:
        pytest.skip("MBPP data not available")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows = [r for r in rows if 11 <= r["task_id"] <= 510][:24]
    jobs = [(str(r["task_id"]), extract_code(f"```python\n{r['code']}\n```"), r["test_setup_code"], r["test_list"])
            for r in rows]
    out = run_candidates(jobs, progress=False)
    assert [o.task_id for o in out] == [j[0] for j in jobs]
    assert all(o.passed for o in out), [o for o in out if not o.passed]


# --- extraction ------------------------------------------------------------------------------------

F = "def f(x):\n    return x + 1\n"

EXTRACTION = {
    "fenced_with_chat_preamble": ("Sure! Here is the code:\n\n```python\n" + F + "```\n\nThis adds one.", F),
    "py_fence": ("```py\n" + F + "```", F),
    "bare_fence": ("```\n" + F + "```", F),
    "tilde_fence": ("~~~python\n" + F + "~~~", F),
    "unterminated_fence": ("Here you go:\n```python\n" + F, F),
    "inline_closing_fence": ("```python\ndef f(x):\n    return x + 1```", F),
    "crlf": ("```python\r\ndef f(x):\r\n    return x + 1\r\n```", F),
    "python_tags": ("[PYTHON]\n" + F + "[/PYTHON]\nExplanation: it adds one.", F),
    "unterminated_tags": ("[PYTHON]\n" + F, F),
    "begin_done": ("[BEGIN]\n" + F + "[DONE]", F),
    "bare_code": (F, F),
    "preamble_and_trailing_prose": ("Sure! Here is a function.\n\n" + F + "\nThis function adds one. It is O(1).", F),
    "assignments_before_def": ("R = 3\n" + F, "R = 3\n" + F),
    "doctest": (">>> def f(x):\n...     return x + 1\n>>> f(1)\n2\n", F + "f(1)\n"),
    "main_guard_dropped": ("```python\n" + F + "\nif __name__ == '__main__':\n    print(f(int(input())))\n```", F),
    "bare_word_dropped": (F + "\nExplanation\n", F),
    "special_tokens": ("```python\n" + F + "```<|im_end|>", F),
    "non_python_fence_ignored": ("```bash\npip install numpy\n```\n```python\n" + F + "```", F),
}


@pytest.mark.parametrize("name", list(EXTRACTION))
def test_extract_code(name):
    output, expected = EXTRACTION[name]
    assert extract_code(output) == expected


def test_extract_several_fences_keeps_definitions_and_imports():
    output = ("```python\nimport re\n```\nThen:\n```python\ndef f(s):\n    return re.sub('a', 'b', s)\n```\n"
              "Usage:\n```python\nprint(f('aa'))\n```")
    assert extract_code(output) == "import re\n\ndef f(s):\n    return re.sub('a', 'b', s)\n"


def test_extract_joins_code_split_by_prose():
    code = extract_code("def f(x):\n    return x\nThis is the first.\nHelper:\ndef g(y):\n    return f(y)\nDone!")
    assert [n.name for n in ast.parse(code).body] == ["f", "g"]


@pytest.mark.parametrize("output", ["", "   \n", "I'm sorry, I cannot help with that.", None, "```", "[PYTHON]",
                                    "```python\n```", "\x00\x01``` [/PYTHON] >>> ..."])
def test_extract_nothing_gives_empty_string(output):
    assert extract_code(output) == ""


def test_extract_never_raises_on_noise():
    import random
    import string

    rng = random.Random(0)
    alphabet = string.printable + "`[]>~"
    for _ in range(300):
        extract_code("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 300))))
