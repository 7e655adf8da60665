"""Cross-entropy of a vocabulary projection, with its backward computed during the forward pass.

The plain path materialises logits [N, V] in the compute dtype, casts them to fp32 for a stable log-softmax,
and keeps both for the backward, which then makes two more full passes over [N, V] (softmax gradient, cast
back). The loss is the last node of the graph, so its gradient with respect to the logits is known as soon as
they are: softmax(logits) - onehot(label). This function works through the rows in chunks, and for each chunk
computes the logits, their log-sum-exp, the loss, and the gradients of the features and of the projection
weight right away; only [chunk, V] logits ever exist at once, and the backward is one multiplication by the
incoming scalar gradient.

Numerics: the log-sum-exp and the loss are computed in fp32 from the chunk's logits, as with
`F.cross_entropy(logits.float())`; the gradients pass through the compute dtype exactly as autocast's would.
"""

from __future__ import annotations

import torch

IGNORE = -100


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features, weight, bias, labels, chunk_rows: int, compute_dtype):
        # features [N, D], weight [V, D], bias [V] or None, labels [N] (IGNORE where nothing is predicted)
        f = features.to(compute_dtype)
        w = weight.to(compute_dtype)
        b = None if bias is None else bias.to(compute_dtype)
        n = f.shape[0]
        loss = torch.zeros((), dtype=torch.float32, device=f.device)
        grad_f = torch.empty_like(f)
        grad_w = None
        grad_b = None
        for start in range(0, n, chunk_rows):
            fc, yc = f[start:start + chunk_rows], labels[start:start + chunk_rows]
            logits = (torch.mm(fc, w.t()) if b is None else torch.addmm(b, fc, w.t())).float()  # [c, V]
            lse = torch.logsumexp(logits, dim=-1)
            valid = yc != IGNORE
            target = yc.clamp(min=0)
            loss += ((lse - logits.gather(1, target[:, None])[:, 0]) * valid).sum()
            # d loss / d logits = softmax - onehot, zero on ignored rows; reuse the logits' memory.
            grad = logits.sub_(lse[:, None]).exp_()
            grad.scatter_add_(1, target[:, None], -valid[:, None].to(grad.dtype))
            grad.mul_(valid[:, None])
            g = grad.to(compute_dtype)
            grad_f[start:start + chunk_rows] = torch.mm(g, w)
            part_w = torch.mm(g.t(), fc)
            grad_w = part_w.float() if grad_w is None else grad_w.add_(part_w)
            if b is not None:
                part_b = grad.sum(0)
                grad_b = part_b if grad_b is None else grad_b.add_(part_b)
        if grad_w is None:  # no rows
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        ctx.save_for_backward(grad_f, grad_w, grad_b if grad_b is not None else torch.empty(0))
        ctx.dtypes = (features.dtype, weight.dtype, None if bias is None else bias.dtype)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_f, grad_w, grad_b = ctx.saved_tensors
        f_dtype, w_dtype, b_dtype = ctx.dtypes
        scale = grad_loss.float()
        out_b = None if b_dtype is None else (grad_b * scale).to(b_dtype)
        return (grad_f.float() * scale).to(f_dtype), (grad_w * scale).to(w_dtype), out_b, None, None, None


def linear_cross_entropy(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         labels: torch.Tensor, *, compute_dtype: torch.dtype | None = None,
                         chunk_rows: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy of `features @ weight.T + bias` against `labels` over labelled rows, their count),
    equal to `F.cross_entropy(F.linear(features, weight, bias).float(), labels, reduction="sum")`.

    features [..., D] and labels [...]; rows labelled IGNORE (-100) count for nothing. `compute_dtype`:
    the dtype of the matrix products (bf16 under mixed precision; default: the features' dtype)."""
    features = features.reshape(-1, features.size(-1))
    labels = labels.reshape(-1).to(features.device)
    keep = labels != IGNORE
    if not bool(keep.all()):  # masked LM: only a few rows carry a label
        features, labels = features[keep], labels[keep]
    dtype = compute_dtype or features.dtype
    return _LinearCrossEntropy.apply(features, weight, bias, labels, chunk_rows, dtype), keep.sum()
