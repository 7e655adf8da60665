"""LayerNorm through native.c in an eager bf16 training step: torch's formulas in fp32, rounded once."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clozelm.model import ModelConfig, Transformer, native, native_norm

needs_native = pytest.mark.skipif(not native.usable(), reason="native.c's kernels run on x86 CPUs with AVX2 and FMA")


def _rows(n: int, d: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, d, generator=g) * 3 + torch.randn(n, 1, generator=g) * 5).to(torch.bfloat16)
    w = (torch.rand(d, generator=g) + 0.5).to(torch.bfloat16)
    b = torch.randn(d, generator=g).to(torch.bfloat16)
    dy = torch.randn(n, d, generator=g).to(torch.bfloat16)
    return x, w, b, dy


@needs_native
@pytest.mark.parametrize("d", [7, 64, 384])  # a ragged row, whole ones
@pytest.mark.parametrize("with_bias", [True, False])
def test_values_and_gradients_are_float64s_rounded_once(d, with_bias):
    x, w, b, dy = _rows(29, d, d)
    b = b if with_bias else None
    leaves = [t.clone().requires_grad_() for t in (x, w) + ((b,) if with_bias else ())]
    y = native_norm.layer_norm(leaves[0], leaves[1], leaves[2] if with_bias else None, 1e-5)
    y.backward(dy)
    exact_leaves = [t.double().requires_grad_() for t in (x, w) + ((b,) if with_bias else ())]
    exact = F.layer_norm(exact_leaves[0], (d,), exact_leaves[1], exact_leaves[2] if with_bias else None, 1e-5)
    exact.backward(dy.double())
    assert y.dtype == torch.bfloat16 and y.shape == x.shape
    assert bool(((y.double() - exact).abs() <= exact.abs() * 2.0 ** -8 + 1e-3).all())
    for got, want in zip(leaves, exact_leaves):
        assert got.grad.dtype == torch.bfloat16
        # the input's gradient rounded once from an fp32 value; the weight's and bias's summed over rows in fp32
        assert torch.allclose(got.grad.double(), want.grad, rtol=2 ** -7, atol=2 ** -7 * float(want.grad.abs().max()))


@needs_native
def test_it_agrees_with_torchs_bf16_layer_norm():
    x, w, b, dy = _rows(64, 384, 1)
    got, ref = (t.clone().requires_grad_() for t in (x, x))
    y = native_norm.layer_norm(got, w, b, 1e-5)
    y_ref = F.layer_norm(ref, (384,), w, b, 1e-5)
    assert float((y != y_ref).float().mean()) < 0.01  # the same fp32 formula; a sum in another order, rarely
    y.backward(dy)
    y_ref.backward(dy)
    assert torch.allclose(got.grad.float(), ref.grad.float(), rtol=2 ** -7, atol=2 ** -7 * float(ref.grad.abs().max()))


@pytest.mark.parametrize("change,taken", [
    (dict(), True), (dict(dtype=torch.float32), False), (dict(grad=False), False), (dict(weight=None), False),
    (dict(weight_dtype=torch.float32), False), (dict(native=False), False)])
def test_which_norms_it_takes(change, taken, monkeypatch):
    monkeypatch.setattr(native, "usable", lambda: change.get("native", True))
    x = torch.zeros(3, 8, dtype=change.get("dtype", torch.bfloat16))
    weight = change.get("weight", torch.ones(8, dtype=change.get("weight_dtype", torch.bfloat16)))
    with torch.set_grad_enabled(change.get("grad", True)):
        assert native_norm.takes(x, weight, None) == taken


@needs_native
@pytest.mark.parametrize("switches", [dict(), dict(causal=False, pre_ln=False, activation="gelu", head="mlm")])
def test_a_bf16_training_pass_normalises_through_it_and_follows_torchs(switches, monkeypatch):
    """GPT-2 and BERT layouts (BERT's embedding and MLM-head norms included): the same loss and gradients within
    bf16's rounding whether the norms go through native.c or torch; inference passes never take it."""
    config = ModelConfig(vocab_size=64, n_positions=32, n_embd=48, n_layer=2, n_head=4, **switches)
    torch.manual_seed(0)
    model = Transformer(config).to(torch.bfloat16).train()
    ids = torch.randint(0, 64, (2, 12))
    calls = []
    real = native_norm.layer_norm
    results = []
    for native_on in (True, False):
        monkeypatch.setattr(native_norm, "layer_norm", lambda *a: calls.append(1) or real(*a))
        if not native_on:
            monkeypatch.setattr(native_norm, "takes", lambda *a: False)
        model.zero_grad()
        loss = model(ids).logits.float().square().mean()
        loss.backward()
        results.append((loss.detach(), [p.grad.float() for p in model.parameters() if p.grad is not None]))
    assert len(calls) == sum(isinstance(m, torch.nn.LayerNorm) for m in model.modules())  # every norm, once
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.allclose(loss_a, loss_b, rtol=2e-2)
    for a, b in zip(grads_a, grads_b):
        assert torch.allclose(a, b, rtol=5e-2, atol=5e-2 * float(b.abs().max()))
    calls.clear()
    with torch.no_grad():
        model.eval()(ids)
    assert calls == []


def test_a_weight_of_another_length_is_torchs_to_refuse(monkeypatch):
    monkeypatch.setattr(native, "usable", lambda: True)
    x = torch.zeros(3, 8, dtype=torch.bfloat16)
    with torch.enable_grad():
        assert not native_norm.takes(x, torch.ones(6, dtype=torch.bfloat16), None)
        assert not native_norm.takes(x, torch.ones(8, dtype=torch.bfloat16), torch.ones(6, dtype=torch.bfloat16))
        assert not native_norm.takes(x, torch.ones(2, 4, dtype=torch.bfloat16), None)
