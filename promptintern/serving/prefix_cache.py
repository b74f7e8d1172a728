"""Prefix-KV-cache serving: what a practitioner would try instead of PromptIntern.

The FULL prompt (template + k shots + query) is served, but the key/values of the longest token prefix shared
by all prompts of a task are computed ONCE (one forward pass, a transformers ``DynamicCache``) and reused for
every instance: each request gets a ``copy.deepcopy`` of that cache (``crop``-ped when the request shares only
part of the prefix; in transformers 5 ``crop`` takes minus the number of tokens to remove, a positive length
raises), so the stored cache is never mutated, and ``model.generate`` then prefills only the rest of the
prompt and decodes greedily, exactly as :func:`promptintern.serving.generate.generate` does with ``batch_size=1``
(``generate`` accepts the full ``input_ids`` with a prefilled cache and slices off the cached length).

Accounting (differs from PromptIntern, which removes the tokens altogether):

* ``prefix_seconds`` / ``prefix_tokens``: the one-off prefix forward pass, reported once per task and NOT
  charged to any instance; ``latency_s`` of an instance covers copying the cache, prefilling the rest of its
  prompt and decoding.
* ``input_tokens`` stays the full prompt length (the model still attends to every token, and an API would
  still bill them); ``cached_tokens`` says how many of them came from the cache.

The shared prefix is found at the TOKEN level (longest common prefix of the tokenized prompts, or an explicit
prefix text / token list), so a BPE merge across the prefix boundary can never make the cache disagree with
the prompt: only leading tokens equal to the prompt's own are reused, and a prompt sharing none of them runs
without a cache. Few-shot examples are retrieved per instance (BLEU), so in practice the shared prefix is the
system turn (the template) plus the fixed opening of the user turn, not the examples. Requests are served one
at a time: batching would need left padding in front of the shared prefix, which breaks the reuse.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from promptintern.serving.generate import Generation, cut_at_stop, stop_criteria


@dataclass
class CachedGeneration(Generation):
    """A :class:`Generation` plus how many of its ``input_tokens`` were read from the prefix cache."""

    cached_tokens: int = 0


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest prefix shared by all ``sequences`` (0 for no sequences)."""
    if not sequences:
        return 0
    n = min(len(s) for s in sequences)
    first = sequences[0]
    for i in range(n):
        token = first[i]
        if any(s[i] != token for s in sequences[1:]):
            return i
    return n


class PrefixCachedGenerator:
    """Greedy generation that reuses the key/values of one shared prompt prefix across requests.

    ``prefix`` (text or token ids) fixes the shared prefix up front; otherwise :meth:`prepare` (or the first
    :meth:`generate` call) takes the longest common token prefix of the prompts it is given.
    """

    def __init__(self, model, tokenizer, prefix: str | Sequence[int] | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.prefix_ids: list[int] = []
        self.prefix_seconds = 0.0
        self._cache = None
        self._prepared = False
        if prefix is not None:
            self.set_prefix(prefix)

    @property
    def prefix_tokens(self) -> int:
        return len(self.prefix_ids)

    def encode(self, text: str) -> list[int]:
        """Token ids of an already rendered prompt (no special tokens added, as in ``generate``)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def set_prefix(self, prefix: str | Sequence[int]) -> int:
        """Compute and store the key/values of ``prefix``; returns its length in tokens."""
        import torch

        ids = self.encode(prefix) if isinstance(prefix, str) else [int(t) for t in prefix]
        self.prefix_ids, self._cache, self.prefix_seconds = ids, None, 0.0
        self._prepared = True
        if ids:
            device = next(self.model.parameters()).device
            start = time.perf_counter()
            inputs = torch.tensor([ids], device=device)
            with torch.no_grad():
                try:  # logits of the last position only: the prefix's full vocabulary logits are never used
                    out = self.model(inputs, use_cache=True, logits_to_keep=1)
                except TypeError:  # models whose forward has no logits_to_keep
                    out = self.model(inputs, use_cache=True)
            self._cache = out.past_key_values
            self.prefix_seconds = time.perf_counter() - start
        return len(ids)

    def prepare(self, prompts: Sequence[str]) -> int:
        """Cache the longest common token prefix of ``prompts`` (at least two); returns its length."""
        if len(prompts) < 2:
            raise ValueError(
                f"finding a shared prefix needs at least 2 prompts, got {len(prompts)}; "
                "pass prefix= (text or token ids) to PrefixCachedGenerator instead"
            )
        encoded = [self.encode(p) for p in prompts]
        return self.set_prefix(encoded[0][: common_prefix_length(encoded)])

    def reusable(self, ids: Sequence[int]) -> int:
        """How many leading tokens of ``ids`` can come from the cache (at least one token is left to prefill)."""
        if self._cache is None:
            return 0
        n = min(common_prefix_length([self.prefix_ids, ids]), len(ids) - 1)
        if n < len(self.prefix_ids) and not getattr(self._cache, "is_croppable", True):
            return 0  # e.g. sliding-window layers cannot be cut back to a shorter prefix
        return max(n, 0)

    def _fork(self, keep: int):
        """A private copy of the prefix cache holding its first ``keep`` tokens (None for ``keep == 0``)."""
        if keep == 0:
            return None
        cache = copy.deepcopy(self._cache)
        if keep < len(self.prefix_ids):
            cache.crop(keep - len(self.prefix_ids))  # transformers >= 5: negative = tokens to remove
        return cache

    def generate(
        self, prompts: Sequence[str], *, max_new_tokens: int, stop: Sequence[str] = ()
    ) -> Iterator[CachedGeneration]:
        """Yield one greedy :class:`CachedGeneration` per rendered prompt, in order (one request at a time).

        Without a prefix set, the first call prepares one from its ``prompts`` (:meth:`prepare`).
        """
        import torch

        if not self._prepared:
            self.prepare(prompts)
        tok = self.tokenizer
        device = next(self.model.parameters()).device
        for prompt in prompts:
            ids = self.encode(prompt)
            if not ids:
                raise ValueError("cannot generate from an empty prompt")
            keep = self.reusable(ids)
            input_ids = torch.tensor([ids], device=device)
            t0 = time.perf_counter()
            cache = self._fork(keep)
            with torch.no_grad():
                out = self.model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    past_key_values=cache,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                    stopping_criteria=stop_criteria(tok, len(ids), stop),
                )
            elapsed = time.perf_counter() - t0
            new = out[0, len(ids) :]
            new = new[new != tok.pad_token_id] if tok.pad_token_id is not None else new
            text = tok.decode(new, skip_special_tokens=True)
            yield CachedGeneration(cut_at_stop(text, stop), len(ids), int(new.numel()), elapsed, keep)

    def stats(self) -> dict[str, float | int]:
        """The one-off prefix cost, for reports."""
        return {"prefix_tokens": self.prefix_tokens, "prefix_seconds": self.prefix_seconds}


__all__ = ["CachedGeneration", "PrefixCachedGenerator", "common_prefix_length"]
