"""Run profiles (``smoke``, ``cpu``, ``paper``): model, schedules, compressor, LoRA/Trainer and subset sizes.

Profiles are YAML files in ``promptintern/profiles/`` (or any path). Per-task sections override the
shared ``train``/``generation`` settings and cap the number of train/test instances. Validation errors
name the file and the field path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

PROFILE_DIR = Path(__file__).with_name("profiles")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScheduleSpec(_Strict):
    pattern: str = "linear"
    start: float = 1.0
    end: float = 0.0
    rate: float = 3.0


class CompressorSpec(_Strict):
    name: str = "llmlingua"
    options: dict[str, Any] = Field(default_factory=dict)


class MethodSpec(_Strict):
    """PromptIntern's schedule: τ for the template, k for the examples (k starts at the task's paper value)."""

    stages: int = 3
    template_schedule: ScheduleSpec = ScheduleSpec()
    example_pattern: str = "linear"
    #: Overrides ``example_pattern``: start/end are FRACTIONS of the task's k (e.g. constant 0 = no examples).
    example_schedule: ScheduleSpec | None = None
    instruction_compressor: CompressorSpec = CompressorSpec()
    document_compressor: CompressorSpec | None = None
    retrieval_fraction: float = 1.0
    #: What Eq. 3 scores when TRAINING instances retrieve their examples: ``answer`` = BLEU between gold
    #: outputs s(y_i, y_j) (the paper), ``query`` = BLEU between queries. Test-time prompts have no gold
    #: output and always retrieve by query.
    retrieval_key: Literal["answer", "query"] = "answer"


class GistSpec(_Strict):
    """Gist tokens (Mu et al.): ``num_gist`` tokens after template + examples; ``shots`` None = the task's k."""

    num_gist: int = Field(1, ge=1)
    shots: int | None = Field(None, ge=0)


class BaselineSpec(_Strict):
    """Settings of the paper's baselines.

    Compression baselines keep ``rate`` of the template (τ_tmp, 0.3 in the paper) and ``shots`` examples.
    ``compressors`` gives constructor options per baseline; an option value ``"$model"`` is replaced by the
    experiment's model (so a run with ``--model PATH`` compresses with that model too).
    """

    rate: float = Field(0.3, gt=0.0, lt=1.0)
    shots: int = Field(0, ge=0)
    compressors: dict[str, dict[str, Any]] = Field(default_factory=dict)
    gist: GistSpec = GistSpec()


class TrainSpec(_Strict):
    """Overrides of :class:`promptintern.train.TrainConfig`; ``None`` keeps that class's default."""

    lora_r: int | None = None
    lora_alpha: int | None = None
    lora_dropout: float | None = None
    target_modules: tuple[str, ...] | None = None
    learning_rate: float | None = None
    epochs_per_stage: float | None = None
    batch_size: int | None = None
    gradient_accumulation_steps: int | None = None
    max_length: int | None = None
    save_steps: int | None = None
    lr_scheduler_type: str | None = None
    logging_steps: int | None = None


class GenerationSpec(_Strict):
    batch_size: int = 1
    max_new_tokens: int | None = None
    #: Fold a trained LoRA adapter into the base weights before decoding (``merge_and_unload``), as a
    #: deployment would, so a fine-tuned model decodes as fast as its base model; False serves the unmerged
    #: peft model (extra LoRA matmuls on every token). Methods without a LoRA adapter ignore it.
    merge_adapter: bool = True


class GenerationOverrides(_Strict):
    """A task's overrides of :class:`GenerationSpec`; ``None`` keeps the profile's value."""

    batch_size: int | None = None
    max_new_tokens: int | None = None
    merge_adapter: bool | None = None


class TaskSpec(_Strict):
    """One task's section: subset sizes, k, constructor options and typed train / generation overrides."""

    train_limit: int | None = None
    test_limit: int | None = None
    shots: int | None = None
    #: Keyword arguments of the task's constructor (e.g. ``{table_rows: 5}`` for NL2F).
    options: dict[str, Any] = Field(default_factory=dict)
    train: TrainSpec = TrainSpec()
    generation: GenerationOverrides = GenerationOverrides()


class Profile(_Strict):
    name: str
    description: str = ""
    model: str = "embedded"
    seed: int = 0
    #: Prompt template variant of every task: ``paper`` (sized like the paper's prompts) or ``extended``
    #: (the long API-document templates, to measure the effect of template length).
    template: Literal["paper", "extended"] = "paper"
    method: MethodSpec = MethodSpec()
    baselines: BaselineSpec = BaselineSpec()
    train: TrainSpec = TrainSpec()
    generation: GenerationSpec = GenerationSpec()
    tasks: dict[str, TaskSpec] = Field(default_factory=dict)

    def task(self, name: str) -> TaskSpec:
        return self.tasks.get(name, TaskSpec())

    def train_for(self, task: str) -> TrainSpec:
        overrides = self.task(task).train.model_dump(exclude_none=True)
        return TrainSpec.model_validate(self.train.model_dump(exclude_none=True) | overrides)

    def generation_for(self, task: str) -> GenerationSpec:
        overrides = self.task(task).generation.model_dump(exclude_none=True)
        return GenerationSpec.model_validate(self.generation.model_dump() | overrides)


class ProfileError(ValueError):
    """A profile file is missing or invalid."""


def available() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def load_profile(name_or_path: str) -> Profile:
    """A built-in profile by name, or a YAML file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILE_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ProfileError(
                f"unknown profile {name_or_path!r}; choose from {', '.join(available())} or give a path"
            )
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        raise ProfileError(f"{path}: {exc}") from exc
    return validate_profile(data, str(path))


def validate_profile(data: Any, where: str) -> Profile:
    """``data`` as a :class:`Profile`; every problem is reported in one :class:`ProfileError` that starts
    with ``where`` (a file, or the overrides applied) and names each field path, unknown task keys included."""
    from promptintern.tasks import TASK_NAMES

    tasks = data.get("tasks") if isinstance(data, dict) else None
    choices = ", ".join(TASK_NAMES)
    problems = [
        f"tasks.{name}: unknown task (choose from {choices})"
        for name in (tasks if isinstance(tasks, dict) else {})
        if name not in TASK_NAMES
    ]
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()] + problems
    if problems:
        raise ProfileError(f"{where}: {'; '.join(problems)}")
    return profile
