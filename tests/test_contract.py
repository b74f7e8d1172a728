"""Contract tests: every registered task (the built-ins and the worked example folder) and every registered
method satisfy the same protocol, so a new task folder or method is checked by adding it, not by new tests."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import needs_bwrap

from promptintern.harness.experiment import Experiment
from promptintern.methods.registry import method_names
from promptintern.paths import DataNotFoundError
from promptintern.profile import load_profile
from promptintern.tasks import PAPER_TASKS, get_task
from promptintern.testing import write_task_folder

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(str(p.parent) for p in (REPO / "examples").glob("*/task.yaml"))
TASKS = list(PAPER_TASKS) + EXAMPLES
#: Instances per split the oracle check scores (MBPP runs each in the sandbox).
ORACLE_N = 8


def _task(ref: str):
    task = get_task(ref)
    try:
        return task, task.load("train"), task.load("test")
    except DataNotFoundError as exc:
        pytest.skip(f"{ref}: {exc}")


@pytest.mark.parametrize("ref", TASKS, ids=lambda r: Path(r).name)
def test_task_contract(ref):
    task, train, test = _task(ref)
    assert task.name and task.title and task.display_name and task.spec.description
    assert task.shots >= 0 and task.max_new_tokens > 0 and all(task.stop)
    assert {"train", "test"} <= set(task.splits)
    for split in (train, test):
        assert split and len({i.id for i in split}) == len(split), "ids are unique within a split"
        assert all(i.query.strip() and i.reference.strip() for i in split)
    assert not {i.id for i in train} & {i.id for i in test}, "train and test share no id"
    assert task.template().text.strip()
    # the gold answer, written in the answer format, is what the extractor recovers
    for inst in test[:ORACLE_N]:
        assert task.extract(task.format_answer(inst.reference)).strip() == inst.reference.strip()
    identity = task.identity()
    assert identity["spec"]["name"] == task.name and identity["metric"]["name"] == task.metric.name


@pytest.mark.parametrize("ref", [t for t in TASKS if t != "mbpp"], ids=lambda r: Path(r).name)
def test_references_get_full_marks(ref):
    task, _, test = _task(ref)
    _oracle(task, test[:ORACLE_N])


@needs_bwrap
def test_mbpp_references_get_full_marks():
    task, _, test = _task("mbpp")
    _oracle(task, test[:ORACLE_N], progress=False)


def _oracle(task, instances, **options):
    score = task.score(instances, {i.id: i.reference for i in instances}, **options)
    assert score.metric == task.metric.name and score.primary == task.primary_metric
    assert score.value == pytest.approx(100.0), [r for r in score.per_instance if task.metric.failed(r)]
    assert not [r for r in score.per_instance if task.metric.failed(r)]
    lo, hi = task.metric.interval(score.per_instance, resamples=50)
    assert lo <= score.value + 1e-6 and hi >= score.value - 1e-6
    assert score.signature


@pytest.fixture(scope="module")
def folder_task(tmp_path_factory):
    return write_task_folder(tmp_path_factory.mktemp("contract"))


@pytest.mark.parametrize("method", method_names())
def test_method_contract_on_a_folder_task(method, folder_task, tiny_model_dir):
    """Every method runs end to end on a folder task with the tiny model (or says why it cannot run here)."""
    exp = Experiment(str(folder_task), method, load_profile("smoke"), model=str(tiny_model_dir))
    reason = exp.unavailable()
    if reason:
        pytest.skip(f"{method}: {reason}")
    assert len(exp.plans) == (exp.profile.method.stages if exp.trains else len(exp.plans))
    result = exp.evaluate(progress=False)
    assert result["method"] == method and result["primary"] == "exact_match" and result["n"] == 3
    assert 0.0 <= result["value"] <= 100.0 and len(result["ci95"]) == 2
    assert result["input_tokens_mean"] > 0 and result["latency_s_mean"] >= 0
    assert (exp.directory / "predictions.jsonl").is_file()
    assert f"/runs/smoke/{exp.task_name}/{method}/" in str(exp.directory)


def _private_imports(path: Path) -> list[str]:
    """``from promptintern.x import _name`` and ``import promptintern.x._y`` in one file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("promptintern"):
            names = [a.name for a in node.names] + node.module.split(".")
            found += [f"{path}:{node.lineno}: {n}" for n in names if n.startswith("_") and not n.startswith("__")]
    return found


def test_no_private_cross_module_imports():
    files = [p for d in ("promptintern", "tasks", "baselines") for p in (REPO / d).rglob("*.py")]
    assert files and not [hit for f in files for hit in _private_imports(f)]


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[0] in ("tasks", "baselines"):  # package-dir mapping (pyproject.toml)
        parts = ["promptintern", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _import_graph() -> dict[str, set[str]]:
    """Module-level imports between the package's modules (imports inside functions are deferred by design)."""
    files = [p for d in ("promptintern", "tasks", "baselines") for p in (REPO / d).rglob("*.py")]
    modules = {_module_name(f): f for f in files}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = graph.setdefault(name, set())
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("promptintern"):
                targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for target in targets:
                if target in modules and target != name:
                    edges.add(target)
    return graph


def test_no_import_cycles():
    """Data flows one way: no module imports (at module level) one that imports it back."""
    graph, state, cycles = _import_graph(), {}, []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles
