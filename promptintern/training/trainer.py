"""Progressive LoRA fine-tuning (PromptIntern): one adapter, trained stage after stage on shorter prompts.

Layout of ``output_dir``::

    config.json               run fingerprint: the config (minus output_dir), per stage a dataset hash and chain key
    stage-{i}/checkpoint-*    Trainer checkpoints (adapter, optimizer, scheduler, RNG and trainer state)
    stage-{i}/adapter/        the adapter at the end of stage i (``save_pretrained``)
    stage-{i}/optimizer.pt    AdamW state at the end of stage i (``optimizer: continuous``)
    stage-{i}/metrics.json    examples, prompt/answer tokens, loss, steps, wall time, tokens/s
    stage-{i}/DONE            written last: the stage is finished
    adapter/                  the final adapter (a copy of the last stage's)

With ``stage_root`` set, a stage lives in ``stage_root/stage{i}-<chain key>`` and ``stage-{i}`` is a symlink
to it, so experiments whose leading stages have the same keys (:mod:`.chain`) train them once.

Stage 1 creates the LoRA adapter (seeded); stage i>1 loads stage i-1's adapter as trainable and continues it.
``optimizer: continuous`` (the default, as Eq. 4 reads) carries the AdamW state from stage to stage and runs
one LR schedule over the steps of all stages; ``restart`` gives each stage a fresh optimizer and schedule. Stage
i runs with ``seed + i - 1`` (dropout and data order differ between stages but are fixed by the config).

Each step computes the LM head and the loss at the answer positions only (``answer_only_head``) and, with
``batch_size`` > 1 and ``shared_prefix`` on, computes the instances' shared template once (``kv``: the rows run
on its key/value cache; ``mask``: one packed sequence with an exact 4-D mask and position ids); both give the
loss and gradients of the plain padded batch (``tests/test_train_steps.py``).

Resume: rerunning with the same config and stages skips stages with ``DONE`` and resumes an unfinished one
from its last complete checkpoint; the Trainer restores the adapter, optimizer, scheduler, the position in
the (seeded) data order and the RNG states, so a killed-and-resumed run ends with the same adapter as an
uninterrupted one. A different config or dataset is refused (:class:`ConfigMismatchError`).

Multi-GPU: the ``Trainer`` is accelerate-aware, so launching any entry point that calls
:func:`train_progressive` with ``accelerate launch`` (or ``torchrun``) trains data-parallel; only the main
process writes files. ``device``/``dtype``: cpu or cuda (pick GPUs with ``CUDA_VISIBLE_DEVICES``);
bf16 weights and autocast on cuda by default, float32 on cpu; LoRA weights stay float32.

Other methods reuse this machinery through :class:`StageHooks` (tokenizer, prompt rendering, base-model
preparation, extra LoRA options, collator; the Gist baseline in ``promptintern.baselines.gist``); their settings are
fingerprinted under ``method`` in ``config.json``. Without hooks everything above is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from promptintern import logs
from promptintern.io import write_json
from promptintern.methods.stages import TrainExample
from promptintern.profile import TrainSettings, train_key_fields
from promptintern.serving.models import load_model, load_tokenizer
from promptintern.training.chain import StagePlan, plan_stages, stage_steps
from promptintern.training.collate import PadCollator, SharedPrefixCollator, encode, end_of_turn

log = logging.getLogger(__name__)

DONE = "DONE"
CONFIG_FILE = "config.json"


@dataclass(kw_only=True)
class TrainConfig(TrainSettings):
    """LoRA and Trainer settings shared by all stages (every field but ``output_dir`` is fingerprinted): the
    profile-settable :class:`~promptintern.profile.TrainSettings` plus the run's model, folder and machine."""

    model: str
    output_dir: Path
    seed: int = 0
    device: str | None = None
    save_total_limit: int | None = 2
    #: Where stages live, each in a folder named by its chain key (:mod:`.chain`), so runs with the same
    #: leading stages share them; None = ``output_dir/stage-{i}``. Not fingerprinted (a place, not a setting).
    stage_root: Path | None = None


@dataclass(frozen=True)
class StageHooks:
    """Optional changes to the stage machinery for methods built on it; every default keeps PromptIntern's.

    ``settings``: the method's own settings, fingerprinted (``config.json`` key ``method``) so a run with
    other settings is refused. ``tokenizer``: used instead of ``load_tokenizer(config.model)``. ``render``:
    ``(prompt, tokenizer) -> training prompt text`` instead of ``prompt.render(tokenizer)``. ``prepare_base``:
    ``(base model, tokenizer) -> model``, applied to the base model before the adapter is created or loaded.
    ``lora_options``: extra ``LoraConfig`` arguments (stage 1; later stages load the saved adapter config).
    ``prepare_model``: ``(peft model) -> model`` before training. ``collator``: ``tokenizer -> data collator``;
    a method with its own collator trains with the model's full forward (no answer-only head, no packing),
    since its batch may carry what only its prepared model understands.
    """

    settings: Mapping | None = None
    tokenizer: object | None = None
    render: Callable | None = None
    prepare_base: Callable | None = None
    lora_options: Mapping = field(default_factory=dict)
    prepare_model: Callable | None = None
    collator: Callable | None = None


NO_HOOKS = StageHooks()


class ConfigMismatchError(RuntimeError):
    """Raised when ``output_dir`` holds a run made with another config or other stage data."""


# ---------------------------------------------------------------- fingerprint


def _sha256(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _config_dict(config: TrainConfig) -> dict:
    cfg = asdict(config)
    cfg.pop("output_dir")
    cfg.pop("stage_root")
    cfg["target_modules"] = list(cfg["target_modules"])
    return train_key_fields(cfg)


def _stage_hash(examples: Sequence[TrainExample]) -> str:
    return _sha256([[ex.id, asdict(ex.prompt), ex.answer] for ex in examples])


def fingerprint(
    stages: Sequence[Sequence[TrainExample]], config: TrainConfig, settings: Mapping | None = None
) -> dict:
    """What a resumable run must share with the run recorded in ``output_dir/config.json``.

    ``settings`` (a method's own settings, see :class:`StageHooks`) are recorded under ``method``.
    """
    cfg = _config_dict(config)
    found = {
        "config": cfg,
        "config_sha256": _sha256(cfg),
        "stages": [{"examples": len(s), "sha256": _stage_hash(s)} for s in stages],
    }
    if settings:
        found["method"] = json.loads(json.dumps(dict(settings), sort_keys=True))
    plans = stage_plans(found, config)
    for entry, plan in zip(found["stages"], plans, strict=True):
        entry |= {"key": plan.key, "steps": plan.steps}
    return found


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def stage_plans(found: dict, config: TrainConfig) -> list[StagePlan]:
    """Each stage's chain key, optimizer steps and LR-schedule slice (:func:`.chain.plan_stages`)."""
    steps = [
        stage_steps(s["examples"], batch_size=config.batch_size, accumulation=config.gradient_accumulation_steps,
                    epochs=config.epochs_per_stage, world_size=_world_size())
        for s in found["stages"]
    ]  # fmt: skip
    datasets = [s["sha256"] for s in found["stages"]]
    return plan_stages(found["config"], found.get("method"), datasets, steps, config.optimizer)


def _check_or_record(out: Path, current: dict) -> None:
    path = out / CONFIG_FILE
    if not path.is_file():
        if any(out.glob("stage-*")):
            raise ConfigMismatchError(
                f"{out} holds stage folders but no {CONFIG_FILE}; use a fresh output_dir"
            )
        if is_main_process():
            _write_json(path, current)
        return
    recorded = json.loads(path.read_text())
    if (
        recorded.get("config_sha256") == current["config_sha256"]
        and recorded.get("stages") == current["stages"]
        and recorded.get("method") == current.get("method")
    ):
        return
    old, new = recorded.get("config", {}), current["config"]
    diffs = [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    ]
    if recorded.get("method") != current.get("method"):
        diffs.append(f"method settings: {recorded.get('method')!r} -> {current.get('method')!r}")
    old_stages, new_stages = recorded.get("stages", []), current["stages"]
    if len(old_stages) != len(new_stages):
        diffs.append(f"number of stages: {len(old_stages)} -> {len(new_stages)}")
    diffs += [
        f"stage {i} dataset differs"
        for i, (a, b) in enumerate(zip(old_stages, new_stages, strict=False), 1)
        if a != b
    ]
    raise ConfigMismatchError(
        f"refusing to resume {out}: it was trained with another config or data ({'; '.join(diffs)}). "
        "Use a new output_dir or delete the old run."
    )


# ---------------------------------------------------------------- files and processes


def is_main_process() -> bool:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _write_json(path: Path, obj) -> None:
    write_json(path, obj, sort_keys=True)


def _replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``, replacing it (the old copy is gone only once the new one is complete)."""
    old = dst.with_name(f".{dst.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def last_checkpoint(stage_dir: Path) -> Path | None:
    """The newest complete ``checkpoint-*`` (``trainer_state.json`` is written last by the Trainer)."""
    found = []
    for path in stage_dir.glob("checkpoint-*"):
        step = path.name.removeprefix("checkpoint-")
        if step.isdigit() and (path / "trainer_state.json").is_file():
            found.append((int(step), path))
    return max(found)[1] if found else None


# ---------------------------------------------------------------- training


def _device(config: TrainConfig) -> str:
    import torch

    if config.device:
        return config.device
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


def check_memory(config: TrainConfig, device: str) -> None:
    """On a CUDA device: print the training memory estimate (:mod:`promptintern.training.memory`) and raise its
    one-line :class:`~promptintern.training.memory.DoesNotFitError` instead of running out of memory."""
    if not device.startswith("cuda"):
        return
    import torch

    from promptintern.serving.models import resolve
    from promptintern.training.memory import UnknownArchitectureError, check_fits, estimate_for

    try:
        estimate = estimate_for(resolve(config.model), config)
    except UnknownArchitectureError as exc:
        logs.step(f"no training memory estimate for {config.model}: {exc}", "train")
        return
    gib = torch.cuda.get_device_properties(torch.device(device)).total_memory / 2**30
    logs.step(f"training memory estimate for {config.model}: {estimate.summary()} (GPU {gib:.0f} GiB)", "train")
    check_fits(estimate, gib)


def _dtype(config: TrainConfig, device: str) -> str:
    return config.dtype or ("bfloat16" if device.startswith("cuda") else "float32")


def lora_config(config: TrainConfig, **options: Any):
    """The peft ``LoraConfig`` of ``config`` (rank, alpha, dropout, target modules); ``options`` are added."""
    from peft import LoraConfig

    return LoraConfig(
        task_type="CAUSAL_LM",
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        **options,
    )


def _stage_model(config: TrainConfig, previous: Path | None, seed: int, tokenizer, hooks: StageHooks):
    from peft import PeftModel, get_peft_model
    from transformers import set_seed

    device = _device(config)
    base = load_model(config.model, device=device, dtype=_dtype(config, device), quantization=config.quantization)
    base.config.use_cache = False
    if config.quantization is not None:  # QLoRA: norms in float32, inputs that carry gradients
        from peft import prepare_model_for_kbit_training

        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=config.gradient_checkpointing,
                                               gradient_checkpointing_kwargs={"use_reentrant": False})  # fmt: skip
    elif config.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()  # the frozen embeddings' output must carry gradients into the layers
    if hooks.prepare_base is not None:
        base = hooks.prepare_base(base, tokenizer)
    if previous is not None:
        model = PeftModel.from_pretrained(base, str(previous), is_trainable=True)
    else:
        set_seed(seed)  # LoRA A matrices are drawn here
        model = get_peft_model(base, lora_config(config, **hooks.lora_options))
    return hooks.prepare_model(model) if hooks.prepare_model is not None else model


def _training_args(config: TrainConfig, stage_dir: Path, seed: int, max_steps: int):
    from transformers import TrainingArguments

    device = _device(config)
    cuda = device.startswith("cuda")
    dtype = _dtype(config, device)
    return TrainingArguments(
        output_dir=str(stage_dir),
        seed=seed,
        data_seed=seed,
        num_train_epochs=config.epochs_per_stage,
        max_steps=max_steps,  # = the Trainer's own count (chain.stage_steps), fixed so the plan and the run agree
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        logging_strategy="steps",
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        report_to=[],
        use_cpu=not cuda,
        bf16=cuda and dtype == "bfloat16",
        fp16=cuda and dtype == "float16",
        disable_tqdm=True,  # our own bar (_stage_progress) instead, on a terminal only
        remove_unused_columns=False,
        dataloader_pin_memory=cuda,
        include_num_input_tokens_seen="non_padding",
    )


def _mean_logged_loss(history: list[dict]) -> float | None:
    """Step-weighted mean of the logged losses (each one averages the steps since the previous log)."""
    total, steps, prev = 0.0, 0, 0
    for entry in sorted((e for e in history if "loss" in e), key=lambda e: e["step"]):
        total += entry["loss"] * (entry["step"] - prev)
        steps += entry["step"] - prev
        prev = entry["step"]
    return total / steps if steps else None


def _stats(encoded) -> dict:
    prompts = [e.prompt_tokens for e in encoded]
    answers = [e.answer_tokens for e in encoded]
    return {
        "examples": len(encoded),
        "prompt_tokens_mean": sum(prompts) / len(prompts),
        "prompt_tokens_max": max(prompts),
        "prompt_truncated": sum(e.truncated for e in encoded),
        "answer_tokens_mean": sum(answers) / len(answers),
        "answer_tokens_max": max(answers),
        "train_tokens": sum(len(e.input_ids) for e in encoded),
    }


def _encode_stage(
    index: int, examples, tokenizer, eot: str, max_length: int, render: Callable | None = None
) -> tuple[list[dict], dict]:
    encoded = []
    for ex in examples:
        text = render(ex.prompt, tokenizer) if render is not None else ex.prompt.render(tokenizer)
        try:
            encoded.append(encode(tokenizer, text, ex.answer, eot=eot, max_length=max_length))
        except ValueError as exc:
            raise ValueError(f"stage {index}, instance {ex.id}: {exc}") from None
    stats = _stats(encoded)
    if stats["prompt_truncated"]:
        log.warning(
            "stage %d: %d prompts cut from the left to %d tokens",
            index,
            stats["prompt_truncated"],
            max_length,
        )
    log.info(
        "stage %d: %d examples, prompt tokens mean %.1f max %d, answer tokens mean %.1f",
        index,
        stats["examples"],
        stats["prompt_tokens_mean"],
        stats["prompt_tokens_max"],
        stats["answer_tokens_mean"],
    )
    return [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded], stats


def _loss_metrics(trainer, result) -> dict:
    logged = [e for e in trainer.state.log_history if "loss" in e]
    mean = _mean_logged_loss(trainer.state.log_history)
    return {
        "train_loss": result.training_loss if mean is None else mean,
        "first_loss": logged[0]["loss"] if logged else None,
        "final_loss": logged[-1]["loss"] if logged else None,
    }


def _save_stage(trainer, stage_dir: Path, metrics: dict) -> None:
    """Write the stage's adapter, metrics and DONE marker (main process; adapter folder swapped in whole)."""
    tmp = stage_dir / ".adapter.tmp"
    if trainer.is_world_process_zero():
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))
    if trainer.is_world_process_zero():
        (tmp / "training_args.bin").unlink(missing_ok=True)
        _replace_dir(tmp, stage_dir / "adapter")
        _write_json(stage_dir / "metrics.json", metrics)
        _write_json(stage_dir / DONE, {"steps": metrics["steps"]})
    trainer.accelerator.wait_for_everyone()


def _answer_only(config: TrainConfig, hooks: StageHooks) -> bool:
    return config.answer_only_head and hooks.collator is None


def _collator(config: TrainConfig, tokenizer, hooks: StageHooks):
    if hooks.collator is not None:
        return hooks.collator(tokenizer)
    if _answer_only(config, hooks) and config.shared_prefix != "off" and config.batch_size > 1:
        return SharedPrefixCollator(tokenizer.pad_token_id, config.shared_prefix)
    return PadCollator(tokenizer.pad_token_id)


def _stage_progress(index: int):
    """A Trainer callback that advances its ``bar`` (a :class:`promptintern.logs.Bar`) to the global step and
    writes the Trainer's log dicts (loss, learning rate, runtime) to the log file instead of stdout."""
    from transformers import TrainerCallback

    class StageProgress(TrainerCallback):
        bar = logs.Bar()

        def on_step_end(self, args, state, control, **kwargs):
            self.bar.update(state.global_step)

        def on_log(self, args, state, control, **kwargs):
            if kwargs.get("logs") and state.is_world_process_zero:
                log.info("stage %d, step %d: %s", index, state.global_step, kwargs["logs"])

    return StageProgress()


def _train_stage(plan: StagePlan, stage_dir: Path, examples, config, tokenizer, eot, previous, run) -> None:
    """Train stage ``plan.index`` into ``stage_dir``, starting from the adapter (and, ``continuous``, the
    optimizer state) in the stage folder ``previous``; ``run``: progress, callbacks and hooks."""
    from transformers.trainer_callback import PrinterCallback

    from promptintern.training.stage_trainer import OPTIMIZER_FILE, StageTrainer

    progress, callbacks, hooks = run
    index = plan.index
    seed = config.seed + index - 1
    dataset, stats = _encode_stage(index, examples, tokenizer, eot, config.max_length, hooks.render)
    continuous = config.optimizer == "continuous"
    steps = _stage_progress(index)
    trainer = StageTrainer(
        model=_stage_model(config, previous / "adapter" if previous else None, seed, tokenizer, hooks),
        args=_training_args(config, stage_dir, seed, plan.steps),
        data_collator=_collator(config, tokenizer, hooks),
        train_dataset=dataset,
        callbacks=[*callbacks, steps],
    )
    trainer.remove_callback(PrinterCallback)  # it prints every log dict to stdout; _stage_progress logs them
    trainer.answer_only = _answer_only(config, hooks)
    if continuous:
        trainer.schedule = (plan.offset, plan.total)
        trainer.previous_optimizer = previous / OPTIMIZER_FILE if previous else None
    checkpoint = last_checkpoint(stage_dir)
    if checkpoint is not None:
        log.info("stage %d: resuming from %s", index, checkpoint)
    first_step = (
        json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] if checkpoint else 0
    )
    start = time.perf_counter()
    with logs.progress(plan.steps, f"train stage {index}", enabled=progress and is_main_process()) as steps.bar:
        steps.bar.update(first_step)
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    wall = time.perf_counter() - start
    computed = trainer.state.num_input_tokens_seen - getattr(trainer, "_initial_num_input_tokens_seen", 0)
    share = (trainer.state.global_step - first_step) / plan.steps
    instance_tokens = stats["train_tokens"] * config.epochs_per_stage * share
    metrics = {
        "stage": index,
        "key": plan.key,
        "seed": seed,
        **stats,
        **_loss_metrics(trainer, result),
        "steps": trainer.state.global_step,
        "epochs": config.epochs_per_stage,
        "optimizer": config.optimizer,
        "lr_schedule_steps": [plan.offset, plan.offset + plan.steps, plan.total] if continuous else None,
        "wall_time_s": wall,  # this session only when resumed
        # instance tokens trained on per second (a packed batch computes fewer: computed_tokens_per_s)
        "tokens_per_s": instance_tokens / wall if wall > 0 else None,
        "computed_tokens_per_s": computed / wall if wall > 0 else None,
        "shared_prefix": trainer.data_collator.layout
        if isinstance(trainer.data_collator, SharedPrefixCollator)
        else None,
        "answer_only_head": trainer.answer_only,
        "resumed_from": checkpoint.name if checkpoint else None,
    }
    log.info(
        "stage %d: loss %.4f, %d steps, %.1fs, %.0f tokens/s",
        index,
        metrics["train_loss"],
        metrics["steps"],
        wall,
        metrics["tokens_per_s"] or 0,
    )
    if continuous and trainer.is_world_process_zero():
        trainer.save_optimizer_state(stage_dir / OPTIMIZER_FILE)
    _save_stage(trainer, stage_dir, metrics)


def _stage_dir(out: Path, config: TrainConfig, plan: StagePlan) -> Path:
    if config.stage_root is None:
        return out / f"stage-{plan.index}"
    return Path(config.stage_root) / f"stage{plan.index}-{plan.key[:20]}"


def _link_stage(out: Path, index: int, stage_dir: Path) -> None:
    """``output_dir/stage-{i}`` -> the shared stage folder (a relative symlink, for browsing the run)."""
    link = out / f"stage-{index}"
    if link.is_symlink() or not link.exists():
        tmp = out / f".stage-{index}.link"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.path.relpath(stage_dir, out))
        os.replace(tmp, link)


def train_progressive(
    stages: Sequence[Sequence[TrainExample]],
    config: TrainConfig,
    *,
    progress: bool = True,
    callbacks: Sequence = (),
    hooks: StageHooks | None = None,
) -> Path:
    """Train one LoRA adapter through ``stages`` in order; returns ``output_dir/adapter``.

    A stage already finished (``DONE`` in its folder: this run's, or with ``stage_root`` any run's with the
    same chain key) is reused. ``callbacks`` are extra ``transformers.TrainerCallback`` objects given to every
    stage's Trainer; ``hooks`` adapt the machinery to another method (:class:`StageHooks`).
    """
    if not stages or any(len(s) == 0 for s in stages):
        raise ValueError("need at least one stage, each with at least one example")
    hooks = hooks or NO_HOOKS
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    found = fingerprint(stages, config, hooks.settings)
    _check_or_record(out, found)
    check_memory(config, _device(config))
    tokenizer = hooks.tokenizer if hooks.tokenizer is not None else load_tokenizer(config.model)
    tokenizer.padding_side = "right"
    eot = end_of_turn(tokenizer)
    previous = None
    for plan, examples in zip(stage_plans(found, config), stages, strict=True):
        stage_dir = _stage_dir(out, config, plan)
        if (stage_dir / DONE).is_file():
            log.info("stage %d: done, reused (%s)", plan.index, stage_dir)
        else:
            _train_stage(
                plan, stage_dir, examples, config, tokenizer, eot, previous, (progress, callbacks, hooks)
            )
        if config.stage_root is not None and is_main_process():
            _link_stage(out, plan.index, stage_dir)
        previous = stage_dir
    final = out / "adapter"
    if is_main_process():
        tmp = out / ".adapter.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(previous / "adapter", tmp)
        _replace_dir(tmp, final)
    _barrier()
    return final


def load_for_inference(
    config_or_model: TrainConfig | str,
    adapter_dir: str | Path | None = None,
    *,
    merge: bool = False,
    device: str | None = None,
    dtype: str | None = None,
):
    """Base model + adapter in eval mode and its tokenizer (left padding) for generation.

    ``adapter_dir`` defaults to ``config.output_dir/adapter``; ``merge`` folds LoRA into the base weights.
    """
    from peft import PeftModel

    if isinstance(config_or_model, TrainConfig):
        name = config_or_model.model
        device = device or config_or_model.device
        dtype = dtype or config_or_model.dtype
        adapter_dir = adapter_dir or Path(config_or_model.output_dir) / "adapter"
    else:
        name = config_or_model
    if adapter_dir is None:
        raise ValueError("adapter_dir is required when a model name is given")
    base = load_model(name, device=device, dtype=dtype)
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    if merge:
        model = model.merge_and_unload()
    return model.eval(), load_tokenizer(name)


__all__ = [
    "ConfigMismatchError",
    "StageHooks",
    "TrainConfig",
    "TrainExample",
    "fingerprint",
    "last_checkpoint",
    "load_for_inference",
    "train_progressive",
]
