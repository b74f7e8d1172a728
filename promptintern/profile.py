"""Run profiles (``smoke``, ``cpu``, ``paper``): model, schedules, compressor, LoRA/Trainer and subset sizes.

Profiles are YAML files in ``promptintern/profiles/`` (or any path). Per-task sections override the
shared ``train``/``generation`` settings and cap the number of train/test instances. Validation errors
name the file and the field path.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_type_hints

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

PROFILE_DIR = Path(__file__).with_name("profiles")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _schedule_pattern(value: str) -> str:
    from promptintern.methods.schedule import PATTERNS

    if value not in PATTERNS:
        raise ValueError(f"unknown schedule pattern {value!r}; choose from {', '.join(PATTERNS)}")
    return value


class ScheduleSpec(_Strict):
    pattern: str = "linear"
    start: float = 1.0
    end: float = 0.0
    rate: float = Field(3.0, gt=0.0)

    _check_pattern = field_validator("pattern")(_schedule_pattern)

    @model_validator(mode="after")
    def _constant_is_flat(self) -> ScheduleSpec:
        if self.pattern == "constant" and self.end != self.start:
            raise ValueError(f"a constant schedule needs end == start (start {self.start:g}, end {self.end:g})")
        return self


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

    _check_example_pattern = field_validator("example_pattern")(_schedule_pattern)


class GistSpec(_Strict):
    """Gist tokens (Mu et al.): ``num_gist`` tokens after template + examples; ``shots`` None = the task's k."""

    num_gist: int = Field(1, ge=1)
    shots: int | None = Field(None, ge=0)


class DistillSpec(_Strict):
    """Context distillation (Snell et al. 2022) from the ``ft-full`` teacher: the teacher's ``top_k`` most likely
    tokens are kept at every answer position, both distributions are softened by ``temperature``, and the
    student's loss is the KL to the teacher plus ``ce_weight`` x the cross-entropy of the gold answer."""

    top_k: int = Field(16, ge=1)
    temperature: float = Field(1.0, gt=0.0)
    ce_weight: float = Field(0.5, ge=0.0)


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
    distill: DistillSpec = DistillSpec()


@dataclass
class TrainSettings:
    """LoRA and Trainer settings a profile can set, with their defaults (the trainer's
    :class:`~promptintern.training.trainer.TrainConfig` extends it with the run's model, folder and machine)."""

    lora_r: int = 32
    lora_alpha: int = 64
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    learning_rate: float = 2e-4
    epochs_per_stage: float = 1.0
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_length: int = 4096
    save_steps: int = 200
    lr_scheduler_type: str = "linear"
    logging_steps: int = 10
    #: ``continuous``: one AdamW and one LR schedule across all stages (Eq. 4 is one gradient-descent run whose
    #: prompt changes with the iteration); ``restart``: a fresh optimizer and schedule per stage.
    optimizer: Literal["continuous", "restart"] = "continuous"
    #: Compute the LM head and the loss only at the positions that predict answer tokens (same loss).
    answer_only_head: bool = True
    #: Compute a batch's shared prompt prefix (the template) once when ``batch_size`` > 1 (same loss and
    #: gradients): ``kv`` runs it once and the instances on its key/value cache, ``mask`` packs the batch into one
    #: sequence with an exact 4-D attention mask, ``off`` pads the batch. Needs ``answer_only_head``. Off by
    #: default: on 2 CPU cores neither layout beat the unpacked answer-only step (the masked attention leaves
    #: SDPA's causal kernel; benchmarks/test_bench_train_steps.py); not measured on a GPU.
    shared_prefix: Literal["kv", "mask", "off"] = "off"
    #: Base-model weights while training: None = bfloat16 on CUDA, float32 on a CPU; ``bfloat16`` /
    #: ``float32`` / ``float16`` force it (LoRA weights stay float32).
    dtype: Literal["bfloat16", "float32", "float16"] | None = None
    #: Recompute each decoder layer's activations in the backward pass instead of keeping them (transformers'
    #: ``gradient_checkpointing_enable``): same gradients, about a third more compute, far less memory
    #: (:mod:`promptintern.training.memory`). Off = every existing run's behaviour.
    gradient_checkpointing: bool = False
    #: ``4bit``: load the frozen base model in 4-bit NF4 with double quantization (QLoRA, bitsandbytes; LoRA
    #: weights stay float32). None = the ``dtype`` above.
    quantization: Literal["4bit"] | None = None


#: Training fields left out of run keys: ``gradient_checkpointing`` changes memory and time, not the gradients.
NOT_IN_KEY = ("gradient_checkpointing",)
#: Fields added after runs were archived, left out of run keys while at their default so those keys still hold.
KEY_ONLY_WHEN_SET = {"quantization": None}


def train_key_fields(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` (training fields by name) as they enter a run key (:data:`NOT_IN_KEY`,
    :data:`KEY_ONLY_WHEN_SET`)."""
    return {
        k: v for k, v in settings.items()
        if k not in NOT_IN_KEY and not (k in KEY_ONLY_WHEN_SET and v == KEY_ONLY_WHEN_SET[k])
    }  # fmt: skip


def overrides_of(settings: type, name: str) -> type[BaseModel]:
    """A strict pydantic model with every field of the dataclass ``settings`` optional (``None`` = keep the
    default): a profile section that overrides it, derived rather than copied by hand."""
    hints = get_type_hints(settings)
    fields = {f.name: (hints[f.name] | None, None) for f in dataclasses.fields(settings)}
    return create_model(name, __base__=_Strict, __doc__=f"Overrides of :class:`{settings.__name__}`.", **fields)


TrainSpec = overrides_of(TrainSettings, "TrainSpec")


class OpenAISpec(_Strict):
    """The ``openai`` backend's endpoint. ``base_url`` None: a llama-cpp-python server started on 127.0.0.1 for
    each experiment, serving the model's GGUF and the trained adapter as a GGUF LoRA. Otherwise any
    OpenAI-compatible endpoint (vLLM, a hosted API) serving ``model`` (default: the experiment's model; name
    the served adapter here for a trained method). ``mode``: ``completions`` sends the rendered prompt,
    ``chat`` the messages. The key is read from the environment variable ``api_key_env``."""

    base_url: str | None = None
    model: str | None = None
    mode: Literal["completions", "chat"] = "completions"
    api_key_env: str = "OPENAI_API_KEY"
    #: The kind of server at ``base_url``: ``vllm`` and ``llamacpp`` also get their repetition penalty set to 1
    #: (off), which they would otherwise take from the model or their own default (:mod:`...openai_backend`).
    server: Literal["openai", "vllm", "llamacpp"] = "openai"
    #: Seconds between polls of a fine-tuning job (``openai:<model>`` models trained through the API).
    finetune_poll_s: float = Field(30.0, ge=0.0)


Backend = Literal["hf", "llamacpp", "openai", "vllm", "auto"]


class GenerationSpec(_Strict):
    batch_size: int = 1
    max_new_tokens: int | None = None
    #: Fold a trained LoRA adapter into the base weights before decoding (``merge_and_unload``), as a
    #: deployment would, so a fine-tuned model decodes as fast as its base model; False serves the unmerged
    #: peft model (extra LoRA matmuls on every token). Methods without a LoRA adapter ignore it.
    merge_adapter: bool = True
    #: ``hf`` (transformers, batched; the reference and the GPU path), ``llamacpp`` (llama-cpp-python over the
    #: model's GGUF with the adapter as a GGUF LoRA; one sequence at a time, faster on a CPU), ``openai`` (an
    #: OpenAI-compatible endpoint, see ``openai``) or ``auto`` (hf or llamacpp, whichever generated the first
    #: batch of test instances faster; :mod:`promptintern.harness.backend_choice`). Methods with their own
    #: decoding loop (gist, prefix-cached) are always served by hf; scores.json records the backend used.
    backend: Backend = "hf"
    openai: OpenAISpec = OpenAISpec()
    #: llama.cpp contexts generating in parallel, one thread each (None: one per core). Every prompt is still
    #: generated alone on one context, so the outputs do not depend on it (not part of a run's key); two
    #: one-thread contexts decode 1.85x as many tokens per second as one two-thread context on 2 cores.
    llamacpp_workers: int | None = Field(None, ge=1)
    #: llama.cpp computes the prefix all test prompts share (the template) once per context and every prompt from
    #: there, instead of every prompt whole. llama.cpp's logits depend on how a prompt is split into batches, so
    #: an answer can rarely differ from whole-prompt evaluation (part of a run's key when on), but it does not
    #: depend on the context or on the prompt before it. ``latency_s`` and ``cached_tokens`` in predictions.jsonl
    #: reflect the reuse, while Table 8 is measured separately through a server that recomputes every prompt
    #: (the prefix-cached row excepted).
    llamacpp_reuse_prefix: bool = False
    #: GPUs of one vLLM engine (``backend: vllm``; tensor parallel). Not part of a run's key.
    vllm_tensor_parallel_size: int = Field(1, ge=1)


class GenerationOverrides(_Strict):
    """A task's overrides of :class:`GenerationSpec`; ``None`` keeps the profile's value."""

    batch_size: int | None = None
    max_new_tokens: int | None = None
    merge_adapter: bool | None = None
    backend: Backend | None = None


class TaskSpec(_Strict):
    """One task's section: subset sizes, k, constructor options and typed train / generation overrides."""

    train_limit: int | None = None
    test_limit: int | None = None
    shots: int | None = None
    #: Keyword arguments of the task's constructor (e.g. ``{table_rows: 5}`` for NL2F).
    options: dict[str, Any] = Field(default_factory=dict)
    train: TrainSpec = TrainSpec()
    generation: GenerationOverrides = GenerationOverrides()


class ModelSpec(_Strict):
    """One model a profile's tables cover (the paper's five): ``id`` is what an experiment runs (a HF id or
    path for ``kind: hf``; the OpenAI fine-tuning base for ``kind: openai``), ``name`` the paper's name,
    ``params_b`` the parameter count in billions (``active_params_b``: per token, for a mixture of experts;
    None where unpublished, as for OpenAI's models) and ``train`` this model's overrides of the profile's
    training settings (e.g. 4-bit for Mixtral)."""

    id: str
    name: str = ""
    kind: Literal["hf", "openai"] = "hf"
    params_b: float | None = Field(None, gt=0.0)
    active_params_b: float | None = Field(None, gt=0.0)
    train: TrainSpec = TrainSpec()


class Profile(_Strict):
    name: str
    description: str = ""
    model: str = "embedded"
    #: The models the tables are planned for (``promptintern plan``); empty = ``model`` only. ``model`` stays
    #: the one a ``reproduce`` run trains unless ``--model`` names another.
    models: tuple[ModelSpec, ...] = ()
    seed: int = 0
    #: Prompt template variant of every task: ``paper`` (sized like the paper's prompts) or ``extended``
    #: (the long API-document templates, to measure the effect of template length).
    template: Literal["paper", "extended"] = "paper"
    method: MethodSpec = MethodSpec()
    baselines: BaselineSpec = BaselineSpec()
    train: TrainSpec = TrainSpec()
    generation: GenerationSpec = GenerationSpec()
    #: Test instances per task whose latency Table 8 measures through the server (the first of each row's test
    #: subset; :mod:`promptintern.harness.latency_table`).
    latency_instances: int = Field(20, ge=1)
    #: Task folders to register before ``tasks`` is checked (paths relative to the profile file).
    include_path: tuple[str, ...] = ()
    #: The section of every task without its own; a task's section overrides it key by key.
    task_defaults: TaskSpec = TaskSpec()
    tasks: dict[str, TaskSpec] = Field(default_factory=dict)

    def task(self, name: str) -> TaskSpec:
        own = self.tasks.get(name)
        if own is None:
            return self.task_defaults
        return TaskSpec.model_validate(
            deep_merge(self.task_defaults.model_dump(exclude_defaults=True), own.model_dump(exclude_defaults=True))
        )

    def train_for(self, task: str) -> TrainSpec:
        overrides = self.task(task).train.model_dump(exclude_none=True)
        return TrainSpec.model_validate(self.train.model_dump(exclude_none=True) | overrides)

    def generation_for(self, task: str) -> GenerationSpec:
        overrides = self.task(task).generation.model_dump(exclude_none=True)
        return GenerationSpec.model_validate(self.generation.model_dump() | overrides)


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` merged in: mappings merge recursively, anything else is replaced (copies)."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class ProfileError(ValueError):
    """A profile file is missing or invalid."""


def available() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def _profile_path(name_or_path: str, relative_to: Path | None = None) -> Path:
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILE_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ProfileError(
                f"unknown profile {name_or_path!r}; choose from {', '.join(available())} or give a path"
            )
    elif relative_to is not None and not path.is_absolute():
        path = relative_to / path
    return path


def _read_profile(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A profile file's mapping with its ``extends`` chain merged under it (paths made absolute)."""
    if path.resolve() in chain:
        raise ProfileError(f"{path}: extends itself (through {' -> '.join(map(str, chain))})")
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        raise ProfileError(f"{path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: expected a mapping of profile keys")
    if isinstance(data.get("include_path"), list):  # relative to the profile file
        data["include_path"] = [str((path.parent / str(p)).resolve()) for p in data["include_path"]]
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ProfileError(f"{path}: extends: expected a profile name or path, got {base!r}")
    parent = _read_profile(_profile_path(base, path.parent), (*chain, path.resolve()))
    parent.pop("description", None)
    if "include_path" in data and "include_path" in parent:
        data["include_path"] = parent["include_path"] + data["include_path"]
    return deep_merge(parent, data)


def load_profile(name_or_path: str) -> Profile:
    """A built-in profile by name, or a YAML file by path. A profile may start from another one with
    ``extends: <name or path>`` (its keys are merged over the other's, nested sections key by key)."""
    path = _profile_path(name_or_path)
    return validate_profile(_read_profile(path), str(path))


def validate_profile(data: Any, where: str) -> Profile:
    """``data`` as a :class:`Profile`; every problem is reported in one :class:`ProfileError` that starts
    with ``where`` (a file, or the overrides applied) and names each field path, unknown task keys included.
    The folders of ``include_path`` are registered first, so their tasks may have sections."""
    from promptintern.tasks import include_path, task_names

    problems = []
    folders = data.get("include_path") if isinstance(data, dict) else None
    for folder in folders if isinstance(folders, list) else ():
        try:
            include_path(folder)
        except ValueError as exc:
            problems.append(f"include_path: {exc}")
    tasks = data.get("tasks") if isinstance(data, dict) else None
    known = task_names()
    problems += [
        f"tasks.{name}: unknown task (choose from {', '.join(known)}, or register its folder with include_path)"
        for name in (tasks if isinstance(tasks, dict) else {})
        if name not in known
    ]
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, e['loc']))}: {_plain(e['msg'])}" for e in exc.errors()] + problems
    if problems:
        raise ProfileError(f"{where}: {'; '.join(problems)}")
    return profile


def _plain(msg: str) -> str:
    """pydantic's message of a validator's ``ValueError`` without its ``Value error, `` prefix."""
    return msg.removeprefix("Value error, ")
