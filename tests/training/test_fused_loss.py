"""The fused vocabulary projection + cross-entropy equals the plain one, value and gradients."""

import pytest
import torch
import torch.nn.functional as F

from clozelm.training.fused_loss import IGNORE, linear_cross_entropy


def plain(features, weight, bias, labels, dtype):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        logits = F.linear(features, weight, bias)
    labels = labels.reshape(-1)
    keep = labels != IGNORE
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float()[keep], labels[keep], reduction="sum")


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("chunk_rows", [1, 7, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_value_and_gradients_match_the_plain_path(with_bias, chunk_rows, dtype):
    torch.manual_seed(0)
    B, T, D, V = 3, 11, 16, 97
    weight = torch.randn(V, D, requires_grad=True)
    bias = torch.randn(V, requires_grad=True) if with_bias else None
    features = torch.randn(B, T, D, requires_grad=True)
    labels = torch.randint(0, V, (B, T))
    labels[0, :4] = IGNORE
    labels[2, 5] = IGNORE

    ref = plain(features, weight, bias, labels, dtype)
    ref_grads = torch.autograd.grad(ref * 0.37, [features, weight] + ([bias] if with_bias else []))
    got, count = linear_cross_entropy(features, weight, bias, labels, compute_dtype=dtype, chunk_rows=chunk_rows)
    grads = torch.autograd.grad(got * 0.37, [features, weight] + ([bias] if with_bias else []))

    assert int(count) == int((labels != IGNORE).sum())
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(got, ref, rtol=tol, atol=tol)
    for g, r in zip(grads, ref_grads):
        assert g.shape == r.shape and g.dtype == r.dtype
        assert torch.allclose(g, r, rtol=tol, atol=tol * float(r.abs().max())), float((g - r).abs().max())


def test_all_rows_ignored_gives_zero_loss_and_gradients():
    features = torch.randn(4, 8, requires_grad=True)
    weight = torch.randn(10, 8, requires_grad=True)
    loss, count = linear_cross_entropy(features, weight, None, torch.full((4,), IGNORE))
    loss.backward()
    assert float(loss.detach()) == 0.0 and int(count) == 0
    assert float(weight.grad.abs().sum()) == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_weights_scale_each_rows_loss_and_gradient(dtype):
    torch.manual_seed(1)
    N, D, V = 29, 16, 53
    weight = torch.randn(V, D, requires_grad=True)
    bias = torch.randn(V, requires_grad=True)
    features = torch.randn(N, D, requires_grad=True)
    labels = torch.randint(0, V, (N,))
    labels[3] = IGNORE
    row_weights = torch.rand(N) * 10 + 0.1  # masked diffusion: 1/t
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        logits = F.linear(features, weight, bias)
    keep = labels != IGNORE
    ref = (F.cross_entropy(logits.float()[keep], labels[keep], reduction="none") * row_weights[keep]).sum()
    ref_grads = torch.autograd.grad(ref, [features, weight, bias])
    got, count = linear_cross_entropy(features, weight, bias, labels, compute_dtype=dtype, chunk_rows=8,
                                      row_weights=row_weights)
    grads = torch.autograd.grad(got, [features, weight, bias])
    assert int(count) == N - 1
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(got, ref, rtol=tol, atol=tol)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, rtol=tol, atol=tol * float(r.abs().max())), float((g - r).abs().max())
