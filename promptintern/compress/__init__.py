"""Prompt-template compression for PromptIntern's progressive stages (τ = fraction of the template kept).

Backends (``get_compressor(name, **options)``):

* ``truncate`` — deterministic, model-free (tests, naive baseline); counts whitespace words.
* ``llmlingua`` / ``longllmlingua`` — the ``llmlingua`` package (0.2.2) driven by a local causal LM,
  ``"embedded"`` SmolLM2-135M-Instruct by default; counts tiktoken ``cl100k_base`` tokens.
* ``llmlingua2`` — the package's LLMLingua-2 with a given token-classification checkpoint (the paper's
  default compressor); counts ``cl100k_base`` tokens.
* ``selective-context`` / ``llm-generation`` — baselines in :mod:`promptintern.baselines` (self-information
  filtering; an LLM behind an OpenAI-compatible API asked to delete words).

:class:`TemplateCompressor` compresses a template's instruction and documents separately and caches the
result under ``cache_dir("compressed")``.  Importing this package does not import torch or llmlingua.
"""

from promptintern.compress.base import (
    COMPRESSORS,
    BaseCompressor,
    CompressionResult,
    Compressor,
    TemplateCompression,
    TemplateCompressor,
    canonical_name,
    check_rate,
    get_compressor,
)
from promptintern.compress.cache import CachedCompressor, CompressionCache
from promptintern.compress.lingua import (
    LLMLingua2CheckpointError,
    LLMLingua2Compressor,
    LLMLinguaCompressor,
    LongLLMLinguaCompressor,
)
from promptintern.compress.truncate import TruncateCompressor

__all__ = [
    "COMPRESSORS",
    "BaseCompressor",
    "CachedCompressor",
    "CompressionCache",
    "CompressionResult",
    "LLMLingua2CheckpointError",
    "LLMLingua2Compressor",
    "LLMLinguaCompressor",
    "LongLLMLinguaCompressor",
    "Compressor",
    "TemplateCompression",
    "TemplateCompressor",
    "TruncateCompressor",
    "canonical_name",
    "check_rate",
    "get_compressor",
]
