"""Greedy generation with HF causal LMs: batched, left-padded, stop strings, per-instance latency."""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Generation:
    text: str
    input_tokens: int
    output_tokens: int
    latency_s: float


class DeadlineExceeded(RuntimeError):
    """Generation ran past the :func:`deadline` its caller set."""


_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("generation_deadline", default=None)


@contextmanager
def deadline(seconds: float | None):
    """Within the block, :func:`generate` raises :class:`DeadlineExceeded` at the first decoding step after
    ``seconds`` have passed (None: no limit). Used to stop a backend probe that has already lost the race."""
    token = _DEADLINE.set(None if seconds is None else time.perf_counter() + seconds)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def check_deadline() -> None:
    """Raise :class:`DeadlineExceeded` when the current :func:`deadline` has passed."""
    limit = _DEADLINE.get()
    if limit is not None and time.perf_counter() > limit:
        raise DeadlineExceeded("generation ran past its deadline")


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any stop string (all of it when none occurs)."""
    cut = min((text.find(s) for s in stop if s and s in text), default=-1)
    return text[:cut] if cut >= 0 else text


def stop_criteria(tokenizer, prompt_width: int, stop: Sequence[str]):
    """A ``StoppingCriteriaList`` that ends a sequence once its GENERATED text holds a stop string (None when
    there are none). HF's own ``stop_strings`` also match across the prompt's end, so a stop string with a
    leading newline would fire on the first generated token after ``assistant\n``; an API's ``stop`` (and
    lm-eval's ``until``) only ever look at the completion, and so does this. Inside a :func:`deadline` it
    also checks the deadline at every step."""
    timed = _DEADLINE.get() is not None
    if not stop and not timed:
        return None
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopInCompletion(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            import torch

            check_deadline()
            if not stop:
                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            texts = tokenizer.batch_decode(input_ids[:, prompt_width:], skip_special_tokens=True)
            return torch.tensor([any(s in t for s in stop) for t in texts], device=input_ids.device)

    return StoppingCriteriaList([StopInCompletion()])


def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int = 1,
    stop: Sequence[str] = (),
) -> Iterator[Generation]:
    """Yield one greedy :class:`Generation` per rendered prompt, in order.

    Prompts are already rendered (chat template applied), so no special tokens are added. Latency is
    the batch's wall time divided by its size (exact per-instance latency with ``batch_size=1``).
    """
    import torch

    device = next(model.parameters()).device
    for start in range(0, len(prompts), batch_size):
        check_deadline()
        batch = list(prompts[start : start + batch_size])
        enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                stopping_criteria=stop_criteria(tokenizer, enc["input_ids"].shape[1], stop),
            )
        elapsed = (time.perf_counter() - t0) / len(batch)
        width = enc["input_ids"].shape[1]
        for row, mask in zip(out, enc["attention_mask"], strict=True):
            new = row[width:]
            new = new[new != tokenizer.pad_token_id] if tokenizer.pad_token_id is not None else new
            text = tokenizer.decode(new, skip_special_tokens=True)
            yield Generation(cut_at_stop(text, stop), int(mask.sum()), int(new.numel()), elapsed)
