"""Table 8 latency measured as the paper measured it: an API round trip per instance, through an
OpenAI-compatible server (llama-cpp-python's, on 127.0.0.1), after the experiments have run.

For each task of a ``layout: latency`` table, every row whose experiment ran is one serving configuration
(:class:`~promptintern.serving.latency.LatencyConfig`): the model's GGUF, the row's trained adapter as a GGUF
LoRA, and the row's own rendered test prompts (the first ``latency_instances`` of its test subset). Each
configuration gets its own server; requests go one at a time, instance by instance with the configurations
interleaved (:func:`~promptintern.serving.latency.measure_latency`), all with the task's output cap and stop
strings, greedy. Servers of ordinary rows recompute the whole prompt every request (no prefix reuse, as an API
without prompt caching); the prefix-cached row's server reuses the key/values of the prompt prefix it shares
with the previous request (the template). Rows a server cannot serve (Gist tokens: their own decoding loop) get
no latency, with the reason.

The table shows the mean total, time to first token (TTFT) and time per output token after the first (TPOT),
so a method that writes longer answers is not mistaken for a slower prompt. Measurements are cached by content
(adapter files, prompts, cap, stop strings) under ``$PROMPTINTERN_HOME/latency/``, with the machine they ran on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from promptintern import keys
from promptintern.io import write_json
from promptintern.paths import home

#: Version of the measurement procedure (enters the cache key).
LATENCY_VERSION = 3  # 2: warm-up requests decode at most WARMUP_TOKENS; 3: greedy (repeat_penalty 1)


def _config(name: str, exp, n: int):
    """The row's serving configuration, or the reason it has none."""
    from promptintern.serving.latency import LatencyConfig
    from promptintern.serving.llamacpp import LlamaCppUnavailable, adapter_gguf, gguf_for
    from promptintern.serving.models import load_tokenizer

    prefix_reuse = exp.spec.prefix_cached
    if "llamacpp" not in exp.spec.backends and not prefix_reuse:
        return f"{exp.method} decodes with its own loop (HF); an OpenAI-compatible server cannot serve it"
    try:
        gguf = gguf_for(exp.model)
    except LlamaCppUnavailable as exc:
        return str(exc)
    lora = adapter_gguf(exp.train_directory / "adapter", exp.model) if exp.trains else None
    tok = load_tokenizer(exp.model)
    prompts = [p.render(tok) for p in exp.inference_prompts()[:n]]
    return LatencyConfig(name, gguf, prompts=prompts, lora=lora, prefix_reuse=prefix_reuse)


def _cache_key(configs, max_tokens: int, stop) -> str:
    payload = {
        "version": LATENCY_VERSION,
        "max_tokens": max_tokens,
        "stop": list(stop),
        "configs": [
            {
                "name": c.name,
                "gguf": keys.file_sha256(c.gguf),
                "lora": keys.file_sha256(c.lora) if c.lora else None,
                "prefix_reuse": c.prefix_reuse,
                "prompts": keys.content_key("prompts", list(c.prompts)),
            }
            for c in configs
        ],
    }
    return keys.content_key("latency", payload, length=20)


def measure_task(task: str, rows: Mapping[str, Any], n: int, progress: bool) -> dict[str, dict]:
    """Per row name: ``{"summary": ...}`` from the server, or ``{"reason": ...}``. ``rows``: name -> experiment."""
    from promptintern.harness.provenance import environment, utc_now
    from promptintern.serving.latency import measure_latency, summarize

    configs, out = [], {}
    for name, exp in rows.items():
        made = _config(name, exp, n)
        if isinstance(made, str):
            out[name] = {"reason": made}
        else:
            configs.append(made)
    if not configs:
        return out
    first = next(iter(rows.values()))
    max_tokens, stop = first.max_new_tokens, tuple(first.task.stop)
    path = home() / "latency" / f"{task}-{_cache_key(configs, max_tokens, stop)}.json"
    if path.is_file():
        measured = json.loads(path.read_text())
    else:
        timings = measure_latency(configs, max_tokens=max_tokens, stop=stop, progress=progress)
        measured = {
            "task": task,
            "max_tokens": max_tokens,
            "stop": list(stop),
            "instances": n,
            "summary": summarize(timings),
            "requests": {name: [asdict(t) for t in ts] for name, ts in timings.items()},
            "environment": environment(),
            "measured_at": utc_now(),
        }
        write_json(path, measured)
    for name, summary in measured["summary"].items():
        out[name] = {"summary": summary, "file": str(path)}
    return out


def row_fields(result: Mapping[str, Any]) -> dict[str, Any]:
    """The store fields of one row's latency result (:func:`measure_task`)."""
    if "reason" in result:
        return {"latency_s_mean": None, "latency_source": f"not measured: {result['reason']}"}
    s = result["summary"]
    return {
        "latency_s_mean": s["total_s"]["mean"],
        "ttft_s_mean": s["ttft_s"]["mean"],
        "tpot_s_mean": s["tpot_s"]["mean"],
        "latency_output_tokens_mean": s["mean_output_tokens"],
        "latency_n": s["n"],
        "latency_source": "server",
    }
