"""Context distillation (Snell et al. 2022, "Learning by distilling context"; Bhargava et al. 2024,
"Prompt Baking"): a query-only LoRA student learns the next-token distributions that a teacher gives while
reading the full prompt.

Teacher: the base model with the ``ft-full`` adapter merged (fine-tuned on template + k shots), eval mode, no
grad. For every training instance it reads ft-full's prompt + the gold answer; at every answer position
:func:`teacher_targets` keeps its ``top_k`` most likely tokens, their log-probabilities and the log of the
mass left to all other tokens (``rest``), at ``temperature``. :func:`cached_targets` stores them in
``$PROMPTINTERN_HOME/cache/distill/<key>.pt`` (written atomically), keyed by the teacher's run key, the
instance ids, the teacher's token ids (prompt + answer), ``top_k`` and ``temperature``: a resumed or repeated
run, or a student with another ``ce_weight``, reads them back instead of running the teacher again.

Student: a fresh LoRA adapter (the profile's LoRA settings) trained on the query-only prompt + gold answer
through :func:`promptintern.training.trainer.train_progressive` (stage folders, fingerprints, resume,
``adapter/``), adapted by two :class:`~promptintern.training.trainer.StageHooks`: :class:`DistillCollator`
adds every instance's targets to the batch and :func:`use_distill_loss` makes the model's forward return
:func:`distill_loss`, the decoder run on every token and the LM head only at the answer positions (as
:func:`~promptintern.training.loss.answer_loss` does). Per optimizer step the loss is::

    (T² · Σ_answer positions KL(teacher ‖ student) + ce_weight · Σ_answer tokens CE(gold)) / answer tokens

The KL is over K + 1 buckets: the teacher's top-K tokens and one bucket for the rest of the vocabulary, the
student's probabilities read off its full softmax (NOT renormalised over the top-K). That is the exact KL
between the two distributions coarsened to these buckets, hence (data-processing inequality) a lower bound
of the full-vocabulary KL, tight where the teacher's mass is, and zero only when the student gives every
top-K token the teacher's probability (and so the tail the teacher's tail mass). Renormalising both over the
top-K would ignore the tail: that KL is zero for a student whose top-K tokens hold 1 % of its mass in the
teacher's ratios. K is at most V - 1, so the tail bucket is never empty. T² keeps the KL's gradient scale
independent of T (Hinton et al. 2015); the cross-entropy uses the raw logits.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from promptintern import keys
from promptintern.io import atomic_write_with
from promptintern.methods.stages import TrainExample
from promptintern.paths import cache_dir
from promptintern.serving.models import load_tokenizer
from promptintern.training.collate import IGNORE_INDEX, PadCollator, encode, end_of_turn
from promptintern.training.loss import causal_lm
from promptintern.training.trainer import StageHooks, TrainConfig, load_for_inference, train_progressive

log = logging.getLogger(__name__)

#: Bump when what the cached targets hold changes (they are then recomputed).
TARGETS_VERSION = 1
#: The ``cache_dir`` kind that holds the targets.
TARGETS_CACHE = "distill"


@dataclass(frozen=True)
class Targets:
    """The teacher at an instance's A answer positions: ``ids`` (A, K) its top-K token ids, ``logprobs``
    (A, K) their log-probabilities, ``rest`` (A,) the log-probability of all other tokens together."""

    ids: torch.Tensor
    logprobs: torch.Tensor
    rest: torch.Tensor

    def __len__(self) -> int:
        return self.rest.shape[0]


# ---------------------------------------------------------------- loss


def _rest(logp: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Log of the probability of every token but ``ids`` (N, K) under ``logp`` (N, V)."""
    return logp.scatter(-1, ids, float("-inf")).logsumexp(-1)


def topk_targets(logits: torch.Tensor, top_k: int, temperature: float = 1.0):
    """``(ids, logprobs, rest)`` of ``logits`` (N, V) softened by ``temperature``: the ``min(top_k, V - 1)``
    most likely tokens, their log-probabilities and the log-probability of all the others."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    top, ids = logp.topk(min(top_k, logp.shape[-1] - 1), dim=-1)
    return ids, top, _rest(logp, ids)


def teacher_kl(student_logits, ids, logprobs, rest, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher ‖ student) at each of N positions (N,) over K + 1 buckets: the teacher's top-K tokens
    ``ids`` (N, K) with ``logprobs`` (N, K), and the rest of the vocabulary with ``rest`` (N,). The student's
    ``student_logits`` (N, V) are softened by ``temperature``."""
    vocab = student_logits.shape[-1]
    if ids.shape[-1] >= vocab:
        raise ValueError(f"a top-K of {ids.shape[-1]} tokens leaves no tail in a vocabulary of {vocab}")
    logp = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    ids = ids.long()
    student = torch.cat([logp.gather(-1, ids), _rest(logp, ids)[:, None]], dim=-1)
    teacher = torch.cat([logprobs, rest[:, None]], dim=-1).to(student)
    return (teacher.exp() * (teacher - student)).sum(-1)


def distill_loss(
    student_logits, gold, ids, logprobs, rest, *, temperature: float = 1.0, ce_weight: float = 0.5, count=None
) -> torch.Tensor:
    """``(T² · Σ KL(teacher ‖ student) + ce_weight · Σ CE(gold)) / count`` over N answer positions: the
    student's logits (N, V), the gold tokens (N,), the teacher's ``ids`` / ``logprobs`` (N, K) and ``rest``
    (N,). ``count``: answer tokens in the optimizer step (as the Trainer passes it); None = N."""
    total = teacher_kl(student_logits, ids, logprobs, rest, temperature).sum() * temperature**2
    if ce_weight:
        total = total + ce_weight * F.cross_entropy(student_logits.float(), gold, reduction="sum")
    count = count if count is not None else gold.numel()
    return total / (count.to(total.device) if torch.is_tensor(count) else count)


def answer_logits(model, input_ids, labels, attention_mask=None):
    """The LM head's float32 logits (N, V) at the N positions that predict a labelled token (row by row, in
    order) and those tokens (N,); the decoder runs on every token, the head only there."""
    lm = causal_lm(model)
    decoder = lm.get_decoder()
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    target = labels[:, 1:]
    keep = target != IGNORE_INDEX
    return lm.get_output_embeddings()(hidden[:, :-1][keep]).float(), target[keep]


# ---------------------------------------------------------------- teacher targets


def _features(input_ids: Sequence[int], answer_tokens: int) -> dict:
    if not 0 < answer_tokens < len(input_ids):
        raise ValueError(f"a sequence of {len(input_ids)} tokens cannot end in an answer of {answer_tokens}")
    prompt = len(input_ids) - answer_tokens
    return {"input_ids": list(input_ids), "labels": [IGNORE_INDEX] * prompt + list(input_ids[prompt:])}


def teacher_targets(
    model,
    sequences: Sequence[tuple[Sequence[int], int]],
    *,
    top_k: int,
    temperature: float = 1.0,
    batch_size: int = 8,
    pad_token_id: int = 0,
    progress: bool = False,
) -> list[Targets]:
    """The :class:`Targets` of ``model`` for each ``(token ids, answer tokens)`` sequence (the answer being
    its last tokens), in order; no grad, batches of similar lengths right-padded (as if run one at a time)."""
    from promptintern import logs

    size = max(batch_size, 1)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]))
    device = next(model.parameters()).device
    collate = PadCollator(pad_token_id)
    out: list[Targets] = [None] * len(sequences)  # type: ignore[list-item]
    with torch.no_grad():
        for start in logs.track(range(0, len(order), size), "distill: teacher targets", enabled=progress):
            chunk = order[start : start + size]
            batch = {k: v.to(device) for k, v in collate([_features(*sequences[i]) for i in chunk]).items()}
            logits, _ = answer_logits(model, batch["input_ids"], batch["labels"], batch["attention_mask"])
            ids, logprobs, rest = (t.cpu() for t in topk_targets(logits, top_k, temperature))
            offset = 0
            for i in chunk:
                end = offset + sequences[i][1]
                out[i] = Targets(ids[offset:end], logprobs[offset:end], rest[offset:end])
                offset = end
    return out


def targets_key(
    teacher_key: str, sequences: Mapping[str, tuple[Sequence[int], int]], top_k: int, temperature: float
) -> str:
    """The content key of the teacher ``teacher_key``'s targets on ``sequences`` (by instance id: token ids,
    answer tokens) at ``top_k`` and ``temperature``."""
    digest = hashlib.sha256()
    for iid, (ids, answer) in sequences.items():
        digest.update(keys.canonical([iid, list(ids), answer]) + b"\n")
    payload = {
        "version": TARGETS_VERSION,
        "teacher": teacher_key,
        "sequences": digest.hexdigest(),
        "top_k": top_k,
        "temperature": temperature,
    }
    return keys.content_key("distill-targets", payload, length=24)


def targets_path(key: str) -> Path:
    """The cache file of the targets with content key ``key``."""
    return cache_dir(TARGETS_CACHE) / f"{key}.pt"


def _save(path: Path, key: str, targets: Mapping[str, Targets]) -> None:
    """One file: the key, the instance ids, their answer lengths and the targets concatenated (ids int32)."""
    values = list(targets.values())
    data = {
        "key": key,
        "instances": list(targets),
        "lengths": [len(t) for t in values],
        "ids": torch.cat([t.ids for t in values]).to(torch.int32),
        "logprobs": torch.cat([t.logprobs for t in values]),
        "rest": torch.cat([t.rest for t in values]),
    }
    atomic_write_with(path, lambda tmp: torch.save(data, tmp))


def _load(path: Path, key: str) -> dict[str, Targets] | None:
    """The targets stored in ``path`` under ``key``; None if the file is missing, unreadable or another's."""
    try:
        data = torch.load(path, weights_only=True)
    except (OSError, RuntimeError, EOFError):
        return None
    if not isinstance(data, dict) or data.get("key") != key:
        return None
    lengths = data["lengths"]
    ids, logprobs, rest = (data[name].split(lengths) for name in ("ids", "logprobs", "rest"))
    parts = zip((i.long() for i in ids), logprobs, rest, strict=True)
    return {iid: Targets(*t) for iid, t in zip(data["instances"], parts, strict=True)}


def cached_targets(
    examples: Sequence[TrainExample],
    teacher_adapter: str | Path,
    config: TrainConfig,
    *,
    teacher_key: str,
    top_k: int,
    temperature: float = 1.0,
    progress: bool = False,
) -> tuple[str, dict[str, Targets]]:
    """``(key, {instance id: Targets})`` of the teacher (``config.model`` + ``teacher_adapter``, merged) on
    its ``examples`` (prompt + answer, encoded as the trainer encodes them): read from the cache, or computed
    and stored. Each process of a multi-GPU run computes missing targets itself (the writes are atomic)."""
    tok = load_tokenizer(config.model)
    eot = end_of_turn(tok)
    sequences = {}
    for ex in examples:
        enc = encode(tok, ex.prompt.render(tok), ex.answer, eot=eot, max_length=config.max_length)
        sequences[ex.id] = (enc.input_ids, enc.answer_tokens)
    key = targets_key(teacher_key, sequences, top_k, temperature)
    path = targets_path(key)
    found = _load(path, key) if path.is_file() else None
    if found is not None:
        log.info("distill: teacher targets of %d instances reused (%s)", len(found), path)
        return key, found
    model, _ = load_for_inference(
        config.model, teacher_adapter, merge=True, device=config.device, dtype=config.dtype
    )
    computed = teacher_targets(
        model,
        list(sequences.values()),
        top_k=top_k,
        temperature=temperature,
        batch_size=config.batch_size,
        pad_token_id=tok.pad_token_id,
        progress=progress,
    )
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    found = dict(zip(sequences, computed, strict=True))
    _save(path, key, found)
    log.info("distill: teacher targets of %d instances computed (%s)", len(found), path)
    return key, found


# ---------------------------------------------------------------- student


@dataclass
class DistillCollator:
    """:class:`PadCollator` plus every instance's teacher targets, found by its token ids (the stage machinery
    hands a collator ``input_ids`` and ``labels`` only): ``teacher_ids`` (B, A, K), ``teacher_logprobs``
    (B, A, K), ``teacher_rest`` (B, A) and ``teacher_mask`` (B, A; True at the instance's answer positions),
    A the longest answer of the batch."""

    pad_token_id: int
    targets: Mapping[tuple[int, ...], Targets]

    def __call__(self, features: list[dict]) -> dict:
        batch = PadCollator(self.pad_token_id)(features)
        found = [self.targets.get(tuple(f["input_ids"])) for f in features]
        if any(t is None for t in found):
            raise KeyError("no teacher targets for a training sequence: the stage data is not the teacher's")
        rows, width, k = len(found), max(len(t) for t in found), found[0].ids.shape[1]
        ids = torch.zeros(rows, width, k, dtype=torch.long)
        logprobs, rest = torch.zeros(rows, width, k), torch.zeros(rows, width)
        mask = torch.zeros(rows, width, dtype=torch.bool)
        for row, t in enumerate(found):
            n = len(t)
            ids[row, :n], logprobs[row, :n], rest[row, :n], mask[row, :n] = t.ids, t.logprobs, t.rest, True
        batch.update(teacher_ids=ids, teacher_logprobs=logprobs, teacher_rest=rest, teacher_mask=mask)
        return batch


def use_distill_loss(model, *, temperature: float = 1.0, ce_weight: float = 0.5):
    """Make ``model(**batch)`` (a :class:`DistillCollator` batch, plus the Trainer's ``num_items_in_batch``)
    return ``{"loss": distill_loss(...)}``, the LM head applied at the answer positions only."""

    def forward(
        input_ids, labels, teacher_ids, teacher_logprobs, teacher_rest, teacher_mask,
        attention_mask=None, num_items_in_batch=None,
    ):  # fmt: skip
        logits, gold = answer_logits(model, input_ids, labels, attention_mask)
        if gold.shape[0] != (n := int(teacher_mask.sum())):
            raise ValueError(f"{gold.shape[0]} answer positions in the batch but {n} teacher targets")
        teacher = (t[teacher_mask] for t in (teacher_ids, teacher_logprobs, teacher_rest))
        loss = distill_loss(
            logits, gold, *teacher, temperature=temperature, ce_weight=ce_weight, count=num_items_in_batch
        )
        return {"loss": loss}

    model.forward = forward
    return model


def _collator(tokenizer, *, targets) -> DistillCollator:
    return DistillCollator(tokenizer.pad_token_id, targets)


def train_distill(
    stages: Sequence[Sequence[TrainExample]],
    teacher_examples: Sequence[TrainExample],
    teacher_adapter: str | Path,
    config: TrainConfig,
    *,
    teacher_key: str,
    top_k: int = 16,
    temperature: float = 1.0,
    ce_weight: float = 0.5,
    progress: bool = True,
    callbacks: Sequence = (),
) -> Path:
    """Train the student through ``stages`` (query-only prompts) on the targets of the teacher
    (``config.model`` + ``teacher_adapter``) reading ``teacher_examples`` (its prompts for the same instances,
    matched by id); returns ``output_dir/adapter``. Layout, resume and refusal rules are those of
    :func:`~promptintern.training.trainer.train_progressive`; the settings and the targets' key are
    fingerprinted (``config.json`` key ``method``)."""
    if top_k < 1 or temperature <= 0 or ce_weight < 0:
        got = f"top_k={top_k}, temperature={temperature}, ce_weight={ce_weight}"
        raise ValueError(f"distill needs top_k >= 1, temperature > 0 and ce_weight >= 0, got {got}")
    key, by_id = cached_targets(
        teacher_examples, teacher_adapter, config,
        teacher_key=teacher_key, top_k=top_k, temperature=temperature, progress=progress,
    )  # fmt: skip
    tok = load_tokenizer(config.model)
    eot = end_of_turn(tok)
    table: dict[tuple[int, ...], Targets] = {}
    for ex in (ex for stage in stages for ex in stage):
        if ex.id not in by_id:
            raise ValueError(f"instance {ex.id}: the teacher has no prompt for it (the two datasets differ)")
        enc = encode(tok, ex.prompt.render(tok), ex.answer, eot=eot, max_length=config.max_length)
        ours, theirs = enc.answer_tokens, len(by_id[ex.id])
        if ours != theirs:
            raise ValueError(f"instance {ex.id}: the answer has {ours} tokens, the teacher's {theirs}")
        table.setdefault(tuple(enc.input_ids), by_id[ex.id])  # same query and answer: the first one's targets
    settings = {
        "method": "distill",
        "teacher": teacher_key,
        "targets": key,
        "top_k": top_k,
        "temperature": temperature,
        "ce_weight": ce_weight,
    }
    hooks = StageHooks(
        settings=settings,
        collator=functools.partial(_collator, targets=table),
        prepare_model=functools.partial(use_distill_loss, temperature=temperature, ce_weight=ce_weight),
    )
    return train_progressive(stages, config, progress=progress, callbacks=callbacks, hooks=hooks)


__all__ = [
    "DistillCollator",
    "Targets",
    "answer_logits",
    "cached_targets",
    "distill_loss",
    "targets_key",
    "targets_path",
    "teacher_kl",
    "teacher_targets",
    "topk_targets",
    "train_distill",
    "use_distill_loss",
]
