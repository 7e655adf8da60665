"""The fused vocabulary projection + cross-entropy equals the plain one, value and gradients."""

import pytest
import torch
import torch.nn.functional as F

from clozelm.model import native
from clozelm.training import fused_loss
from clozelm.training.fused_loss import IGNORE, linear_cross_entropy

NATIVE = native.usable()  # native.c's loss rows run on this CPU (x86 with AVX2 and FMA)


@pytest.fixture(params=["native.c rows", "torch rows"])
def rows(request, monkeypatch):
    """Both CPU paths of the bf16 loss: native.c's rows where they run here, torch's operations."""
    if request.param == "torch rows":
        monkeypatch.setattr(fused_loss, "_native_rows", lambda f: None)
    elif not NATIVE:
        pytest.skip("native.c's kernels do not run on this CPU")
    return request.param


def plain(features, weight, bias, labels, dtype):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        logits = F.linear(features, weight, bias)
    labels = labels.reshape(-1)
    keep = labels != IGNORE
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float()[keep], labels[keep], reduction="sum")


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("chunk_rows", [1, 7, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_value_and_gradients_match_the_plain_path(with_bias, chunk_rows, dtype, rows):
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_all_rows_ignored_gives_zero_loss_and_gradients(rows, dtype):
    features = torch.randn(4, 8, requires_grad=True)
    weight = torch.randn(10, 8, requires_grad=True)
    loss, count = linear_cross_entropy(features, weight, None, torch.full((4,), IGNORE), compute_dtype=dtype)
    loss.backward()
    assert float(loss.detach()) == 0.0 and int(count) == 0
    assert float(weight.grad.abs().sum()) == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_weights_scale_each_rows_loss_and_gradient(dtype, rows):
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


def _float64_rows(logits, labels, weights):
    """log softmax at the labels and the gradient of the summed weighted loss, in float64 from bf16 logits."""
    z = logits.double()
    logp = torch.log_softmax(z, -1)
    valid = labels != IGNORE
    w = weights.double() * valid
    target = labels.clamp(min=0)[:, None]
    grad = logp.exp()
    grad.scatter_add_(1, target, -valid[:, None].double())
    return logp.gather(1, target)[:, 0] * w, grad * w[:, None]


@pytest.mark.parametrize("vocab", [5, 97, 1024])  # fewer than 8 lanes, a ragged tail, whole blocks
def test_native_rows_are_float64s_to_the_last_bit(vocab, lanes):
    """clozelm_cross_entropy against float64: each row's weighted log probability to fp32's rounding, and the
    gradient rounded to bf16 within one rounding of the exact value (large logits: the max is subtracted first)."""
    torch.manual_seed(vocab)
    n = 37
    logits = (torch.randn(n, vocab) * 30).to(torch.bfloat16)
    labels = torch.randint(0, vocab, (n,))
    labels[::5] = IGNORE
    weights = torch.rand(n) * 4
    got = logits.clone()
    logp = torch.empty(n)
    assert native.library().clozelm_cross_entropy(got.data_ptr(), labels.data_ptr(), weights.data_ptr(),
                                                  logp.data_ptr(), n, vocab) == 0
    want_logp, want_grad = _float64_rows(logits, labels, weights)
    assert torch.allclose(logp.double(), want_logp, rtol=1e-6, atol=1e-6 * float(want_logp.abs().max()))
    # the gradient: bf16 rounding of a value within fp32's error of the exact one: at most one bf16 step away
    # (below e^-87.3, where fp32 turns subnormal, native.c's exponential stays at e^-87.3 = 1.2e-38), and at the
    # label, softmax - 1 within fp32's step at 1 (torch's rows subtract in fp32 too); all times the row's weight
    at_label = torch.zeros_like(want_grad).scatter_(1, labels.clamp(min=0)[:, None], 1) * (labels != IGNORE)[:, None]
    step = want_grad.abs() * 2.0 ** -7 + (1.3e-38 + at_label * 2.0 ** -23) * weights[:, None].double()
    assert bool(((got.double() - want_grad).abs() <= step).all())
    assert bool((got[labels == IGNORE] == 0).all())


@pytest.mark.skipif(not NATIVE, reason="native.c's kernels do not run on this CPU")
def test_native_rows_agree_with_torchs_rows():
    """The two CPU paths give the same loss and nearly always the same bf16 gradients (the exponential's last bit
    may round a gradient the other way)."""
    torch.manual_seed(2)
    features = torch.randn(64, 32, requires_grad=True)
    weight = torch.randn(301, 32, requires_grad=True)
    labels = torch.randint(0, 301, (64,))
    results = []
    for native_rows in (True, False):
        original = fused_loss._native_rows
        fused_loss._native_rows = original if native_rows else (lambda f: None)
        try:
            loss, _ = linear_cross_entropy(features, weight, None, labels, compute_dtype=torch.bfloat16)
            results.append((loss.detach(), *torch.autograd.grad(loss, [features, weight])))
        finally:
            fused_loss._native_rows = original
    (a, *grads_a), (b, *grads_b) = results
    assert torch.allclose(a, b, rtol=1e-6)
    for g, h in zip(grads_a, grads_b):
        assert float((g != h).float().mean()) < 0.01
        assert torch.allclose(g, h, rtol=2 ** -7, atol=2 ** -7 * float(h.abs().max()))


@pytest.mark.skipif(not NATIVE, reason="native.c's kernels do not run on this CPU")
def test_a_label_outside_the_vocabulary_is_an_error_not_a_read_out_of_bounds():
    features = torch.randn(4, 8).to(torch.bfloat16)
    weight = torch.randn(10, 8).to(torch.bfloat16)
    for label in (10, -1):
        with pytest.raises(IndexError, match="outside 0 .. 9"):
            linear_cross_entropy(features, weight, None, torch.tensor([1, 2, label, 3]))
