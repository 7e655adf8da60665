"""Cross-entropy of a vocabulary projection, with its backward computed during the forward pass.

The plain path materialises logits [N, V] in the compute dtype, casts them to fp32 for a stable log-softmax,
and keeps both for the backward, which then makes two more full passes over [N, V] (softmax gradient, cast
back). The loss is the last node of the graph, so its gradient with respect to the logits is known as soon as
they are: softmax(logits) - onehot(label). This function works through the rows in chunks small enough for
the CPU's caches: for each chunk it computes the logits, their log-softmax in fp32, the loss, and the gradient
of the logits, stored in the compute dtype, and the gradient of the features; the weight's gradient is one
product at the end. No fp32 [N, V] tensor ever exists, and the backward is one multiplication by the incoming
scalar gradient.

On a CPU in bf16 where model/native.c's kernels run (x86 with AVX2 and FMA), its `clozelm_cross_entropy` turns
each row of bf16 logits into its loss and gradient in place, in one pass with the row in the cache, where torch's
operations take a pass each over fp32 copies (the cast, the log-softmax, the exponential, the cast back). With no
fp32 chunk to keep in the cache, the logits then come from one product over all rows, which multiplies faster
than many small ones.

Numerics: the loss is computed from `log_softmax(logits, dtype=float32)`, exactly as
`F.cross_entropy(logits.float())` computes it (native.c: the same formula, the fp32 exponential's last bit aside);
the gradients pass through the compute dtype as autocast's do.
"""

from __future__ import annotations

import torch

from ..model import fused, native, packed

IGNORE = -100
CHUNK_FLOATS = 1 << 21  # on a CPU: a chunk's fp32 log-softmax stays within its caches (8 MB)
GPU_CHUNK_FLOATS = 1 << 26  # on a GPU: chunks large enough to keep it busy (256 MB of fp32 logits)
# native.c's rows on a Xeon with AMX: from this size on the weight is transposed for the logits' product (GPT-2
# small's vocabulary projection multiplied much faster so, the default model's a little slower: docs/performance.md)
TRANSPOSED_FROM_BYTES = 32 << 20


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features, weight, bias, labels, row_weights, chunk_rows: int, compute_dtype):
        # features [N, D], weight [V, D], bias [V] or None, labels [N] (IGNORE where nothing is predicted),
        # row_weights [N] float32 or None (each row's loss times its weight)
        f = features.to(compute_dtype)
        w = weight.to(compute_dtype)
        b = None if bias is None else bias.to(compute_dtype)
        n, vocab = f.shape[0], w.shape[0]
        rows_kernel = _native_rows(f)
        # A large vocabulary projection multiplies faster transposed first on a Xeon with AMX (fused.weight_gradient)
        big = rows_kernel is not None and packed.has_amx() and w.numel() * w.element_size() >= TRANSPOSED_FROM_BYTES
        w_t = native.transposed(w) if big else w.t()
        if chunk_rows <= 0:  # the caller's choice: in the CPU's caches, or one product where native.c takes the rows
            fit = (GPU_CHUNK_FLOATS if f.is_cuda else CHUNK_FLOATS) // vocab
            chunk_rows = max(n, 1) if rows_kernel is not None else max(128, fit)
        loss = torch.zeros((), dtype=torch.float32, device=f.device)
        grad_logits = torch.empty(n, vocab, dtype=compute_dtype, device=f.device)  # the logits, then d loss / d them
        grad_f = torch.empty_like(f)
        all_valid = bool((labels != IGNORE).all())  # asked once: on a GPU every question waits for the device
        for start in range(0, n, chunk_rows):
            rows = slice(start, start + chunk_rows)
            logits = grad_logits[rows]  # [c, V]
            torch.mm(f[rows], w_t, out=logits) if b is None else torch.addmm(b, f[rows], w_t, out=logits)
            if rows_kernel is not None:
                loss -= _native_loss_rows(rows_kernel, logits, labels[rows],
                                          None if row_weights is None else row_weights[rows])
            else:
                logp = torch.log_softmax(logits, dim=-1, dtype=torch.float32)
                y = labels[rows]
                valid = y != IGNORE
                target = y.clamp(min=0)[:, None]
                scale = valid if row_weights is None else valid * row_weights[rows]
                loss -= (logp.gather(1, target)[:, 0] * scale).sum()
                grad = logp.exp_()  # softmax, in the log-softmax's memory
                grad.scatter_add_(1, target, -valid[:, None].to(grad.dtype))
                if row_weights is not None or not all_valid:
                    grad.mul_(scale[:, None])
                logits.copy_(grad)
            torch.mm(logits, w, out=grad_f[rows])
        grad_w = fused.weight_gradient(grad_logits, f)
        grad_b = grad_logits.sum(0, dtype=torch.float32) if bias is not None else torch.empty(0)
        ctx.save_for_backward(grad_f, grad_w, grad_b)
        ctx.dtypes = (features.dtype, weight.dtype, None if bias is None else bias.dtype)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_f, grad_w, grad_b = ctx.saved_tensors
        f_dtype, w_dtype, b_dtype = ctx.dtypes
        scale = grad_loss.float()
        out_b = None if b_dtype is None else _scaled(grad_b, scale, b_dtype)
        return _scaled(grad_f, scale, f_dtype), _scaled(grad_w, scale, w_dtype), out_b, None, None, None, None


def _scaled(grad: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """grad times the fp32 scalar scale, in `dtype`: one pass where grad is in it already (torch multiplies a bf16
    tensor by an fp32 scalar in fp32 and rounds once, as grad.float() * scale rounded to bf16 would)."""
    return grad * scale if grad.dtype == dtype else (grad.float() * scale).to(dtype)


def _native_rows(f: torch.Tensor):
    """model/native.c's library where it computes the loss rows: bf16 on a CPU whose native kernels run (x86 with
    AVX2 and FMA; CLOZELM_NATIVE_KERNELS=0 turns them off); else None."""
    if f.device.type != "cpu" or f.dtype != torch.bfloat16 or not native.usable():
        return None
    return native.library()


def _native_loss_rows(lib, logits: torch.Tensor, labels: torch.Tensor, row_weights: torch.Tensor | None) -> torch.Tensor:
    """native.c's clozelm_cross_entropy on contiguous bf16 logits [c, V]: returns the rows' summed weighted log
    probability of their labels, and leaves the gradient of the summed loss in `logits`."""
    labels = labels.to(torch.int64).contiguous()
    row_weights = None if row_weights is None else row_weights.to(torch.float32).contiguous()
    logp = torch.empty(logits.size(0), dtype=torch.float32)
    failed = lib.clozelm_cross_entropy(logits.data_ptr(), labels.data_ptr(),
                                       None if row_weights is None else row_weights.data_ptr(), logp.data_ptr(),
                                       logits.size(0), logits.size(1))
    if failed & 2:
        raise IndexError(f"a label outside 0 .. {logits.size(1) - 1} (and not {IGNORE})")
    if failed:
        raise MemoryError("no memory for the loss's rows")
    return logp.sum()


def linear_cross_entropy(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         labels: torch.Tensor, *, compute_dtype: torch.dtype | None = None,
                         chunk_rows: int | None = None,
                         row_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy of `features @ weight.T + bias` against `labels` over labelled rows, their count),
    equal to `F.cross_entropy(F.linear(features, weight, bias).float(), labels, reduction="sum")`.

    features [..., D] and labels [...]; rows labelled IGNORE (-100) count for nothing. `compute_dtype`:
    the dtype of the matrix products (bf16 under mixed precision; default: the features' dtype).
    `row_weights` [...] (optional): each row's cross-entropy is multiplied by its weight (masked diffusion
    weights each hidden token by 1/t), as `(F.cross_entropy(..., reduction="none") * row_weights).sum()`."""
    features = features.reshape(-1, features.size(-1))
    labels = labels.reshape(-1).to(features.device)
    if row_weights is not None:
        row_weights = row_weights.reshape(-1).to(features.device, torch.float32)
    keep = labels != IGNORE
    if not bool(keep.all()):  # masked LM: only a few rows carry a label
        features, labels = features[keep], labels[keep]
        row_weights = None if row_weights is None else row_weights[keep]
    dtype = compute_dtype or features.dtype
    return _LinearCrossEntropy.apply(features, weight, bias, labels, row_weights, chunk_rows or 0, dtype), keep.sum()
