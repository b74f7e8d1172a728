"""Training features: rendered prompt + answer tokens, loss on the answer only, right-padding collator."""

from __future__ import annotations

from dataclasses import dataclass

IGNORE_INDEX = -100


def end_of_turn(tokenizer) -> str:
    """The token closing an assistant turn: the special token the chat template puts after the answer, else eos."""
    if getattr(tokenizer, "chat_template", None):
        sentinel = "\x1fANSWER\x1f"
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": sentinel}], tokenize=False
        )
        tail = text.split(sentinel, 1)[1] if sentinel in text else ""
        specials = set(tokenizer.get_added_vocab()) | set(getattr(tokenizer, "all_special_tokens", ()))
        for token in sorted(specials, key=len, reverse=True):
            if token and tail.startswith(token):
                return token
    if tokenizer.eos_token is None:
        raise ValueError("tokenizer has neither a chat-template end-of-turn token nor an eos token")
    return tokenizer.eos_token


@dataclass(frozen=True)
class Encoded:
    """One training instance: ``input_ids``/``labels`` plus the prompt length before truncation."""

    input_ids: list[int]
    labels: list[int]
    prompt_tokens: int
    answer_tokens: int

    @property
    def truncated(self) -> bool:
        return len(self.input_ids) - self.answer_tokens < self.prompt_tokens


def encode(tokenizer, prompt_text: str, answer: str, *, eot: str, max_length: int) -> Encoded:
    """Tokenise ``prompt_text`` (already rendered) then ``answer + eot``; labels are -100 on the prompt.

    The two parts are tokenised separately, as at inference the answer is generated after the prompt's
    tokens. Nothing is ever cut: prompts are fitted to the context when they are built
    (:func:`promptintern.methods.stages.fit_prompt`), so an input over ``max_length`` here raises ``ValueError``.
    """
    prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    answer_ids = answer_ids + tokenizer(eot, add_special_tokens=False)["input_ids"]
    room = max_length - len(answer_ids)
    if room < 1:
        raise ValueError(
            f"answer of {len(answer_ids)} tokens leaves no room for the prompt (max_length={max_length})"
        )
    if len(prompt) > room:
        raise ValueError(
            f"prompt of {len(prompt)} tokens + answer of {len(answer_ids)} exceed max_length={max_length}; "
            "build prompts with promptintern.methods.stages.fit_prompt so they fit the context"
        )
    kept = prompt
    return Encoded(
        input_ids=kept + answer_ids,
        labels=[IGNORE_INDEX] * len(kept) + answer_ids,
        prompt_tokens=len(prompt),
        answer_tokens=len(answer_ids),
    )


@dataclass
class PadCollator:
    """Right-pads ``input_ids`` with ``pad_token_id`` and ``labels`` with -100 to the longest in the batch."""

    pad_token_id: int

    def __call__(self, features: list[dict]) -> dict:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        ids, labels, mask = [], [], []
        for f in features:
            pad = width - len(f["input_ids"])
            ids.append(list(f["input_ids"]) + [self.pad_token_id] * pad)
            labels.append(list(f["labels"]) + [IGNORE_INDEX] * pad)
            mask.append([1] * len(f["input_ids"]) + [0] * pad)
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "attention_mask": torch.tensor(mask, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
        }
