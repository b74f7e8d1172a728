"""The "GPT-4 generation" compression baseline (PromptIntern, Appendix C.1) over any OpenAI-compatible API.

The paper asks GPT-4 to compress a template by deleting words only (original order kept, no
abbreviations) down to a target ratio.  :class:`LLMGenerationCompressor` sends our own paraphrase of that
instruction (:data:`SYSTEM_PROMPT`, :data:`USER_PROMPT`; the paper's wording is not reproduced) through the
``openai`` client's ``chat.completions`` to any OpenAI-compatible endpoint: ``base_url=``, else
``$PROMPTINTERN_OPENAI_BASE_URL``, else ``$OPENAI_BASE_URL``, else api.openai.com.  With the default
``model="embedded"`` and no explicit ``base_url`` it starts a
:class:`~promptintern.serving.server.LocalOpenAIServer` (llama-cpp-python serving the embedded
SmolLM2-135M GGUF on 127.0.0.1) on first use and stops it on :meth:`~LLMGenerationCompressor.close`, at
the end of a ``with`` block, or at exit.  The environment endpoints are ignored for ``"embedded"`` (they
serve other models).

Differences from the paper: GPT-4 is replaced by whatever the endpoint serves (by default a 135M model), and
long texts are sent in chunks of about ``chunk_words`` whitespace words, cut at line ends (a longer line is
cut between words), each compressed at the same rate; ``chunk_words=None`` sends the text whole.  The paper
trusts GPT-4's answer; here every answer is checked against the rule "delete words only": answer words
(whitespace-split) must be an in-order subsequence of the input words.  Violations (``inserted`` words,
``changed`` words, words ``reordered``/repeated, ``punctuation`` changed on a kept word) are counted and
reported; ``on_violation="repair"`` (default) keeps the longest in-order common subsequence of input and
answer words (a word whose only difference is surrounding punctuation counts as kept, in its original form),
``"raise"`` raises :class:`SubsequenceViolationError`, ``"keep"`` returns the raw answer.  Except in
``"keep"`` mode the output is rebuilt from the kept input words with the input's line breaks, so it is
guaranteed to be a word subsequence of the input.  ``question`` is ignored (the baseline is
question-agnostic).  Sizes are counted in tiktoken ``cl100k_base`` tokens like the llmlingua backends.
"""

from __future__ import annotations

import atexit
import math
import os
import re
import string
import time
from array import array
from collections import Counter
from dataclasses import asdict, dataclass
from functools import cache
from itertools import pairwise
from typing import Any

from promptintern.compress.base import BaseCompressor, CompressionResult
from promptintern.compress.offline import cl100k_encoding

PROMPT_VERSION = 1
ON_VIOLATION = ("repair", "raise", "keep")
EMBEDDED = "embedded"
LOCAL_API_KEY = "sk-local-no-key"
OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: How many violations are copied into ``CompressionResult.meta["violation_examples"]``.
EXAMPLES = 5

SYSTEM_PROMPT = "You shorten texts by deleting words from them. You never rewrite, reorder or add words."
USER_PROMPT = """Shorten the text between <text> and </text> by deleting words.
Rules:
- Only delete words. Every word you keep must appear exactly as it is written in the text.
- Keep the remaining words in their original order.
- Do not abbreviate, paraphrase, summarise or translate anything, and do not add new words.
- Keep about {percent}% of the words (about {target} of the {total} words); delete the least informative ones.
- Reply with the shortened text only: no introduction, no explanation, no quotes, no tags.

<text>
{text}
</text>"""

_WORD = re.compile(r"\S+")
_PUNCT = string.punctuation + "“”‘’«»…"


class SubsequenceViolationError(ValueError):
    """The model's answer is not a word subsequence of its input (``on_violation="raise"``)."""

    def __init__(self, message: str, violations: list[Violation]):
        super().__init__(message)
        self.violations = violations


class LLMGenerationError(RuntimeError):
    """A chat.completions request failed (endpoint unreachable, HTTP error, bad answer)."""


# -- word subsequence check and repair --------------------------------------------------------------


@dataclass(frozen=True)
class Violation:
    """One breach of "delete words only": where in the answer, which word, and what it replaced."""

    kind: str  # inserted | changed | reordered | punctuation
    answer_index: int
    word: str
    input_word: str | None = None

    def __str__(self) -> str:
        if self.kind in ("changed", "punctuation"):
            return f"{self.kind} {self.input_word!r} -> {self.word!r} (answer word {self.answer_index})"
        return f"{self.kind} {self.word!r} (answer word {self.answer_index})"


@dataclass(frozen=True)
class Alignment:
    """Answer words aligned to input words: ``matches`` are ``(input_index, answer_index)`` pairs."""

    matches: list[tuple[int, int]]
    violations: list[Violation]

    @property
    def kept(self) -> list[int]:
        return [i for i, _ in self.matches]


def word_key(word: str) -> str:
    """``word`` without surrounding punctuation (``word`` itself when it is all punctuation)."""
    return word.strip(_PUNCT) or word


def _greedy_exact(source: list[str], answer: list[str]) -> list[tuple[int, int]] | None:
    matches, i = [], 0
    for j, word in enumerate(answer):
        while i < len(source) and source[i] != word:
            i += 1
        if i == len(source):
            return None
        matches.append((i, j))
        i += 1
    return matches


def _lcs(source: list[str], answer: list[str]) -> list[tuple[int, int]]:
    """Longest in-order common subsequence by :func:`word_key`, preferring exact matches on ties."""
    n, m = len(source), len(answer)
    big = m + 1  # a match is worth more than all possible exact-match bonuses together
    skeys, akeys = [word_key(w) for w in source], [word_key(w) for w in answer]
    rows = [array("q", bytes(8 * (m + 1)))]
    for i in range(1, n + 1):
        prev, cur = rows[-1], array("q", bytes(8 * (m + 1)))
        key, word = skeys[i - 1], source[i - 1]
        for j in range(1, m + 1):
            best = prev[j] if prev[j] >= cur[j - 1] else cur[j - 1]
            if akeys[j - 1] == key:
                diag = prev[j - 1] + big + (answer[j - 1] == word)
                if diag > best:
                    best = diag
            cur[j] = best
        rows.append(cur)
    matches, i, j = [], n, m
    while i and j:
        if skeys[i - 1] == akeys[j - 1] and rows[i][j] == rows[i - 1][j - 1] + big + (
            answer[j - 1] == source[i - 1]
        ):
            matches.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif rows[i - 1][j] >= rows[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return matches[::-1]


def align(source: list[str], answer: list[str], *, answer_offset: int = 0) -> Alignment:
    """Align ``answer`` words to ``source`` words and list every violation of "delete words only".

    Unmatched answer words are ``reordered`` when their word occurs elsewhere in the source (moved or
    repeated), ``changed`` when source words were dropped at the same place (paired in order), else
    ``inserted``; a matched word that differs only in surrounding punctuation is a ``punctuation`` change.
    ``answer_offset`` is added to reported answer indices (for chunked texts).
    """
    matches = _greedy_exact(source, answer)
    if matches is None:
        matches = _lcs(source, answer)
    source_keys = {word_key(w) for w in source}
    violations: list[Violation] = []
    bounds = [(-1, -1), *matches, (len(source), len(answer))]
    for (i0, j0), (i1, j1) in pairwise(bounds):
        dropped = list(range(i0 + 1, i1))
        for j in range(j0 + 1, j1):
            word = answer[j]
            if word_key(word) in source_keys:
                violations.append(Violation("reordered", j + answer_offset, word))
            elif dropped:
                violations.append(Violation("changed", j + answer_offset, word, source[dropped.pop(0)]))
            else:
                violations.append(Violation("inserted", j + answer_offset, word))
        if i1 < len(source) and j1 < len(answer) and source[i1] != answer[j1]:
            violations.append(Violation("punctuation", j1 + answer_offset, answer[j1], source[i1]))
    violations.sort(key=lambda v: v.answer_index)
    return Alignment(matches, violations)


def is_word_subsequence(answer: str, source: str) -> bool:
    """Whether ``answer``'s whitespace words are an in-order subsequence of ``source``'s."""
    return _greedy_exact(source.split(), answer.split()) is not None


def render_kept(text: str, kept: list[int]) -> str:
    """The words of ``text`` at indices ``kept`` (ascending), joined by a space, or by one or two line
    breaks where the input had line breaks between them (paragraph breaks survive)."""
    spans = [m.span() for m in _WORD.finditer(text)]
    out: list[str] = []
    previous_end: int | None = None
    for index in kept:
        start, end = spans[index]
        if previous_end is not None:
            newlines = text.count("\n", previous_end, start)
            out.append("\n" * min(newlines, 2) if newlines else " ")
        out.append(text[start:end])
        previous_end = end
    return "".join(out)


# -- chunking -------------------------------------------------------------------------------------


def chunk_ranges(text: str, chunk_words: int | None) -> list[tuple[int, int]]:
    """Word-index ranges ``[lo, hi)`` of at most ``chunk_words`` words, cut at line ends where possible.

    Whole lines are packed greedily; a line longer than ``chunk_words`` is cut between words.
    ``chunk_words=None`` gives one range over all words.
    """
    n = len(_WORD.findall(text))
    if chunk_words is None or n <= chunk_words:
        return [(0, n)] if n else []
    line_sizes = [len(line.split()) for line in text.split("\n")]
    ranges: list[tuple[int, int]] = []
    lo = hi = 0
    for size in line_sizes:
        if size == 0:
            continue
        if hi - lo + size > chunk_words and hi > lo:
            ranges.append((lo, hi))
            lo = hi
        while size > chunk_words - (hi - lo):  # only for a line longer than a whole chunk
            take = chunk_words - (hi - lo)
            hi, size = hi + take, size - take
            ranges.append((lo, hi))
            lo = hi
        hi += size
    if hi > lo:
        ranges.append((lo, hi))
    return ranges


def chunk_text(text: str, lo: int, hi: int) -> str:
    """The original substring of ``text`` from word ``lo`` to word ``hi - 1`` (layout preserved)."""
    spans = [m.span() for m in _WORD.finditer(text)]
    return text[spans[lo][0] : spans[hi - 1][1]]


def build_messages(text: str, rate: float) -> list[dict[str, str]]:
    """The chat messages asking to keep about ``rate`` of the words of ``text``."""
    total = len(text.split())
    user = USER_PROMPT.format(
        percent=round(rate * 100), target=max(1, round(rate * total)), total=total, text=text
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


@cache
def _gguf_sha256(path: str) -> str:
    from promptintern.io import sha256_file

    return sha256_file(path)


# -- compressor -----------------------------------------------------------------------------------


class LLMGenerationCompressor(BaseCompressor):
    """Word-deletion compression by a chat model behind an OpenAI-compatible API (paper: GPT-4).

    ``max_tokens=None`` allows ``1.25 ×`` the chunk's cl100k tokens + 32 per answer (room to echo the
    chunk).  ``server_options`` go to :class:`LocalOpenAIServer` (``n_ctx``, ``n_threads``, ...).  Use it
    as a context manager or call :meth:`close` to stop a local server it started.
    """

    name = "llm-generation"
    unit = "cl100k_base"

    def __init__(
        self,
        model: str = EMBEDDED,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        chunk_words: int | None = 400,
        on_violation: str = "repair",
        timeout: float = 600.0,
        max_retries: int = 2,
        server_options: dict[str, Any] | None = None,
    ):
        if on_violation not in ON_VIOLATION:
            raise ValueError(f"on_violation must be one of {ON_VIOLATION}, got {on_violation!r}")
        if chunk_words is not None and chunk_words < 1:
            raise ValueError(f"chunk_words must be a positive number of words or None, got {chunk_words}")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be positive or None, got {max_tokens}")
        self.model = model
        self.local = model == EMBEDDED and base_url is None
        if self.local:
            self.base_url = None
        else:
            self.base_url = (
                base_url
                or os.environ.get("PROMPTINTERN_OPENAI_BASE_URL")
                or os.environ.get("OPENAI_BASE_URL")
                or None
            )
        self._api_key = api_key
        self.temperature = float(temperature)
        self.max_tokens = max_tokens
        self.chunk_words = chunk_words
        self.on_violation = on_violation
        self.timeout = timeout
        self.max_retries = max_retries
        self.server_options = dict(server_options or {})
        self._server: Any = None
        self._client: Any = None

    def count(self, text: str) -> int:
        return len(cl100k_encoding().encode(text, disallowed_special=()))

    def unavailable(self) -> str | None:
        """Why no request can be sent (an OpenAI model with neither an API key nor another endpoint), else None."""
        if self.local or self.base_url is not None or self._api_key or os.environ.get("OPENAI_API_KEY"):
            return None
        return (
            f"model {self.model!r} on {OPENAI_DEFAULT_BASE_URL} needs an API key: set OPENAI_API_KEY, or point "
            "$PROMPTINTERN_OPENAI_BASE_URL at an OpenAI-compatible server"
        )

    def endpoint_id(self) -> str:
        """``base_url`` of the endpoint, or ``local-llama-cpp:<gguf sha256 prefix>`` for the local server."""
        if self.local:
            gguf = self.server_options.get("gguf_path")
            if gguf is None:
                from promptintern.serving.models import embedded_gguf_path

                gguf = embedded_gguf_path()
            return f"local-llama-cpp:{_gguf_sha256(str(gguf))[:16]}"
        return (self.base_url or OPENAI_DEFAULT_BASE_URL).rstrip("/")

    def fingerprint(self) -> dict[str, Any]:
        from promptintern.serving.server import llama_cpp_version

        return {
            "backend": self.name,
            "model": self.model,
            "endpoint": self.endpoint_id(),
            "server": f"llama-cpp-python {llama_cpp_version()}" if self.local else None,
            "prompt_version": PROMPT_VERSION,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "chunk_words": self.chunk_words,
            "on_violation": self.on_violation,
        }

    # -- endpoint ---------------------------------------------------------------------------------

    def _connect(self) -> tuple[Any, str, str]:
        """``(client, model name to request, base_url)``, starting the local server when needed."""
        import openai

        if self.local:
            if self._server is None or not self._server.running:
                from promptintern.serving.server import LocalOpenAIServer

                # flash attention off and every core decoding: the settings every cached compression of this
                # baseline was made with
                cores = os.cpu_count() or 1
                defaults = {"flash_attn": False, "n_threads": cores, "n_threads_batch": cores}
                self._server = LocalOpenAIServer(**{**defaults, **self.server_options}).start()
                self._client = None
                atexit.register(self.close)
            base_url, model = self._server.base_url, self._server.model_id
        else:
            base_url, model = (self.base_url or OPENAI_DEFAULT_BASE_URL), self.model
        if self._client is None:
            key = self._api_key or os.environ.get("OPENAI_API_KEY")
            if not key:
                if self.base_url is None and not self.local:
                    raise LLMGenerationError(
                        f"model {self.model!r} on {OPENAI_DEFAULT_BASE_URL} needs an API key: set "
                        "OPENAI_API_KEY or pass api_key=, or point base_url= at an OpenAI-compatible server"
                    )
                key = LOCAL_API_KEY
            self._client = openai.OpenAI(
                base_url=base_url, api_key=key, timeout=self.timeout, max_retries=self.max_retries
            )
        return self._client, model, base_url

    def _max_tokens(self, chunk: str) -> int:
        if self.max_tokens is not None:
            return self.max_tokens
        return math.ceil(1.25 * self.count(chunk)) + 32

    def _ask(self, client: Any, model: str, base_url: str, chunk: str, rate: float) -> tuple[str, Any]:
        import openai

        try:
            response = client.chat.completions.create(
                model=model,
                messages=build_messages(chunk, rate),
                temperature=self.temperature,
                max_tokens=self._max_tokens(chunk),
            )
        except openai.OpenAIError as exc:
            raise LLMGenerationError(
                f"chat.completions request to {base_url} (model {model!r}) failed: {exc}"
            ) from exc
        if not getattr(response, "choices", None):
            raise LLMGenerationError(f"{base_url} (model {model!r}) answered without choices: {response!r}")
        return response.choices[0].message.content or "", response

    # -- compression ------------------------------------------------------------------------------

    def _compress(self, text: str, rate: float, *, question: str | None) -> CompressionResult:
        begin = time.perf_counter()
        client, model, base_url = self._connect()
        words = _WORD.findall(text)
        kept: list[int] = []
        violations: list[Violation] = []
        answers: list[str] = []
        finish = Counter()
        usage = Counter()
        served_by: set[str] = set()
        answer_words = 0
        ranges = chunk_ranges(text, self.chunk_words)
        for lo, hi in ranges:
            answer, response = self._ask(client, model, base_url, chunk_text(text, lo, hi), rate)
            answers.append(answer.strip())
            finish[str(response.choices[0].finish_reason)] += 1
            served_by.add(str(getattr(response, "model", None) or model))
            if getattr(response, "usage", None) is not None:
                usage["prompt_tokens"] += response.usage.prompt_tokens or 0
                usage["completion_tokens"] += response.usage.completion_tokens or 0
            found = answer.split()
            alignment = align(words[lo:hi], found, answer_offset=answer_words)
            kept.extend(lo + i for i in alignment.kept)
            violations.extend(alignment.violations)
            answer_words += len(found)
        if violations and self.on_violation == "raise":
            shown = "; ".join(str(v) for v in violations[:EXAMPLES])
            raise SubsequenceViolationError(
                f"{model!r} on {base_url} broke 'delete words only' {len(violations)} time(s): {shown}",
                violations,
            )
        if self.on_violation == "keep":
            compressed = self._join_answers(text, ranges, answers)
        else:
            compressed = render_kept(text, kept)
        return self.result(
            text,
            compressed,
            rate,
            endpoint=self.endpoint_id(),
            endpoint_model=sorted(served_by)[0] if len(served_by) == 1 else sorted(served_by),
            prompt_version=PROMPT_VERSION,
            chunks=len(ranges),
            words_input=len(words),
            words_requested=round(rate * len(words)),
            words_answer=answer_words,
            words_kept=len(kept) if self.on_violation != "keep" else answer_words,
            violations=len(violations),
            violation_kinds=dict(Counter(v.kind for v in violations)),
            violation_examples=[asdict(v) for v in violations[:EXAMPLES]],
            on_violation=self.on_violation,
            raw_answer_chars=sum(len(a) for a in answers),
            finish_reasons=dict(finish),
            usage=dict(usage),
            seconds=round(time.perf_counter() - begin, 3),
        )

    @staticmethod
    def _join_answers(text: str, ranges: list[tuple[int, int]], answers: list[str]) -> str:
        spans = [m.span() for m in _WORD.finditer(text)]
        out = answers[0] if answers else ""
        for (lo, _), previous, answer in zip(ranges[1:], ranges, answers[1:], strict=False):
            gap = text[spans[previous[1] - 1][1] : spans[lo][0]]
            out += ("\n" * min(gap.count("\n"), 2) or " ") + answer
        return out

    # -- lifecycle --------------------------------------------------------------------------------

    @property
    def server(self) -> Any:
        """The running :class:`LocalOpenAIServer`, or None."""
        return self._server

    def close(self) -> None:
        """Stop the local server this compressor started (no-op otherwise); safe to call repeatedly."""
        atexit.unregister(self.close)
        server, self._server = self._server, None
        if self._client is not None:
            self._client.close()
            self._client = None
        if server is not None:
            server.stop()

    def __enter__(self) -> LLMGenerationCompressor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
