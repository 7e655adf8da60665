"""LayerNorm of an eager bf16 training step on the CPU through model/native.c (`clozelm_layer_norm` and its
backward).

Why: torch's CPU backward for bf16 rows gives the weight's and the bias's gradients many bf16 roundings from their
exact values (docs/performance.md has the measurements), and its passes are slower. native.c computes the same
formulas in fp32 with each row in the cache, in one pass forward and one backward, rounds once to bf16, and sums the
weight's and the bias's gradients over the rows in fp32, one rounding from exact; each row's mean and
1 / sqrt(var + eps) are kept for the backward.

Taken in training mode for bf16 rows with bf16 weights on CPUs where native.c runs (x86 with AVX2 and FMA;
CLOZELM_NATIVE_KERNELS=0 turns it off with the rest of native.c), not while torch.compile traces (inductor fuses the
norm on its own).
"""

from __future__ import annotations

import torch

from . import native


def takes(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> bool:
    """Whether `layer_norm` normalises x: bf16 rows on the CPU with gradients wanted, a bf16 weight (and bias)."""
    return (x.dtype == torch.bfloat16 and x.is_cpu and torch.is_grad_enabled() and weight is not None
            and weight.dtype == torch.bfloat16 and weight.dim() == 1 and weight.numel() == x.size(-1)
            and (bias is None or (bias.dtype == torch.bfloat16 and bias.shape == weight.shape))
            and not torch.compiler.is_compiling() and native.usable())


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """F.layer_norm(x, (d,), weight, bias, eps) over x's last dimension d, through native.c."""
    return _LayerNorm.apply(x, weight, bias, eps)


class _LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        # x [..., d] bf16, weight [d], bias [d] or None -> [..., d] bf16
        rows = x.reshape(-1, x.size(-1)).contiguous()
        weight = weight.contiguous()
        bias = None if bias is None else bias.contiguous()
        y = torch.empty_like(rows)
        stats = torch.empty(rows.size(0), 2, dtype=torch.float32)  # per row: mean, 1 / sqrt(var + eps)
        if native.library().clozelm_layer_norm(rows.data_ptr(), weight.data_ptr(),
                                               None if bias is None else bias.data_ptr(), y.data_ptr(),
                                               stats.data_ptr(), rows.size(0), rows.size(1), eps):
            raise MemoryError("no memory for LayerNorm's rows")
        ctx.save_for_backward(rows, weight, stats)
        ctx.has_bias, ctx.shape = bias is not None, x.shape
        return y.view(x.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        rows, weight, stats = ctx.saved_tensors
        grad = grad.reshape(rows.shape).contiguous()
        grad_x = torch.empty_like(rows)
        grad_w, grad_b = (torch.empty(rows.size(1), dtype=torch.float32) for _ in range(2))
        if native.library().clozelm_layer_norm_backward(grad.data_ptr(), rows.data_ptr(), weight.data_ptr(),
                                                        stats.data_ptr(), grad_x.data_ptr(), grad_w.data_ptr(),
                                                        grad_b.data_ptr(), rows.size(0), rows.size(1)):
            raise MemoryError("no memory for LayerNorm's rows")
        return (grad_x.view(ctx.shape), grad_w.to(weight.dtype), grad_b.to(weight.dtype) if ctx.has_bias else None,
                None)
