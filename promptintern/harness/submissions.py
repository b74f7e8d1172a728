"""Leaderboard submissions: validate a directory or ``.tar.gz``, score every task, record it once.

A submission holds ``submission.yaml`` (:class:`SubmissionMeta`) and one ``predictions/<task>.jsonl`` per
task it enters, covering that task's whole ``test`` split (the predictions format of
:mod:`promptintern.evaluation.predictions`). Validation collects every problem (file, line, field) before raising
:class:`SubmissionError`; nothing is stored unless all tasks validate and score. A tarball's member headers
are all checked before anything is extracted: absolute names, ``..``, links and special files are refused,
names other than the layout's are refused under ``predictions/`` (and skipped elsewhere), and the member
count, the total and each member's declared size are capped (a predictions file at the cap of
:mod:`promptintern.evaluation.predictions`); then only the expected members are extracted.

Results go to the SQLite results store (:class:`promptintern.harness.store.ResultsStore`) in two tables of their
own, ``submissions`` and ``submission_scores``, written in one transaction. A submission is identified by
the sha256 of its canonical predictions plus the evaluator versions (package version, each task's metric
signature and test-split version), so an identical resubmission is reported as already present. The
submission's metadata is not part of the hash: the same predictions under another name are a duplicate.
This is the suite's own addition; the PromptIntern paper has no leaderboard.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from promptintern.evaluation.predictions import (
    FILE_BYTES_ENV,
    Prediction,
    PredictionsError,
    prediction_limits,
    read_predictions,
)
from promptintern.tasks import PAPER_TASKS, Instance, Task, TaskScore, get_task

if TYPE_CHECKING:
    from promptintern.harness.store import ResultsStore

SUBMISSION_FILE = "submission.yaml"
PREDICTIONS_DIR = "predictions"
SPLIT = "test"
SCHEMA_VERSION = 1
MAX_ARCHIVE_BYTES = 512 << 20  # uncompressed size of all members of a tarball
MAX_ARCHIVE_MEMBERS = 1000
MAX_META_BYTES = 1 << 20  # submission.yaml; its fields hold a few KiB at most
CI_RESAMPLES = 2000


class SubmissionError(ValueError):
    """A submission failed validation; ``problems`` lists every issue, each naming file, line and field."""

    def __init__(self, source: str | Path, problems: list[str]):
        self.source = str(source)
        self.problems = problems
        listing = "\n  - ".join(problems)
        super().__init__(f"{source}: submission rejected, {len(problems)} problem(s):\n  - {listing}")


class SubmissionMeta(BaseModel):
    """``submission.yaml``. ``task_versions`` (optional) pins the test-split version each task was run on."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=100, description="leaderboard entry name")
    model: str = Field(min_length=1, max_length=200, description="model name; prices the cost column")
    method: str = Field(min_length=1, max_length=100, description="e.g. promptintern, zero-shot, ft-full")
    contact: str = Field(min_length=3, max_length=200, description="e-mail or URL (not published)")
    profile: str | None = Field(None, max_length=100, description="suite profile or own settings name")
    description: str | None = Field(None, max_length=2000)
    task_versions: dict[str, str] = Field(default_factory=dict, description="task -> task_version()")


@dataclass
class TaskEntry:
    """One task of a validated submission."""

    task: Task
    instances: list[Instance]
    records: dict[str, Prediction]
    version: str

    def mean(self, key: str) -> float | None:
        """Mean of an optional per-line number (``None`` when the file does not report it)."""
        values = [r.extra.get(key) for r in self.records.values()]
        return sum(values) / len(values) if values and all(v is not None for v in values) else None


@dataclass
class Submission:
    source: str
    meta: SubmissionMeta
    tasks: dict[str, TaskEntry]


@dataclass
class TaskResult:
    task: str
    metric: str
    value: float
    ci_lo: float
    ci_hi: float
    n: int
    metrics: dict[str, float]
    signature: str | None
    version: str
    input_tokens_mean: float | None = None
    output_tokens_mean: float | None = None
    latency_s_mean: float | None = None


@dataclass
class SubmitOutcome:
    """``status`` is ``recorded`` or ``already present`` (then ``id`` is the earlier submission's)."""

    status: str
    id: int
    content_hash: str
    name: str
    results: dict[str, TaskResult] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "id": self.id,
            "content_hash": self.content_hash,
            "name": self.name,
            "results": {t: vars(r) for t, r in self.results.items()},
        }


# -- versions and hashing ------------------------------------------------------------------------------
def task_version(instances: Sequence[Instance]) -> str:
    """Version of a split's data: the first 16 hex digits of sha256 over its ids and references."""
    digest = hashlib.sha256()
    for inst in instances:
        digest.update(json.dumps([inst.id, inst.reference], ensure_ascii=False).encode("utf-8") + b"\n")
    return digest.hexdigest()[:16]


def content_hash(sub: Submission, evaluator: dict[str, Any]) -> str:
    """sha256 of the canonical predictions (all fields, sorted by id) and the evaluator versions."""
    preds = {
        name: [
            {"task_id": tid, "prediction": rec.prediction, **rec.extra}
            for tid, rec in sorted(entry.records.items())
        ]
        for name, entry in sorted(sub.tasks.items())
    }
    blob = json.dumps({"predictions": preds, "evaluator": evaluator}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def evaluator_versions(results: dict[str, TaskResult]) -> dict[str, Any]:
    from promptintern import __version__

    return {
        "promptintern": __version__,
        "submission_schema": SCHEMA_VERSION,
        "tasks": {t: {"signature": r.signature, "version": r.version} for t, r in sorted(results.items())},
    }


# -- reading -------------------------------------------------------------------------------------------
def _is_archive(path: Path) -> bool:
    return path.name.endswith((".tar.gz", ".tgz"))


def _member_problem(m: tarfile.TarInfo, where: str) -> str | None:
    """Why member ``m`` may not be extracted whatever its name (``None``: a regular file or folder)."""
    parts = PurePosixPath(m.name).parts
    if m.name.startswith(("/", "\\")) or (parts and parts[0].endswith(":")):
        return f"{where}: absolute path"
    if ".." in parts or "\\" in m.name:
        return f"{where}: path leaves the archive ('..' or backslash)"
    if m.issym() or m.islnk():
        return f"{where}: links are not allowed"
    if not (m.isfile() or m.isdir()):
        return f"{where}: only regular files and folders are allowed"
    return None


def _layout_prefix(members: list[tarfile.TarInfo]) -> tuple[str, ...]:
    """``(folder,)`` when everything lies in one folder without a top-level submission.yaml
    (``tar czf sub.tar.gz sub/``), else ``()``."""
    paths = [(m, PurePosixPath(m.name).parts) for m in members]
    if any(parts == (SUBMISSION_FILE,) for _, parts in paths):
        return ()
    tops = {parts[0] for _, parts in paths if parts}
    if len(tops) != 1 or any(len(parts) == 1 and not m.isdir() for m, parts in paths):
        return ()
    return (tops.pop(),)


def _expected(
    archive: Path, members: list[tarfile.TarInfo], prefix: tuple[str, ...], file_cap: int
) -> tuple[list[tarfile.TarInfo], list[str]]:
    """The members of the submission layout under ``prefix`` to extract, and problems with the rest (other
    names at the top level are skipped, as in a folder)."""
    wanted: list[tarfile.TarInfo] = []
    problems: list[str] = []
    tasks = tuple(PAPER_TASKS)
    for m in members:
        where = f"{archive.name}: member {m.name!r}"
        parts = PurePosixPath(m.name).parts
        if parts[: len(prefix)] != prefix:
            continue
        rel = parts[len(prefix) :]
        if rel in ((), (PREDICTIONS_DIR,)):
            if not m.isdir():
                problems.append(f"{where}: expected a folder")
        elif rel == (SUBMISSION_FILE,) or rel[0] == PREDICTIONS_DIR:
            meta = rel == (SUBMISSION_FILE,)
            task_file = len(rel) == 2 and rel[1].endswith(".jsonl") and rel[1][: -len(".jsonl")] in tasks
            if not (meta or task_file):
                problems.append(
                    f"{where}: unexpected; expected {PREDICTIONS_DIR}/<task>.jsonl, task one of "
                    + ", ".join(tasks)
                )
            elif not m.isfile():
                problems.append(f"{where}: expected a regular file")
            elif m.size > (cap := MAX_META_BYTES if meta else file_cap):
                env = "" if meta else f" ({FILE_BYTES_ENV})"
                problems.append(f"{where}: declared size {m.size:,} bytes, over the {cap:,}-byte cap{env}")
            else:
                wanted.append(m)
    return wanted, problems


def _safe_extract(archive: Path, dest: Path, file_cap: int) -> tuple[list[str], Path]:
    """Extract the submission members of ``archive`` into ``dest``; returns problems (nothing written when
    the headers have any) and the submission's root folder (``dest`` or its one top folder).

    Headers are read one by one, stopping at the first that breaks a size or count cap (skipping a member's
    data means decompressing it); names are checked once all headers are read; then only the expected
    members are extracted, with tarfile's ``data`` filter where Python has it."""
    try:
        tar = tarfile.open(archive, "r:gz")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        return [f"{archive.name}: not a readable .tar.gz archive ({exc})"], dest
    problems: list[str] = []
    member_cap = max(file_cap, MAX_META_BYTES)
    with tar:
        members: list[tarfile.TarInfo] = []
        total = 0
        try:
            for m in tar:
                where = f"{archive.name}: member {m.name!r}"
                if len(members) == MAX_ARCHIVE_MEMBERS:
                    problems.append(f"{archive.name}: more than {MAX_ARCHIVE_MEMBERS} members")
                    break
                members.append(m)
                problem = _member_problem(m, where)
                if problem:
                    problems.append(problem)
                total += max(m.size, 0)
                if m.size > member_cap:
                    problems.append(
                        f"{where}: declared size {m.size:,} bytes, over the {member_cap:,}-byte cap on a "
                        f"member ({FILE_BYTES_ENV})"
                    )
                    break
                if total > MAX_ARCHIVE_BYTES:
                    problems.append(
                        f"{archive.name}: more than {MAX_ARCHIVE_BYTES:,} bytes uncompressed (at {m.name!r})"
                    )
                    break
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            return [*problems, f"{archive.name}: corrupt archive ({exc})"], dest
        if problems:
            return problems, dest
        prefix = _layout_prefix(members)
        wanted, problems = _expected(archive, members, prefix, file_cap)
        if problems:
            return problems, dest
        for m in wanted:
            try:
                if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4, 3.12
                    tar.extract(m, dest, set_attrs=False, filter="data")
                    continue
                src = tar.extractfile(m)
                if src is None:
                    raise tarfile.ExtractError("no data")
                target = dest.joinpath(*PurePosixPath(m.name).parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
            except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
                problems.append(f"{archive.name}: member {m.name!r} could not be extracted ({exc})")
    return problems, dest.joinpath(*prefix)


@contextmanager
def _opened(path: Path, file_cap: int) -> Iterator[tuple[Path | None, list[str]]]:
    """The submission's root folder (a tarball extracted to a temporary folder) and problems so far."""
    if path.is_dir():
        yield path, []
        return
    if not path.exists():
        yield None, [f"{path}: no such file or folder"]
        return
    if not _is_archive(path):
        yield None, [f"{path}: expected a folder or a .tar.gz / .tgz archive"]
        return
    with tempfile.TemporaryDirectory(prefix="promptintern-submission-") as tmp:
        problems, root = _safe_extract(path, Path(tmp), file_cap)
        yield (None if problems else root), problems


def _yaml_lines(text: str) -> dict[tuple[str, ...], int]:
    """1-based line of every mapping key (nested keys as tuples); empty if the text does not compose."""
    lines: dict[tuple[str, ...], int] = {}

    def walk(node: Any, prefix: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                path = (*prefix, str(key.value))
                lines[path] = key.start_mark.line + 1
                walk(value, path)

    try:
        walk(yaml.compose(text), ())
    except yaml.YAMLError:
        pass
    return lines


def _read_meta(
    root: Path, problems: list[str]
) -> tuple[SubmissionMeta | None, dict, dict[tuple[str, ...], int]]:
    """The validated metadata (``None`` on problems), the raw mapping and the line of every YAML key."""
    path = root / SUBMISSION_FILE
    if path.is_symlink() or not path.is_file():
        problems.append(f"{SUBMISSION_FILE}: missing (or not a regular file)")
        return None, {}, {}
    if (size := path.stat().st_size) > MAX_META_BYTES:
        problems.append(f"{SUBMISSION_FILE}: file is {size:,} bytes, over the {MAX_META_BYTES:,}-byte cap")
        return None, {}, {}
    try:
        text = path.read_bytes().decode("utf-8")
        data = yaml.safe_load(text)
    except UnicodeDecodeError as exc:
        problems.append(f"{SUBMISSION_FILE}: not valid UTF-8 (byte {exc.start})")
        return None, {}, {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problems.append(f"{SUBMISSION_FILE}{line}: invalid YAML ({getattr(exc, 'problem', exc)})")
        return None, {}, {}
    if not isinstance(data, dict):
        problems.append(
            f"{SUBMISSION_FILE}: expected a mapping of fields (name, model, method, contact, ...)"
        )
        return None, {}, {}
    lines = _yaml_lines(text)
    try:
        return SubmissionMeta.model_validate(data), data, lines
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(str(p) for p in err["loc"])
            line = next((lines[loc[:i]] for i in range(len(loc), 0, -1) if loc[:i] in lines), None)
            where = f"{SUBMISSION_FILE}:{line}" if line else SUBMISSION_FILE
            problems.append(f"{where}: field {'.'.join(loc)!r}: {err['msg']}")
        return None, data, lines


def _check_versions(
    data: dict, lines: dict[tuple[str, ...], int], versions: dict[str, str], problems: list[str]
) -> None:
    """``task_versions`` entries (string ones; pydantic reports the rest) against the tasks' test splits."""
    pinned = data.get("task_versions")
    for name, version in pinned.items() if isinstance(pinned, dict) else ():
        line = lines.get(("task_versions", str(name)))
        where = f"{SUBMISSION_FILE}:{line}" if line else SUBMISSION_FILE
        if name not in versions:
            problems.append(
                f"{where}: field 'task_versions.{name}': no predictions/{name}.jsonl for this task"
            )
        elif isinstance(version, str) and version != versions[name]:
            problems.append(
                f"{where}: field 'task_versions.{name}': {version!r} is not this suite's {name} "
                f"{SPLIT} split ({versions[name]}); regenerate the predictions on the current data"
            )


def _read_task(
    root: Path, name: str, problems: list[str], versions: dict[str, str], file_cap: int
) -> TaskEntry | None:
    rel = f"{PREDICTIONS_DIR}/{name}.jsonl"
    path = root / PREDICTIONS_DIR / f"{name}.jsonl"
    task = get_task(name)
    instances = task.load(SPLIT)
    versions[name] = task_version(instances)
    try:
        records = read_predictions(path, instances, max_file_bytes=file_cap)
    except PredictionsError as exc:
        problems.extend(p.replace(str(path), rel, 1) for p in exc.problems)
        return None
    for key in ("input_tokens", "output_tokens", "latency_s"):
        lacking = [r.line for r in records.values() if r.extra.get(key) is None]
        if 0 < len(lacking) < len(records):
            shown = ", ".join(map(str, sorted(lacking)[:20])) + (" ..." if len(lacking) > 20 else "")
            problems.append(f"{rel}: field {key!r} is given on some lines but missing on line(s) {shown}")
    return TaskEntry(task, instances, records, versions[name])


def load_submission(path: str | Path) -> Submission:
    """Read and validate a submission folder or tarball; raises :class:`SubmissionError` listing all problems."""
    path = Path(path)
    try:
        _, file_cap = prediction_limits()  # the environment's caps, checked before anything is read
    except ValueError as exc:
        raise SubmissionError(path, [str(exc)]) from None
    with _opened(path, file_cap) as (root, problems):
        if root is None:
            raise SubmissionError(path, problems)
        meta, data, lines = _read_meta(root, problems)
        pred_dir = root / PREDICTIONS_DIR
        names: list[str] = []
        if pred_dir.is_symlink() or not pred_dir.is_dir():
            problems.append(f"{PREDICTIONS_DIR}/: missing; put one <task>.jsonl per task there")
        else:
            for entry in sorted(pred_dir.iterdir()):
                rel = f"{PREDICTIONS_DIR}/{entry.name}"
                if entry.suffix != ".jsonl" or entry.stem not in PAPER_TASKS:
                    problems.append(
                        f"{rel}: unexpected file; expected <task>.jsonl, task one of {', '.join(PAPER_TASKS)}"
                    )
                elif entry.is_symlink() or not entry.is_file():
                    problems.append(f"{rel}: not a regular file (links are not allowed)")
                else:
                    names.append(entry.stem)
            if not names:
                problems.append(
                    f"{PREDICTIONS_DIR}/: no predictions file (<task>.jsonl, task one of {', '.join(PAPER_TASKS)})"
                )
        versions: dict[str, str] = {}
        tasks = {
            n: entry
            for n in names
            if (entry := _read_task(root, n, problems, versions, file_cap)) is not None
        }
        _check_versions(data, lines, versions, problems)
    if problems:
        raise SubmissionError(path, problems)
    assert meta is not None
    return Submission(str(path), meta, tasks)


# -- scoring -------------------------------------------------------------------------------------------
def score_ci(task: Task, score: TaskScore, *, resamples: int = CI_RESAMPLES) -> tuple[float, float]:
    """95 % bootstrap interval of the primary metric (:func:`promptintern.evaluation.scoring.confidence_interval`)."""
    from promptintern.evaluation.scoring import confidence_interval

    return confidence_interval(task, score, resamples=resamples)


def score_submission(
    sub: Submission, *, backend: str = "bwrap", workers: int | None = None, progress: bool = False
) -> dict[str, TaskResult]:
    """Score every task of ``sub`` (MBPP in the ``backend`` sandbox); raises if any scoring fails."""
    from promptintern.evaluation.scoring import evaluate

    results = {}
    for name, entry in sub.tasks.items():
        preds = {tid: rec.prediction for tid, rec in entry.records.items()}
        score = evaluate(
            entry.task, entry.instances, preds, backend=backend, workers=workers, progress=progress
        )
        lo, hi = score_ci(entry.task, score)
        results[name] = TaskResult(
            task=name,
            metric=score.primary,
            value=float(score.value),
            ci_lo=lo,
            ci_hi=hi,
            n=len(score.per_instance),
            metrics={k: float(v) for k, v in score.metrics.items()},
            signature=score.signature,
            version=entry.version,
            input_tokens_mean=entry.mean("input_tokens"),
            output_tokens_mean=entry.mean("output_tokens"),
            latency_s_mean=entry.mean("latency_s"),
        )
    return results


# -- store ---------------------------------------------------------------------------------------------
_SUBMISSIONS_SQL = """CREATE TABLE IF NOT EXISTS submissions (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  content_hash TEXT NOT NULL UNIQUE,
  name TEXT NOT NULL,
  model TEXT NOT NULL,
  method TEXT NOT NULL,
  profile TEXT,
  contact TEXT NOT NULL,
  metadata TEXT NOT NULL,
  evaluator TEXT NOT NULL,
  created_at TEXT NOT NULL
)"""
_SCORES_SQL = """CREATE TABLE IF NOT EXISTS submission_scores (
  submission_id INTEGER NOT NULL REFERENCES submissions(id),
  task TEXT NOT NULL,
  metric TEXT NOT NULL,
  value REAL NOT NULL,
  ci_lo REAL,
  ci_hi REAL,
  n INTEGER NOT NULL,
  metrics TEXT NOT NULL,
  signature TEXT,
  task_version TEXT NOT NULL,
  input_tokens_mean REAL,
  output_tokens_mean REAL,
  latency_s_mean REAL,
  PRIMARY KEY (submission_id, task)
)"""
_SCORE_COLUMNS = (
    "submission_id",
    "task",
    "metric",
    "value",
    "ci_lo",
    "ci_hi",
    "n",
    "metrics",
    "signature",
    "task_version",
    "input_tokens_mean",
    "output_tokens_mean",
    "latency_s_mean",
)


def ensure_tables(store: ResultsStore) -> None:
    """Create the submission tables in ``store`` (a ResultsStore) and register their schema version."""
    with store.transaction() as con:
        con.execute(_SUBMISSIONS_SQL)
        con.execute(_SCORES_SQL)
        store._check_version(con, "submissions", SCHEMA_VERSION)


def record(store: ResultsStore, sub: Submission, results: dict[str, TaskResult]) -> SubmitOutcome:
    """Store ``sub`` with its ``results`` in one transaction, unless its content hash is already there."""
    from promptintern.harness.provenance import utc_now

    ensure_tables(store)
    evaluator = evaluator_versions(results)
    digest = content_hash(sub, evaluator)
    meta = sub.meta
    with store.transaction() as con:
        row = con.execute("SELECT id, name FROM submissions WHERE content_hash = ?", (digest,)).fetchone()
        if row is not None:
            return SubmitOutcome("already present", row[0], digest, row[1], results)
        cur = con.execute(
            "INSERT INTO submissions (content_hash, name, model, method, profile, contact, metadata, evaluator,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                digest,
                meta.name,
                meta.model,
                meta.method,
                meta.profile,
                meta.contact,
                meta.model_dump_json(),
                json.dumps(evaluator, sort_keys=True),
                utc_now(),
            ),
        )
        sub_id = int(cur.lastrowid)
        marks = ", ".join("?" for _ in _SCORE_COLUMNS)
        for r in results.values():
            con.execute(
                f"INSERT INTO submission_scores ({', '.join(_SCORE_COLUMNS)}) VALUES ({marks})",
                (
                    sub_id,
                    r.task,
                    r.metric,
                    r.value,
                    r.ci_lo,
                    r.ci_hi,
                    r.n,
                    json.dumps(r.metrics),
                    r.signature,
                    r.version,
                    r.input_tokens_mean,
                    r.output_tokens_mean,
                    r.latency_s_mean,
                ),
            )
    return SubmitOutcome("recorded", sub_id, digest, meta.name, results)


def submit(
    path: str | Path,
    *,
    store_path: str | Path | None = None,
    backend: str = "bwrap",
    workers: int | None = None,
    progress: bool = False,
) -> SubmitOutcome:
    """Validate, score every task, then record the submission at ``path`` (see the module docstring)."""
    from promptintern.harness.store import ResultsStore

    sub = load_submission(path)
    results = score_submission(sub, backend=backend, workers=workers, progress=progress)
    with ResultsStore(store_path) as store:
        return record(store, sub, results)
