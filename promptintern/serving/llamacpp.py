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
    """llama.cpp contexts (one sequence at a time each) over a GGUF model and an optional GGUF LoRA adapter.

    ``threads`` decode (default 1), ``batch_threads`` process prompts (default: all cores). With
    ``OMP_WAIT_POLICY=PASSIVE`` (the CLI's default, so llama.cpp and torch share the cores without spinning) two
    decoding threads sleep and wake between the small steps of every token: 50 tok/s against 131 tok/s for one
    (SmolLM2-135M Q4_1, 2-core VM), while prompt processing still doubles with the second thread.

    ``workers`` > 1: that many contexts (one thread each for decoding and prompts) serve the prompts in
    parallel, a thread per context; llama.cpp releases the GIL, so two one-thread decoders reached 241 tok/s
    together against 130 for one on the same 2 cores. Each prompt is still generated alone on one context
    (the same greedy tokens as with one worker); generations come back in prompt order, and ``latency_s`` is
    the wall time of a request while the other workers run.
    """

    def __init__(self, gguf: Path, lora: Path | None = None, *, n_ctx: int = 4096, threads: int = 1,
                 batch_threads: int | None = None, flash_attn: bool = True, workers: int = 1):  # fmt: skip
        try:
            from llama_cpp import Llama
        except ImportError as exc:  # the optional [server] extra
            raise LlamaCppUnavailable(f"llama-cpp-python is not installed ({exc}); pip install 'promptintern[server]'") from None
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        options = {"lora_path": str(lora)} if lora is not None else {}
        cores = os.cpu_count() or 1
        batch_threads = batch_threads or (cores if workers == 1 else max(1, cores // workers))
        self.contexts = [
            Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=threads, n_threads_batch=batch_threads,
                  flash_attn=flash_attn, verbose=False, **options)  # fmt: skip
            for _ in range(workers)
        ]
        self.llm = self.contexts[0]
        self.identity = {"gguf": gguf.name, "lora": lora is not None, "flash_attn": flash_attn}

    def generate(self, prompt_ids: Sequence[Sequence[int]], *, max_new_tokens: int, stop: Sequence[str] = (),
                 reuse_prefix: bool = False, shared_prefix: int | None = None) -> Iterator[Generation]:  # fmt: skip
        """Greedy completions, one per prompt (token ids), cut at the first stop string, in prompt order.

        ``reuse_prefix``: the key/values of the prompts' shared prefix (``shared_prefix`` tokens, default the
        longest prefix all of ``prompt_ids`` share; at most all but the last token of each) are computed once
        per context, on their own, and every prompt evaluates only what follows them; each generation says how
        many of its prompt tokens came from the cache (``cached_tokens``). Otherwise every prompt is evaluated
        whole. llama.cpp's logits depend on how a prompt is split into batches, so the split is fixed: a
        prompt's answer does not depend on which context serves it or what that context served before (with
        llama-cpp-python's own prefix match it did, and two workers gave a few different answers per
        250 prompts from run to run)."""
        prefix = 0
        if reuse_prefix and prompt_ids:
            from promptintern.serving.prefix_cache import common_prefix_length

            prefix = common_prefix_length(prompt_ids) if shared_prefix is None else shared_prefix
            prefix = min(prefix, *(len(ids) - 1 for ids in prompt_ids))
        shared = list(prompt_ids[0][:prefix]) if prefix > 0 else []
        if reuse_prefix and any(list(ids[:prefix]) != shared for ids in prompt_ids):
            raise ValueError(f"shared_prefix={prefix}: not every prompt starts with the same {prefix} tokens")
        if len(self.contexts) == 1:
            for ids in prompt_ids:
                yield self._complete(self.llm, list(ids), max_new_tokens, stop, reuse_prefix, shared)
            return
        import queue
        from concurrent.futures import ThreadPoolExecutor

        free: queue.SimpleQueue = queue.SimpleQueue()
        for llm in self.contexts:
            free.put(llm)

        def one(ids):
            llm = free.get()
            try:
                return self._complete(llm, list(ids), max_new_tokens, stop, reuse_prefix, shared)
            finally:
                free.put(llm)

        with ThreadPoolExecutor(max_workers=len(self.contexts)) as pool:
            pending = [pool.submit(one, ids) for ids in prompt_ids]
            try:
                for future in pending:
                    yield future.result()
            finally:  # the caller stopped early or a request failed: drop what has not started
                for future in pending:
                    future.cancel()

    @staticmethod
    def _complete(llm, ids: list[int], max_new_tokens: int, stop: Sequence[str], reuse_prefix: bool,
                  shared: list[int]) -> Generation:  # fmt: skip
        from promptintern.serving.prefix_cache import CachedGeneration

        if not shared:
            llm.reset()
            llm.prefix_held = None
        else:
            if getattr(llm, "prefix_held", None) != shared:
                llm.reset()
                llm.eval(shared)  # the shared prefix on its own: the same batches on every context
                llm.prefix_held = list(shared)
            # keep the shared prefix and drop what followed it: llama-cpp-python's prefix match (in
            # create_completion) stops there, and the rest of the prompt is evaluated from the same position
            llm.n_tokens = len(shared)
        cached = len(shared)
        t0 = time.perf_counter()
        out = llm.create_completion(
            prompt=ids, max_tokens=max_new_tokens, temperature=0.0, top_k=1, stop=list(stop) or None
        )
        elapsed = time.perf_counter() - t0
        text, produced = cut_at_stop(out["choices"][0]["text"], stop), int(out["usage"]["completion_tokens"])
        if reuse_prefix:
            return CachedGeneration(text, len(ids), produced, elapsed, cached_tokens=cached)
        return Generation(text, len(ids), produced, elapsed)
