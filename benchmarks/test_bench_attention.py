"""Where a CPU training step's time goes: causal attention against the frozen projections of one decoder layer.

A LoRA step on a long stage-1 prompt runs every decoder layer forward and backward. Its two kinds of work:

- ``attention``: ``scaled_dot_product_attention`` with a causal mask, forward + backward, at the embedded model's
  shapes (SmolLM2-135M: 9 query heads, 3 key/value heads, head dim 64), by kernel (``flash``: torch's default CPU
  kernel, what transformers' ``sdpa`` attention reaches; ``math``: the unfused reference) and dtype;
- ``projections``: the layer's frozen q/k/v/o and MLP matmuls (3.54 M weights), forward + the input gradient
  (the base is frozen: no weight gradient), as a LoRA step computes them.

``extra_info`` holds the useful GFLOP/s (causal attention counts half the score matrix; its backward as 2.5 of
its forward, the FlashAttention convention), so the two kinds compare: where attention runs at a fraction of the
projections' rate, a longer prompt costs more than its token count says. Pure torch, no model file: the numbers
are the same with or without ``PROMPTINTERN_BENCH_EMBEDDED``. Torch threads: ``PROMPTINTERN_BENCH_THREADS``
(default: torch's).
"""

import pytest

HEADS, KV_HEADS, HEAD_DIM, HIDDEN, MLP = 9, 3, 64, 576, 1536
LENGTHS = (300, 1200, 3000)
#: (out, in) of each frozen matrix of one layer: q, k, v, o, gate, up, down
LAYER = [(HIDDEN, HIDDEN), (KV_HEADS * HEAD_DIM, HIDDEN), (KV_HEADS * HEAD_DIM, HIDDEN), (HIDDEN, HIDDEN),
         (MLP, HIDDEN), (MLP, HIDDEN), (HIDDEN, MLP)]  # fmt: skip


def _dtype(name):
    import torch

    return getattr(torch, name)


def attention_flops(length: int) -> float:
    """Useful FLOPs of causal attention forward + backward over all heads at ``length`` tokens."""
    forward = 2 * 2 * length * length / 2 * HEAD_DIM * HEADS
    return forward * 3.5


def projection_flops(length: int) -> float:
    """FLOPs of one layer's frozen matmuls, forward + input gradient, at ``length`` tokens."""
    return 4 * length * sum(o * i for o, i in LAYER)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("kernel", ["flash", "math"])
@pytest.mark.parametrize("length", LENGTHS)
def test_attention_step(benchmark, length, kernel, dtype):
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"flash": SDPBackend.FLASH_ATTENTION, "math": SDPBackend.MATH}[kernel]
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(1, HEADS, length, HEAD_DIM, generator=generator, dtype=_dtype(dtype), requires_grad=True)
    k, v = (
        torch.randn(1, KV_HEADS, length, HEAD_DIM, generator=generator, dtype=_dtype(dtype), requires_grad=True)
        for _ in range(2)
    )

    def step():
        with sdpa_kernel(backend):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        out.sum().backward()

    step()  # warm-up outside the timing
    benchmark.pedantic(step, rounds=3 if length < 3000 else 2, iterations=1)
    seconds = benchmark.stats.stats.mean
    benchmark.extra_info.update(
        kind="attention", length=length, kernel=kernel, dtype=dtype, threads=torch.get_num_threads(),
        gflop_per_s=round(attention_flops(length) / seconds / 1e9, 1),
    )  # fmt: skip
    assert torch.isfinite(q.grad).all()


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("length", LENGTHS)
def test_projections_step(benchmark, length, dtype):
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(o, i, generator=generator, dtype=_dtype(dtype)) * 0.02 for o, i in LAYER]
    x = torch.randn(1, length, HIDDEN, generator=generator, dtype=_dtype(dtype), requires_grad=True)
    inner = torch.randn(1, length, MLP, generator=generator, dtype=_dtype(dtype), requires_grad=True)

    def step():
        outs = [F.linear(inner if w.shape[1] == MLP else x, w) for w in weights]
        torch.stack([o.sum() for o in outs]).sum().backward()

    step()
    benchmark.pedantic(step, rounds=3, iterations=1)
    seconds = benchmark.stats.stats.mean
    benchmark.extra_info.update(
        kind="projections", length=length, dtype=dtype, threads=torch.get_num_threads(),
        gflop_per_s=round(projection_flops(length) / seconds / 1e9, 1),
    )  # fmt: skip
    assert torch.isfinite(x.grad).all() and torch.isfinite(inner.grad).all()
