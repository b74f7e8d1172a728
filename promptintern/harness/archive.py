"""Results that travel with the repository: every experiment's records copied under ``results/<profile>/runs/``,
and the store rebuilt from them without training (``promptintern reproduce --from-results results/<profile>``).

:func:`export_runs` copies, per stored row that ran, the run folder's records (scores, per-instance scores,
predictions, settings, plan, backend choice, timings; no adapters) to ``runs/<task>/<row>/seed-<s>/``, the Table
8 server measurements to ``latency/``, and writes ``rows.jsonl``: the store rows with paths relative to the
results folder, merged with the rows of earlier pieces already there. :func:`import_runs` reads ``rows.jsonl``
back into a store with those paths made absolute, so tables, plots and claims render from the copies exactly as
from the original runs (after a run in pieces, the tables of every piece together come from ``--from-results``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterable
from pathlib import Path

from promptintern.harness.store import KEY, ResultsStore, RunRow
from promptintern.io import atomic_write_text

ROWS_FILE = "rows.jsonl"
#: The records of a run folder that are copied (adapters and caches stay behind).
RUN_FILES = (
    "scores.json", "scores.jsonl", "predictions.jsonl", "settings.json", "plan.json", "backend.json",
    "timings.json", "inference-fit.json",
)  # fmt: skip


class ArchiveError(ValueError):
    """A results folder cannot be read back (missing or malformed ``rows.jsonl``)."""


def _slug(row: RunRow) -> str:
    return f"{row.method}__{row.variant}" if row.variant else row.method


def _row_key(data: dict) -> tuple:
    return tuple(str(data.get(k)) for k in KEY)


def export_runs(rows: Iterable[RunRow], out: str | Path) -> list[Path]:
    """Copy the records of ``rows`` under ``out`` and write ``out/rows.jsonl`` (rows already there under other
    keys are kept: a run in pieces adds to the folder); returns the files written."""
    out = Path(out)
    written: list[Path] = []
    lines: dict[tuple, str] = {}
    if (out / ROWS_FILE).is_file():
        for line in (out / ROWS_FILE).read_text(encoding="utf-8").splitlines():
            if line.strip():
                lines[_row_key(json.loads(line))] = line
    copied: dict[str, str] = {}
    for row in rows:
        data = row.to_dict()
        if row.directory and Path(row.directory).is_dir():
            source = Path(row.directory)
            if str(source) not in copied:
                target = out / "runs" / row.task / _slug(row) / f"seed-{row.seed}"
                if target.resolve() != source.resolve():
                    target.mkdir(parents=True, exist_ok=True)
                    for name in RUN_FILES:
                        if (source / name).is_file():
                            shutil.copyfile(source / name, target / name)
                            written.append(target / name)
                copied[str(source)] = str(target.relative_to(out))
            data["directory"] = copied[str(source)]
        else:
            data["directory"] = None
        prov = dict(data.get("provenance") or {})
        latency = prov.get("latency_file")
        if latency and Path(latency).is_file():
            target = out / "latency" / Path(latency).name
            if target.resolve() != Path(latency).resolve():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(latency, target)
                written.append(target)
            prov["latency_file"] = str(target.relative_to(out))
        data["provenance"] = prov
        lines[_row_key(data)] = json.dumps(data, sort_keys=True, ensure_ascii=False, default=str)
    text = "\n".join(lines[k] for k in sorted(lines)) + ("\n" if lines else "")
    written.append(atomic_write_text(out / ROWS_FILE, text))
    return written


def read_rows(folder: str | Path) -> list[RunRow]:
    """The rows of an exported results folder, with its paths made absolute."""
    folder = Path(folder).resolve()
    path = folder / ROWS_FILE
    if not path.is_file():
        raise ArchiveError(f"{path} does not exist: not a results folder written by `promptintern reproduce`")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if data.get("directory"):
                data["directory"] = str(folder / data["directory"])
            prov = data.get("provenance") or {}
            if prov.get("latency_file"):
                prov["latency_file"] = str(folder / prov["latency_file"])
            rows.append(RunRow.from_mapping(data))
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            raise ArchiveError(f"{path}, line {number}: {exc}") from None
    return rows


def import_runs(folder: str | Path, store: ResultsStore, *, missing_only: bool = False,
                tasks: Iterable[str] | None = None) -> list[RunRow]:  # fmt: skip
    """Record the rows of an exported results folder into ``store`` (``missing_only``: only those whose key the
    store does not hold yet; ``tasks``: only those of these tasks); returns the rows recorded."""
    rows = read_rows(folder)
    if tasks is not None:
        wanted = set(tasks)
        rows = [r for r in rows if r.task in wanted]
    if missing_only:
        held = {r.key for r in store.rows()}
        rows = [r for r in rows if r.key not in held]
    for row in rows:
        store.record(dataclasses.replace(row))
    return rows


__all__ = ["ArchiveError", "export_runs", "import_runs", "read_rows"]
