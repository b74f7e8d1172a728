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


def shared_prefix_length(features: list[dict]) -> int:
    """Tokens every instance of the batch begins with, all of them prompt tokens, leaving each instance at
    least one prompt token of its own (so the position that predicts its first answer token is its own)."""
    ids = [list(f["input_ids"]) for f in features]
    limit = min(_first_label(f["labels"]) for f in features) - 1
    n = 0
    while n < limit and all(seq[n] == ids[0][n] for seq in ids[1:]):
        n += 1
    return n


def _first_label(labels) -> int:
    return next((i for i, lab in enumerate(labels) if lab != IGNORE_INDEX), len(labels))


@dataclass
class SharedPrefixCollator:
    """Computes a batch's shared prompt prefix (the template) once. Two exact layouts, same loss and gradients
    as the padded batch (``tests/test_train_steps.py``):

    ``kv`` (default): ``prefix_ids`` (``1 x p``) and the instances' remaining tokens right-padded
    (``input_ids``/``labels``/``attention_mask``, ``B x S``). The loss runs the prefix once, repeats its key/value
    cache B times and runs the rest on it with position ids ``p, p+1, ...``: attention is ``S x (p + S)`` per
    instance, and SDPA keeps its fast path.

    ``mask``: ONE packed sequence ``[prefix][rest_1][rest_2]...`` with ``packed_mask`` (bool, ``1 x 1 x L x L``,
    True = may attend: a token of ``rest_i`` sees the prefix and the earlier tokens of ``rest_i``) and
    ``position_ids`` continuing from the prefix in every ``rest_i``; ``attention_mask`` is all ones (the Trainer
    counts tokens with it). A dense ``L x L`` mask takes SDPA off its causal kernel: on a CPU this layout was
    slower than the unpacked answer-only step (``benchmarks/test_bench_train_steps.py``).
    """

    pad_token_id: int = 0
    layout: str = "kv"

    def __call__(self, features: list[dict]) -> dict:
        prefix = shared_prefix_length(features) if len(features) > 1 else 0
        if self.layout == "mask":
            return _packed(features, prefix)
        import torch

        rest = [{"input_ids": f["input_ids"][prefix:], "labels": f["labels"][prefix:]} for f in features]
        batch = PadCollator(self.pad_token_id)(rest)
        batch["prefix_ids"] = torch.tensor([list(features[0]["input_ids"][:prefix])], dtype=torch.long)
        return batch


def _packed(features: list[dict], prefix: int) -> dict:
    import torch

    ids = list(features[0]["input_ids"][:prefix])
    labels = [IGNORE_INDEX] * prefix
    positions = list(range(prefix))
    spans = []
    for f in features:
        rest = list(f["input_ids"][prefix:])
        spans.append((len(ids), len(ids) + len(rest)))
        ids += rest
        labels += list(f["labels"][prefix:])
        positions += range(prefix, prefix + len(rest))
    size = len(ids)
    allowed = torch.zeros(size, size, dtype=torch.bool)
    allowed[:, :prefix] = True
    for start, end in spans:
        allowed[start:end, start:end] = True
    return {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "labels": torch.tensor([labels], dtype=torch.long),
        "position_ids": torch.tensor([positions], dtype=torch.long),
        "attention_mask": torch.ones(1, size, dtype=torch.long),
        "packed_mask": (allowed & torch.ones(size, size, dtype=torch.bool).tril())[None, None],
    }
