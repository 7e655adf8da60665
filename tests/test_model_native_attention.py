import pytest
import torch
import torch.nn.functional as F

from clozelm.model import ModelConfig, Transformer, native, native_attention, packed
from clozelm.model.transformer import _products_and_softmax

needs_native = pytest.mark.skipif(not {"avx2", "fma"} <= packed.cpu_flags() or native.library() is None,
                                  reason="native.c is x86 code for AVX2 and FMA, built with a C compiler")


def _attention_inputs(B=2, H=3, T=37, Dh=16, sharpness=3.0, seed=0):
    """q, k, v [B, H, T, Dh] in fp32 with sharp attention (scores of tens, where rounding shows most), and an
    output gradient; T not a multiple of 8, so that rows end in every lane."""
    generator = torch.Generator().manual_seed(seed)
    q, k, v, grad = (torch.randn(B, H, T, Dh, generator=generator) for _ in range(4))
    return q * sharpness, k, v, grad


def _run(attend, tensors, dtype):
    q, k, v, grad = tensors
    leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    out = attend(*leaves)
    out.backward(grad.to(dtype))
    return [t.double() for t in (out, *(leaf.grad for leaf in leaves))]


@needs_native
def test_the_softmax_kernel_gives_torch_s_causal_softmax_of_the_scaled_scores(lanes):
    """Each row's probabilities over its causal half are softmax(s * scale) in fp32 rounded to bf16 (within that
    rounding of torch's), zero above the diagonal; stats hold the row's largest scaled score and 1 / the sum."""
    T, scale = 37, 0.25
    scores = (torch.randn(2, T, T) * 20).to(torch.bfloat16)
    probs = torch.full_like(scores, 7.0)  # every element overwritten
    stats = torch.empty(2, T, 2)
    assert native.library().clozelm_causal_softmax(scores.data_ptr(), probs.data_ptr(), stats.data_ptr(), 2 * T, T,
                                                   scale) == 0
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    scaled = (scores.float() * scale).masked_fill(~causal, float("-inf"))
    expected = scaled.softmax(-1)
    assert torch.equal(probs.float().masked_fill(causal, 0), torch.zeros_like(expected))
    assert torch.allclose(probs.float(), expected, rtol=2 ** -8, atol=1e-7)
    assert torch.equal(stats[..., 0], scaled.amax(-1))
    assert torch.allclose(stats[..., 1], 1 / (scaled - scaled.amax(-1, keepdim=True)).exp().sum(-1), rtol=1e-5)


@needs_native
def test_its_backward_gives_the_softmax_gradient_of_the_scores(lanes):
    T, scale = 37, 0.25
    scores = (torch.randn(2, T, T) * 20).to(torch.bfloat16)
    grad_probs = torch.randn(2, T, T).to(torch.bfloat16)
    probs, stats, grad_scores = torch.empty_like(scores), torch.empty(2, T, 2), torch.full_like(scores, 7.0)
    lib = native.library()
    lib.clozelm_causal_softmax(scores.data_ptr(), probs.data_ptr(), stats.data_ptr(), 2 * T, T, scale)
    assert lib.clozelm_causal_softmax_backward(scores.data_ptr(), stats.data_ptr(), grad_probs.data_ptr(),
                                               grad_scores.data_ptr(), 2 * T, T, scale) == 0
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    s = scores.float().requires_grad_()
    (s * scale).masked_fill(~causal, float("-inf")).softmax(-1).backward(grad_probs.float())
    assert torch.equal(grad_scores.float().masked_fill(causal, 0), torch.zeros_like(s))
    assert torch.allclose(grad_scores.float(), s.grad, rtol=2 ** -7, atol=1e-6 * s.grad.abs().max().item())


@needs_native
@pytest.mark.parametrize("seed", [0, 1])
def test_attention_is_as_exact_as_the_spelled_out_one_and_about_as_exact_as_the_flash_kernel(seed):
    """Against float64: the output and its three gradients within bf16 rounding of `_products_and_softmax` (the
    same roundings: scores once to bf16, an fp32 softmax, probabilities to bf16), and within twice the flash
    kernel's error."""
    tensors = _attention_inputs(seed=seed)
    exact = _run(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), tensors, torch.float64)
    flash = _run(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), tensors, torch.bfloat16)
    spelled = _run(lambda q, k, v: _products_and_softmax(q, k, v, None, True, 0.0), tensors, torch.bfloat16)
    ours = _run(native_attention.attend, tensors, torch.bfloat16)
    for mine, theirs, same, truth in zip(ours, flash, spelled, exact):
        assert (mine - same).norm() <= 0.01 * truth.norm()
        assert (mine - truth).norm() <= 2 * (theirs - truth).norm() + 1e-3 * truth.norm()
        assert (mine - truth).norm() <= 0.02 * truth.norm()


@pytest.mark.parametrize("change,taken", [
    ({}, True), ({"amx": False}, False), ({"amx": False, "env": "1"}, True), ({"env": "0"}, False),
    ({"mask": True}, False), ({"dropout": 0.1}, False), ({"causal": False}, False), ({"dtype": torch.float32}, False),
    ({"grad": False}, False), ({"compiling": True}, False), ({"keys": 5}, False), ({"native": False}, False),
    ({"key_heads": 1}, True), ({"key_heads": 3}, False),
    ({"length": native_attention.LONGEST}, True), ({"length": native_attention.LONGEST + 1}, False)])
def test_which_attentions_it_computes(change, taken, monkeypatch):
    """A causal bf16 training step's attention without mask or dropout, on a Xeon with AMX (where it was measured
    faster; CLOZELM_NATIVE_ATTENTION=1 anywhere native.c runs, =0 nowhere), not while torch.compile traces."""
    monkeypatch.setattr(packed, "has_amx", lambda: change.get("amx", True))
    monkeypatch.setattr(packed, "native_products", lambda: change.get("native", True))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: change.get("compiling", False))
    if "env" in change:
        monkeypatch.setenv("CLOZELM_NATIVE_ATTENTION", change["env"])
    else:
        monkeypatch.delenv("CLOZELM_NATIVE_ATTENTION", raising=False)
    dtype = change.get("dtype", torch.bfloat16)
    T = change.get("length", 4)
    q = torch.zeros(1, 2, T, 8, dtype=dtype, requires_grad=change.get("grad", True))
    k = torch.zeros(1, change.get("key_heads", 2), change.get("keys", T), 8, dtype=dtype)
    mask = torch.zeros(1, 1, T, T, dtype=dtype) if change.get("mask") else None
    assert native_attention.takes(q, k, mask, change.get("dropout", 0.0), change.get("causal", True)) == taken


@needs_native
@pytest.mark.parametrize("layout", ["gpt2", "gpt2-64", "llama"])
def test_a_bf16_training_pass_attends_through_it_and_follows_the_flash_kernel_s_pass(layout, monkeypatch):
    """Through the whole network: every layer takes it (GPT-2's heads, of 8 numbers and of 64, the tiles' width where
    the CPU has them; Llama's grouped ones with rotary positions), and the logits and the gradients follow the flash
    kernel's pass within bf16 rounding."""
    torch.manual_seed(0)
    llama = dict(n_kv_head=2, mlp="gated", activation="silu", norm="rmsnorm", positions="rope", bias=False)
    width = dict(n_embd=128, n_head=2) if layout == "gpt2-64" else dict(n_embd=32, n_head=4)
    config = ModelConfig(vocab_size=64, n_positions=48, n_layer=2, **width, **(llama if layout == "llama" else {}))
    net = Transformer(config).to(torch.bfloat16)
    ids = torch.randint(0, 64, (2, 37))

    def run(on):
        monkeypatch.setenv("CLOZELM_NATIVE_ATTENTION", on)
        net.zero_grad()
        logits = net(ids).logits
        logits.float().logsumexp(-1).sum().backward()
        return logits.detach().float(), [p.grad.float() for p in net.parameters()]

    calls = []
    attend = native_attention.attend
    monkeypatch.setattr(native_attention, "attend", lambda *a: calls.append(1) or attend(*a))
    flash = run("0")
    assert not calls
    tiled = []
    apply = native_attention._TiledAttention.apply
    monkeypatch.setattr(native_attention._TiledAttention, "apply", lambda *a: tiled.append(1) or apply(*a))
    ours = run("1")
    assert len(calls) == 2
    assert len(tiled) == (2 if layout == "gpt2-64" and native.amx_tiles() else 0)
    assert (ours[0] - flash[0]).norm() <= 0.02 * flash[0].norm()
    for mine, theirs in zip(ours[1], flash[1]):
        assert (mine - theirs).norm() <= 0.05 * theirs.norm() + 1e-6


needs_tiles = pytest.mark.skipif(not native.amx_tiles(), reason="AMX tiles: a recent Xeon, and a compiler for them")


def _heads_run(tensors, tiled: bool):
    """attend on q, k, v as the three parts of one [B, 3H, T, Dh] view of a [B, T, 3H Dh] tensor (a layer's fused
    projection), the tiles' layout: the output and the gradient of each part, in float64."""
    q, k, v, grad = tensors
    B, H, T, Dh = q.shape
    fused = torch.cat([q, k, v], dim=1).transpose(1, 2).reshape(B, T, 3 * H * Dh).to(torch.bfloat16)
    fused.requires_grad_()
    heads = fused.view(B, T, 3 * H, Dh).transpose(1, 2)
    out = native_attention.attend(*heads.split(H, dim=1), heads if tiled else None)
    out.backward(grad.to(torch.bfloat16))
    parts = fused.grad.view(B, T, 3 * H, Dh).transpose(1, 2).split(H, dim=1)
    return [t.double() for t in (out, *parts)]


@needs_tiles
@pytest.mark.parametrize("T,Dh", [(1, 64), (17, 32), (37, 64), (100, 32), (256, 64), (300, 64),
                                  (native_attention.LONGEST, 64)])
def test_on_amx_tiles_attention_is_closer_to_float64_than_the_batched_products(T, Dh):
    """The tiles keep the scores in fp32 where the batched products round them to bf16: the output and the three
    gradients at least as close to float64 as `_CausalAttention`'s (lengths ending inside a block of 16 and of 32,
    one token, the longest), and within bf16 rounding of them."""
    tensors = _attention_inputs(B=2, H=2, T=T, Dh=Dh, seed=T)
    exact = _run(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), tensors, torch.float64)
    tiles, batched = _heads_run(tensors, True), _heads_run(tensors, False)
    for mine, theirs, truth in zip(tiles, batched, exact):
        assert (mine - truth).norm() <= (theirs - truth).norm() * 1.05 + 1e-6
        assert (mine - truth).norm() <= 0.01 * truth.norm() + 1e-6  # (one token: q and k get no gradient)


@needs_tiles
def test_the_tiles_take_dh_32_and_64_and_write_one_gradient_for_the_fused_heads(monkeypatch):
    """The fused projection's gradient comes back in one piece, laid out as its output (no copy on the way back),
    and heads of another width go to the batched products."""
    tensors = _attention_inputs(B=1, H=2, T=40, Dh=64)
    calls = []
    apply = native_attention._TiledAttention.apply
    monkeypatch.setattr(native_attention._TiledAttention, "apply", lambda *a: calls.append(1) or apply(*a))
    q, k, v, grad = tensors
    fused = torch.cat([q, k, v], dim=1).transpose(1, 2).reshape(1, 40, 6 * 64).to(torch.bfloat16).requires_grad_()
    heads = fused.view(1, 40, 6, 64).transpose(1, 2)
    native_attention.attend(*heads.split(2, dim=1), heads).sum().backward()
    assert calls and fused.grad.is_contiguous()
    narrow = fused.detach()[..., :6 * 16].reshape(1, 40, 6, 16).transpose(1, 2).requires_grad_()
    native_attention.attend(*narrow.split(2, dim=1), narrow)
    assert len(calls) == 1
