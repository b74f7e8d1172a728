"""Metrics as registered objects: each owns its per-instance field, corpus aggregation, bootstrap interval and
signature, so nothing downstream inspects row keys.

A task names its metric (``metric:`` in ``task.yaml``): a registered name (``exact_match``, ``bleu``, ``chrf``,
``python_tests``, ``nl2formula_em``) or ``module:function`` for a user metric. ``get_metric(spec, folder)``
builds it, and ``task.metric`` is the task's instance.

Every score is on a 0-100 scale. Mean metrics average a per-instance value in [0, 1] (x100); corpus metrics
(BLEU, chrF) are computed over the whole corpus from sacrebleu's summed sentence statistics, and their
interval resamples instances and recomputes the corpus score.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from promptintern.tasks.base import Instance, TaskScore

_METRICS: dict[str, Callable[..., Metric]] = {}


def register_metric(name: str):
    """Class decorator: ``@register_metric("exact_match")`` makes ``metric: exact_match`` build this class."""

    def wrap(cls):
        if name in _METRICS and _METRICS[name] is not cls:
            raise ValueError(f"metric {name!r} is already registered")
        _METRICS[name] = cls
        cls.name = name
        return cls

    return wrap


def metric_names() -> tuple[str, ...]:
    return tuple(_METRICS)


def get_metric(spec: str | Mapping[str, Any], folder: Path | None = None) -> Metric:
    """The metric named by ``spec`` (a name, ``module:function``, or ``{name: ..., <options>}``)."""
    options: dict[str, Any] = {}
    if isinstance(spec, Mapping):
        options = {k: v for k, v in spec.items() if k != "name"}
        spec = spec.get("name", "")
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"metric must be a name or module:function, got {spec!r}")
    if spec in _METRICS:
        return _METRICS[spec](**options)
    if ":" in spec:
        return UserMetric(spec, folder, **options)
    raise ValueError(f"unknown metric {spec!r}; choose from {', '.join(metric_names())} or give module:function")


class Metric:
    """Base: ``primary`` (the headline key), ``field`` (the per-instance value) and ``perfect`` (its best value).

    Subclasses implement :meth:`rows`; mean metrics need nothing else, corpus metrics override
    :meth:`aggregate` and :meth:`interval`.
    """

    name: str = ""
    primary: str = ""
    field: str = ""
    #: Extra per-instance fields averaged (x100) into the aggregate next to ``primary``.
    extra_fields: tuple[str, ...] = ()
    perfect: float = 1.0
    version: str = "1"
    #: How tables print the primary value (``EM``, ``BLEU``); the primary key when empty.
    label: str = ""

    @property
    def title(self) -> str:
        return self.label or self.primary

    def rows(self, task, instances: Sequence[Instance], predictions: Sequence[str], **options: Any) -> list[dict]:
        raise NotImplementedError

    def aggregate(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        n = len(rows)
        out = {
            key: (100.0 * sum(float(r[key]) for r in rows) / n if n else 0.0)
            for key in (self.field, *self.extra_fields)
        }
        return {self.primary: out.pop(self.field), **out, "n": float(n)}

    def mean_fields(self) -> dict[str, str]:
        """Per-instance values whose mean the aggregate reports beside the primary: field -> aggregate key."""
        return {f: f for f in self.extra_fields}

    def interval(self, rows: Sequence[Mapping[str, Any]], **kwargs: Any) -> tuple[float, float]:
        """95 % percentile bootstrap interval of the primary value over instances."""
        from promptintern.evaluation.stats import mean_ci

        return mean_ci([100.0 * float(r[self.field]) for r in rows], **{"groups": groups(rows), **kwargs})

    def signature(self, rows: Sequence[Mapping[str, Any]]) -> str:
        return f"{self.name}|v{self.version}|n:{len(rows)}"

    def statistic(self, rows: Sequence[Mapping[str, Any]]) -> Callable[[Any], float]:
        """``f(indices)``: the primary value of ``rows`` restricted to those indices (numpy int array), fast
        enough for thousands of bootstrap resamples."""
        import numpy as np

        values = np.asarray([100.0 * float(r[self.field]) for r in rows], dtype=float)
        return lambda idx: float(values[idx].mean()) if len(idx) else 0.0

    def seeded_interval(
        self, runs_a: Sequence[Sequence[Mapping[str, Any]]], runs_b: Sequence[Sequence[Mapping[str, Any]]] = (),
        **kwargs: Any,
    ) -> tuple[float, float]:  # fmt: skip
        """95 % interval of the seed-averaged primary value of ``runs_a`` (one row list per training seed),
        or of its difference from ``runs_b``'s on the same instances: seeds and instances resampled
        (:func:`promptintern.evaluation.stats.seeded_ci`). Rows are matched by ``id`` to ``runs_a[0]``."""
        from promptintern.evaluation.stats import seeded_ci

        first = runs_a[0]
        a = [self.statistic(_aligned(first, run)[1]) for run in runs_a]
        b = [self.statistic(_aligned(first, run)[1]) for run in runs_b]
        return seeded_ci(a, b, n=len(first), **{"groups": groups(first), **kwargs})

    def paired_interval(
        self, rows_a: Sequence[Mapping[str, Any]], rows_b: Sequence[Mapping[str, Any]], **kwargs: Any
    ) -> tuple[float, float]:
        """95 % paired bootstrap interval of ``primary(a) - primary(b)``: both scored on the SAME resampled
        instances (rows matched by ``id``), so what the two share cancels out."""
        from promptintern.evaluation.stats import bootstrap_ci

        a, b = _aligned(rows_a, rows_b)
        return bootstrap_ci(
            len(a),
            lambda idx: (
                self.aggregate([a[i] for i in idx])[self.primary]
                - self.aggregate([b[i] for i in idx])[self.primary]
            ),
            **{"groups": groups(a), **kwargs},
        )

    def failed(self, row: Mapping[str, Any]) -> bool:
        """Whether a per-instance row fell short of full marks."""
        return abs(float(row[self.field]) - float(self.perfect)) > 1e-9

    def identity(self) -> dict[str, Any]:
        """What enters a run key: the metric's name, version and options."""
        return {"name": self.name, "version": self.version}

    def summary(self, rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, float], str]:
        """:meth:`aggregate` and :meth:`signature` of the same rows (a corpus metric scores the corpus once)."""
        return self.aggregate(rows), self.signature(rows)

    def score(self, task, instances: Sequence[Instance], predictions: Mapping[str, str], **options: Any) -> TaskScore:
        preds = [str(p) for p in task.predictions_for(instances, predictions)]
        rows = self.rows(task, instances, preds, **options)
        metrics, signature = self.summary(rows)
        return TaskScore(task.name, metrics, rows, self.primary, signature=signature, metric=self.name)


def _aligned(rows_a, rows_b) -> tuple[list, list]:
    """``rows_b`` in the order of ``rows_a``'s ids (the same instances, else ValueError)."""
    by_id = {r["id"]: r for r in rows_b}
    if set(by_id) != {r["id"] for r in rows_a}:
        raise ValueError("a paired comparison needs the same test instances on both sides")
    return list(rows_a), [by_id[r["id"]] for r in rows_a]


def groups(rows: Sequence[Mapping[str, Any]]) -> list[str] | None:
    """The ``group`` label of every per-instance row (instances sharing one, e.g. paraphrases of a question, are
    resampled together by the bootstrap), or None unless every row has one."""
    labels = [r.get("group") for r in rows]
    return None if not labels or any(g is None for g in labels) else [str(g) for g in labels]


def pairs(instances: Sequence[Instance], predictions: Sequence[str]) -> list[dict[str, Any]]:
    """Per-instance rows: id, prediction, reference, and the instance's ``group`` where it has one."""
    rows = []
    for i, p in zip(instances, predictions, strict=True):
        row = {"id": i.id, "prediction": p, "reference": i.reference}
        group = getattr(i, "group", None)
        if group is not None:
            row["group"] = group
        rows.append(row)
    return rows


_SPACE = re.compile(r"\s+")
NORMALISATIONS: dict[str, Callable[[str], str]] = {
    "none": lambda s: s,
    "strip": str.strip,
    "whitespace": lambda s: _SPACE.sub(" ", s).strip(),
    "lower": lambda s: _SPACE.sub(" ", s).strip().lower(),
}


@register_metric("exact_match")
class ExactMatch(Metric):
    """Exact match after ``normalize`` (``whitespace``: runs of whitespace -> one space, ends stripped;
    ``lower``: that and lower case; ``strip``; ``none``). ``exact_match`` is 0-100; rows hold ``em`` 0/1."""

    primary = "exact_match"
    field = "em"
    label = "EM"

    def __init__(self, normalize: str = "whitespace"):
        if normalize not in NORMALISATIONS:
            raise ValueError(f"exact_match: unknown normalize {normalize!r}; choose from {', '.join(NORMALISATIONS)}")
        self.normalize = normalize

    def rows(self, task, instances, predictions, **_: Any) -> list[dict]:
        norm = NORMALISATIONS[self.normalize]
        rows = pairs(instances, predictions)
        for r in rows:
            r["em"] = float(norm(r["prediction"]) == norm(r["reference"]))
        return rows

    def identity(self) -> dict[str, Any]:
        return super().identity() | {"normalize": self.normalize}

    def signature(self, rows) -> str:
        return f"exact_match|norm:{self.normalize}|n:{len(rows)}"


class _Corpus(Metric):
    """A sacrebleu corpus metric: the corpus score from summed sentence statistics, per-instance sentence
    scores, and an interval that resamples instances and recomputes the corpus score."""

    perfect = 100.0

    def scorer(self, sentence: bool = False):
        raise NotImplementedError

    def rows(self, task, instances, predictions, **_: Any) -> list[dict]:
        sentence = self.scorer(sentence=True)
        rows = pairs(instances, [p.strip() for p in predictions])
        for r in rows:
            r["reference"] = r["reference"].strip()
            r[self.field] = sentence.sentence_score(r["prediction"], [r["reference"]]).score
        return rows

    def _corpus(self, rows) -> tuple[float, str]:
        """The corpus score and sacrebleu's signature (known once a corpus is scored)."""
        scorer = self.scorer()
        if not rows:
            return 0.0, "none"
        score = scorer.corpus_score([r["prediction"] for r in rows], [[r["reference"] for r in rows]]).score
        return score, str(scorer.get_signature())

    def mean_fields(self) -> dict[str, str]:
        return {self.field: f"{self.field}_mean"}

    def aggregate(self, rows) -> dict[str, float]:
        return self.summary(rows)[0]

    def summary(self, rows) -> tuple[dict[str, float], str]:
        n = len(rows)
        mean = sum(r[self.field] for r in rows) / n if n else 0.0
        corpus, signature = self._corpus(rows)
        return {self.primary: corpus, f"{self.field}_mean": mean, "n": float(n)}, signature

    def statistic(self, rows) -> Callable[[Any], float]:
        """The corpus score of the rows at ``indices`` from their summed sentence statistics."""
        import numpy as np

        scorer = self.scorer()
        stats = np.asarray(
            scorer._extract_corpus_statistics([r["prediction"] for r in rows], [[r["reference"] for r in rows]]),
            dtype=np.int64,
        )
        return lambda idx: float(scorer._compute_score_from_stats(stats[idx].sum(axis=0)).score)

    def interval(self, rows, **kwargs: Any) -> tuple[float, float]:
        from promptintern.evaluation.stats import corpus_ci

        return corpus_ci(
            self.scorer(), [r["prediction"] for r in rows], [r["reference"] for r in rows],
            **{"groups": groups(rows), **kwargs},
        )

    def paired_interval(self, rows_a, rows_b, **kwargs: Any) -> tuple[float, float]:
        from promptintern.evaluation.stats import paired_corpus_ci

        a, b = _aligned(rows_a, rows_b)
        refs = [r["reference"] for r in a]
        preds = ([r["prediction"] for r in a], [r["prediction"] for r in b])
        return paired_corpus_ci(self.scorer(), preds, refs, **{"groups": groups(a), **kwargs})

    def signature(self, rows) -> str:
        return self._corpus(rows)[1]


@register_metric("bleu")
class Bleu(_Corpus):
    """Corpus BLEU (sacrebleu, ``tokenize`` default 13a) and smoothed sentence BLEU per instance."""

    primary = "bleu"
    field = "sentence_bleu"
    label = "BLEU"

    def __init__(self, tokenize: str = "13a"):
        self.tokenize = tokenize

    def scorer(self, sentence: bool = False):
        from sacrebleu.metrics import BLEU

        return BLEU(tokenize=self.tokenize, effective_order=sentence)

    def identity(self) -> dict[str, Any]:
        return super().identity() | {"tokenize": self.tokenize}


@register_metric("chrf")
class ChrF(_Corpus):
    """Corpus chrF (sacrebleu; ``word_order`` 2 = chrF++) and sentence chrF per instance."""

    primary = "chrf"
    field = "sentence_chrf"
    label = "chrF"

    def __init__(self, word_order: int = 0):
        self.word_order = int(word_order)

    def scorer(self, sentence: bool = False):
        from sacrebleu.metrics import CHRF

        return CHRF(word_order=self.word_order)

    def identity(self) -> dict[str, Any]:
        return super().identity() | {"word_order": self.word_order}


@register_metric("python_tests")
class PythonTests(Metric):
    """pass@1 (0-100): the predicted Python program passes when all of the instance's asserts (the list in
    column ``tests``; ``setup``: optional setup code column) run and hold inside the sandbox."""

    primary = "pass@1"
    field = "passed"

    def __init__(self, tests: str = "test_list", setup: str | None = "test_setup_code"):
        self.tests, self.setup = tests, setup

    def identity(self) -> dict[str, Any]:
        return super().identity() | {"tests": self.tests, "setup": self.setup}

    def rows(
        self, task, instances, predictions, *, backend: str = "bwrap", unsafe: bool = False,
        workers: int | None = None, progress: bool = True, **_: Any,
    ) -> list[dict]:
        from promptintern.tasks.mbpp.execution import run_candidates

        jobs = []
        for inst, pred in zip(instances, predictions, strict=True):
            tests = inst.meta.get(self.tests)
            if not isinstance(tests, list) or not tests:
                raise ValueError(f"{task.name}: instance {inst.id}: field {self.tests!r} must be a non-empty list of asserts")
            setup = inst.meta.get(self.setup, "") if self.setup else ""
            jobs.append((inst.id, pred, setup or "", [str(t) for t in tests]))
        outcomes = run_candidates(jobs, backend=backend, unsafe=unsafe, workers=workers, progress=progress)
        broken = [o for o in outcomes if o.status == "error"]
        if broken:  # the sandbox failed to start: not a verdict on the candidate
            raise RuntimeError(f"sandbox error on {len(broken)} candidate(s), e.g. {broken[0].task_id}: {broken[0].detail}")
        return [
            {
                "id": o.task_id, "passed": o.passed, "status": o.status, "detail": o.detail,
                "duration_s": o.duration_s, "sandbox": backend,
            }
            for o in outcomes
        ]  # fmt: skip

    def statistic(self, rows) -> Callable[[Any], float]:
        import numpy as np

        values = np.asarray([100.0 * bool(r["passed"]) for r in rows], dtype=float)
        return lambda idx: float(values[idx].mean()) if len(idx) else 0.0

    def aggregate(self, rows) -> dict[str, float]:
        passed = sum(bool(r["passed"]) for r in rows)
        n = len(rows)
        return {"pass@1": 100.0 * passed / n if n else 0.0, "passed": float(passed), "n": float(n)}

    def signature(self, rows) -> str:
        sandboxes = sorted({r["sandbox"] for r in rows}) or ["none"]
        return f"python_tests|sandbox:{'+'.join(sandboxes)}|n:{len(rows)}"


class UserMetric(Metric):
    """``module:function`` from the task folder (``<folder>/<module>.py``) or the Python path:
    ``function(prediction, reference, record) -> float`` in [0, 1] per instance; reported as 100 x mean.

    Its version (part of every run key) is the content of the module file and of ``files``: other files of the
    folder the function reads (e.g. a database), so editing any of them re-scores cached runs.
    """

    primary = "score"
    field = "score"

    def __init__(self, spec: str, folder: Path | None = None, primary: str | None = None,
                 files: Sequence[str] = ()):  # fmt: skip
        self.spec, self.folder = spec, folder
        self.primary = primary or self.primary
        self.name = spec
        module_name = spec.partition(":")[0]
        self.function = load_function(spec, folder, "metric")
        self.files = tuple(files)
        self.version = _digest(module_name, folder, self.files)

    def identity(self) -> dict[str, Any]:
        return super().identity() | {"primary": self.primary}

    def rows(self, task, instances, predictions, **_: Any) -> list[dict]:
        rows = pairs(instances, predictions)
        for inst, r in zip(instances, rows, strict=True):
            value = float(self.function(r["prediction"], inst.reference, dict(inst.meta)))
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"metric {self.spec}: instance {inst.id}: returned {value}, expected a value in [0, 1]")
            r["score"] = value
        return rows


def load_function(spec: str, folder: Path | None, what: str):
    """The callable named by ``module:function`` (the module from ``<folder>/<module>.py`` or the Python path);
    ``what`` names the task.yaml key in the error."""
    module_name, _, name = spec.partition(":")
    fn = getattr(import_from_folder(module_name, folder), name, None) if name else None
    if not callable(fn):
        raise ValueError(f"{what} {spec!r}: {module_name} has no function {name!r}")
    return fn


def import_from_folder(module_name: str, folder: Path | None):
    local = folder / f"{module_name}.py" if folder is not None else None
    if local is not None and local.is_file():
        spec = importlib.util.spec_from_file_location(f"promptintern_user_metric.{module_name}", local)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        where = f" (no {local})" if local is not None else ""
        raise ValueError(f"metric module {module_name!r} cannot be imported{where}: {exc}") from None


def _digest(module_name: str, folder: Path | None, files: Sequence[str]) -> str:
    """A user metric's version: the sha256 of its module's source and of the data ``files`` it reads."""
    from promptintern.keys import content_key, file_sha256

    local = folder / f"{module_name}.py" if folder is not None else None
    if local is not None and local.is_file():
        module = local
    else:
        spec = importlib.util.find_spec(module_name)
        module = Path(spec.origin) if spec and spec.origin else None
    parts = {"module": file_sha256(module) if module else "unknown"}
    for name in files:
        path = (folder or Path(".")) / name
        if not path.is_file():
            raise ValueError(f"metric {module_name}: files: {path} not found")
        parts[name] = file_sha256(path)
    return content_key("user-metric", parts, length=16)
