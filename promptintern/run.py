"""One experiment = (task, method, profile, model): stage datasets -> training -> predictions -> scores.

Artifacts live in ``$PROMPTINTERN_HOME/runs/<profile>/<task>/<method>/<key>/`` where ``key`` hashes every
setting that changes the result, so a rerun reuses what is finished: a trained adapter, predictions
(written one line at a time and resumed by id) and scores.

Methods: ``promptintern`` (progressive schedules of the profile), ``zero-shot`` / ``zero-shot-full`` (no
training; query only / full template + k shots), and the direct fine-tuning configurations ``ft-full`` (template + k shots), ``ft-compressed``
(template×0.6 + k/2 shots), ``ft-template`` (template only) and ``ft-none`` (no template): constant
schedules over the same number of stages, trained and evaluated with the same prompt.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from promptintern import __version__
from promptintern.io import atomic_write_text, write_json
from promptintern.paths import home
from promptintern.profile import Profile, TrainSpec
from promptintern.schedule import Schedule
from promptintern.stages import StagePlan, build_stage_datasets, example_map, plan_stages, stage_prompt
from promptintern.tasks import Instance, Task, get_task

DIRECT_FT = {  # name: (template rate τ, fraction of the task's k)
    "ft-full": (1.0, 1.0),
    "ft-compressed": (0.6, 0.5),
    "ft-template": (1.0, 0.0),
    "ft-none": (0.0, 0.0),
}
ZERO_SHOT = {"zero-shot": (0.0, 0.0), "zero-shot-full": (1.0, 1.0)}  # untrained: query only / full prompt
METHODS = ("promptintern", *ZERO_SHOT, *DIRECT_FT)


def _slug(model: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in Path(model).name or model)[-40:]


@dataclass
class Experiment:
    task_name: str
    method: str
    profile: Profile
    model: str | None = None
    #: Ignore the profile's ``test_limit`` (e.g. to count tokens over the whole test split).
    full_test: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        self.model = self.model or self.profile.model

    # -- data and plan ----------------------------------------------------------------------------
    @cached_property
    def task(self) -> Task:
        return get_task(self.task_name)

    @cached_property
    def bank(self) -> list[Instance]:
        return self.task.load("train")

    @cached_property
    def train_set(self) -> list[Instance]:
        return self.bank[: self.profile.task(self.task_name).train_limit]

    @cached_property
    def test_set(self) -> list[Instance]:
        limit = None if self.full_test else self.profile.task(self.task_name).test_limit
        return self.task.load("test")[:limit]

    @property
    def shots(self) -> int:
        return self.profile.task(self.task_name).shots or self.task.paper_shots[0]

    def schedules(self) -> tuple[Schedule, Schedule]:
        m = self.profile.method
        if self.method == "promptintern":
            ts = m.template_schedule
            tmpl = Schedule(ts.pattern, ts.start, ts.end, m.stages, ts.rate)
            return tmpl, Schedule(m.example_pattern, float(self.shots), 0.0, m.stages, ts.rate)
        tau, frac = {**ZERO_SHOT, **DIRECT_FT}[self.method]
        stages = m.stages if self.trains else 1
        k = float(int(self.shots * frac))
        return Schedule("constant", tau, tau, stages), Schedule("constant", k, k, stages)

    def compressor(self):
        from promptintern.compress import TemplateCompressor, get_compressor

        m = self.profile.method
        inst = get_compressor(m.instruction_compressor.name, **m.instruction_compressor.options)
        doc = m.document_compressor
        return TemplateCompressor(inst, get_compressor(doc.name, **doc.options) if doc else None)

    def _plans(self, last_only: bool) -> list[StagePlan]:
        tmpl, egs = self.schedules()
        taus = tmpl.values()[-1:] if last_only else tmpl.values()
        needs = any(0.0 < t < 1.0 for t in taus)
        return plan_stages(self.task, tmpl, egs, self.compressor() if needs else None, last_only=last_only)

    @cached_property
    def plans(self) -> list[StagePlan]:
        """All stages' plans (compresses the template where 0<τ<1; cached on disk)."""
        return self._plans(last_only=False)

    @cached_property
    def inference_plan(self) -> StagePlan:
        """The last stage's plan: the prompt format served at inference."""
        return self.plans[-1] if "plans" in self.__dict__ else self._plans(last_only=True)[0]

    @property
    def trains(self) -> bool:
        return self.method not in ZERO_SHOT

    # -- identity ---------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        tmpl, egs = self.schedules()
        p = self.profile
        return {
            "version": __version__,
            "task": self.task_name,
            "method": self.method,
            "model": self.model,
            "seed": p.seed,
            "template_schedule": tmpl.to_dict(),
            "example_schedule": egs.to_dict(),
            "compressor": p.method.model_dump(include={"instruction_compressor", "document_compressor"}),
            "retrieval_fraction": p.method.retrieval_fraction,
            "train": self._effective_train() if self.trains else None,
            "generation": p.generation_for(self.task_name).model_dump(),
            "train_ids": [i.id for i in self.train_set] if self.trains else None,
            "test_ids": [i.id for i in self.test_set],
        }

    @cached_property
    def key(self) -> str:
        blob = json.dumps(self.settings(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def directory(self) -> Path:
        return (
            home()
            / "runs"
            / self.profile.name
            / self.task_name
            / self.method
            / f"{_slug(self.model)}-{self.key}"
        )

    # -- prompts ----------------------------------------------------------------------------------
    def inference_prompts(self):
        """The last stage's prompt format for every test instance (examples retrieved from train)."""
        plan = self.inference_plan
        shots = example_map(
            self.test_set,
            self.bank,
            plan.shots,
            fraction=self.profile.method.retrieval_fraction,
            seed=self.profile.seed,
        )
        return [stage_prompt(self.task, inst, plan, shots[inst.id]) for inst in self.test_set]

    def stage_datasets(self):
        return build_stage_datasets(
            self.task,
            self.train_set,
            self.plans,
            bank=self.bank,
            fraction=self.profile.method.retrieval_fraction,
            seed=self.profile.seed,
        )

    def train_config(self, output_dir: Path | None = None):
        """The trainer's config: profile overrides on top of ``TrainConfig``'s defaults."""
        from promptintern.train import TrainConfig

        overrides = self.profile.train_for(self.task_name).model_dump(exclude_none=True)
        out = output_dir if output_dir is not None else self.directory / "train"
        return TrainConfig(model=self.model, output_dir=out, seed=self.profile.seed, **overrides)

    def _effective_train(self) -> dict[str, Any]:
        """Every profile-settable training field with its effective value (defaults included)."""
        config = self.train_config(output_dir=Path("."))
        return {name: getattr(config, name) for name in TrainSpec.model_fields}

    # -- steps ------------------------------------------------------------------------------------
    def train(self, progress: bool = True) -> Path | None:
        """Train (or resume) the adapter; ``None`` for methods without training."""
        if not self.trains:
            return None
        from promptintern.train import train_progressive

        config = self.train_config()
        self._write_json("settings.json", self.settings())
        self._write_json("plan.json", [self._plan_row(p) for p in self.plans])
        return train_progressive(self.stage_datasets(), config, progress=progress)

    def predict(self, progress: bool = True) -> Path:
        """Greedy predictions for the test subset, appended line by line and resumed by id."""
        from tqdm import tqdm

        from promptintern.generate import generate
        from promptintern.models import load_model, load_tokenizer

        out = self.directory / "predictions.jsonl"
        done = _read_ids(out)
        todo = [
            (i, p) for i, p in zip(self.test_set, self.inference_prompts(), strict=True) if i.id not in done
        ]
        if not todo:
            return out
        adapter = self.train(progress) if self.trains else None
        if adapter is not None:
            from promptintern.train import load_for_inference

            model, tok = load_for_inference(self.model, adapter)
        else:
            model, tok = load_model(self.model), load_tokenizer(self.model)
        gen = self.profile.generation_for(self.task_name)
        rendered = [p.render(tok) for _, p in todo]
        stream = generate(
            model,
            tok,
            rendered,
            max_new_tokens=gen.max_new_tokens or self.task.max_new_tokens,
            batch_size=gen.batch_size,
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a", encoding="utf-8") as fh:
            for (inst, _), g in tqdm(
                zip(todo, stream, strict=True),
                total=len(todo),
                disable=not progress,
                desc=f"generate {self.task_name}/{self.method}",
            ):
                rec = {
                    "task_id": inst.id,
                    "prediction": self.task.extract(g.text),
                    "output": g.text,
                    "input_tokens": g.input_tokens,
                    "output_tokens": g.output_tokens,
                    "latency_s": round(g.latency_s, 4),
                }
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                fh.flush()
        return out

    def evaluate(self, progress: bool = True, **score_options: Any) -> dict[str, Any]:
        """Score the predictions (cached in ``scores.json``) with a 95 % bootstrap interval."""
        from promptintern.evaluate import confidence_interval
        from promptintern.predictions import read_predictions, write_jsonl

        cached = self.directory / "scores.json"
        if cached.is_file():
            return json.loads(cached.read_text())
        path = self.predict(progress)
        records = read_predictions(path, self.test_set)
        t0 = time.perf_counter()
        score = self.task.score(
            self.test_set, {k: r.prediction for k, r in records.items()}, progress=progress, **score_options
        )
        lo, hi = confidence_interval(score)
        n = len(records)
        result = score.to_dict() | {
            "value": score.value,
            "ci95": [lo, hi],
            "input_tokens_mean": sum(r.extra["input_tokens"] for r in records.values()) / n,
            "latency_s_mean": sum(r.extra["latency_s"] for r in records.values()) / n,
            "eval_wall_s": time.perf_counter() - t0,
            "settings_key": self.key,
            "method": self.method,
            "model": self.model,
            "profile": self.profile.name,
        }
        write_jsonl(self.directory / "scores.jsonl", score.per_instance)
        self._write_json("scores.json", result)
        return result

    # -- helpers ----------------------------------------------------------------------------------
    @staticmethod
    def _plan_row(plan: StagePlan) -> dict[str, Any]:
        return {
            "stage": plan.index,
            "tau": plan.tau,
            "shots": plan.shots,
            "template_chars": len(plan.template.text) if plan.template else 0,
            "template_rate_achieved": plan.template_rate_achieved,
        }

    def _write_json(self, name: str, obj: Any) -> None:
        write_json(self.directory / name, obj)


def _read_ids(path: Path) -> set[str]:
    """Ids already predicted; a torn last line (killed run) is dropped and rewritten."""
    if not path.is_file():
        return set()
    lines = path.read_text(encoding="utf-8").splitlines()
    good, ids = [], set()
    for line in lines:
        try:
            ids.add(str(json.loads(line)["task_id"]))
            good.append(line)
        except (ValueError, KeyError):
            break
    if len(good) < len(lines):  # rewrite only when a torn tail has to go
        atomic_write_text(path, "".join(g + "\n" for g in good))
    return ids
