"""Compiled one-token decoding steps (model/step.py) against the network's own forward, for both families."""

import subprocess
import sys

import pytest
import torch

from clozelm.errors import ClozelmError
from clozelm.generation import COMPILE_FROM_TOKENS, Sampling, _compiles, generate_ids, stream_text
from clozelm.model import Transformer, packed, step
from handbuilt import GPT2_STYLE, LLAMA_STYLE
from handbuilt import perturbed_network as network



@pytest.fixture(autouse=True)
def torch_s_products(monkeypatch):
    """The compiled reductions and torch's kernels, as on every CPU with AVX-512; model/native.c's products, which
    both eager and compiled steps take where they are on (AVX2 alone), are switched on by the tests about them; the
    one-call step that would then serve fp32 rows instead of compiled steps (tests/test_model_native_step.py) is
    off."""
    monkeypatch.setenv("CLOZELM_NATIVE_KERNELS", "0")
    monkeypatch.setenv("CLOZELM_NATIVE_STEP", "0")


def one_token_steps(net, ids, compiled: bool):
    """Logits of each position [T, V], the prompt's first token read alone, then one token per step; the cache
    made in inference mode, as a generation makes it."""
    with torch.inference_mode():
        cache = net.new_cache(1, len(ids) + 3)
        cache.compiled = compiled
        rows = [net(torch.tensor([[t]]), cache=cache).logits[0, -1] for t in ids]
    return torch.stack(rows), cache


def double_of_quantized(net) -> Transformer:
    """A float64 copy of `net` whose matrices are its int8 copies' values (q * scale): the products the int8 ones
    stand for, without their bf16 rounding."""
    exact = Transformer(net.config).double().eval()
    exact.load_state_dict(net.state_dict())
    with torch.no_grad():
        for module, twin in zip(net.modules(), exact.modules()):
            if isinstance(module, packed.Linear):
                q, scales = packed.quantized_parts(module, module.weight, "int8")[1]
                twin.weight.copy_(q.double() * scales.double()[:, None])
    return exact


@pytest.mark.parametrize("config", [GPT2_STYLE, LLAMA_STYLE], ids=["gpt2", "llama"])
def test_compiled_int4_steps_give_the_forward_s_logits(config):
    """int4 layer products go through the same kernel both ways (the projection, int8, is the compiled reduction):
    the steps must give the forward's logits up to bf16 rounding."""
    dtype = torch.float32
    net = network(config, "int4", dtype)
    ids = torch.randint(0, 96, (80,), generator=torch.Generator().manual_seed(1)).tolist()
    eager, eager_cache = one_token_steps(net, ids, compiled=False)
    got, cache = one_token_steps(net, ids, compiled=True)
    assert cache.step_weights and eager_cache.step_weights is None and not step._failure  # compiled, and only there
    # The products round to bf16 both ways, so a last-bit difference elsewhere (attention summed in another order)
    # may round one of them a bf16 step the other way: a few such steps at most, where a wrong rotation, mask or
    # cache slot moves the logits by far more.
    bf16_steps = (got - eager).abs().max() / (eager.abs().max() * 2 ** -8)
    assert bf16_steps <= 4
    for layer in range(config["n_layer"]):  # the same keys and values cached, rotated where the model rotates
        for buffers, eager_buffers in ((cache.keys, eager_cache.keys), (cache.values, eager_cache.values)):
            torch.testing.assert_close(buffers[layer][:, :, :len(ids)], eager_buffers[layer][:, :, :len(ids)],
                                       atol=0.02, rtol=0.02)


@pytest.mark.parametrize("config", [GPT2_STYLE, LLAMA_STYLE], ids=["gpt2", "llama"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_int8_steps_are_as_close_to_the_exact_products_as_the_forward(config, dtype):
    """The compiled int8 product is a reduction of its own, rounded where torch's kernel rounds but summed in
    another order, and bf16 attention sums in another order too: against float64 products of the same int8
    weights the steps must be as exact as the forward. 80 positions: bf16 attention over 64 cached keys or more
    takes `_one_query`, as the eager step does."""
    net = network(config, "int8", dtype)
    ids = torch.randint(0, 96, (80,), generator=torch.Generator().manual_seed(1)).tolist()
    eager, _ = one_token_steps(net, ids, compiled=False)
    got, cache = one_token_steps(net, ids, compiled=True)
    assert cache.step_weights and cache.step_weights[1] is not None and not step._failure  # the projection too
    with torch.inference_mode():
        exact = double_of_quantized(net)(torch.tensor([ids])).logits[0]
    eager_error = (eager.double() - exact).abs().mean()
    assert 0 < (got.double() - exact).abs().mean() <= 2 * eager_error
    # and position by position within a few bf16 steps of the forward (a key left out moves some by dozens)
    assert (got.float() - eager.float()).abs().max() <= 8 * 2 ** -8 * eager.float().abs().max()


@pytest.mark.parametrize("config", [GPT2_STYLE, LLAMA_STYLE], ids=["gpt2", "llama"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_steps_with_the_weights_themselves_give_the_forward_s_logits(config, dtype):
    """fp32 and bf16 weights (the full-precision fallback of int8 mode too, for widths its kernel cannot take) are a
    compiled reduction over the weight itself, where the forward reads a packed copy (oneDNN's or native.c's): the
    same sums in another order. fp32: equal up to float rounding; bf16, whose products and attention round to bf16 both ways:
    within a few bf16 steps, as the int8 steps are."""
    net = network(config, None, dtype)
    ids = torch.randint(0, 96, (80,), generator=torch.Generator().manual_seed(1)).tolist()
    eager, _ = one_token_steps(net, ids, compiled=False)
    got, cache = one_token_steps(net, ids, compiled=True)
    assert cache.step_weights and cache.step_weights[1][0] == step.DENSE and not step._failure
    steps = 2 ** -16 if dtype == torch.float32 else 8 * 2 ** -8
    assert (got.float() - eager.float()).abs().max() <= steps * eager.float().abs().max()


@pytest.mark.skipif(not {"avx2", "fma"} <= packed.cpu_flags(), reason="model/native.c is x86 code for AVX2 and FMA")
@pytest.mark.parametrize("config", [GPT2_STYLE, LLAMA_STYLE], ids=["gpt2", "llama"])
@pytest.mark.parametrize("kind,dtype", [("int8", torch.float32), ("int8", torch.bfloat16), ("int4", torch.float32),
                                        (None, torch.float32)])
def test_compiled_quantized_steps_call_native_c_where_eager_steps_do(config, kind, dtype, monkeypatch):
    """Where products of a few rows go through model/native.c, every int8 and int4 product of a compiled step (the
    projection too, int8 in int4 mode) calls the same kernel on the same copy: the logits are the forward's up to the
    order of other sums. fp32 and bf16 weights stay the compiled reduction, as fast there without an opaque call per
    product."""
    monkeypatch.setenv("CLOZELM_NATIVE_KERNELS", "1")
    net = network(config, kind, dtype)
    ids = torch.randint(0, 96, (80,), generator=torch.Generator().manual_seed(1)).tolist()
    eager, _ = one_token_steps(net, ids, compiled=False)
    got, cache = one_token_steps(net, ids, compiled=True)
    layers, head = cache.step_weights[:2]
    formats = {product[0] for product in layers[0][2:] if product is not None} | {head[0]}
    rows = {linear.weight.shape[0] for linear in step._products(net.h[0]) if linear is not None}
    assert formats == ({(step.NATIVE, n) for n in rows | {96}} if kind else {step.DENSE}) and not step._failure
    steps = 2 ** -16 if dtype == torch.float32 else 8 * 2 ** -8
    if kind and dtype == torch.float32:  # the kernels round their rows to 16-bit integers: an ulp upstream can move a
        # value a step there
        steps = 2 ** -11
    assert (got.float() - eager.float()).abs().max() <= steps * eager.float().abs().max()


def test_int8_mode_s_products_its_kernel_cannot_take_run_compiled_with_the_full_weights():
    net = network(dict(GPT2_STYLE, n_embd=72, n_head=4, vocab_size=96), "int8")  # 72 inputs: not a multiple of 16
    ids = torch.randint(0, 96, (20,), generator=torch.Generator().manual_seed(1)).tolist()
    eager, _ = one_token_steps(net, ids, compiled=False)
    got, cache = one_token_steps(net, ids, compiled=True)
    kinds = {product[0] for product in cache.step_weights[0][0][2:] if product is not None}
    assert step.fits(net) is None and kinds == {step.DENSE, packed.INT8}  # the MLP's c_proj (288 inputs) fits int8
    assert (got - eager).abs().max() <= 8 * 2 ** -8 * eager.abs().max()


def test_the_compiled_int8_product_rounds_as_torch_s_kernel_does():
    from torch._inductor import inductor_prims  # noqa: F401  (its prim, which step.run registers before compiling)
    torch.manual_seed(0)
    linear = packed.Linear(256, 96)
    kind, parts = packed.quantized_parts(linear, linear.weight, "int8")
    x = torch.randn(1, 1, 256)
    got = step._product(x, (kind, parts, None))
    want = packed.quantized_product(x, kind, parts)
    ulp = want.abs().to(torch.bfloat16).float() * 2 ** -7  # one bf16 step, or two near a power of two
    assert ((got - want).abs() <= ulp + 1e-30).all()


def test_a_step_s_bf16_product_adds_its_bias_before_rounding_as_the_eager_one_does():
    """The product compiled steps run (`step._product`, called here as it is). Hand-built: the sum 1 + 2^-8 lies
    halfway between two bf16 values; with the bias 2^-9 added first it rounds up
    to 1 + 2^-7, as the eager product (and F.linear) gives, where rounding the sum first (to 1, the even one) and then
    adding the bias would give 1."""
    from torch._inductor import inductor_prims  # noqa: F401  (its prim, which step.run registers before compiling)
    x = torch.zeros(1, 1, 8, dtype=torch.bfloat16)
    x[..., :2] = 1
    linear = packed.Linear(8, 3).to(torch.bfloat16)
    with torch.no_grad():
        linear.weight.zero_()
        linear.weight[:, 0], linear.weight[:, 1] = 1, 2 ** -8
        linear.bias.fill_(2 ** -9)
    got = step._product(x, (step.DENSE, (linear.weight,), linear.bias))
    with torch.inference_mode():
        eager = linear(x)
    assert torch.equal(got, torch.full((1, 1, 3), 1 + 2 ** -7, dtype=torch.bfloat16)) and torch.equal(got, eager)


def assert_greedy(net, prompt: list[int], tokens: list[int]) -> None:
    """Each token is the one the forward, reading the text so far in one pass, finds most likely, up to a few bf16
    steps: a random model's near ties may break either way where compiled products round in another order."""
    with torch.inference_mode():
        logits = net(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1:-1].float()  # [len(tokens), V]
    chosen = logits.gather(-1, torch.tensor(tokens)[:, None])[:, 0]
    best = logits.max(-1).values
    assert ((best - chosen) <= 4 * 2 ** -8 * logits.abs().max()).all()
    assert (chosen == best).float().mean() >= 0.8  # and mostly no tie at all


def test_compiled_generation_gives_the_greedy_tokens_and_reads_new_weights_in_a_new_generation():
    net = network(LLAMA_STYLE, "int8")
    prompt = [3, 14, 15, 92, 65, 35]
    for seed in (0, 1):  # the second generation after the weights changed under the same network
        with torch.no_grad():
            net.load_state_dict(network(LLAMA_STYLE, None, seed=seed).state_dict())
        assert_greedy(net, prompt, list(generate_ids(net, prompt, 30, lookahead=0, compile=True)))
        assert_greedy(net, prompt, list(generate_ids(net, prompt, 30, compile=True)))  # drafts read eagerly between
        assert not step._failure
    cache = net.new_cache(1, 8)
    with torch.inference_mode():
        net(torch.tensor([[5]]), cache=cache)
    assert cache.step_weights is None  # the switch is the generation's own cache, not the network's


def test_compiled_steps_are_refused_where_they_cannot_run_and_chosen_for_long_generations(monkeypatch):
    monkeypatch.setattr(packed, "has_amx", lambda: False)  # where they were measured faster
    monkeypatch.setattr(packed, "has_avx512", lambda: True)
    for kind in (None, "int8", "int4"):
        net = network(GPT2_STYLE, kind)
        assert _compiles(net, None, COMPILE_FROM_TOKENS) == step.compiler_available()
        assert not _compiles(net, None, COMPILE_FROM_TOKENS - 1)
        assert not _compiles(net, False, COMPILE_FROM_TOKENS)
    monkeypatch.setattr(packed, "has_avx512", lambda: False)  # AVX2 alone: int8/int4 steps measured slower compiled
    for kind, compiled in ((None, True), ("int8", False), ("int4", False)):
        net = network(GPT2_STYLE, kind)
        assert _compiles(net, None, COMPILE_FROM_TOKENS) == (compiled and step.compiler_available())
        assert _compiles(net, True, 4) == step.compiler_available()
    monkeypatch.setattr(packed, "has_amx", lambda: True)  # not yet measured there: only when asked for
    assert not _compiles(net, None, COMPILE_FROM_TOKENS)
    assert _compiles(net, True, 4) == step.compiler_available()
    bert = network(dict(GPT2_STYLE, causal=False, pre_ln=False), "int8")
    assert "causal" in step.fits(bert)
    with pytest.raises(ClozelmError, match="causal"):
        _compiles(bert, True, 4)
    for wrong in ("yes", 1):
        with pytest.raises(ClozelmError, match="true, false or none"):
            Sampling(compile=wrong).check()


def test_compiled_steps_say_they_need_a_c_compiler(monkeypatch):
    monkeypatch.setattr(step.shutil, "which", lambda name: None)
    with pytest.raises(ClozelmError, match="C\\+\\+ compiler"):
        list(generate_ids(network(GPT2_STYLE, "int4"), [1, 2], 4, compile=True))


def test_a_beam_search_with_compiled_steps_is_refused():
    from clozelm.api import load
    model = load("default", dtype="int8")
    with pytest.raises(ClozelmError, match="beam"):
        stream_text(model, "The", Sampling(max_new_tokens=4, compile=True), beams=2)


def test_generate_compile_with_beams_is_one_line_and_exit_2():
    run = subprocess.run([sys.executable, "-m", "clozelm", "generate", "The", "--max-tokens", "3", "--compile",
                          "--beams", "2"], capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == ["clozelm: error: compiled decoding steps read one row, and a beam "
                                               "search reads one per beam: leave out compile or beams"]


def test_a_generation_s_compiled_steps_leave_another_generation_of_the_same_network_alone(monkeypatch):
    net = network(GPT2_STYLE, "int8")
    calls, heads = [], []
    real_run, real_head = step.run, step.head_logits
    monkeypatch.setattr(step, "run", lambda *a: calls.append(1) or real_run(*a))
    monkeypatch.setattr(step, "head_logits", lambda *a: heads.append(1) or real_head(*a))
    compiled = generate_ids(net, [1, 2, 3], 10, lookahead=0, compile=True)
    eager = generate_ids(net, [1, 2, 3], 10, lookahead=0, compile=False)
    tokens = [(next(compiled), next(eager)) for _ in range(10)]  # interleaved, as two requests of a server
    assert len(calls) == 9 and not step._failure  # the compiled generation's one-token steps, none of the other's
    assert len(heads) == 9  # the vocabulary projection of each of those steps, compiled too
    assert_greedy(net, [1, 2, 3], [a for a, _ in tokens])
    assert [b for _, b in tokens] == list(generate_ids(net, [1, 2, 3], 10, lookahead=0, compile=False))
    calls.clear()
    one_token_prompt = list(generate_ids(net, [4], 5, lookahead=0, compile=True))
    assert len(calls) == 4  # the prompt is read as prompts are: never a first graph for a cache of one key
    assert_greedy(net, [4], one_token_prompt)


def test_a_failing_compile_is_said_once_and_decoding_goes_on_without_it(monkeypatch, capsys):
    net = network(LLAMA_STYLE, "int4")
    want = list(generate_ids(net, [7, 8, 9], 12, lookahead=0))

    def broken(*args):
        raise RuntimeError("inductor: cannot find Python.h\nmore lines")

    monkeypatch.setattr(step, "_failure", [])
    monkeypatch.setattr(step, "_compiled", lambda signature: (broken, broken))
    assert list(generate_ids(net, [7, 8, 9], 12, lookahead=0, compile=True)) == want
    assert capsys.readouterr().err.count("compiled decoding steps failed (RuntimeError: inductor: cannot find "
                                         "Python.h); decoding without them") == 1
    assert "failed here earlier" in step.fits(net)  # later generations do not try again
    assert not _compiles(net, None, COMPILE_FROM_TOKENS)


def test_a_selected_cache_is_never_stepped_compiled():
    net = network(GPT2_STYLE, "int8")
    cache = net.new_cache(2, 8)
    cache.compiled = True
    assert not cache.select(torch.tensor([1])).compiled  # a beam search's rows, not a generation's one row


def test_a_streamed_generation_with_compiled_steps_gives_the_text_without_them():
    from clozelm.api import load
    model = load("default", dtype="int8")
    text = "It was a dark and stormy night, and"
    with_steps = "".join(stream_text(model, text, Sampling(max_new_tokens=12, compile=True)))
    assert with_steps == "".join(stream_text(model, text, Sampling(max_new_tokens=12, compile=False)))


def test_each_weight_signature_has_graphs_of_its_own_and_equal_ones_share_them():
    """One compiled function per signature: dynamo would otherwise test every other model's guards at each call."""
    caches = []
    for kind, seed in (("int8", 0), ("int8", 1), (None, 0)):
        net = network(GPT2_STYLE, kind, seed=seed)
        _, cache = one_token_steps(net, [1, 2, 3], compiled=True)
        caches.append(cache.step_weights[2:])
    assert caches[0] == caches[1]  # another network of the same shapes and formats: the same graphs
    code = [[getattr(f, "_torchdynamo_orig_callable", f).__code__ for f in graphs] for graphs in caches]
    assert all(a is not b for a, b in zip(code[0], code[2])) and code[0] == code[1]


def test_compile_steps_compiles_what_a_later_generation_runs_at_every_length():
    """A server compiles before its first request: one graph must then serve short and long caches (eager bf16
    attention changes kernels at ONE_QUERY_MIN_KEYS cached keys; the graph's attention has no such branch), or a
    long prompt would compile in a request."""
    from clozelm.generation import compile_steps
    net = network(GPT2_STYLE, None, torch.bfloat16, seed=3)  # a signature of its own: nothing compiled for it yet
    compile_steps(net)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for length in (5, 70):
        list(generate_ids(net, list(range(length)), 6, lookahead=0, compile=True))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs and not step._failure
