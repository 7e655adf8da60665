"""Causal self-attention of an eager bf16 training step on the CPU: two batched products around model/native.c's
softmax (`clozelm_causal_softmax` and its backward).

Why: at training's short sequences torch's CPU flash kernel spends several times the products' own time, its
backward most of it (docs/performance.md), and spelled out in torch's eager operations the mask, the scale, the
casts and the softmax each take a pass over the whole square of scores. Here the scores q k^T come from one batched
bf16 product, rounded once to bf16 as the product writes them (the precision of transformers' and nanoGPT's
explicit bf16 attention, and of the compiled step's `_products_and_softmax`); the softmax is fp32 over each row's
causal half in one pass; the probabilities are rounded to bf16 for the product with the values. The backward
recomputes the fp32 probabilities from the saved scores and each row's largest score and sum, so they are the ones
the forward rounded.

Where the CPU has AMX tiles and q, k, v are the parts of one fused projection with heads of 32 or 64 numbers (GPT-2's
layers), `_TiledAttention` (native.c's clozelm_amx_attention) computes it instead, a head at a time on the tiles:
the products stop at the diagonal, the scores stay in fp32 (closer to float64 than the batched products' bf16
scores; the probabilities are still rounded to bf16 for the product with the values), the backward recomputes the
scores from q and k instead of keeping two [B, H, T, T] squares a layer, and q, k, v, the output and the gradient
are read and written where the projections have them (no copies, no concatenation of the three gradients).

Taken for causal attention without a mask or dropout, queries and keys of the same length (up to LONGEST), in a
bf16 training step (autocast or bf16 weights) on a Xeon with AMX, where it was measured faster than the flash
kernel; not while torch.compile traces (the compiled step spells attention out for inductor to fuse instead).
CLOZELM_NATIVE_ATTENTION=0 turns it off, =1 asks for it on any x86 CPU whose native.c builds.
"""

from __future__ import annotations

import math
import os

import torch

from . import native, packed


# Beyond this many tokens the flash kernel is the faster (its tiles skip the masked half), and the square of scores
# a layer keeps for the backward grows with the square of the length.
LONGEST = 512


def takes(q: torch.Tensor, k: torch.Tensor, mask, dropout: float, is_causal: bool) -> bool:
    """Whether `attend` computes this attention: q [B, H, T, Dh], k [B, H or a divisor of H (grouped heads, which
    the caller repeats), T, Dh], with gradients wanted (the caller asks in a training step only: a model in eval mode
    attends as in inference, gradients or not)."""
    wanted = os.environ.get("CLOZELM_NATIVE_ATTENTION")
    return (wanted != "0" and is_causal and mask is None and dropout == 0.0 and q.dtype == torch.bfloat16
            and q.device.type == "cpu" and torch.is_grad_enabled() and q.requires_grad
            and q.size(2) == k.size(2) <= LONGEST and q.size(1) % k.size(1) == 0 and not torch.compiler.is_compiling()
            and (packed.has_amx() or wanted == "1") and packed.native_products())


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(Dh), causal) v: q, k, v [B, H, T, Dh] bf16 -> [B, H, T, Dh] bf16. `heads`: where q, k and
    v are the three parts of one [B, 3H, T, Dh] tensor (a layer's fused projection), that tensor, so that on AMX
    tiles (native.c's clozelm_amx_attention) its gradient is written in one piece, where the projection's backward
    reads it."""
    if heads is not None and _tiled(heads, q):
        return _TiledAttention.apply(heads, q.size(1))
    return _CausalAttention.apply(q, k, v)


def _tiled(heads: torch.Tensor, q: torch.Tensor) -> bool:
    return q.size(-1) in (32, 64) and q.size(2) > 0 and heads.stride(-1) == 1 and native.amx_tiles()


def _views(*heads: torch.Tensor) -> torch.Tensor:
    """Each [B, H, T, Dh] view as native.c's view_arg: its address and its batch, head and token strides."""
    return torch.tensor([[h.data_ptr(), h.stride(0), h.stride(1), h.stride(2)] for h in heads], dtype=torch.int64)


class _TiledAttention(torch.autograd.Function):
    """attend on AMX tiles: heads [B, 3H, T, Dh] (queries, keys, values) -> [B, H, T, Dh], a view of a [B, T, H, Dh]
    tensor (the layout the output projection reads); the backward recomputes the scores from the saved heads."""

    @staticmethod
    def forward(ctx, heads, n_head):
        q, k, v = heads.split(n_head, dim=1)
        B, H, T, Dh = q.shape
        out = torch.empty(B, T, H, Dh, dtype=heads.dtype).transpose(1, 2)
        stats = torch.empty(B, H, T, 2, dtype=torch.float32)  # per row: largest scaled score, 1 / sum
        views = _views(q, k, v, out)
        if native.library().clozelm_amx_attention(views.data_ptr(), stats.data_ptr(), B, H, T, Dh,
                                                  1.0 / math.sqrt(Dh)):
            raise MemoryError("no memory for attention's tiles")
        ctx.save_for_backward(heads, stats)
        ctx.n_head = n_head
        return out

    @staticmethod
    def backward(ctx, grad):
        heads, stats = ctx.saved_tensors
        q, k, v = heads.split(ctx.n_head, dim=1)
        B, H, T, Dh = q.shape
        grad = grad if grad.stride(-1) == 1 else grad.contiguous()
        grad_heads = torch.empty(B, T, 3 * H, Dh, dtype=heads.dtype).transpose(1, 2)
        views = _views(q, k, v, grad, *grad_heads.split(H, dim=1))
        if native.library().clozelm_amx_attention_backward(views.data_ptr(), stats.data_ptr(), B, H, T, Dh,
                                                           1.0 / math.sqrt(Dh)):
            raise MemoryError("no memory for attention's tiles")
        return grad_heads, None


class _CausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v):
        scale = 1.0 / math.sqrt(q.size(-1))
        # q, k, v are views of the layer's fused projection: one copy each here, where each product below would
        # make its own
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        scores = (q @ k.transpose(-2, -1)).contiguous()  # [B, H, T, T] bf16
        probs = torch.empty_like(scores)
        stats = torch.empty(*scores.shape[:-1], 2, dtype=torch.float32)  # per row: largest scaled score, 1 / sum
        rows, T = scores.numel() // scores.size(-1), scores.size(-1)
        if native.library().clozelm_causal_softmax(scores.data_ptr(), probs.data_ptr(), stats.data_ptr(), rows, T,
                                                   scale):
            raise MemoryError("no memory for attention's softmax rows")
        ctx.save_for_backward(q, k, v, scores, probs, stats)
        ctx.scale = scale
        return probs @ v

    @staticmethod
    def backward(ctx, grad):
        q, k, v, scores, probs, stats = ctx.saved_tensors
        grad = grad.contiguous()  # a view of the next product's gradient: copied once, read twice
        grad_probs = (grad @ v.transpose(-2, -1)).contiguous()  # [B, H, T, T] bf16
        grad_scores = torch.empty_like(scores)
        rows, T = scores.numel() // scores.size(-1), scores.size(-1)
        if native.library().clozelm_causal_softmax_backward(scores.data_ptr(), stats.data_ptr(), grad_probs.data_ptr(),
                                                            grad_scores.data_ptr(), rows, T, ctx.scale):
            raise MemoryError("no memory for attention's softmax rows")
        grad_q = grad_scores @ k if ctx.needs_input_grad[0] else None
        grad_k = grad_scores.transpose(-2, -1) @ q if ctx.needs_input_grad[1] else None
        grad_v = probs.transpose(-2, -1) @ grad if ctx.needs_input_grad[2] else None
        return grad_q, grad_k, grad_v
