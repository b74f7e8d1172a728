"""Generation through an OpenAI-compatible HTTP API (``--backend openai``), greedy by default.

:class:`OpenAIGenerator` sends one request per prompt, one at a time, to ``<base_url>/completions`` (``mode=
"completions"``: the prompt rendered by the chat template, as the local backends see it) or to
``<base_url>/chat/completions`` (``mode="chat"``: the prompt's chat messages, as the paper's GPT-4/GPT-3.5 runs
sent them).  The endpoint is the OpenAI API or any server speaking its protocol, e.g.
:class:`~promptintern.serving.server.LocalOpenAIServer` (llama-cpp-python) or a vLLM server.

Every request body holds ``model``, the prompt (``prompt`` or ``messages``), ``max_tokens``, the decoding
settings of :class:`Decoding` (by default the paper's, :data:`PAPER_DECODING`: ``temperature: 0``,
``top_p: 0.95``, ``frequency_penalty: 0``, ``presence_penalty: 0``; greedy, since top_p does not matter at
temperature 0), ``n: 1``, ``stream: false`` and, when there are any, ``stop`` (the API stop strings; the OpenAI
API accepts at most 4).  ``server`` names the kind of server (:data:`SERVERS`) and adds the repetition
penalty under that server's own name, because both local servers otherwise apply one of their own:

* ``openai``: nothing more (the OpenAI API rejects unknown fields);
* ``vllm``: ``repetition_penalty`` (vLLM >= 0.8 takes a request's missing sampling fields from the model's
  ``generation_config.json``, e.g. ``repetition_penalty: 1.05`` for Qwen2.5-Instruct);
* ``llamacpp``: ``repeat_penalty`` (llama-cpp-python's server defaults to 1.1, and llama.cpp applies it before
  the greedy pick, so without it the answers are not the greedy ones the ``hf`` and ``llamacpp`` backends give).

The answer is cut at the first stop string again with :func:`~promptintern.serving.generate.cut_at_stop`, as
the other backends do.  ``usage.prompt_tokens`` / ``usage.completion_tokens`` give the token counts; when the
answer also says how many prompt tokens the server took from its prefix cache
(``usage.prompt_tokens_details.cached_tokens``, OpenAI and ``vllm serve --enable-prompt-tokens-details``), the
record is a :class:`~promptintern.serving.prefix_cache.CachedGeneration` that carries it.  The API key
(``api_key``, else ``$OPENAI_API_KEY``) goes in an ``Authorization: Bearer`` header; without one no header is
sent.  Plain ``urllib``, no client library: every failure becomes a one-line :class:`OpenAIBackendError` (an
HTTP error shows the server's own ``error.message`` / ``message`` when its body has one).

A trained LoRA adapter behind vLLM.  ``vllm serve`` loads the adapters named on its command line and serves each
as a model of its own on ``/v1/completions`` and ``/v1/chat/completions``; the client addresses one by passing
its NAME as ``model`` (the profile's ``generation.openai.model``) with ``server="vllm"``::

    vllm serve BASE_MODEL --dtype bfloat16 --max-model-len 4096 --seed 0 \
        --enable-lora --max-lora-rank 32 --max-loras 1 --lora-modules NAME=/path/to/stage-3/adapter \
        --no-enable-prefix-caching --generation-config vllm --host 127.0.0.1 --port 8000

``--max-lora-rank`` must be at least the adapter's rank (``train.lora_r``, 32 by default; vLLM accepts 8, 16,
32, 64, 128, 256, 320, 512), ``--max-model-len`` is the training context (``train.max_length``), and
``--enable-prefix-caching`` replaces ``--no-enable-prefix-caching`` for the prefix-cached row only (vLLM's V1
engine caches prefixes unless told not to).  ``--generation-config vllm`` keeps the model's
``generation_config.json`` out of the defaults.  :func:`promptintern.serving.vllm_backend.serve_command` builds
this command from the same settings as the in-process ``--backend vllm`` engine.  Then, in the profile::

    generation:
      backend: openai
      openai: {base_url: "http://127.0.0.1:8000/v1", model: NAME, server: vllm}
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from promptintern.serving.generate import Generation, cut_at_stop

MODES = ("completions", "chat")
#: Kinds of OpenAI-compatible server, by the extra sampling field each needs (see the module docstring).
SERVERS = ("openai", "vllm", "llamacpp")
#: The request field that carries the repetition penalty, per server kind (None: the field is not sent).
REPETITION_FIELD: dict[str, str | None] = {"openai": None, "vllm": "repetition_penalty", "llamacpp": "repeat_penalty"}


class OpenAIBackendError(RuntimeError):
    """A request to the OpenAI-compatible endpoint failed: unreachable, an HTTP error or a malformed answer."""


@dataclass(frozen=True)
class Decoding:
    """Sampling settings of a request (the defaults: greedy, no penalties).

    ``temperature`` 0 is greedy (``top_p`` then has no effect: vLLM resets it to 1, llama.cpp picks the top
    token after the penalties, and the most likely token is always inside the nucleus); ``frequency_penalty`` /
    ``presence_penalty`` are the OpenAI API's (0 = off); ``repetition_penalty`` is the multiplicative penalty of
    vLLM and llama.cpp (1 = off), sent only to the servers that know it (:data:`REPETITION_FIELD`).
    """

    temperature: float = 0.0
    top_p: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        for name in ("frequency_penalty", "presence_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise ValueError(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


#: The paper's decoding of its inference runs (Appendix A.2: temperature 0, top_p 0.95, presence and frequency
#: penalty 0; its ``max_tokens`` 1028 is the caller's ``max_new_tokens``): greedy, no penalties.
PAPER_DECODING = Decoding(temperature=0.0, top_p=0.95)


@dataclass(frozen=True)
class ServedPrompt:
    """One prompt in the two forms an OpenAI-compatible API takes.

    ``text`` is the prompt rendered by the chat template (``<|im_start|>...assistant\\n``), sent as ``prompt``
    in ``completions`` mode; ``messages`` are its chat turns (``{"role": ..., "content": ...}``), sent in
    ``chat`` mode.  ``input_tokens`` is the prompt length as the harness counts it (its tokenizer); it is
    reported when the answer carries no ``usage.prompt_tokens``.
    """

    text: str = ""
    messages: Sequence[Mapping[str, str]] = ()
    input_tokens: int | None = None


def json_object(raw: bytes | str, where: str, error: type[Exception]) -> dict:
    """The JSON object an API answered, or ``error`` naming ``where`` and an excerpt of what came instead."""
    try:
        data = json.loads(raw)
    except ValueError:
        raise error(f"{where}: the answer is not JSON: {excerpt(raw)}") from None
    if not isinstance(data, dict):
        raise error(f"{where}: the answer is not a JSON object: {excerpt(raw)}")
    return data


def excerpt(data: bytes | str, chars: int = 200) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    text = " ".join(text.split())
    return text if len(text) <= chars else text[:chars] + "..."


class OpenAIGenerator:
    """Completions from ``model`` at ``base_url`` (e.g. ``https://api.openai.com/v1``), greedy by default.

    ``model`` is the served model's name: for a vLLM server with ``--enable-lora``, the NAME of a
    ``--lora-modules NAME=PATH`` adapter.  ``mode`` picks the endpoint (:data:`MODES`); ``timeout`` bounds each
    request in seconds; ``decoding`` holds the sampling settings (:data:`PAPER_DECODING`); ``server`` is the
    kind of server (:data:`SERVERS`), which decides how the repetition penalty is sent.  :meth:`generate`
    yields one :class:`~promptintern.serving.generate.Generation` per prompt: the answer's text cut at the
    stop strings, ``input_tokens`` from ``usage.prompt_tokens`` (else the prompt's own count),
    ``output_tokens`` from ``usage.completion_tokens`` (``None`` when the answer has no usage) and
    ``latency_s``, the wall time of the request (sending it until the whole answer is read).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        mode: str = "completions",
        timeout: float = 120.0,
        decoding: Decoding = PAPER_DECODING,
        server: str = "openai",
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if server not in SERVERS:
            raise ValueError(f"server must be one of {', '.join(SERVERS)}, got {server!r}")
        if not model:
            raise ValueError("model must name the served model (or a vLLM --lora-modules adapter)")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY") or None
        self.mode = mode
        self.timeout = float(timeout)
        self.decoding = decoding
        self.server = server
        self.identity = {"endpoint": self.base_url, "model": model, "mode": mode, "server": server}

    @property
    def url(self) -> str:
        """The endpoint every request is POSTed to."""
        return f"{self.base_url}/{'chat/completions' if self.mode == 'chat' else 'completions'}"

    def request_body(self, prompt: ServedPrompt, *, max_new_tokens: int, stop: Sequence[str] = ()) -> dict:
        """The JSON body sent for ``prompt`` (see the module docstring)."""
        body: dict[str, Any] = {"model": self.model}
        if self.mode == "chat":
            if not prompt.messages:
                raise ValueError("chat mode needs ServedPrompt.messages")
            body["messages"] = [dict(m) for m in prompt.messages]
        else:
            body["prompt"] = prompt.text
        d = self.decoding
        body.update(
            max_tokens=int(max_new_tokens),
            temperature=float(d.temperature),
            top_p=float(d.top_p),
            frequency_penalty=float(d.frequency_penalty),
            presence_penalty=float(d.presence_penalty),
        )
        field = REPETITION_FIELD[self.server]
        if field is not None:
            body[field] = float(d.repetition_penalty)
        body.update(n=1, stream=False)
        if stop:
            body["stop"] = list(stop)
        return body

    def _post(self, body: dict) -> tuple[dict, float]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers)
        begin = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise OpenAIBackendError(
                f"POST {self.url} answered HTTP {exc.code} {exc.reason}: {_error_message(exc.read())}"
            ) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, TimeoutError):
                raise OpenAIBackendError(f"POST {self.url}: no answer within {self.timeout:g} s") from None
            if isinstance(reason, ConnectionRefusedError):
                raise OpenAIBackendError(
                    f"cannot reach {self.url}: connection refused (is the server running?)"
                ) from None
            raise OpenAIBackendError(f"cannot reach {self.url}: {reason}") from None
        except TimeoutError:
            raise OpenAIBackendError(f"POST {self.url}: no answer within {self.timeout:g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise OpenAIBackendError(f"POST {self.url} failed: {exc}") from None
        elapsed = time.perf_counter() - begin
        return json_object(raw, f"POST {self.url}", OpenAIBackendError), elapsed

    def _text(self, data: dict) -> str:
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"] if self.mode == "chat" else choice["text"]
        except (KeyError, IndexError, TypeError):
            where = "choices[0].message.content" if self.mode == "chat" else "choices[0].text"
            raise OpenAIBackendError(
                f"POST {self.url}: malformed answer, no {where}: {excerpt(json.dumps(data))}"
            ) from None
        if text is None:  # a chat answer may carry no content (e.g. a refusal or tool call)
            return ""
        if not isinstance(text, str):
            raise OpenAIBackendError(
                f"POST {self.url}: malformed answer, the text is a {type(text).__name__}"
            )
        return text

    def complete(self, prompt: ServedPrompt, *, max_new_tokens: int, stop: Sequence[str] = ()) -> Generation:
        """One completion of ``prompt`` (greedy with the default :attr:`decoding`)."""
        data, elapsed = self._post(self.request_body(prompt, max_new_tokens=max_new_tokens, stop=stop))
        text = cut_at_stop(self._text(data), stop)
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        input_tokens = _count(usage.get("prompt_tokens"))
        fields = (
            text,
            input_tokens if input_tokens is not None else prompt.input_tokens,
            _count(usage.get("completion_tokens")),
            elapsed,
        )
        details = usage.get("prompt_tokens_details")
        cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else None
        if cached is None:
            return Generation(*fields)
        from promptintern.serving.prefix_cache import CachedGeneration

        return CachedGeneration(*fields, cached_tokens=cached)

    def generate(
        self, prompts: Iterable[ServedPrompt], *, max_new_tokens: int, stop: Sequence[str] = ()
    ) -> Iterator[Generation]:
        """Completions, one request per prompt, in order."""
        for prompt in prompts:
            yield self.complete(prompt, max_new_tokens=max_new_tokens, stop=stop)


def _error_message(data: bytes) -> str:
    """The message of an HTTP error's body: ``error.message`` (OpenAI), ``message`` (vLLM) or ``detail``
    (FastAPI), else an excerpt of the body."""
    try:
        parsed = json.loads(data)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        error = parsed.get("error")
        for message in (
            error.get("message") if isinstance(error, dict) else error,
            parsed.get("message"),
            parsed.get("detail"),
        ):
            if isinstance(message, str) and message.strip():
                return excerpt(message)
    return excerpt(data)


def _count(value: object) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
