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
                 stop: Sequence[str] = ()) -> Iterator[Generation]:  # fmt: skip
        """Greedy completions, one per prompt (token ids), cut at the first stop string."""
        for ids in prompt_ids:
            self.llm.reset()
            t0 = time.perf_counter()
            out = self.llm.create_completion(
                prompt=list(ids), max_tokens=max_new_tokens, temperature=0.0, top_k=1, stop=list(stop) or None
            )
            elapsed = time.perf_counter() - t0
            text = out["choices"][0]["text"]
            yield Generation(cut_at_stop(text, stop), len(ids), int(out["usage"]["completion_tokens"]), elapsed)

