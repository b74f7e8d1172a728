"""The reproduce sizing (``benchmarks/tables/reproduce.yaml``) and the plan of distinct experiments it gives.

A profile's sizing restricts the tasks, merges overrides into every experiment (smaller subsets), skips rows
(recorded as ``not run`` with the reason), trains some rows once per seed and gives some rows their own
overrides (:class:`Sizing`). :func:`plan` expands table specs into :class:`Job` s: one per distinct experiment
(run directory), however many tables show it, plus the cells the sizing does not run. Variants are profile
overrides (:func:`apply_overrides`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from promptintern.harness.tables import SPEC_DIR, RowSpec, SpecError, TableSpec
from promptintern.profile import Profile, ProfileError, deep_merge, validate_profile

SIZING_FILE = SPEC_DIR / "reproduce.yaml"


# -- profile overrides ----------------------------------------------------------------------------------


def apply_overrides(profile: Profile, overrides: Mapping[str, Any] | None) -> Profile:
    """A copy of ``profile`` with ``overrides`` deep-merged and re-validated; ``name`` is kept."""
    if not overrides:
        return profile
    if not isinstance(overrides, Mapping):
        raise ProfileError(f"profile overrides must be a mapping, got {type(overrides).__name__}")
    if "name" in overrides and overrides["name"] != profile.name:
        raise ProfileError(
            "profile overrides may not change 'name' (runs stay under the profile's directory)"
        )
    merged = deep_merge(profile.model_dump(), overrides) | {"name": profile.name}
    return validate_profile(merged, f"overrides {json.dumps(overrides, default=str)} of profile {profile.name!r}")


# -- sizing ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizing:
    """A profile's reproduce section: tasks that run, overrides for every experiment, rows skipped."""

    profile: str
    tasks: tuple[str, ...] | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    skip: tuple[str, ...] = ()
    reason: str = "skipped by the profile's reproduce sizing"
    source: str = ""
    #: Training seeds of the ``seeded`` rows ("method" or "method/variant"); other rows use the profile's seed.
    seeds: tuple[int, ...] = ()
    seeded: tuple[str, ...] = ()
    #: Results folders (this profile's own, for a run in pieces over several sittings, or another profile's,
    #: e.g. ``results/cpu``) whose exported experiments are kept when one has the same settings key as a job
    #: here: the key covers model, data subsets, method and settings, so it is the same experiment; the copy is
    #: exported into this profile's folder with the rest. Empty (the cpu profile): every experiment runs, as a
    #: reproduction from a fresh clone should, and Table 8 can serve every trained adapter.
    reuse: tuple[str, ...] = ()
    #: Overrides of single rows ("method" or "method/variant" -> overrides), merged over ``overrides`` for that
    #: row's experiments only, e.g. more test instances for the rows of a claim that needs the power. The row's
    #: own variant overrides still come last (they define the variant).
    row_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def overrides_for(self, row: RowSpec) -> dict[str, Any]:
        return dict(self.row_overrides.get(row.id) or {})

    def seeds_for(self, row: RowSpec, default: int) -> tuple[int, ...]:
        return self.seeds if self.seeds and row.id in self.seeded else (default,)

    def skips(self, row: RowSpec) -> bool:
        return row.id in self.skip or (bool(row.variant) and f"{row.method}/*" in self.skip)

    def skips_task(self, task: str) -> bool:
        return self.tasks is not None and task not in self.tasks


def load_sizing(profile: str, path: str | Path | None = None) -> Sizing | None:
    """The sizing of ``profile`` from ``path`` (default ``benchmarks/tables/reproduce.yaml``), or None."""
    path = Path(path) if path is not None else SIZING_FILE
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"{path}: {exc}") from exc
    entry = (data.get("profiles") or {}).get(profile)
    if entry is None:
        return None
    keys = {"tasks", "overrides", "skip", "reason", "seeds", "seeded", "reuse", "row_overrides"}
    unknown = sorted(set(entry) - keys)
    if unknown:
        raise SpecError(f"{path}: profiles.{profile}: unknown key(s) {', '.join(unknown)}")
    tasks = entry.get("tasks")
    return Sizing(
        profile=profile,
        tasks=None if tasks is None else tuple(tasks),
        overrides=dict(entry.get("overrides") or {}),
        skip=tuple(entry.get("skip") or ()),
        reason=" ".join(str(entry.get("reason") or Sizing.reason).split()),
        source=str(path),
        seeds=tuple(int(x) for x in entry.get("seeds") or ()),
        seeded=tuple(entry.get("seeded") or ()),
        reuse=tuple(str(x) for x in entry.get("reuse") or ()),
        row_overrides=_row_overrides(entry.get("row_overrides"), f"{path}: profiles.{profile}.row_overrides"),
    )


def _row_overrides(value: Any, where: str) -> dict[str, dict[str, Any]]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(v, Mapping) for v in value.values()):
        raise SpecError(f"{where}: must map a row (\"method\" or \"method/variant\") to overrides")
    return {str(k): dict(v) for k, v in value.items()}


# -- planning -------------------------------------------------------------------------------------------


@dataclass
class Job:
    """One distinct experiment and the table rows that show it."""

    task: str
    row: RowSpec
    seed: int = 0
    cells: list[tuple[TableSpec, RowSpec]] = field(default_factory=list)
    experiment: Any = None
    error: str | None = None
    #: Whether the profile's reproduce sizing trains this row with several seeds (the name then says which).
    seeded: bool = False
    #: The row's overrides: the sizing's for this row, then the variant's (recorded in the provenance).
    overrides: dict[str, Any] | None = None

    @property
    def profile(self) -> Profile | None:
        return self.experiment.profile if self.experiment is not None else None

    @property
    def name(self) -> str:
        return f"{self.task}/{self.row.id}" + (f" seed {self.seed}" if self.seeded else "")


@dataclass
class Plan:
    jobs: list[Job]
    fixed: list[tuple[TableSpec, RowSpec, str, str]]  # (spec, row, task, reason): recorded as 'not run'


def _check_variants(specs: Iterable[TableSpec]) -> None:
    seen: dict[str, tuple[dict, str]] = {}
    for spec in specs:
        for row in spec.rows:
            if row.id in seen and seen[row.id][0] != row.overrides:
                raise SpecError(
                    f"variant {row.id!r} has different overrides in {seen[row.id][1]} and {spec.path}; "
                    "give one of them another variant name"
                )
            seen.setdefault(row.id, (row.overrides, spec.path))


def plan(specs: list[TableSpec], base: Profile, model: str | None, sizing: Sizing | None) -> Plan:
    """Distinct experiments for every (table, row, task) cell, plus the cells the sizing skips."""
    from promptintern.harness.experiment import Experiment

    _check_variants(specs)
    jobs: dict[Any, Job] = {}
    fixed = []
    for spec in specs:
        for row in spec.rows:
            for task in spec.tasks:
                if sizing and sizing.skips_task(task):
                    why = f"task {task} is not in the {sizing.profile} profile's reproduce subset"
                    fixed.append(
                        (spec, row, task, f"{why} ({', '.join(sizing.tasks or ())}); {sizing.reason}")
                    )
                    continue
                if sizing and sizing.skips(row):
                    fixed.append((spec, row, task, sizing.reason))
                    continue
                seeds = sizing.seeds_for(row, base.seed) if sizing else (base.seed,)
                sized = deep_merge(sizing.overrides_for(row), row.overrides or {}) if sizing else row.overrides
                for seed in seeds:
                    job = Job(task, row, seed, seeded=len(seeds) > 1, overrides=sized or None)
                    try:
                        profile = apply_overrides(base, {**(sized or {}), "seed": seed})
                        exp = Experiment(task, row.method, profile, model)
                        ident: Any = (exp.directory, row.variant)
                        job.experiment = exp
                    except Exception as exc:  # noqa: BLE001 - a bad variant fails its rows, not the run
                        job.error = f"{type(exc).__name__}: {exc}"
                        ident = ("error", task, row.id, seed)
                    jobs.setdefault(ident, job).cells.append((spec, row))
    return Plan(list(jobs.values()), fixed)
