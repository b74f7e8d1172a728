"""One experiment = (task, method, profile, model): stage datasets -> training -> predictions -> scores.

Artifacts live in ``$PROMPTINTERN_HOME/runs/<profile>/<task>/<method>/<key>/`` where ``key`` hashes every
setting that changes the result, so a rerun reuses what is finished: a trained adapter, predictions
(written one line at a time and resumed by id) and scores.

Every method-specific decision (stage schedules, compressor, training, loading, decoding, billing, key
settings) is asked of the method object registered under the experiment's method name
(:mod:`promptintern.methods.registry`): ``promptintern``; the untrained rows ``zero-shot`` / ``zero-shot-full`` /
``prefix-cached``; the direct fine-tuning rows ``ft-full`` / ``ft-compressed`` / ``ft-template`` / ``ft-none``;
the compression baselines of :mod:`promptintern.baselines`; and ``gist``. The runner itself has no method-name
branches. Wall time per phase accumulates in ``timings.json``; ``scores.json`` carries the rate requested and
achieved, input tokens (the model's and cl100k), latency, context-fitting counts and timings next to the metric.
"""

from __future__ import annotations

import dataclasses
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from promptintern import __version__, keys, logs
from promptintern.baselines import BaselineUnavailable
from promptintern.harness.backend_choice import close, restore_choice
from promptintern.io import atomic_write_text, write_json
from promptintern.methods.registry import METHODS, Method, get_method  # noqa: F401 (METHODS re-exported)
from promptintern.methods.schedule import Schedule, example_counts
from promptintern.methods.stages import (
    ContextBudget,
    FitStats,
    StagePlan,
    build_stage_datasets,
    example_map,
    plan_stages,
    stage_prompt,
)
from promptintern.paths import home
from promptintern.profile import Profile, TrainSettings, train_key_fields
from promptintern.prompting.tokens import OPENAI_PREFIX
from promptintern.tasks import Instance, Task, Template, get_task, resolve_task

#: Generation backends (``generation.backend``, ``--backend``).
BACKENDS = ("hf", "llamacpp", "openai", "vllm", "auto")


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
    #: Generation backend overriding the profile's ``generation.backend`` (one of :data:`BACKENDS`).
    backend_override: str | None = None
    #: The backend ``auto`` chose for this run (:mod:`promptintern.harness.backend_choice`), once it has.
    chosen_backend: str | None = None
    #: Serve only the first ``limit`` test instances (within the profile's ``test_limit``).
    limit: int | None = None

    def __post_init__(self) -> None:
        self.task_name = resolve_task(self.task_name)  # a task folder is registered under its task.yaml name
        if self.backend_override not in (None, *BACKENDS):
            raise ValueError(f"unknown backend {self.backend_override!r}; choose from {', '.join(BACKENDS)}")
        self.spec: Method = get_method(self.method)
        self.model = self.model or self.profile.model

    # -- data and plan ----------------------------------------------------------------------------
    @cached_property
    def task(self) -> Task:
        options = self.profile.task(self.task_name).options
        return get_task(self.task_name, template=self.profile.template, **options)

    @cached_property
    def bank(self) -> list[Instance]:
        return self.task.load("train")

    @cached_property
    def train_set(self) -> list[Instance]:
        return self.bank[: self.profile.task(self.task_name).train_limit]

    @cached_property
    def test_set(self) -> list[Instance]:
        profile_limit = None if self.full_test else self.profile.task(self.task_name).test_limit
        limits = [n for n in (profile_limit, self.limit) if n is not None]
        return self.task.load("test")[: min(limits) if limits else None]

    @property
    def shots(self) -> int:
        return self.profile.task(self.task_name).shots or self.task.shots

    @property
    def baseline(self):
        """The compression baseline's definition, or None."""
        return getattr(self.spec, "baseline", None)

    def schedules(self) -> tuple[Schedule, Schedule]:
        """The method's template-rate and example-count schedules (:mod:`promptintern.methods.registry`)."""
        return self.spec.schedules(self)

    def compressor(self):
        """The method's ``TemplateCompressor`` (raises :class:`BaselineUnavailable` if it cannot run)."""
        return self.spec.compressor(self)

    def compressor_options(self) -> dict[str, Any]:
        """A compression baseline's compressor options (``"$model"`` replaced by the run's model), else {}."""
        options = getattr(self.spec, "options", None)
        return options(self) if options else {}

    def unavailable(self) -> str | None:
        """Why this experiment cannot run here (no model is loaded to find out), else None."""
        if self.model.startswith(OPENAI_PREFIX) and "openai" not in self.spec.backends:
            return (f"{self.method} needs the model's weights; {self.model} is fine-tuned and served through its "
                    "API only")  # fmt: skip
        local_server = (
            self.backend == "openai" and self.profile.generation_for(self.task_name).openai.base_url is None
            and not self.model.startswith(OPENAI_PREFIX)
        )
        if self.backend == "vllm":
            from promptintern.serving.vllm_backend import unavailable as vllm_unavailable

            if (why := vllm_unavailable()) is not None:
                return why
        if self.backend == "llamacpp" or local_server:
            from promptintern.serving.llamacpp import LlamaCppUnavailable, gguf_for

            try:
                gguf_for(self.model)
            except LlamaCppUnavailable as exc:
                return str(exc)
        if not self.spec.needs_compressor(self):
            return None
        try:
            self.compressor()
        except BaselineUnavailable as exc:
            return str(exc)
        return None

    @property
    def question_aware(self) -> bool:
        return self.spec.question_aware

    def _plans(self, last_only: bool) -> list[StagePlan]:
        tmpl, egs = self.schedules()
        taus = tmpl.values()[-1:] if last_only else tmpl.values()
        needs = any(0.0 < t < 1.0 for t in taus)
        if needs and self.question_aware:  # template=None: compressed per instance, see instance_templates
            rows = list(enumerate(zip(tmpl.values(), example_counts(egs), strict=True), 1))
            return [StagePlan(i, tau, k, None) for i, (tau, k) in (rows[-1:] if last_only else rows)]
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
        return self.spec.trains

    def instance_templates(self, instances: list[Instance], progress: bool = False):
        """Question-aware baselines: every instance's template compressed with its query as the question
        (cached on disk); None for every other method. Returns ``{id: TemplateCompression}``."""
        tau = self.inference_plan.tau
        if not (self.question_aware and 0.0 < tau < 1.0):
            return None
        compressor, template = self.compressor(), self.task.template()
        return {
            inst.id: compressor.compress_with_stats(template, tau, question=inst.query)
            for inst in logs.track(instances, f"compress {self.method} per query", enabled=progress)
        }

    # -- identity ---------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """Everything that changes this experiment's result, by content (see :mod:`promptintern.keys`)."""
        tmpl, egs = self.schedules()
        p = self.profile
        return self.spec.key_settings(self) | {
            "version": __version__,
            "method_version": keys.method_version(self.method),
            "pipeline_version": keys.method_version("pipeline"),
            "task": self.task_name,
            "task_options": p.task(self.task_name).options,
            "template_variant": p.template,
            "template": keys.template_identity(self.task.template()),
            "task_identity": self.task.identity(),
            "method": self.method,
            "model": self.model,
            "model_identity": keys.model_identity(self.model),
            "seed": p.seed,
            "template_schedule": tmpl.to_dict(),
            "example_schedule": egs.to_dict(),
            "compressor": p.method.model_dump(include={"instruction_compressor", "document_compressor"}),
            "retrieval_fraction": p.method.retrieval_fraction,
            "retrieval_key": p.method.retrieval_key if self.trains else None,
            "train": self._effective_train() if self.trains else None,
            "generation": self._generation_settings(),
            "train_instances": keys.instances_digest(self.train_set) if self.trains else None,
            "test_instances": keys.instances_digest(self.test_set),
            "bank_instances": keys.instances_digest(self.bank),
        }

    def training_settings(self) -> dict[str, Any]:
        """The settings that change the trained adapter: :meth:`settings` without decoding, the test subset
        and the task's scoring (metric, stop strings, generation length, extractor)."""
        out = {k: v for k, v in self.settings().items() if k not in ("generation", "test_instances")}
        spec = out.pop("task_identity")["spec"]
        out["task_spec"] = {k: v for k, v in spec.items() if k not in ("metric", "stop", "max_new_tokens", "extract")}
        return out

    @cached_property
    def train_key(self) -> str:
        return keys.content_key("adapter", self.training_settings(), length=16)

    @property
    def train_directory(self) -> Path:
        """Where the adapter is trained: keyed by :meth:`training_settings` only, so experiments that differ
        in decoding or scoring (backend, stop strings, metric) share one trained adapter."""
        return home() / "adapters" / self.task_name / self.method / f"{_slug(self.model)}-{self.train_key}"

    @property
    def merges_adapter(self) -> bool:
        """Whether generation folds this method's LoRA adapter into the base weights (never for Gist)."""
        return (
            self.trains and self.spec.mergeable and self.profile.generation_for(self.task_name).merge_adapter
        )

    @property
    def reuses_prefix(self) -> bool:
        """Whether llama.cpp generation keeps a shared prompt prefix's key/values across instances (the
        prefix-cached method always does; other methods when ``generation.llamacpp_reuse_prefix`` is on)."""
        return self.spec.prefix_cached or self.profile.generation_for(self.task_name).llamacpp_reuse_prefix

    @property
    def requested_backend(self) -> str:
        """The backend asked for, if the method supports it, else ``hf`` (gist and prefix-cached decode with
        their own HF loops); ``auto`` needs both hf and llamacpp, and a GGUF for the model."""
        if self.model.startswith(OPENAI_PREFIX):  # an API model is trained and served through its API only
            return "openai"
        requested = self.backend_override or self.profile.generation_for(self.task_name).backend
        if requested == "auto":
            from promptintern.harness.backend_choice import auto_candidates

            return "auto" if len(auto_candidates(self)) > 1 else "hf"
        return requested if requested in self.spec.backends else "hf"

    @property
    def backend(self) -> str:
        """The backend that serves this experiment: the requested one, or what ``auto`` chose."""
        return self.chosen_backend or self.requested_backend

    def _generation_settings(self) -> dict[str, Any]:
        gen = self.profile.generation_for(self.task_name).model_dump(
            exclude={"merge_adapter", "backend", "openai", "llamacpp_workers", "llamacpp_reuse_prefix",
                     "vllm_tensor_parallel_size"}  # fmt: skip
        )
        if self.requested_backend in ("llamacpp", "auto") and self.reuses_prefix:
            gen["llamacpp_reuse_prefix"] = True
        if self.requested_backend != "hf":  # keys of hf runs stay as they were
            gen["backend"] = self.requested_backend
        if self.requested_backend == "openai":
            gen["openai"] = self.profile.generation_for(self.task_name).openai.model_dump()
        return gen | {
            "decoding_version": keys.method_version("decoding"),
            "max_new_tokens": self.max_new_tokens,
            "stop": list(self.task.stop),
            "merge_adapter": self.merges_adapter,
        }

    @property
    def max_new_tokens(self) -> int:
        return self.profile.generation_for(self.task_name).max_new_tokens or self.task.max_new_tokens

    @cached_property
    def key(self) -> str:
        return keys.content_key("experiment", self.settings(), length=16)

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
    @cached_property
    def token_counter(self):
        """Counts the rendered prompt the way the model sees it (its tokenizer and chat template)."""
        from promptintern.prompting.tokens import counter_for

        return counter_for(self.model)

    @property
    def context_length(self) -> int:
        """The context every prompt + answer (training) or prompt + generation (inference) must fit."""
        return self.train_config(output_dir=Path(".")).max_length

    def _budget(self, training: bool) -> ContextBudget:
        counter = self.token_counter
        extra = self.spec.extra_prompt_tokens(self)
        if training:  # the answer and the end-of-turn token follow the prompt
            def reserve(inst: Instance) -> int:
                return counter.count_text(self.task.format_answer(inst.reference)) + 1 + extra
        else:
            def reserve(inst: Instance) -> int:
                return self.max_new_tokens + extra
        return ContextBudget(counter.count_prompt, self.context_length, reserve)

    def inference_prompts(self):
        """The last stage's prompt format for every test instance (examples retrieved from train by query),
        fitted to the context; what fitting dropped is in :attr:`inference_fit`."""
        plan = self.inference_plan
        shots = example_map(
            self.test_set,
            self.bank,
            plan.shots,
            fraction=self.profile.method.retrieval_fraction,
            seed=self.profile.seed,
            field="query",
        )
        templates = _templates(self.instance_templates(self.test_set))
        self.inference_fit = FitStats()
        budget = self._budget(training=False)
        return [
            stage_prompt(self.task, inst, plan, shots[inst.id], templates, budget, self.inference_fit)
            for inst in self.test_set
        ]

    def stage_datasets(self, progress: bool = False):
        """Every stage's training examples (Eq. 3 retrieval by ``retrieval_key``), fitted to the context;
        what fitting dropped per stage is in :attr:`train_fit`."""
        return self.stage_examples(self.train_set, progress)

    def stage_examples(self, instances: list[Instance], progress: bool = False):
        """:meth:`stage_datasets` for any train instances (``show-prompts`` prints one instance's)."""
        self.train_fit = [FitStats() for _ in self.plans]
        return build_stage_datasets(
            self.task,
            instances,
            self.plans,
            bank=self.bank,
            fraction=self.profile.method.retrieval_fraction,
            seed=self.profile.seed,
            field=self.profile.method.retrieval_key,
            templates=_templates(self.instance_templates(instances, progress)),
            budget=self._budget(training=True),
            stats=self.train_fit,
        )

    def train_config(self, output_dir: Path | None = None):
        """The trainer's config: profile overrides on top of ``TrainConfig``'s defaults."""
        from promptintern.training.trainer import TrainConfig

        overrides = self.profile.train_for(self.task_name).model_dump(exclude_none=True)
        out = output_dir if output_dir is not None else self.train_directory
        stage_root = home() / "adapters" / self.task_name / "stages" / _slug(self.model)
        return TrainConfig(
            model=self.model, output_dir=out, seed=self.profile.seed, stage_root=stage_root, **overrides
        )

    def _effective_train(self) -> dict[str, Any]:
        """Every profile-settable training field with its effective value (defaults included)."""
        config = self.train_config(output_dir=Path("."))
        return train_key_fields({f.name: getattr(config, f.name) for f in dataclasses.fields(TrainSettings)})

    # -- steps ------------------------------------------------------------------------------------
    @contextmanager
    def _timed(self, phase: str):
        """Add this phase's wall time to ``timings.json`` (accumulates over resumed sessions)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            timings = self._read_json("timings.json", {})
            timings[phase] = round(timings.get(phase, 0.0) + time.perf_counter() - t0, 3)
            self._write_json("timings.json", timings)

    def train(self, progress: bool = True) -> Path | None:
        """Train (or resume) the adapter; ``None`` for methods without training."""
        if not self.trains:
            return None
        config = self.train_config()
        with self._timed("compress"):
            datasets = self.stage_datasets(progress)
        self._write_json("settings.json", self.settings())
        plan_rows = [self._plan_row(p) | {"fit": f.to_dict()} for p, f in zip(self.plans, self.train_fit, strict=True)]
        self._write_json("plan.json", plan_rows)
        with self._timed("train"):
            return self.spec.train(self, datasets, config, progress)

    def _load_for_generation(self, progress: bool):
        return self.spec.load(self, self.train(progress) if self.trains else None)

    def _generations(self, model, tok, prompts, all_prompts):
        """Generations for ``prompts`` (those still to predict); ``all_prompts``: the whole test subset's."""
        return self.spec.generate(self, model, tok, prompts, all_prompts, self.max_new_tokens, self.task.stop)

    def predict(self, progress: bool = True) -> Path:
        """Greedy predictions for the test subset, appended line by line and resumed by id."""
        out = self.directory / "predictions.jsonl"
        done = _read_ids(out)
        with self._timed("compress"):
            prompts = self.inference_prompts()
        self._write_json("inference-fit.json", self.inference_fit.to_dict())
        todo = [(i, p) for i, p in zip(self.test_set, prompts, strict=True) if i.id not in done]
        if not todo:
            return out
        restore_choice(self)
        if self.backend == "auto":
            from promptintern.harness.backend_choice import choose_backend

            model, tok, stream = choose_backend(self, [p for _, p in todo], prompts, progress)
        else:
            model, tok = self._load_for_generation(progress)
            stream = self._generations(model, tok, [p for _, p in todo], prompts)
        out.parent.mkdir(parents=True, exist_ok=True)
        with self._timed("generate"), open(out, "a", encoding="utf-8") as fh:
            for (inst, prompt), g in logs.track(
                zip(todo, stream, strict=True),
                f"generate {self.task_name}/{self.method}",
                total=len(todo),
                enabled=progress,
            ):
                rec = {
                    "task_id": inst.id,
                    "prediction": self.task.extract(g.text),
                    "output": g.text,
                    "input_tokens": g.input_tokens,
                    "output_tokens": g.output_tokens,
                    "latency_s": round(g.latency_s, 4),
                    **self._billed_tokens(prompt, g.text),
                }
                for extra in ("prefix_tokens", "cached_tokens"):  # gist / prefix-cached: what the cache holds
                    if getattr(g, extra, None) is not None:
                        rec[extra] = getattr(g, extra)
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                fh.flush()
        close(model)
        return out

    def _billed_tokens(self, prompt, output: str) -> dict[str, int]:
        """The request as an OpenAI chat model would bill it: cl100k tokens of the messages and the answer."""
        from promptintern.prompting.tokens import cl100k_counter

        counter = cl100k_counter()
        billed_in = self.spec.billed_prompt_tokens(self, prompt, counter)
        return {"input_tokens_cl100k": billed_in, "output_tokens_cl100k": counter.count_text(output)}

    def compression_stats(self) -> dict[str, Any]:
        """Template rate requested (τ served) and achieved (mean over instances when question-aware)."""
        plan = self.inference_plan
        per_instance = self.instance_templates(self.test_set)
        if per_instance is not None:
            rates = [c.rate_achieved for c in per_instance.values()]
            achieved = sum(rates) / len(rates)
        else:
            achieved = plan.template_rate_achieved
        return {"rate_requested": plan.tau, "rate_achieved": achieved, "shots": plan.shots}

    def evaluate(self, progress: bool = True, **score_options: Any) -> dict[str, Any]:
        """Score the predictions (cached in ``scores.json``) with a 95 % bootstrap interval."""
        from promptintern.evaluation.predictions import read_predictions, write_jsonl
        from promptintern.evaluation.scoring import confidence_interval
        from promptintern.harness.provenance import environment, utc_now

        cached = self.directory / "scores.json"
        if cached.is_file():
            return json.loads(cached.read_text())
        path = self.predict(progress)
        restore_choice(self)
        records = read_predictions(path, self.test_set)
        t0 = time.perf_counter()
        score = self.task.score(
            self.test_set, {k: r.prediction for k, r in records.items()}, progress=progress, **score_options
        )
        lo, hi = confidence_interval(self.task, score)
        result = score.to_dict() | {
            "value": score.value,
            "ci95": [lo, hi],
            "input_tokens_mean": _mean(records, "input_tokens"),
            "output_tokens_mean": _mean(records, "output_tokens"),
            "input_tokens_cl100k_mean": _mean(records, "input_tokens_cl100k"),
            "output_tokens_cl100k_mean": _mean(records, "output_tokens_cl100k"),
            "latency_s_mean": _mean(records, "latency_s"),
            "fit": {"train": self._read_json("plan.json", []), "inference": self._read_json("inference-fit.json", {})},
            "eval_wall_s": time.perf_counter() - t0,
            "template": self.compression_stats(),
            "timings_s": self._read_json("timings.json", {}),
            "settings_key": self.key,
            "backend": self.backend,
            "method": self.method,
            "model": self.model,
            "profile": self.profile.name,
            # the code, packages and machine that computed these numbers (a cached rerun keeps them)
            "provenance": {**environment(), "computed_at": utc_now()},
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

    def _read_json(self, name: str, default: Any) -> Any:
        path = self.directory / name
        return json.loads(path.read_text()) if path.is_file() else default

    def _write_json(self, name: str, obj: Any) -> None:
        write_json(self.directory / name, obj)


def _mean(records, field: str) -> float | None:
    """Mean of a per-prediction number over the records that have it (None if none has)."""
    values = [r.extra[field] for r in records.values() if r.extra.get(field) is not None]
    return sum(values) / len(values) if values else None


def _templates(compressions) -> dict[str, Template] | None:
    return None if compressions is None else {k: c.template for k, c in compressions.items()}


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
