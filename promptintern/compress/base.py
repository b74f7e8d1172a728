"""Compressor protocol, result type, template compression and the backend registry.

Rate semantics (PromptIntern's τ): ``rate`` is the fraction of the text that is KEPT, in ``[0, 1]``.
``rate == 1`` returns the text unchanged and ``rate == 0`` returns ``""``; neither runs a model.  In
between, each backend aims at ``rate``; what it reached is ``CompressionResult.rate_achieved`` =
``compressed_tokens / origin_tokens`` counted in ``CompressionResult.unit`` (``"words"``: whitespace words
for ``truncate``; ``"cl100k_base"``: tiktoken's GPT-3.5/4 tokens for the llmlingua backends, the unit the
llmlingua package itself reports).  An empty text has ``rate_achieved == 1``.

PromptIntern compresses the two kinds of template content separately: the instruction and the API
documents.  :class:`TemplateCompressor` does that with one compressor per kind and returns a new
:class:`~promptintern.tasks.base.Template`; results are cached (see :mod:`promptintern.compress.cache`).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from promptintern.tasks.base import Template


@dataclass(frozen=True)
class CompressionResult:
    """One compressed text and how much of the original it kept."""

    text: str
    rate_requested: float
    rate_achieved: float
    origin_tokens: int
    compressed_tokens: int
    #: What ``*_tokens`` count: ``"words"`` (whitespace words) or a tokenizer name such as ``"cl100k_base"``.
    unit: str = "words"
    #: Backend-specific details (e.g. the llmlingua package's own counts); JSON-serialisable.
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompressionResult:
        return cls(**data)


def check_rate(rate: float) -> float:
    """``rate`` as a float, or ValueError unless it lies in [0, 1]."""
    try:
        value = float(rate)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"compression rate must be a number in [0, 1], got {rate!r}") from exc
    if not 0.0 <= value <= 1.0:
        raise ValueError(
            f"compression rate is the fraction of the text kept and must lie in [0, 1], got {rate}"
        )
    return value


def achieved(origin: int, compressed: int) -> float:
    """``compressed / origin``; 1.0 for an empty original."""
    return 1.0 if origin == 0 else compressed / origin


def count_words(text: str) -> int:
    return len(text.split())


@runtime_checkable
class Compressor(Protocol):
    """Anything that compresses a text to a kept fraction ``rate``."""

    name: str

    def compress(self, text: str, rate: float, *, question: str | None = None) -> CompressionResult: ...

    def fingerprint(self) -> dict[str, Any]:
        """JSON-serialisable identity (backend, model id, options) used in cache keys; loads no model."""
        ...


class BaseCompressor(ABC):
    """Validates ``rate`` and handles the model-free cases τ=1, τ=0 and blank text."""

    name: str = ""
    unit: str = "words"

    def count(self, text: str) -> int:
        """Size of ``text`` in :attr:`unit`."""
        return count_words(text)

    def fingerprint(self) -> dict[str, Any]:
        return {"backend": self.name}

    def compress(self, text: str, rate: float, *, question: str | None = None) -> CompressionResult:
        rate = check_rate(rate)
        if rate == 1.0 or not text.strip():
            n = self.count(text)
            return CompressionResult(text, rate, 1.0, n, n, unit=self.unit)
        if rate == 0.0:
            return CompressionResult("", rate, 0.0, self.count(text), 0, unit=self.unit)
        return self._compress(text, rate, question=question)

    @abstractmethod
    def _compress(self, text: str, rate: float, *, question: str | None) -> CompressionResult:
        """Compress non-blank ``text`` at ``0 < rate < 1``."""

    def result(self, text: str, compressed: str, rate: float, **meta: Any) -> CompressionResult:
        origin, kept = self.count(text), self.count(compressed)
        return CompressionResult(compressed, rate, achieved(origin, kept), origin, kept, self.unit, meta)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.fingerprint()})"


# -- templates ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TemplateCompression:
    """A compressed template with the per-part results; ``from_cache`` tells whether a model ran."""

    template: Template
    instruction: CompressionResult
    documents: CompressionResult
    from_cache: bool = False

    @property
    def origin_tokens(self) -> int:
        return self.instruction.origin_tokens + self.documents.origin_tokens

    @property
    def compressed_tokens(self) -> int:
        return self.instruction.compressed_tokens + self.documents.compressed_tokens

    @property
    def rate_achieved(self) -> float:
        """Kept fraction over both parts (meaningful when both use the same unit)."""
        return achieved(self.origin_tokens, self.compressed_tokens)


class TemplateCompressor:
    """Compresses ``Template.instruction`` and ``Template.documents`` separately (the paper's two kinds).

    ``document_compressor`` defaults to ``instruction_compressor``.  ``whole=True`` compresses the template as
    ONE text with ``instruction_compressor`` (the compression baselines of the paper's Table 1) and returns it
    as the instruction with empty documents.  With ``cache=True`` (default) results
    are stored under ``cache_dir("compressed")`` keyed by the template text, the rates, the question and
    both compressors' fingerprints, so a repeated call neither loads nor runs a model.
    """

    def __init__(
        self,
        instruction_compressor: Compressor,
        document_compressor: Compressor | None = None,
        *,
        cache: bool = True,
        whole: bool = False,
    ):
        if whole and document_compressor is not None:
            raise ValueError("whole=True compresses the template as one text: give no document_compressor")
        self.instruction_compressor = instruction_compressor
        self.document_compressor = document_compressor or instruction_compressor
        self.cache = cache
        self.whole = whole

    def fingerprint(self) -> dict[str, Any]:
        if self.whole:
            return {"whole": self.instruction_compressor.fingerprint()}
        return {
            "instruction": self.instruction_compressor.fingerprint(),
            "documents": self.document_compressor.fingerprint(),
        }

    def _compress_parts(
        self, template: Template, rate: float, documents_rate: float, question: str | None
    ) -> tuple[CompressionResult, CompressionResult]:
        if self.whole:
            whole = self.instruction_compressor.compress(template.text, rate, question=question)
            empty = CompressionResult("", documents_rate, 1.0, 0, 0, unit=whole.unit)
            return whole, empty
        instruction = self.instruction_compressor.compress(template.instruction, rate, question=question)
        documents = self.document_compressor.compress(template.documents, documents_rate, question=question)
        return instruction, documents

    def compress(
        self,
        template: Template,
        rate: float,
        *,
        documents_rate: float | None = None,
        question: str | None = None,
    ) -> Template:
        """A new template with both parts compressed (documents at ``documents_rate`` if given)."""
        return self.compress_with_stats(
            template, rate, documents_rate=documents_rate, question=question
        ).template

    def compress_with_stats(
        self,
        template: Template,
        rate: float,
        *,
        documents_rate: float | None = None,
        question: str | None = None,
    ) -> TemplateCompression:
        from promptintern.compress.cache import CompressionCache

        rate = check_rate(rate)
        documents_rate = rate if documents_rate is None else check_rate(documents_rate)
        store = CompressionCache() if self.cache else None
        key = None
        if store is not None:
            key = store.key(
                {
                    "kind": "template",
                    "instruction": template.instruction,
                    "documents": template.documents,
                    "rate": rate,
                    "documents_rate": documents_rate,
                    "question": question,
                    "compressors": self.fingerprint(),
                }
            )
            hit = store.load(key)
            if hit is not None:
                instruction = CompressionResult.from_dict(hit["instruction"])
                documents = CompressionResult.from_dict(hit["documents"])
                return TemplateCompression(
                    Template(instruction.text, documents.text), instruction, documents, from_cache=True
                )
        instruction, documents = self._compress_parts(template, rate, documents_rate, question)
        if store is not None and key is not None:
            store.store(
                key,
                {
                    "fingerprint": self.fingerprint(),
                    "rate": rate,
                    "documents_rate": documents_rate,
                    "instruction": instruction.to_dict(),
                    "documents": documents.to_dict(),
                },
            )
        return TemplateCompression(Template(instruction.text, documents.text), instruction, documents)


# -- registry -------------------------------------------------------------------------------------


def _truncate(**options: Any) -> Compressor:
    from promptintern.compress.truncate import TruncateCompressor

    return TruncateCompressor(**options)


def _lingua(kind: str) -> Callable[..., Compressor]:
    def build(**options: Any) -> Compressor:
        from promptintern.compress import lingua

        cls = {
            "llmlingua": lingua.LLMLinguaCompressor,
            "longllmlingua": lingua.LongLLMLinguaCompressor,
            "llmlingua2": lingua.LLMLingua2Compressor,
        }[kind]
        return cls(**options)

    return build


def _baseline(module: str, cls: str) -> Callable[..., Compressor]:
    def build(**options: Any) -> Compressor:
        import importlib

        return getattr(importlib.import_module(f"promptintern.baselines.{module}"), cls)(**options)

    return build


COMPRESSORS: dict[str, Callable[..., Compressor]] = {
    "truncate": _truncate,
    "llmlingua": _lingua("llmlingua"),
    "longllmlingua": _lingua("longllmlingua"),
    "llmlingua2": _lingua("llmlingua2"),
    "selectivecontext": _baseline("selective_context", "SelectiveContextCompressor"),
    "llmgeneration": _baseline("llm_generation", "LLMGenerationCompressor"),
}


def canonical_name(name: str) -> str:
    """Registry name for ``name`` (case, ``-`` and ``_`` ignored: ``LLMLingua-2`` → ``llmlingua2``)."""
    key = re.sub(r"[-_\s]", "", name.lower())
    if key not in COMPRESSORS:
        raise ValueError(f"unknown compressor {name!r}; choose from {', '.join(COMPRESSORS)}")
    return key


def get_compressor(name: str, **options: Any) -> Compressor:
    """A compressor by name: ``truncate``, ``llmlingua``, ``longllmlingua``, ``llmlingua2``,
    ``selective-context`` or ``llm-generation``.

    Options go to the backend's constructor, e.g. ``model=`` (``"embedded"``, a local path or hub id),
    ``device=`` and ``compress_kwargs=`` for the llmlingua backends.
    """
    return COMPRESSORS[canonical_name(name)](**options)
