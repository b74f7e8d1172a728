"""A trained peft LoRA adapter written as a GGUF LoRA adapter, so llama.cpp serves it on top of the GGUF base.

The layout is what llama.cpp's adapter loader checks (``general.type = adapter``, ``adapter.type = lora``,
``adapter.lora.alpha``; one ``<base tensor>.lora_a`` / ``.lora_b`` pair per adapted weight). gguf-py writes a
numpy array's last axis as ggml's first dimension, so peft's own layouts go in unchanged: ``lora_A`` is
``(rank, in)`` and ``lora_B`` is ``(out, rank)``.

One transformation is needed. A LLaMA GGUF stores the query and key projections with their rows permuted for
llama.cpp's rotary embedding (the permutation llama.cpp's HF converter applies, which transformers undoes when it
loads a GGUF). The adapter was trained against the unpermuted rows, so the rows of ``lora_B`` for ``q_proj``
(per attention head) and ``k_proj`` (per key/value head) are permuted the same way. ``lora_A`` acts on the input
side and is unchanged. Tensors are written in float32: the adapter is small (a few MB), and that keeps the
low-rank update exact.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

#: peft module name -> the llama.cpp tensor it adapts (``blk.<i>.<name>.weight``).
GGUF_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_KEY = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(\w+\.\w+)\.lora_([AB])\.weight$")


class AdapterExportError(ValueError):
    """The adapter cannot be written as a GGUF LoRA adapter (unsupported module or architecture)."""


def permute_rows(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary row order for a query/key projection with ``n_head`` heads (rows = outputs)."""
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def export_gguf_lora(adapter_dir: str | Path, out: str | Path, model_config: dict) -> Path:
    """Write the peft adapter in ``adapter_dir`` as a GGUF LoRA file ``out`` for a LLaMA-architecture base
    described by ``model_config`` (the HF ``config.json`` as a dict). Returns ``out``."""
    import gguf
    from safetensors.numpy import load_file

    adapter_dir, out = Path(adapter_dir), Path(out)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if config.get("peft_type") != "LORA":
        raise AdapterExportError(f"{adapter_dir}: peft_type {config.get('peft_type')!r} is not LORA")
    if model_config.get("model_type") != "llama":
        raise AdapterExportError(f"model_type {model_config.get('model_type')!r}: only llama bases are exported")
    if config.get("modules_to_save") or config.get("rank_pattern") or config.get("alpha_pattern"):
        raise AdapterExportError(f"{adapter_dir}: modules_to_save / rank or alpha patterns are not exported")
    n_head = int(model_config["num_attention_heads"])
    n_kv = int(model_config.get("num_key_value_heads") or n_head)
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config["lora_alpha"]))
    for key in sorted(tensors):
        m = _KEY.match(key)
        if m is None or m.group(2) not in GGUF_NAMES:
            raise AdapterExportError(f"{adapter_dir}: tensor {key} has no llama.cpp counterpart")
        layer, module, part = int(m.group(1)), m.group(2), m.group(3)
        array = tensors[key].astype(np.float32)
        if part == "B" and module == "self_attn.q_proj":
            array = permute_rows(array, n_head)
        elif part == "B" and module == "self_attn.k_proj":
            array = permute_rows(array, n_kv)
        writer.add_tensor(f"blk.{layer}.{GGUF_NAMES[module]}.weight.lora_{part.lower()}", np.ascontiguousarray(array))
    out.parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
