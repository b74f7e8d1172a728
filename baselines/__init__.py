"""The paper's baselines as method definitions the experiment runner understands.

* Prompt-compression baselines (Table 1): the whole template compressed once to ``τ_tmp`` (0.3 in the paper)
  by the baseline's compressor, then fine-tuned and served with that prompt (constant schedule). LongLLMLingua
  is question-aware, so the template is compressed per instance with the instance's query as the question.
* Direct fine-tuning (Tables 2–4): template + k shots, template×0.6 + k/2 shots, template only, no template,
  trained and served with the same prompt.
* Untrained rows: query only (``zero-shot``), the full prompt (``zero-shot-full``) and the full prompt with
  its shared prefix's KV cache reused (``prefix-cached``, :mod:`promptintern.serving.prefix_cache`).
* Gist tokens (Table 7): :mod:`promptintern.baselines.gist`.

Backends live next to this file (``selective_context``, ``llm_generation`` (its local server is :mod:`promptintern.serving.server`), ``gist``);
the llmlingua family is in :mod:`promptintern.compress.lingua`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CompressionBaseline:
    """A compressor (registry name) applied to the whole template at the profile's baseline rate."""

    compressor: str
    question_aware: bool = False
    description: str = ""


COMPRESSION_BASELINES: dict[str, CompressionBaseline] = {
    "selective-context": CompressionBaseline("selectivecontext", description="Li et al. 2023, self-information"),
    "llmlingua": CompressionBaseline("llmlingua", description="Jiang et al. 2023, LLMLingua"),
    "longllmlingua": CompressionBaseline(
        "longllmlingua", question_aware=True, description="Jiang et al. 2024, question-aware LongLLMLingua"
    ),
    "llmlingua2": CompressionBaseline("llmlingua2", description="Pan et al. 2024, token classification"),
    "gpt4-generation": CompressionBaseline(
        "llmgeneration", description="an LLM asked to delete words (paper Appendix C.1), OpenAI-compatible API"
    ),
}

#: name: (template rate τ, fraction of the task's k); trained and served with that prompt.
DIRECT_FT: dict[str, tuple[float, float]] = {
    "ft-full": (1.0, 1.0),
    "ft-compressed": (0.6, 0.5),
    "ft-template": (1.0, 0.0),
    "ft-none": (0.0, 0.0),
}

#: Untrained rows: query only / the full template + k shots / the full prompt served with the key/values of
#: the prefix shared by all prompts computed once and reused (what a practitioner would try instead).
ZERO_SHOT: dict[str, tuple[float, float]] = {
    "zero-shot": (0.0, 0.0),
    "zero-shot-full": (1.0, 1.0),
    "prefix-cached": (1.0, 1.0),
}
PREFIX_CACHED = "prefix-cached"

GIST = "gist"


class BaselineUnavailable(RuntimeError):
    """A baseline cannot run here (e.g. no LLMLingua-2 checkpoint); the message says why and what to give."""


__all__ = [
    "COMPRESSION_BASELINES",
    "DIRECT_FT",
    "GIST",
    "PREFIX_CACHED",
    "ZERO_SHOT",
    "BaselineUnavailable",
    "CompressionBaseline",
]
