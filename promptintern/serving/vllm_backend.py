"""Generation with vLLM's offline engine (``--backend vllm``), an optional extra: ``pip install 'promptintern[vllm]'``.

:class:`VLLMGenerator` loads the base model into one ``vllm.LLM`` engine (bfloat16, ``max_model_len`` = the
training context ``train.max_length``, the profile's seed, ``tensor_parallel_size`` GPUs) and serves a trained
LoRA adapter unmerged, through a ``LoRARequest(name, 1, adapter_dir)`` on every request (the engine is built with
``enable_lora`` and ``max_lora_rank`` = the adapter's rank rounded up to a rank vLLM accepts).  Prefix caching is
set explicitly on every engine: on for the prefix-cached row only (``prefix_caching=True``), off otherwise,
because vLLM's V1 engine caches prefixes by default and the other rows must recompute every prompt.

:meth:`VLLMGenerator.generate` sends the whole batch of prompts in ONE ``llm.generate(prompts, sampling_params,
lora_request=...)`` call and maps the outputs back to the prompts' order (by request id, which vLLM numbers in
submission order).  Prompts are token ids (the HF tokenizer's ids of the rendered chat prompt, as the llamacpp
backend gets them, so no second BOS is added) or rendered text.  The sampling parameters come from a
:class:`~promptintern.serving.openai_backend.Decoding` (the paper's by default, ``PAPER_DECODING``: temperature 0,
which vLLM decodes greedily whatever top_p says, no penalties, and repetition penalty 1 so that the model's
``generation_config.json`` cannot add one), the task's ``max_new_tokens`` and stop strings.  vLLM stops at a stop
string in the generated text and leaves it out; the text is cut with
:func:`~promptintern.serving.generate.cut_at_stop` again, as every backend does.

Each prompt's record is a :class:`~promptintern.serving.generate.Generation`: the text, ``input_tokens`` =
``len(prompt_token_ids)``, ``output_tokens`` = ``len(outputs[0].token_ids)`` and ``latency_s`` = the batch's
wall time divided by its size (as the batched ``hf`` backend reports it).  With prefix caching on it is a
:class:`~promptintern.serving.prefix_cache.CachedGeneration` whose ``cached_tokens`` is vLLM's
``num_cached_tokens`` (the prompt tokens read from the prefix cache).

The argument construction is pure and needs no vLLM (:func:`engine_kwargs`, :func:`sampling_kwargs`,
:func:`serve_command` for the same settings behind ``vllm serve``, served to the ``openai`` backend); vLLM is
imported only when a generator is built, and its absence is one :class:`VLLMUnavailable` line.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import json
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from promptintern.errors import UserError
from promptintern.serving.generate import Generation, check_deadline, cut_at_stop
from promptintern.serving.openai_backend import PAPER_DECODING, Decoding

#: How to install the extra (quoted for shells that glob brackets).
INSTALL_HINT = "pip install 'promptintern[vllm]'"
#: The ranks vLLM's ``max_lora_rank`` accepts; an adapter's rank is rounded up to the next one.
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
#: The LoRA adapter's name in requests when none is given.
DEFAULT_LORA_NAME = "promptintern-adapter"


class VLLMUnavailable(UserError, ImportError):
    """vLLM (the ``vllm`` extra) is not installed or cannot be imported here: one ``error:`` line from the
    command line (:class:`~promptintern.errors.UserError`), with the install hint."""


def unavailable() -> str | None:
    """Why ``--backend vllm`` cannot run here (vLLM not installed), else None; imports nothing."""
    if importlib.util.find_spec("vllm") is None:
        return f"--backend vllm needs vLLM (and a CUDA GPU): {INSTALL_HINT}"
    return None


def import_vllm() -> SimpleNamespace:
    """vLLM's ``LLM``, ``SamplingParams`` and ``LoRARequest``, or :class:`VLLMUnavailable` (one line, with
    the install hint)."""
    try:
        vllm = importlib.import_module("vllm")
        request = importlib.import_module("vllm.lora.request")
    except ImportError as exc:
        if exc.name in ("vllm", "vllm.lora", "vllm.lora.request") and importlib.util.find_spec("vllm") is None:
            raise VLLMUnavailable(f"--backend vllm needs vLLM (and a CUDA GPU): {INSTALL_HINT}") from None
        reason = " ".join(str(exc).split())
        raise VLLMUnavailable(f"vLLM is installed but cannot be imported ({reason}); {INSTALL_HINT}") from None
    return SimpleNamespace(
        LLM=vllm.LLM,
        SamplingParams=vllm.SamplingParams,
        LoRARequest=request.LoRARequest,
        version=getattr(vllm, "__version__", None),
    )


def lora_rank_bound(rank: int) -> int:
    """The smallest rank vLLM accepts as ``max_lora_rank`` that holds an adapter of rank ``rank``."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"a LoRA rank is a positive integer, got {rank!r}")
    for bound in LORA_RANKS:
        if rank <= bound:
            return bound
    raise ValueError(f"LoRA rank {rank} is above the largest rank vLLM serves ({LORA_RANKS[-1]})")


def adapter_rank(adapter: str | Path) -> int:
    """The rank of the PEFT adapter in folder ``adapter`` (``r`` of ``adapter_config.json``, or the largest
    of its ``rank_pattern``)."""
    path = Path(adapter) / "adapter_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the LoRA rank from {path}: {exc}") from None
    ranks = [config.get("r"), *(config.get("rank_pattern") or {}).values()]
    ranks = [r for r in ranks if isinstance(r, int) and not isinstance(r, bool)]
    if not ranks:
        raise ValueError(f"{path} has no LoRA rank 'r'")
    return max(ranks)


def engine_kwargs(
    model: str | Path,
    *,
    max_model_len: int,
    lora_rank: int | None = None,
    prefix_caching: bool = False,
    tensor_parallel_size: int = 1,
    seed: int = 0,
    dtype: str = "bfloat16",
    max_loras: int = 1,
    gpu_memory_utilization: float | None = None,
) -> dict[str, Any]:
    """The keyword arguments of ``vllm.LLM`` (= vLLM's ``EngineArgs``) for ``model``.

    ``lora_rank`` (the adapter's rank; None: no adapter) turns on ``enable_lora`` with ``max_lora_rank``
    rounded up by :func:`lora_rank_bound` and ``max_loras`` adapters per batch. ``enable_prefix_caching`` is
    always set, to ``prefix_caching``. ``gpu_memory_utilization`` None keeps vLLM's default (0.9).
    """
    if int(max_model_len) < 1:
        raise ValueError(f"max_model_len must be positive, got {max_model_len}")
    if int(tensor_parallel_size) < 1:
        raise ValueError(f"tensor_parallel_size must be positive, got {tensor_parallel_size}")
    kwargs: dict[str, Any] = {
        "model": str(model),
        "dtype": dtype,
        "max_model_len": int(max_model_len),
        "seed": int(seed),
        "tensor_parallel_size": int(tensor_parallel_size),
        "enable_prefix_caching": bool(prefix_caching),
    }
    if lora_rank is not None:
        if int(max_loras) < 1:
            raise ValueError(f"max_loras must be positive, got {max_loras}")
        kwargs.update(enable_lora=True, max_lora_rank=lora_rank_bound(lora_rank), max_loras=int(max_loras))
    if gpu_memory_utilization is not None:
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
        kwargs["gpu_memory_utilization"] = float(gpu_memory_utilization)
    return kwargs


def sampling_kwargs(
    *, max_new_tokens: int, stop: Sequence[str] = (), decoding: Decoding = PAPER_DECODING, seed: int | None = None
) -> dict[str, Any]:
    """The keyword arguments of ``vllm.SamplingParams``: one completion of at most ``max_new_tokens`` tokens,
    ending at the first of the (non-empty) ``stop`` strings, which is left out of the text; ``decoding``'s
    temperature (0: greedy), top_p and penalties. ``seed`` is passed only when sampling (temperature > 0)."""
    if int(max_new_tokens) < 1:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    kwargs: dict[str, Any] = {
        "n": 1,
        "max_tokens": int(max_new_tokens),
        "temperature": float(decoding.temperature),
        "top_p": float(decoding.top_p),
        "frequency_penalty": float(decoding.frequency_penalty),
        "presence_penalty": float(decoding.presence_penalty),
        "repetition_penalty": float(decoding.repetition_penalty),
        "stop": [s for s in stop if s],
        "include_stop_str_in_output": False,
        "skip_special_tokens": True,
    }
    if seed is not None and not decoding.greedy:
        kwargs["seed"] = int(seed)
    return kwargs


def serve_command(
    model: str | Path,
    *,
    max_model_len: int,
    adapters: Mapping[str, str | Path] | None = None,
    lora_rank: int | None = None,
    prefix_caching: bool = False,
    tensor_parallel_size: int = 1,
    seed: int = 0,
    dtype: str = "bfloat16",
    host: str = "127.0.0.1",
    port: int = 8000,
) -> list[str]:
    """``vllm serve`` with the engine settings of :func:`engine_kwargs`, serving each of ``adapters``
    (``{NAME: adapter folder}``) as model NAME for the ``openai`` backend (``server="vllm"``).  ``lora_rank``
    None: the largest rank of the adapters' ``adapter_config.json``."""
    adapters = dict(adapters or {})
    if adapters and lora_rank is None:
        lora_rank = max(adapter_rank(path) for path in adapters.values())
    kwargs = engine_kwargs(
        model,
        max_model_len=max_model_len,
        lora_rank=lora_rank if adapters else None,
        prefix_caching=prefix_caching,
        tensor_parallel_size=tensor_parallel_size,
        seed=seed,
        dtype=dtype,
        max_loras=max(1, len(adapters)),
    )
    command = ["vllm", "serve", kwargs["model"], "--dtype", kwargs["dtype"]]
    command += ["--max-model-len", str(kwargs["max_model_len"]), "--seed", str(kwargs["seed"])]
    command += ["--tensor-parallel-size", str(kwargs["tensor_parallel_size"])]
    command.append("--enable-prefix-caching" if prefix_caching else "--no-enable-prefix-caching")
    if adapters:
        command += ["--enable-lora", "--max-lora-rank", str(kwargs["max_lora_rank"])]
        command += ["--max-loras", str(kwargs["max_loras"]), "--lora-modules"]
        for name, path in adapters.items():
            if not name or "=" in name or " " in name:
                raise ValueError(f"a served adapter name has no '=' or spaces, got {name!r}")
            command.append(f"{name}={path}")
    command += ["--generation-config", "vllm", "--host", host, "--port", str(int(port))]
    return command


def _engine_prompt(prompt: str | Sequence[int]) -> str | dict[str, list[int]]:
    """A prompt as ``llm.generate`` takes it: text, or token ids as a ``TokensPrompt`` dict."""
    if isinstance(prompt, str):
        return prompt
    ids = [int(t) for t in prompt]
    if not ids:
        raise ValueError("an empty prompt (no token ids)")
    return {"prompt_token_ids": ids}


def _in_submission_order(outputs: Sequence[Any]) -> list[Any]:
    """``outputs`` sorted by their integer request ids (vLLM numbers requests as they are submitted and
    already returns them in that order); as given when the ids are not integers."""
    try:
        keys = [int(out.request_id) for out in outputs]
    except (AttributeError, TypeError, ValueError):
        return list(outputs)
    return [out for _, out in sorted(zip(keys, outputs, strict=True), key=lambda pair: pair[0])]


class VLLMGenerator:
    """Batched generation with a vLLM engine over ``model`` (a path or hub id), with the PEFT adapter in
    folder ``adapter`` (None: the base model) served as LoRA adapter ``lora_name``.

    ``max_model_len`` is the context (the training ``max_length``); ``lora_rank`` None reads the adapter's rank
    from its ``adapter_config.json``; ``prefix_caching`` turns on vLLM's automatic prefix caching (the
    prefix-cached row); ``decoding`` holds the sampling settings; ``gpu_memory_utilization`` None keeps vLLM's.
    The engine is built here (``vllm.LLM(**engine_kwargs(...))``); :meth:`close` drops it.
    """

    def __init__(
        self,
        model: str | Path,
        adapter: str | Path | None = None,
        *,
        max_model_len: int,
        lora_rank: int | None = None,
        lora_name: str = DEFAULT_LORA_NAME,
        prefix_caching: bool = False,
        tensor_parallel_size: int = 1,
        seed: int = 0,
        dtype: str = "bfloat16",
        decoding: Decoding = PAPER_DECODING,
        gpu_memory_utilization: float | None = None,
    ):
        api = import_vllm()
        if adapter is not None and lora_rank is None:
            lora_rank = adapter_rank(adapter)
        self.engine_kwargs = engine_kwargs(
            model,
            max_model_len=max_model_len,
            lora_rank=lora_rank if adapter is not None else None,
            prefix_caching=prefix_caching,
            tensor_parallel_size=tensor_parallel_size,
            seed=seed,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
        )
        self.prefix_caching = bool(prefix_caching)
        self.decoding = decoding
        self.seed = int(seed)
        self._sampling_params = api.SamplingParams
        self.lora_request = (
            api.LoRARequest(lora_name, 1, str(Path(adapter).resolve())) if adapter is not None else None
        )
        self.identity = {
            "engine": "vllm",
            "vllm": api.version,
            "model": str(model),
            "lora": adapter is not None,
            "prefix_caching": self.prefix_caching,
        }
        self.llm = api.LLM(**self.engine_kwargs)

    def sampling_params(self, *, max_new_tokens: int, stop: Sequence[str] = ()):
        """The ``vllm.SamplingParams`` of one :meth:`generate` call."""
        return self._sampling_params(
            **sampling_kwargs(max_new_tokens=max_new_tokens, stop=stop, decoding=self.decoding, seed=self.seed)
        )

    def generate(
        self, prompts: Iterable[str | Sequence[int]], *, max_new_tokens: int, stop: Sequence[str] = ()
    ) -> Iterator[Generation]:
        """One :class:`Generation` per prompt (token ids or rendered text), in order, from ONE
        ``llm.generate`` call for all of them (see the module docstring)."""
        if self.llm is None:
            raise RuntimeError("this VLLMGenerator is closed")
        inputs = [_engine_prompt(p) for p in prompts]
        if not inputs:
            return iter(())
        params = self.sampling_params(max_new_tokens=max_new_tokens, stop=stop)
        check_deadline()
        begin = time.perf_counter()
        outputs = self.llm.generate(inputs, params, use_tqdm=False, lora_request=self.lora_request)
        elapsed = (time.perf_counter() - begin) / len(inputs)
        outputs = _in_submission_order(list(outputs))
        if len(outputs) != len(inputs):
            raise RuntimeError(f"vLLM answered {len(outputs)} of {len(inputs)} prompts")
        return iter([self._record(out, prompt, elapsed, stop) for out, prompt in zip(outputs, inputs, strict=True)])

    def _record(self, out, prompt, latency_s: float, stop: Sequence[str]) -> Generation:
        completion = out.outputs[0]
        prompt_ids = out.prompt_token_ids
        if prompt_ids is None and isinstance(prompt, dict):
            prompt_ids = prompt["prompt_token_ids"]
        fields = (
            cut_at_stop(completion.text, stop),
            len(prompt_ids) if prompt_ids is not None else None,
            len(completion.token_ids),
            latency_s,
        )
        if not self.prefix_caching:
            return Generation(*fields)
        from promptintern.serving.prefix_cache import CachedGeneration

        return CachedGeneration(*fields, cached_tokens=int(getattr(out, "num_cached_tokens", None) or 0))

    def close(self) -> None:
        """Drop the engine (its GPU memory is freed once nothing else holds it)."""
        self.llm = None
        gc.collect()
