"""model/native_step.py and native.c's `clozelm_step`: one token through every layer in one call, against the
network's own eager step (the same native.c products, the small operations one by one in torch)."""

from __future__ import annotations

import pytest
import torch

from clozelm.generation import generate_ids
from clozelm.model import native_step, packed
from handbuilt import GPT2_STYLE, LLAMA_STYLE
from handbuilt import perturbed_network as network

needs_avx2 = pytest.mark.skipif(not {"avx2", "fma"} <= packed.cpu_flags(), reason="native.c is x86 code for AVX2 and FMA")

# head widths that are not a multiple of 8 (the C code's one-by-one tails) and the other activations
NARROW_HEADS = dict(GPT2_STYLE, n_embd=96, n_head=8, activation="gelu")
NARROW_ROPE = dict(LLAMA_STYLE, n_embd=96, n_head=8, n_kv_head=4, activation="relu")
# heads 64 wide, as GPT-2's and SmolLM2's: the C code's vector paths whole
WIDE_HEADS = dict(LLAMA_STYLE, n_embd=128, n_head=2, n_kv_head=1, n_inner=256)


@pytest.fixture(autouse=True)
def native_kernels(monkeypatch):
    """native.c's products on, on any x86 CPU with AVX2 and FMA (a Xeon with AMX too, where they are off by
    default), so that both sides of each comparison multiply with the same kernels."""
    monkeypatch.setenv("CLOZELM_NATIVE_KERNELS", "1")
    monkeypatch.delenv("CLOZELM_NATIVE_STEP", raising=False)


def one_token_steps(net, ids, step: bool, sizes=(1,)):
    """Logits [T, V] of a prompt's first two tokens read together, then the rest in steps of `sizes` tokens in
    turn (1: one token a step; more: a token and its draft, as greedy decoding reads them); and the cache."""
    with torch.inference_mode():
        cache = net.new_cache(1, len(ids) + 2)
        if not step:
            cache.native_step = False  # as CLOZELM_NATIVE_STEP=0 decides it
        rows = [net(torch.tensor([ids[:2]]), cache=cache).logits[0]]
        at, turn = 2, 0
        while at < len(ids):
            size = sizes[turn % len(sizes)]
            rows.append(net(torch.tensor([ids[at:at + size]]), cache=cache).logits[0])
            at, turn = at + size, turn + 1
    return torch.cat(rows), cache


@needs_avx2
@pytest.mark.parametrize("config", [GPT2_STYLE, LLAMA_STYLE, NARROW_HEADS, NARROW_ROPE, WIDE_HEADS],
                         ids=["gpt2", "llama", "narrow-heads", "narrow-rope", "wide-heads"])
@pytest.mark.parametrize("kind,dtype", [(None, torch.float32), ("int8", torch.float32), ("int4", torch.float32),
                                        (None, torch.bfloat16)], ids=["fp32", "int8", "int4", "bf16"])
def test_one_call_steps_equal_the_eager_steps(config, kind, dtype):
    """Every layer of a GPT-2-style and a Llama-style network (rotary positions, RMSNorm, grouped-query attention,
    SwiGLU, biases on the queries, keys and values alone), heads whose width is not a multiple of 8, every
    activation, fp32 weights, int8 and int4 codes, and bf16: the logits of 19 one-token steps (attention over 3 to 21
    keys, across multiples of 8) and the cached keys and values equal the eager step's to fp32 rounding (int8 and
    int4: to a step of the kernels' 16-bit rows, 1/32767 of a group's largest value or 1/32639 of the row's, which
    a difference in the last fp32 bit upstream may move; bf16: to a few bf16 steps, rows rounded where the eager step
    rounds them but sums in another order). The step's last operations are the final norm and the vocabulary
    projection."""
    net = network(config, kind, dtype=dtype)
    ids = torch.randint(0, 96, (21,), generator=torch.Generator().manual_seed(1)).tolist()
    natively, cache = one_token_steps(net, ids, step=True)
    assert cache.native_step and cache.native_step.vocabulary == net.config.vocab_size  # taken, head included
    eager, eager_cache = one_token_steps(net, ids, step=False)
    tolerance = 3e-6 if kind is None else 5e-4
    if dtype == torch.bfloat16:
        tolerance = 3 * 2 ** -8
        assert natively.dtype == torch.bfloat16 and cache.keys[0].dtype == torch.bfloat16
    natively, eager = natively.float(), eager.float()
    assert torch.allclose(natively, eager, rtol=0, atol=tolerance * eager.abs().max().item())
    for mine, theirs in zip(cache.keys + cache.values, eager_cache.keys + eager_cache.values):
        mine, theirs = mine.float(), theirs.float()
        assert torch.allclose(mine, theirs, rtol=0, atol=tolerance * theirs.abs().max().item())


@needs_avx2
@pytest.mark.parametrize("config", [GPT2_STYLE, NARROW_ROPE, WIDE_HEADS], ids=["gpt2", "narrow-rope", "wide-heads"])
@pytest.mark.parametrize("kind,dtype", [(None, torch.float32), ("int8", torch.float32), (None, torch.bfloat16)],
                         ids=["fp32", "int8", "bf16"])
def test_a_token_and_its_draft_in_one_call_equal_the_eager_step(config, kind, dtype, monkeypatch):
    """Greedy decoding reads a token and its draft (up to 7 tokens) in one pass: each attends to the cache and to
    the tokens before it in the pass, as the eager step's causal mask allows; steps of 3, 1, 7 and 2 tokens, every
    one of them a call."""
    net = network(config, kind, dtype=dtype)
    ids = torch.randint(0, 96, (30,), generator=torch.Generator().manual_seed(2)).tolist()
    calls = []
    run = native_step.run
    monkeypatch.setattr(native_step, "run", lambda net, x, *rest: calls.append(x.size(1)) or run(net, x, *rest))
    natively, cache = one_token_steps(net, ids, step=True, sizes=(3, 1, 7, 2))
    assert cache.native_step and calls == [3, 1, 7, 2, 3, 1, 7, 2, 2]
    eager, _ = one_token_steps(net, ids, step=False, sizes=(3, 1, 7, 2))
    tolerance = {torch.float32: 3e-6 if kind is None else 5e-4, torch.bfloat16: 3 * 2 ** -8}[dtype]
    natively, eager = natively.float(), eager.float()
    assert torch.allclose(natively, eager, rtol=0, atol=tolerance * eager.abs().max().item())


@needs_avx2
def test_greedy_generation_of_the_default_model_keeps_its_tokens(monkeypatch):
    """The embedded default model, 40 greedy tokens with and without drafting, fp32 and int8: the same tokens with
    the one-call step as without it."""
    import clozelm
    model = clozelm.load("default")
    prompt = model.tokenizer.encode("The sea was calm and the ship")
    for kind in (None, "int8"):
        packed.use_quantized_weights(model.network, kind)
        for lookahead in (0, 6):
            natively = list(generate_ids(model, prompt, 40, lookahead=lookahead))
            monkeypatch.setenv("CLOZELM_NATIVE_STEP", "0")
            eager = list(generate_ids(model, prompt, 40, lookahead=lookahead))
            monkeypatch.delenv("CLOZELM_NATIVE_STEP")
            assert natively == eager
    packed.use_quantized_weights(model.network, None)


def _taken(net, cache, steps: int = 2) -> bool:
    with torch.inference_mode():
        net(torch.tensor([[1, 2]]), cache=cache)
        for t in range(steps):
            net(torch.tensor([[3 + t]]), cache=cache)
    return bool(cache.native_step)


@needs_avx2
def test_what_the_one_call_step_does_not_take(monkeypatch):
    """Caches of two rows, a cache in another dtype than the network's, a cache with padding (its mask is not the
    plain causal one the C code applies), a step under autocast (bf16 products), the switch and native.c switched
    off: all keep the eager steps."""
    net = network(GPT2_STYLE)
    assert _taken(net, net.new_cache(1, 8))
    calls = []
    run = native_step.run
    monkeypatch.setattr(native_step, "run", lambda *a: calls.append(1) or run(*a))
    with torch.inference_mode():
        padded = net.new_cache(1, 8)
        net(torch.tensor([[1, 2, 3]]), attention_mask=torch.tensor([[0, 1, 1]]), cache=padded)
        net(torch.tensor([[4]]), cache=padded)
        net(torch.tensor([[5, 6]]), cache=padded)
    assert not calls
    other = net.new_cache(1, 8)
    other.keys = [k.to(torch.bfloat16) for k in other.keys]
    other.values = [v.to(torch.bfloat16) for v in other.values]
    assert native_step.takes(net, other) is False
    with torch.inference_mode():
        cache = net.new_cache(2, 8)
        net(torch.tensor([[1, 2], [1, 2]]), cache=cache)
        net(torch.tensor([[3], [3]]), cache=cache)
    assert cache.native_step is None  # not even asked
    cache = net.new_cache(1, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert native_step.takes(net, cache) is False and cache.native_step  # decided, but not under autocast
    monkeypatch.setenv("CLOZELM_NATIVE_STEP", "0")
    assert not _taken(net, net.new_cache(1, 8))
    monkeypatch.setenv("CLOZELM_NATIVE_KERNELS", "0")
    monkeypatch.delenv("CLOZELM_NATIVE_STEP")
    assert not _taken(net, net.new_cache(1, 8))


@needs_avx2
def test_a_library_whose_step_computes_wrongly_is_not_used(monkeypatch):
    """The step is compiled on the user's machine: before it serves a network, it must compute what the eager step
    computes on two small ones (`_agrees`); here its activation is made ReLU whatever the network asks for."""
    plan = native_step._plan

    def wrong(net, cache, checked=True):
        made = plan(net, cache, checked)
        if made:
            made.spec[7] = native_step.ACTIVATIONS["relu"]
        return made

    monkeypatch.setattr(native_step, "_plan", wrong)
    native_step._agrees.cache_clear()
    try:
        assert not native_step._agrees()
        assert not native_step.serves(network(GPT2_STYLE))
    finally:
        monkeypatch.undo()
        native_step._agrees.cache_clear()
    monkeypatch.setenv("CLOZELM_NATIVE_KERNELS", "1")  # undone above with the rest: on again, as in every test here
    assert native_step._agrees()  # the library's own step, checked again
