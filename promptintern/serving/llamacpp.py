"""Greedy generation with llama.cpp (llama-cpp-python): the model's GGUF as shipped, plus a trained LoRA adapter
written as a GGUF LoRA adapter (:mod:`.gguf_lora`). On two CPU cores it decodes several times faster than HF
transformers for one sequence; HF stays the reference and the GPU path.

Prompts are rendered by the HF tokenizer's chat template and tokenized by it, and the token ids go to llama.cpp
unchanged, so both backends see exactly the same input.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from promptintern.serving.generate import Generation, cut_at_stop


class LlamaCppUnavailable(RuntimeError):
    """The llamacpp backend cannot serve this model (no GGUF file, or llama-cpp-python missing)."""


def gguf_for(model: str) -> Path:
    """The GGUF file llama.cpp serves for ``model``: the embedded model's (the HF backend loads the same
    weights de-quantized from it, so both backends serve one model)."""
    from promptintern.serving.models import EMBEDDED, embedded_gguf_path

    if model == EMBEDDED:
        return embedded_gguf_path()
    raise LlamaCppUnavailable(
        f"the llamacpp backend serves the embedded model's GGUF; model {model!r} has none here (use --backend hf)"
    )


def adapter_gguf(adapter_dir: Path, model: str) -> Path:
    """The trained adapter as a GGUF LoRA file beside it (written once, atomically)."""
    from promptintern.serving.gguf_lora import export_gguf_lora
    from promptintern.serving.models import load_config

    out = adapter_dir.parent / f"{adapter_dir.name}.gguf"
    if not out.is_file() or out.stat().st_mtime < (adapter_dir / "adapter_model.safetensors").stat().st_mtime:
        tmp = out.with_suffix(".gguf.tmp")
        export_gguf_lora(adapter_dir, tmp, load_config(model))
        os.replace(tmp, out)
    return out


class LlamaCppGenerator:
    """One llama.cpp context (one sequence at a time) over a GGUF model and an optional GGUF LoRA adapter.

    ``threads`` decode (default 1), ``batch_threads`` process prompts (default: all cores). With
    ``OMP_WAIT_POLICY=PASSIVE`` (the CLI's default, so llama.cpp and torch share the cores without spinning) two
    decoding threads sleep and wake between the small steps of every token: 50 tok/s against 131 tok/s for one
    (SmolLM2-135M Q4_1, 2-core VM), while prompt processing still doubles with the second thread.
    """

    def __init__(self, gguf: Path, lora: Path | None = None, *, n_ctx: int = 4096, threads: int = 1,
                 batch_threads: int | None = None, flash_attn: bool = True):  # fmt: skip
        try:
            from llama_cpp import Llama
        except ImportError as exc:  # the optional [server] extra
            raise LlamaCppUnavailable(f"llama-cpp-python is not installed ({exc}); pip install 'promptintern[server]'") from None
        options = {"lora_path": str(lora)} if lora is not None else {}
        self.llm = Llama(
            model_path=str(gguf), n_ctx=n_ctx, n_threads=threads, n_threads_batch=batch_threads or os.cpu_count() or 1,
            flash_attn=flash_attn, verbose=False, **options,
        )  # fmt: skip
        self.identity = {"gguf": gguf.name, "lora": lora is not None, "flash_attn": flash_attn}

    def generate(self, prompt_ids: Sequence[Sequence[int]], *, max_new_tokens: int,
                 stop: Sequence[str] = (), reuse_prefix: bool = False) -> Iterator[Generation]:  # fmt: skip
        """Greedy completions, one per prompt (token ids), cut at the first stop string.

        ``reuse_prefix``: keep the key/values of the longest prefix a prompt shares with the tokens evaluated
        just before (llama-cpp-python's own prefix match), so a shared template is computed once; each
        generation then says how many of its prompt tokens came from the cache (``cached_tokens``). Otherwise
        every prompt is evaluated whole."""
        from promptintern.serving.prefix_cache import CachedGeneration

        for ids in prompt_ids:
            ids = list(ids)
            cached = 0
            if reuse_prefix:
                held = list(self.llm._input_ids)  # what the context holds now
                cached = next((i for i, (a, b) in enumerate(zip(held, ids[:-1], strict=False)) if a != b),
                              min(len(held), len(ids) - 1))  # fmt: skip
            else:
                self.llm.reset()
            t0 = time.perf_counter()
            out = self.llm.create_completion(
                prompt=ids, max_tokens=max_new_tokens, temperature=0.0, top_k=1, stop=list(stop) or None
            )
            elapsed = time.perf_counter() - t0
            text, produced = cut_at_stop(out["choices"][0]["text"], stop), int(out["usage"]["completion_tokens"])
            if reuse_prefix:
                yield CachedGeneration(text, len(ids), produced, elapsed, cached_tokens=cached)
            else:
                yield Generation(text, len(ids), produced, elapsed)

