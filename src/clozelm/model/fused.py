"""bf16 Linear layers on the CPU with the bias and the activation computed inside oneDNN's product.

torch's F.linear with a bias first copies the bias into every output row and then runs the product on top of
it, and its GELU is a separate pass over the layer's widest tensor whose tanh is slow on the CPU: in a training
step of the default model the GELU forward cost about as much as the product that feeds it. oneDNN applies both
to the product's fp32 accumulators as it writes them out ("post-ops"). That is also more exact: the activation
sees the unrounded pre-activation and rounds once, where the plain path rounds the pre-activation to bf16,
computes the activation from that and rounds again (tests/test_model.py measures both against float64).

The backward recomputes the pre-activation with a second product instead of keeping it from the forward pass:
one product costs less than writing the [tokens, 4 D] tensor out and reading it back, and it is memory the step
no longer holds. The gradients are the plain path's formulas (the activation's backward on the bf16
pre-activation, then the products), so only the forward values change, and only in the last bf16 place. GELU's
tanh form goes backward through model/native.c where its kernels run (x86 with AVX2 and FMA): torch's CPU kernel
spent as long on it as on the products around it; native.c's rounds the same formula's fp32 value, and its small
values are more exact (torch's 1 + tanh cancels).

Used only where it applies: CPU, bf16 input and weight, a oneDNN build that has the fused product, and not while
torch.compile traces (inductor fuses on its own). `applies` says no under autocast, whose dtype choice a custom
function would bypass: model/packed.py makes autocast's casts itself (x, weight and bias to bf16) and then calls
`linear`. Everything else takes F.linear and the activation one after the other, as does everything
when the environment sets `CLOZELM_FUSED_LINEAR=0`.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from . import native

# clozelm's activation names -> oneDNN's post-op and its algorithm
POST_OPS = {"gelu_tanh": ("gelu", "tanh"), "gelu": ("gelu", "none"), "relu": ("relu", ""), "silu": ("swish", "")}


def activate(h: torch.Tensor, activation: str | None) -> torch.Tensor:
    """The activation on its own: the plain path, and the reference of the fused one."""
    if activation is None:
        return h
    if activation == "gelu_tanh":
        return F.gelu(h, approximate="tanh")
    if activation == "gelu":
        return F.gelu(h)
    if activation == "silu":
        return F.silu(h)
    if activation == "relu":
        return F.relu(h)
    raise ValueError(f"unknown activation {activation!r}")


def _activation_backward(grad: torch.Tensor, h: torch.Tensor, activation: str) -> torch.Tensor:
    """d activation(h) / d h times grad, as autograd computes it for `activate` (GELU's tanh form through native.c
    where its kernels run: the same formula in fp32, its small values more exact than torch's, in a fraction of the
    time)."""
    if activation == "gelu_tanh" and h.dtype == grad.dtype == torch.bfloat16 and h.is_cpu and native.usable():
        h, grad = h.contiguous(), grad.contiguous()
        out = torch.empty_like(h)
        native.library().clozelm_gelu_tanh_backward(grad.data_ptr(), h.data_ptr(), out.data_ptr(), h.numel())
        return out
    if activation == "gelu_tanh":
        return torch.ops.aten.gelu_backward(grad, h, approximate="tanh")
    if activation == "gelu":
        return torch.ops.aten.gelu_backward(grad, h)
    if activation == "silu":
        return torch.ops.aten.silu_backward(grad, h)
    return torch.ops.aten.threshold_backward(grad, h, 0)


def _product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str | None) -> torch.Tensor:
    op, algorithm = POST_OPS[activation] if activation is not None else ("none", "")
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, op, [], algorithm)


def _available() -> bool:
    if os.environ.get("CLOZELM_FUSED_LINEAR", "1") == "0":
        return False
    try:
        if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            return False
        x = torch.ones(2, 32, dtype=torch.bfloat16)
        w = torch.full((16, 32), -0.5, dtype=torch.bfloat16)
        out = _product(x, w, torch.full((16,), 20.0, dtype=torch.bfloat16), "relu")  # 32 * -0.5 + 20 = 4
        return bool(torch.equal(out, torch.full((2, 16), 4.0, dtype=torch.bfloat16)))
    except (AttributeError, RuntimeError):  # a torch build without oneDNN's fused product
        return False


AVAILABLE = _available()


def applies(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether `linear` takes the fused product for these tensors."""
    return (AVAILABLE and x.device.type == "cpu" and weight.device.type == "cpu" and x.dtype == torch.bfloat16
            and weight.dtype == torch.bfloat16 and (bias is None or bias.dtype == torch.bfloat16)
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling())


class _FusedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, activation):
        # x [..., in], weight [out, in], bias [out] or None -> activation(x @ weight.T + bias) [..., out]
        ctx.save_for_backward(x, weight, bias)
        ctx.activation = activation
        return _product(x, weight, bias, activation)

    @staticmethod
    @torch.autograd.function.once_differentiable  # the fused product has no derivative of its own
    def backward(ctx, grad):
        x, weight, bias = ctx.saved_tensors
        if ctx.activation is not None:
            grad = _activation_backward(grad, _product(x, weight, bias, None), ctx.activation)
        rows = grad.reshape(-1, grad.size(-1))  # [N, out]
        grad_x = (rows @ weight).view(x.shape) if ctx.needs_input_grad[0] else None
        grad_w = weight_gradient(rows, x.reshape(-1, x.size(-1))) if ctx.needs_input_grad[1] else None
        grad_b = rows.sum(0) if bias is not None and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None


def weight_gradient(rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """rows [N, out] transposed times x [N, in] -> [out, in]: a Linear layer's weight gradient. One of the two
    operands of this product is always transposed, and on a Xeon with AMX oneDNN multiplies a transposed operand
    well below the speed of a contiguous one: there native.c transposes the narrower one first (rows where out < in;
    x where out > in, and the product back), which measured faster for every non-square layer of GPT-2 small and
    the default model (docs/performance.md). Elsewhere, and for square layers, the plain product."""
    out, width = rows.size(1), x.size(1)
    if (out == width or rows.dtype != torch.bfloat16 or x.dtype != torch.bfloat16 or not rows.is_cpu
            or "amx_tile" not in native.cpu_flags() or not native.usable()):
        return rows.t() @ x
    rows, x = rows.contiguous(), x.contiguous()
    if out < width:
        return native.transposed(rows) @ x
    return native.transposed(native.transposed(x) @ rows)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
           activation: str | None = None) -> torch.Tensor:
    """activation(F.linear(x, weight, bias)) through one oneDNN product; the caller checked `applies`."""
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)):
        return _FusedLinear.apply(x, weight, bias, activation)
    return _product(x, weight, bias, activation)
