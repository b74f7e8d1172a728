"""Training-memory estimate (GiB on one GPU) of LoRA fine-tuning a decoder-only model, and a fit check.

Nothing here is measured; it is arithmetic on the model's architecture and the training settings, meant to
say BEFORE a run whether a configuration can fit a GPU and what to change if not. The estimate is the sum of:

* **weights** of the frozen base model: 2 bytes per parameter in bf16 / fp16 (4 in fp32). ``quantization:
  4bit`` (QLoRA, NF4 with double quantization, Dettmers et al. 2023 Sec. 3): the decoder layers' linear
  weights take 4 bits plus 0.127 bits of quantization constants per parameter (0.516 bytes); embeddings,
  LM head and norms stay bf16.
* **LoRA + optimizer**: ``r x (in + out)`` parameters per target module per layer, kept in fp32 with their
  gradient and AdamW's two moments: 16 bytes per LoRA parameter (the base model has no gradients or states).
* **activations**, per token, from the layer shapes (bf16 = 2 bytes per element). One decoder layer keeps for
  the backward pass: its input; the fp32 input of each RMSNorm (transformers upcasts); the attention norm's
  output, q, k, v and the rotary q, k; the attention output (SDPA / flash attention keep no s x s score
  matrix); the residual after attention; the MLP norm's output and, per expert a token is routed to, the
  SwiGLU gate, up, activation and product (and the routed copy of its input and its output, for a mixture
  of experts); with LoRA dropout > 0, each target module's dropped-out input and its 1-byte mask. Without
  gradient checkpointing every layer keeps all of it; with checkpointing only each layer's input is kept and
  one layer is recomputed at a time. Either way, the backward pass of one layer needs about one more layer's
  worth for the activation gradients. Tokens = per-device batch x max_length (padded batches: the worst case).
* **logits** at the positions the LM head computes (every position unless told fewer: the suite's
  ``answer_only_head`` computes only the answer's, so this is an upper bound): bf16 logits, their fp32
  upcast and the fp32 gradient of the cross-entropy, 10 bytes x vocab per position.
* **overhead**: a fixed :data:`OVERHEAD_GIB` for the CUDA context, cuBLAS / attention workspaces and the
  caching allocator's fragmentation, plus, for 4-bit, one dequantized bf16 copy of the largest weight matrix.

A GPU "of 80 GB" (A100-80G, H100-80G) has 81,920 MiB = 80 GiB; :func:`check_fits` compares GiB with GiB.
Architectures of the paper's open models are in :data:`ARCHITECTURES` (from each model's ``config.json`` on
the Hugging Face hub); :func:`architecture` also reads a local ``config.json`` (a file, or a model folder).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

GIB = 1024**3
#: CUDA context (~0.5-1 GiB with PyTorch 2 lazy loading), cuBLAS / attention workspaces and allocator
#: fragmentation: an assumption, not a measurement.
OVERHEAD_GIB = 3.0
#: Bytes per parameter of NF4 with double quantization: 4 bits + 0.127 bits of constants (QLoRA Sec. 3).
NF4_BYTES = (4 + 0.127) / 8
BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
#: fp32 LoRA weight + gradient + AdamW first and second moment.
LORA_BYTES_PER_PARAM = 16
#: Per logit position: bf16 logits (2) + fp32 upcast (4) + fp32 cross-entropy gradient (4), x vocab.
LOGIT_BYTES = 10


@dataclass(frozen=True)
class Architecture:
    """The shapes the estimate needs (Llama / Mistral / Mixtral style: RMSNorm, rotary attention with
    grouped key/value heads, SwiGLU MLP, optionally a mixture of experts)."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    experts: int = 1
    experts_per_token: int = 1
    tied_embeddings: bool = False
    head_dim: int | None = None
    source: str = ""

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * (self.head_dim or self.hidden // self.heads)

    @property
    def q_dim(self) -> int:
        return self.heads * (self.head_dim or self.hidden // self.heads)

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear module of a layer, by the names LoRA's target_modules use
        (Mixtral's expert modules w1 / w3 / w2 are gate / up / down)."""
        h, i = self.hidden, self.intermediate
        mlp = {"gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
        mlp |= {"w1": mlp["gate_proj"], "w3": mlp["up_proj"], "w2": mlp["down_proj"]}
        return {
            "q_proj": (h, self.q_dim),
            "k_proj": (h, self.kv_dim),
            "v_proj": (h, self.kv_dim),
            "o_proj": (self.q_dim, h),
        } | mlp

    @property
    def layer_linear_params(self) -> int:
        """Linear weights of one decoder layer (attention + every expert's MLP + the router)."""
        shapes = self.module_shapes()
        attention = sum(a * b for n, (a, b) in shapes.items() if n in ("q_proj", "k_proj", "v_proj", "o_proj"))
        mlp = sum(a * b for n, (a, b) in shapes.items() if n in ("gate_proj", "up_proj", "down_proj"))
        router = self.hidden * self.experts if self.experts > 1 else 0
        return attention + mlp * self.experts + router

    @property
    def embedding_params(self) -> int:
        """Input embeddings + LM head (one matrix when tied) + the norms."""
        matrices = 1 if self.tied_embeddings else 2
        return matrices * self.vocab * self.hidden + (2 * self.layers + 1) * self.hidden

    @property
    def params(self) -> int:
        return self.layers * self.layer_linear_params + self.embedding_params


_HUB = "https://huggingface.co/{}/blob/main/config.json"
#: The paper's open models, from their hub config.json (hidden_size, num_hidden_layers, num_attention_heads,
#: num_key_value_heads, intermediate_size, vocab_size; Mixtral: num_local_experts, num_experts_per_tok).
ARCHITECTURES: dict[str, Architecture] = {
    "meta-llama/Llama-2-7b-hf": Architecture(
        "Llama-2-7B", 4096, 32, 32, 32, 11008, 32000, source=_HUB.format("meta-llama/Llama-2-7b-hf")
    ),
    "meta-llama/Llama-2-13b-hf": Architecture(
        "Llama-2-13B", 5120, 40, 40, 40, 13824, 32000, source=_HUB.format("meta-llama/Llama-2-13b-hf")
    ),
    "mistralai/Mixtral-8x7B-v0.1": Architecture(
        "Mixtral-8x7B-v0.1", 4096, 32, 32, 8, 14336, 32000, experts=8, experts_per_token=2,
        source=_HUB.format("mistralai/Mixtral-8x7B-v0.1"),
    ),  # fmt: skip
}
# The chat / instruct checkpoints have the same shapes.
ARCHITECTURES["meta-llama/Llama-2-7b-chat-hf"] = ARCHITECTURES["meta-llama/Llama-2-7b-hf"]
ARCHITECTURES["meta-llama/Llama-2-13b-chat-hf"] = ARCHITECTURES["meta-llama/Llama-2-13b-hf"]
ARCHITECTURES["mistralai/Mixtral-8x7B-Instruct-v0.1"] = ARCHITECTURES["mistralai/Mixtral-8x7B-v0.1"]


class UnknownArchitectureError(ValueError):
    """No architecture is known for a model name and no config.json was found for it."""


def from_config(config: Mapping[str, Any], name: str = "", source: str = "") -> Architecture:
    """An :class:`Architecture` from a transformers ``config.json`` mapping."""
    try:
        heads = int(config["num_attention_heads"])
        return Architecture(
            name=name or str(config.get("_name_or_path") or config.get("model_type") or "model"),
            hidden=int(config["hidden_size"]),
            layers=int(config["num_hidden_layers"]),
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            intermediate=int(config["intermediate_size"]),
            vocab=int(config["vocab_size"]),
            experts=int(config.get("num_local_experts") or 1),
            experts_per_token=int(config.get("num_experts_per_tok") or 1),
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
            head_dim=config.get("head_dim"),
            source=source,
        )
    except KeyError as exc:
        raise UnknownArchitectureError(f"{source or name}: config.json has no {exc.args[0]!r}") from None


def architecture(model: str | Path | Architecture) -> Architecture:
    """The architecture of ``model``: a local config.json (or a folder holding one), else the table."""
    if isinstance(model, Architecture):
        return model
    path = Path(str(model)).expanduser()
    config = path / "config.json" if path.is_dir() else path
    if config.is_file() and config.suffix == ".json":
        data = json.loads(config.read_text(encoding="utf-8"))
        return from_config(data, name=path.name, source=str(config))
    name = str(model).split("@", 1)[0]
    if name in ARCHITECTURES:
        return ARCHITECTURES[name]
    raise UnknownArchitectureError(
        f"no architecture known for {name!r}: give a local model folder or config.json, or one of "
        f"{', '.join(sorted(ARCHITECTURES))}"
    )


@dataclass(frozen=True)
class MemoryEstimate:
    """GiB per part; ``total_gib`` is their sum. ``settings`` records what the estimate assumed."""

    model: str
    params: int
    lora_params: int
    weights_gib: float
    lora_optimizer_gib: float
    activations_gib: float
    logits_gib: float
    overhead_gib: float
    settings: dict[str, Any]

    @property
    def total_gib(self) -> float:
        return self.weights_gib + self.lora_optimizer_gib + self.activations_gib + self.logits_gib + self.overhead_gib

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"total_gib": round(self.total_gib, 2)}

    def summary(self) -> str:
        return (
            f"~{self.total_gib:.1f} GiB (weights {self.weights_gib:.1f}, LoRA+AdamW {self.lora_optimizer_gib:.1f}, "
            f"activations {self.activations_gib:.1f}, logits {self.logits_gib:.1f}, overhead {self.overhead_gib:.1f})"
        )


def lora_params(arch: Architecture, r: int, target_modules: tuple[str, ...] | list[str]) -> int:
    """LoRA parameters: r x (in + out) per target module per layer (every expert's copy for expert MLPs)."""
    shapes = arch.module_shapes()
    unknown = sorted(set(target_modules) - set(shapes))
    if unknown:
        raise ValueError(f"{arch.name}: unknown LoRA target module(s) {', '.join(unknown)}")
    per_layer = 0
    for name in target_modules:
        fan_in, fan_out = shapes[name]
        copies = arch.experts if name in ("gate_proj", "up_proj", "down_proj", "w1", "w2", "w3") else 1
        per_layer += copies * r * (fan_in + fan_out)
    return arch.layers * per_layer


def layer_activation_bytes(
    arch: Architecture, lora_r: int, target_modules: tuple[str, ...] | list[str], lora_dropout: float
) -> float:
    """Bytes one decoder layer keeps per token for its backward pass (module docstring), bf16 activations."""
    h, kv, i, k = arch.hidden, arch.kv_dim, arch.intermediate, arch.experts_per_token
    q = arch.q_dim
    elements = (
        h  # the layer's input (the residual stream)
        + 2 * h  # fp32 input of the attention RMSNorm
        + h + q + 2 * kv  # norm output, q, k, v
        + q + kv  # rotary q, k
        + q  # attention output (input of o_proj)
        + h  # residual after attention
        + 2 * h  # fp32 input of the MLP RMSNorm
        + h  # norm output
        + k * 4 * i  # per routed expert: gate, up, act(gate), act(gate) * up
        + (k * 2 * h if arch.experts > 1 else 0)  # routed copies of the expert input and output
    )  # fmt: skip
    shapes = arch.module_shapes()
    for name in target_modules:
        fan_in = shapes[name][0]
        copies = k if name in ("gate_proj", "up_proj", "down_proj", "w1", "w2", "w3") else 1
        if lora_dropout > 0:
            elements += copies * (fan_in + fan_in / 2)  # dropped-out input + its 1-byte mask
        elements += copies * lora_r  # lora_A output
    return 2.0 * elements


def estimate(
    model: str | Path | Architecture,
    *,
    per_device_batch: int,
    max_length: int,
    gradient_checkpointing: bool,
    quantization: str | None = None,
    dtype: str | None = "bfloat16",
    lora_r: int = 32,
    target_modules: tuple[str, ...] | list[str] = ("q_proj", "k_proj", "v_proj", "o_proj"),
    lora_dropout: float = 0.05,
    logit_positions: int | None = None,
    overhead_gib: float = OVERHEAD_GIB,
) -> MemoryEstimate:
    """Training memory of LoRA fine-tuning ``model`` on one GPU (module docstring for the method).

    ``logit_positions``: positions per sequence the LM head computes (None: all ``max_length``).
    """
    if per_device_batch < 1 or max_length < 1:
        raise ValueError(f"per_device_batch and max_length must be >= 1, got {per_device_batch}, {max_length}")
    if quantization not in (None, "4bit"):
        raise ValueError(f"unknown quantization {quantization!r}; use None or '4bit'")
    arch = architecture(model)
    weight_bytes = BYTES.get(dtype or "bfloat16", 2)
    if quantization == "4bit":
        weights = arch.layers * arch.layer_linear_params * NF4_BYTES + arch.embedding_params * 2
        largest = max(a * b for a, b in arch.module_shapes().values())
        overhead = overhead_gib + largest * 2 / GIB
    else:
        weights = arch.params * weight_bytes
        overhead = overhead_gib
    n_lora = lora_params(arch, lora_r, target_modules)
    tokens = per_device_batch * max_length
    per_layer = layer_activation_bytes(arch, lora_r, target_modules, lora_dropout)
    final = 4 * arch.hidden  # the final norm's fp32 input and its output
    if gradient_checkpointing:  # every layer's input kept; one layer recomputed, plus its gradients
        activations = tokens * (arch.layers * 2 * arch.hidden + 2 * per_layer + final)
    else:  # every layer's activations kept, plus one layer's worth of gradients
        activations = tokens * ((arch.layers + 1) * per_layer + final)
    positions = per_device_batch * (logit_positions if logit_positions is not None else max_length)
    logits = positions * arch.vocab * LOGIT_BYTES
    return MemoryEstimate(
        model=str(model if not isinstance(model, Architecture) else model.name),
        params=arch.params,
        lora_params=n_lora,
        weights_gib=weights / GIB,
        lora_optimizer_gib=n_lora * LORA_BYTES_PER_PARAM / GIB,
        activations_gib=activations / GIB,
        logits_gib=logits / GIB,
        overhead_gib=overhead,
        settings={
            "per_device_batch": per_device_batch,
            "max_length": max_length,
            "gradient_checkpointing": gradient_checkpointing,
            "quantization": quantization,
            "dtype": dtype,
            "lora_r": lora_r,
            "target_modules": list(target_modules),
            "lora_dropout": lora_dropout,
            "logit_positions": logit_positions,
            "architecture_source": arch.source,
        },
    )


def estimate_for(model: str | Path | Architecture, train: Any, **kwargs: Any) -> MemoryEstimate:
    """:func:`estimate` with the settings of a :class:`~promptintern.profile.TrainSettings` (or a profile's
    ``TrainSpec``: its ``None`` fields take ``TrainSettings``' defaults)."""
    from promptintern.profile import TrainSettings

    defaults = TrainSettings()

    def get(name: str) -> Any:
        value = getattr(train, name, None)
        return getattr(defaults, name) if value is None else value

    return estimate(
        model,
        per_device_batch=get("batch_size"),
        max_length=get("max_length"),
        gradient_checkpointing=get("gradient_checkpointing"),
        quantization=get("quantization"),
        dtype=get("dtype") or "bfloat16",
        lora_r=get("lora_r"),
        target_modules=tuple(get("target_modules")),
        lora_dropout=get("lora_dropout"),
        **kwargs,
    )


class DoesNotFitError(ValueError):
    """A training configuration's estimated memory exceeds the GPU's."""


def check_fits(estimate: MemoryEstimate, gpu_gib: float) -> MemoryEstimate:
    """``estimate`` if its total fits ``gpu_gib``; else :class:`DoesNotFitError` with one line naming the
    model, the estimate and what to change."""
    if estimate.total_gib <= gpu_gib:
        return estimate
    s = estimate.settings
    fixes = []
    if s["per_device_batch"] > 1:
        fixes.append(
            f"a smaller per-device batch_size (now {s['per_device_batch']}; raise gradient_accumulation_steps "
            "to keep the effective batch)"
        )
    if not s["gradient_checkpointing"]:
        fixes.append("gradient_checkpointing: true")
    if s["quantization"] is None and estimate.weights_gib > gpu_gib / 4:  # 4-bit shrinks weights only
        fixes.append("quantization: 4bit (QLoRA)")
    if not fixes:
        fixes.append(f"a shorter max_length (now {s['max_length']}) or a GPU with more memory")
    raise DoesNotFitError(
        f"{estimate.model}: LoRA training needs {estimate.summary()}, more than the {gpu_gib:g} GiB GPU; "
        f"use {'; or '.join(fixes)}"
    )
