"""Serving latency measured the way the paper's Table 8 reports it: streamed requests to one OpenAI-compatible
server per configuration, time to first token and total time per request.

:func:`measure_latency` starts one :class:`~promptintern.serving.server.LocalOpenAIServer` per
:class:`LatencyConfig` (each holds its model; the others sit idle while one answers), counts each prompt's
tokens with the server's ``/extras/tokenize/count`` (before any timing), sends ``warmup`` unrecorded requests to
each server, then, for every instance ``i``, one streamed ``/v1/completions`` request to each configuration in
turn, in the order :func:`request_order` gives (rotated by one per instance, so no configuration is always
first or always right after another's request).  One request at a time; every body holds ``prompt``,
``max_tokens`` (the same for every configuration), ``temperature: 0``, ``top_p: 1``, ``stream: true`` and the
stop strings.  Every server is stopped at the end, also on an error or Ctrl-C.

Token counts.  llama-cpp-python's stream carries no ``usage``, so ``output_tokens`` counts the stream's token
chunks (those whose ``finish_reason`` is null): the server sends one per generated token, except that the tokens
of a multi-byte character arrive as one chunk and the tokens that complete a stop string arrive as at most one
empty chunk.  An end-of-sequence token is not counted (it is not part of the answer).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass
from pathlib import Path

from promptintern.serving.openai_backend import REPETITION_FIELD
from promptintern.serving.server import LocalOpenAIServer

#: Output cap of a warm-up request: it processes a whole prompt and decodes a few tokens, enough to warm both.
WARMUP_TOKENS = 8


class LatencyError(RuntimeError):
    """A latency request failed (HTTP error, unreachable or stopped server, malformed stream)."""


@dataclass(frozen=True)
class LatencyConfig:
    """One serving configuration: a GGUF model, an optional GGUF LoRA adapter, whether the server reuses the
    KV cache of a shared prompt prefix, and its rendered prompts (one per test instance, in the same instance
    order for every configuration)."""

    name: str
    gguf: Path
    _: KW_ONLY
    prompts: Sequence[str]
    lora: Path | None = None
    prefix_reuse: bool = False


@dataclass(frozen=True)
class RequestTiming:
    """One measured request.

    ``sequence`` is its position among all measured requests (the sending order), ``instance`` the prompt's
    index.  ``ttft_s``: from sending the request to the first chunk with text (to the final chunk when the
    answer is empty); ``total_s``: until the stream ended (``data: [DONE]``); ``tpot_s``: ``(total_s - ttft_s)
    / (output_tokens - 1)``, ``None`` for fewer than two tokens.  ``output_tokens`` counts token chunks (module
    docstring), ``input_tokens`` is the server's count of the prompt's tokens, ``finish_reason`` the stream's
    (``length`` or ``stop``) and ``text`` the streamed answer.
    """

    config: str
    instance: int
    sequence: int
    ttft_s: float
    total_s: float
    output_tokens: int
    tpot_s: float | None
    input_tokens: int | None
    finish_reason: str | None
    text: str


def request_order(n_configs: int, n_instances: int) -> list[tuple[int, int]]:
    """``(instance, config index)`` pairs in sending order: instance by instance, each instance's configs
    rotated by its index (instance 1 starts with config 1, instance 2 with config 2, ...)."""
    return [(i, (i + k) % n_configs) for i in range(n_instances) for k in range(n_configs)]


def _post(url: str, body: dict, timeout: float):
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise LatencyError(
            f"POST {url} answered HTTP {exc.code}: {exc.read().decode('utf-8', 'replace')[:200]}"
        ) from None
    except OSError as exc:
        raise LatencyError(f"POST {url} failed: {exc}") from None


def count_tokens(server: LocalOpenAIServer, text: str, timeout: float = 60.0) -> int | None:
    """The server's token count of ``text`` (``/extras/tokenize/count``, the tokenization its completions use;
    a beginning-of-sequence token is counted when the model adds one); ``None`` when it does not answer it."""
    url = server.base_url.removesuffix("/v1") + "/extras/tokenize/count"
    try:
        with _post(url, {"input": text}, timeout) as response:
            return int(json.load(response)["count"])
    except (LatencyError, ValueError, KeyError, TypeError, OSError):
        return None


def stream_completion(
    server: LocalOpenAIServer,
    prompt: str,
    *,
    max_tokens: int,
    stop: Sequence[str] = (),
    timeout: float = 600.0,
) -> tuple[float, float, int, str | None, str]:
    """One streamed greedy completion: ``(ttft_s, total_s, token_chunks, finish_reason, text)``
    (``repeat_penalty`` 1: llama-cpp-python's server otherwise applies 1.1 before its greedy pick)."""
    body = {"prompt": prompt, "max_tokens": int(max_tokens), "temperature": 0.0, "top_p": 1.0, "stream": True,
            REPETITION_FIELD["llamacpp"]: 1.0}  # fmt: skip
    if stop:
        body["stop"] = list(stop)
    url = f"{server.base_url}/completions"
    begin = time.perf_counter()
    ttft = None
    chunks, finish, parts = 0, None, []
    with _post(url, body, timeout) as response:
        try:
            for raw in response:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue  # blank separators and ": ping" comments
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    break
                choice = json.loads(payload)["choices"][0]
                text = choice.get("text") or ""
                if choice.get("finish_reason") is None:
                    chunks += 1
                else:
                    finish = choice["finish_reason"]
                if ttft is None and (text or finish is not None):
                    ttft = time.perf_counter() - begin
                parts.append(text)
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise LatencyError(f"malformed stream from {url}: {exc!r}") from None
        except OSError as exc:
            raise LatencyError(f"the stream from {url} broke off: {exc}") from None
    total = time.perf_counter() - begin
    if ttft is None:
        raise LatencyError(
            f"the stream from {url} ended without a chunk (server output: {server.output_tail(300)})"
        )
    return ttft, total, chunks, finish, "".join(parts)


def measure_latency(
    configs: Sequence[LatencyConfig],
    *,
    max_tokens: int,
    stop: Sequence[str] = (),
    n_threads: int | None = None,
    n_ctx: int = 8192,
    warmup: int = 1,
    progress: bool = False,
) -> dict[str, list[RequestTiming]]:
    """Per configuration name, the timings of its requests in instance order (see the module docstring).

    ``warmup`` requests per server repeat its last prompt(s) with at most :data:`WARMUP_TOKENS` output tokens, so a
    prefix-reusing server starts measuring with a template prefix cached but never with the first measured prompt
    itself (unless there is only one).
    ``n_threads`` and ``n_ctx`` go to every server; ``progress`` prints one line per instance to stderr.
    """
    if not configs:
        raise ValueError("measure_latency needs at least one configuration")
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"configuration names must differ: {names}")
    n = len(configs[0].prompts)
    if n == 0 or any(len(c.prompts) != n for c in configs):
        raise ValueError(
            f"every configuration needs the same, non-zero number of prompts: {[len(c.prompts) for c in configs]}"
        )
    servers: list[LocalOpenAIServer] = []
    try:
        for config in configs:
            server = LocalOpenAIServer(
                config.gguf,
                lora=config.lora,
                prefix_reuse=config.prefix_reuse,
                n_threads=n_threads,
                n_ctx=n_ctx,
                model_alias=config.name,
            )
            servers.append(server)
            server.start()
        input_tokens = [
            [count_tokens(s, p) for p in c.prompts] for s, c in zip(servers, configs, strict=True)
        ]
        for server, config in zip(servers, configs, strict=True):
            for k in range(warmup):
                prompt = config.prompts[-1 - k % n]  # the whole prompt, a few output tokens
                stream_completion(server, prompt, max_tokens=min(max_tokens, WARMUP_TOKENS), stop=stop)
        timings: dict[str, list[RequestTiming]] = {c.name: [] for c in configs}
        for sequence, (i, c) in enumerate(request_order(len(configs), n)):
            config = configs[c]
            ttft, total, tokens, finish, text = stream_completion(
                servers[c], config.prompts[i], max_tokens=max_tokens, stop=stop
            )
            tpot = (total - ttft) / (tokens - 1) if tokens > 1 else None
            timings[config.name].append(
                RequestTiming(
                    config.name, i, sequence, ttft, total, tokens, tpot, input_tokens[c][i], finish, text
                )
            )
            if progress and (sequence + 1) % len(configs) == 0:
                print(
                    f"latency: instance {i + 1}/{n} measured on {len(configs)} configurations",
                    file=sys.stderr,
                )
        return timings
    finally:
        for server in servers:
            server.stop()


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "median": None}
    return {"mean": statistics.fmean(values), "median": statistics.median(values)}


def summarize(timings: dict[str, list[RequestTiming]]) -> dict[str, dict]:
    """Per configuration: ``n``, mean and median of ``total_s``, ``ttft_s`` and ``tpot_s`` (``tpot_s`` over the
    requests that have one, counted in ``n_tpot``), mean ``output_tokens`` and mean ``input_tokens`` (over the
    requests with a count; ``None`` when none has)."""
    summary = {}
    for name, rows in timings.items():
        tpots = [r.tpot_s for r in rows if r.tpot_s is not None]
        inputs = [r.input_tokens for r in rows if r.input_tokens is not None]
        summary[name] = {
            "n": len(rows),
            "total_s": _stats([r.total_s for r in rows]),
            "ttft_s": _stats([r.ttft_s for r in rows]),
            "tpot_s": _stats(tpots),
            "n_tpot": len(tpots),
            "mean_output_tokens": statistics.fmean(r.output_tokens for r in rows) if rows else None,
            "mean_input_tokens": statistics.fmean(inputs) if inputs else None,
        }
    return summary
