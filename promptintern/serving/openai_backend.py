"""Greedy generation through an OpenAI-compatible HTTP API (``--backend openai``).

:class:`OpenAIGenerator` sends one request per prompt, one at a time, to ``<base_url>/completions`` (``mode=
"completions"``: the prompt rendered by the chat template, as the local backends see it) or to
``<base_url>/chat/completions`` (``mode="chat"``: the prompt's chat messages, as the paper's GPT-4/GPT-3.5 runs
sent them).  The endpoint is the OpenAI API or any server speaking its protocol, e.g.
:class:`~promptintern.serving.server.LocalOpenAIServer`.

Every request body holds ``model``, the prompt (``prompt`` or ``messages``), ``max_tokens``, ``temperature: 0``,
``top_p: 1``, ``n: 1``, ``stream: false`` and, when there are any, ``stop`` (the API stop strings; the OpenAI
API accepts at most 4).  The answer is cut at the first stop string again with
:func:`~promptintern.serving.generate.cut_at_stop`, as the other backends do.  The API key (``api_key``, else
``$OPENAI_API_KEY``) goes in an ``Authorization: Bearer`` header; without one no header is sent.  Plain
``urllib``, no client library: every failure becomes a one-line :class:`OpenAIBackendError`.
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


class OpenAIBackendError(RuntimeError):
    """A request to the OpenAI-compatible endpoint failed: unreachable, an HTTP error or a malformed answer."""


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


def _excerpt(data: bytes | str, chars: int = 200) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    text = " ".join(text.split())
    return text if len(text) <= chars else text[:chars] + "..."


class OpenAIGenerator:
    """Greedy completions from ``model`` at ``base_url`` (e.g. ``https://api.openai.com/v1``).

    ``mode`` picks the endpoint (:data:`MODES`); ``timeout`` bounds each request in seconds.  :meth:`generate`
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
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY") or None
        self.mode = mode
        self.timeout = float(timeout)
        self.identity = {"endpoint": self.base_url, "model": model, "mode": mode}

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
        body.update(max_tokens=int(max_new_tokens), temperature=0.0, top_p=1.0, n=1, stream=False)
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
                f"POST {self.url} answered HTTP {exc.code} {exc.reason}: {_excerpt(exc.read())}"
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
        try:
            data = json.loads(raw)
        except ValueError:
            raise OpenAIBackendError(f"POST {self.url}: the answer is not JSON: {_excerpt(raw)}") from None
        if not isinstance(data, dict):
            raise OpenAIBackendError(f"POST {self.url}: the answer is not a JSON object: {_excerpt(raw)}")
        return data, elapsed

    def _text(self, data: dict) -> str:
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"] if self.mode == "chat" else choice["text"]
        except (KeyError, IndexError, TypeError):
            where = "choices[0].message.content" if self.mode == "chat" else "choices[0].text"
            raise OpenAIBackendError(
                f"POST {self.url}: malformed answer, no {where}: {_excerpt(json.dumps(data))}"
            ) from None
        if text is None:  # a chat answer may carry no content (e.g. a refusal or tool call)
            return ""
        if not isinstance(text, str):
            raise OpenAIBackendError(
                f"POST {self.url}: malformed answer, the text is a {type(text).__name__}"
            )
        return text

    def complete(self, prompt: ServedPrompt, *, max_new_tokens: int, stop: Sequence[str] = ()) -> Generation:
        """One greedy completion of ``prompt``."""
        data, elapsed = self._post(self.request_body(prompt, max_new_tokens=max_new_tokens, stop=stop))
        text = cut_at_stop(self._text(data), stop)
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        input_tokens = _count(usage.get("prompt_tokens"))
        return Generation(
            text,
            input_tokens if input_tokens is not None else prompt.input_tokens,
            _count(usage.get("completion_tokens")),
            elapsed,
        )

    def generate(
        self, prompts: Iterable[ServedPrompt], *, max_new_tokens: int, stop: Sequence[str] = ()
    ) -> Iterator[Generation]:
        """Greedy completions, one request per prompt, in order."""
        for prompt in prompts:
            yield self.complete(prompt, max_new_tokens=max_new_tokens, stop=stop)


def _count(value: object) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
