"""The network's configuration switches and presets, against transformers' own models of the same config."""

import os

import pytest
import torch
import torch.nn.functional as F
import transformers

from clozelm.errors import ClozelmError
from clozelm.model import PRESETS, ModelConfig, Transformer, fused


def count(model):
    return sum(p.numel() for p in model.parameters())


def meta(fn):
    with torch.device("meta"):
        return fn()


@pytest.mark.parametrize("name,hf_config", [
    ("gpt2", dict(n_layer=12, n_embd=768, n_head=12)),
    ("gpt2-medium", dict(n_layer=24, n_embd=1024, n_head=16)),
    ("gpt2-large", dict(n_layer=36, n_embd=1280, n_head=20)),
    ("gpt2-xl", dict(n_layer=48, n_embd=1600, n_head=25)),
])
def test_gpt2_presets_have_the_reference_parameter_counts(name, hf_config):
    ours = meta(lambda: Transformer(ModelConfig.preset(name)))
    ref = meta(lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config)))
    assert count(ours) == count(ref.transformer)  # the LM head is tied: no parameters of its own
    if name == "gpt2":
        assert count(ours) == 124_439_808


@pytest.mark.parametrize("name,hf_config", [
    ("bert-base", dict()),
    ("bert-large", dict(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16, intermediate_size=4096)),
])
def test_bert_presets_match_transformers(name, hf_config):
    cfg = transformers.BertConfig(**hf_config)
    encoder = meta(lambda: Transformer(ModelConfig.preset(name, head=None)))
    assert count(encoder) == count(meta(lambda: transformers.BertModel(cfg)))
    mlm = meta(lambda: Transformer(ModelConfig.preset(name, pooler=False)))
    assert count(mlm) == count(meta(lambda: transformers.BertForMaskedLM(cfg)))


def test_all_presets_build():
    for name in PRESETS:
        assert meta(lambda: Transformer(ModelConfig.preset(name))).config.n_layer > 0


def test_invalid_configs_are_clear_errors():
    with pytest.raises(ClozelmError, match="not divisible"):
        ModelConfig(n_embd=100, n_head=3)
    with pytest.raises(ClozelmError, match="MLM head needs a bidirectional"):
        ModelConfig(head="mlm", causal=True)
    with pytest.raises(ClozelmError, match="unknown preset"):
        ModelConfig.preset("gpt5")
    rope = dict(positions="rope", norm="rmsnorm", mlp="gated", activation="silu", bias=False)
    for scaling, message in [({"factor": 4.0}, "names no rope_type"),  # from any file: a GGUF, clozelm's own
                             ({"type": "linear", "factor": float("inf")}, "needs finite numbers for factor"),
                             ({"rope_type": "linear", "factor": -1}, "factor must be > 0"),
                             ({"rope_type": "linear", "factor": 10**400}, "needs finite numbers for factor")]:
        with pytest.raises(ClozelmError, match=message):
            ModelConfig(rope_scaling=scaling, **rope)
    assert ModelConfig(rope_scaling={"type": "linear", "factor": 2.0}, **rope).rope_scaling["factor"] == 2.0


def test_attentions_only_when_asked_and_rows_sum_to_one():
    model = Transformer(ModelConfig(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4)).eval()
    ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        assert model(ids).attentions is None
        att = model(ids, attentions=True).attentions
    assert len(att) == 2 and att[0].shape == (2, 4, 9, 9)
    assert torch.allclose(att[1].sum(-1), torch.ones(2, 4, 9), atol=1e-5)
    assert torch.all(att[0].triu(1) == 0)  # causal: nothing attends to the future


def test_bidirectional_padding_does_not_change_real_tokens():
    cfg = ModelConfig(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4, causal=False, pre_ln=False,
                      head="mlm", type_vocab_size=2)
    model = Transformer(cfg).eval()
    ids = torch.randint(1, 50, (1, 7))
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], 1)
    mask = torch.tensor([[1] * 7 + [0] * 3])
    with torch.no_grad():
        assert (model(padded, attention_mask=mask).logits[:, :7] - model(ids).logits).abs().max() < 1e-5



@pytest.mark.parametrize("family", ["gpt2", "bert"])
@pytest.mark.parametrize("padded", [False, True])
def test_attention_bias_is_added_per_head_on_both_attention_paths(family, padded):
    bert = family == "bert"
    cfg = ModelConfig(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4, causal=not bert,
                      pre_ln=not bert, head="mlm" if bert else "tied")
    model = Transformer(cfg).eval()
    ids = torch.randint(0, 50, (2, 9))
    pad = [1] * 7 + [0, 0] if bert else [0, 0] + [1] * 7  # BERT pads on the right, generation on the left
    mask = torch.tensor([[1] * 9, pad]) if padded else None
    only_self = torch.full((9, 9), -1e4).fill_diagonal_(0.0)
    bias = torch.zeros(4, 9, 9)
    bias[0] = only_self  # head 0 may only look at itself; the other heads are left alone
    with torch.no_grad():
        plain = model(ids, attention_mask=mask, attentions=True)
        zero = model(ids, attention_mask=mask, attention_bias=torch.zeros(4, 9, 9))
        fused = model(ids, attention_mask=mask, attention_bias=bias)  # SDPA path
        explicit = model(ids, attention_mask=mask, attention_bias=bias, attentions=True)  # explicit softmax path
    assert (zero.logits - plain.logits).abs().max() < 1e-5
    assert (fused.logits - explicit.logits).abs().max() < 1e-4
    assert (fused.logits - plain.logits).abs().max() > 1e-3
    real = mask.bool() if padded else torch.ones(2, 9, dtype=torch.bool)
    for layer, att in enumerate(explicit.attentions):
        eye = torch.eye(9).expand(2, 9, 9)
        assert (att[:, 0] - eye)[real].abs().max() < 1e-4, layer  # real query rows of head 0: only themselves
        if layer == 0:  # the unbiased heads of the first layer see the same input as without the bias
            assert (att[:, 1:] - plain.attentions[0][:, 1:]).abs().max() < 1e-5


def test_too_long_input_is_refused():
    model = Transformer(ModelConfig(vocab_size=50, n_positions=8, n_embd=16, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match="exceeds"):
        model(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.parametrize("positions", ["gpt2", "rope"])
def test_position_ids_may_be_a_list_or_a_tensor_on_another_device(positions):
    """Given positions are placed on the model's device as the input ids are (a CPU tensor meeting a GPU model, or
    a list), on both position schemes; spread-out positions change the logits, so they are used."""
    rope = positions == "rope"
    cfg = ModelConfig(vocab_size=50, n_positions=16, n_embd=32, n_layer=1, n_head=4,
                      **(dict(positions="rope", norm="rmsnorm", mlp="gated", bias=False) if rope else {}))
    model = Transformer(cfg).eval()
    ids = torch.randint(0, 50, (1, 6))
    with torch.no_grad():
        as_list = model(ids, position_ids=[[0, 2, 4, 6, 8, 10]]).logits
        as_tensor = model(ids, position_ids=torch.arange(0, 12, 2)[None]).logits
        plain = model(ids).logits
    assert torch.equal(as_list, as_tensor) and not torch.allclose(as_list, plain)


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_logits_at_selected_positions_equal_the_full_logits_there(family):
    bert = family == "bert"
    cfg = ModelConfig(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4, causal=not bert,
                      pre_ln=not bert, head="mlm" if bert else "tied", type_vocab_size=2 if bert else 0)
    model = Transformer(cfg).eval()
    ids = torch.randint(0, 50, (3, 11))
    at = torch.rand(3, 11) < 0.3
    at[0, 0] = True
    with torch.no_grad():
        full = model(ids).logits
        some = model(ids, logits_at=at).logits
    assert some.shape == (int(at.sum()), 50)
    assert (some - full[at]).abs().max() < 1e-5


def test_packed_inference_weights_follow_every_weight_change(monkeypatch):
    from clozelm.model import packed

    assert packed.AVAILABLE, "oneDNN packed linear ops missing from this torch build"
    monkeypatch.setattr(packed, "PACK_FP32", True)  # the fp32 weights of this model pack on every machine class
    model = Transformer(ModelConfig(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4)).eval()
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        before = model(ids).logits
        assert model.h[0].attn.c_attn in packed._cache  # the no-grad forward packed its weights
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert model(ids).logits.dtype == torch.bfloat16  # autocast still decides the dtype
        model.h[0].mlp.c_fc.weight.mul_(2)  # an in-place change (an optimizer step, load_state_dict)
        after = model(ids).logits
    logits = model(ids).logits  # with grad: the plain path, which must agree with the packed one
    assert (after - logits).abs().max() < 1e-5 and (after - before).abs().max() > 1e-3
    logits.sum().backward()
    assert model.h[0].mlp.c_fc.weight.grad is not None
    with torch.no_grad():
        bf16 = model.to(torch.bfloat16)(ids).logits  # .to() gives new storage: repacked, in bf16
    assert bf16.dtype == torch.bfloat16 and (bf16.float() - after).abs().max() < 0.1


def test_autocast_inference_casts_each_weight_once_and_gives_the_training_pass_s_numbers(monkeypatch):
    from clozelm.model import packed

    model = Transformer(ModelConfig(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4)).eval()
    ids = torch.randint(0, 50, (2, 7))
    casts = []
    real_cast = torch.Tensor.to

    def counting(t, *a, **k):
        out = real_cast(t, *a, **k)
        if t.dtype == torch.float32 and out.dtype == torch.bfloat16 and t.dim() == 2:
            casts.append(t.shape)
        return out
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.enable_grad():
            reference = model(ids).logits  # with grad: the weights are cast at every use
        monkeypatch.setattr(torch.Tensor, "to", counting)
        first = model(ids).logits
        n_first = len(casts)
        second = model(ids).logits
        monkeypatch.undo()
        assert n_first > 0 and len(casts) == n_first  # the second pass reused the copies made by the first
        assert torch.equal(first, reference) and torch.equal(second, reference)
        model.h[0].mlp.c_fc.weight.mul_(2)  # a weight changed in place: its copy is remade
        changed = model(ids).logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(changed, model(ids).logits.detach())


@pytest.mark.parametrize("autocast", [False, True])
def test_packed_linear_takes_any_slice_of_positions(autocast):
    from clozelm.model import packed

    lin = packed.Linear(16, 40, bias=False).eval()  # as the output projection: F.linear with no bias takes matmul
    hidden = torch.randn(3, 7, 16)
    for x in (hidden[:, -1:], hidden[:, 2:5], hidden[1:2, -1:], hidden, hidden[0]):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):  # as fill runs
            with torch.profiler.profile() as prof:
                got = lin(x)
            want = F.linear(x, lin.weight, lin.bias)
        assert got.shape == want.shape == (*x.shape[:-1], 40) and got.dtype == want.dtype
        assert (got.float() - want.float()).abs().max() < (0.05 if autocast else 1e-5)
        # rows through one matrix product: never a batched one, which copies the (expanded) weight first
        assert not any(e.key == "aten::bmm" for e in prof.key_averages())


@pytest.mark.parametrize("switches", [
    dict(causal=False, pre_ln=True, head="mlm"),      # bidirectional with GPT-2's block
    dict(causal=True, pre_ln=False, head="tied"),     # causal with BERT's block
    dict(causal=False, pre_ln=True, head=None, type_vocab_size=2, pooler=True),
], ids=["bidirectional-pre-ln", "causal-post-ln", "headless-pre-ln"])
def test_configs_without_a_transformers_class_save_and_load_exactly(switches, tmp_path):
    import json
    import clozelm
    cfg = ModelConfig(vocab_size=60, n_positions=16, n_embd=32, n_layer=2, n_head=4, extra={"note": "x"}, **switches)
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    clozelm.Model(model).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "clozelm"
    loaded = clozelm.load(tmp_path)
    assert loaded.config == cfg
    ids = torch.randint(0, 60, (2, 9))
    with torch.no_grad():
        a, b = model(ids), loaded(ids)
    ref, out = (a.logits, b.logits) if cfg.head else (a.hidden, b.hidden)
    assert torch.equal(ref, out)


def test_under_autocast_the_cache_keeps_keys_in_bf16_and_changes_nothing():
    from clozelm.model.transformer import KVCache
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=300, n_positions=32, n_embd=64, n_layer=2, n_head=4)).eval()
    ids = torch.randint(0, 300, (2, 12))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        small = model.new_cache(2, 32)
        wide = KVCache(model.config, 2, 32, dtype=torch.float32)
        outs = []
        for cache in (small, wide):
            model(ids[:, :8], cache=cache)
            outs.append(model(ids[:, 8:], cache=cache).logits)
    assert small.keys[0].dtype == torch.bfloat16 and model.new_cache(1).keys[0].dtype == torch.float32
    assert torch.equal(outs[0], outs[1])


def test_int8_weights_track_fp32_and_leave_the_parameters_alone():
    from clozelm.model import packed
    if not packed.INT8_AVAILABLE:
        pytest.fail("this torch has no int8 weight-only CPU kernel (aten._weight_int8pack_mm)")
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=300, n_positions=32, n_embd=64, n_layer=2, n_head=4)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 300, (2, 20))
    with torch.inference_mode():
        ref = model(ids).logits
        packed.use_int8_weights(model)
        got = model(ids).logits
        packed.use_int8_weights(model, on=False)
        again = model(ids).logits
    assert not torch.equal(got, ref)  # the int8 path ran
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9
    assert torch.equal(again, ref)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _four_bit_representable(model, group):
    """Every matrix's groups of `group` weights set to low + scale * q, q in 0..15 with 0 and 15 present,
    scale and low exact in bf16: what int4 mode stores exactly (a Q4_1 GGUF's weights are such)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() != 2:
                continue
            n, k = p.shape
            q = torch.randint(0, 16, (n, k // group, group), generator=g).float()
            q[..., 0], q[..., 1] = 0, 15
            scale = (torch.rand(n, k // group, 1, generator=g) * 0.01 + 0.001).bfloat16().float()
            low = (-7.5 * scale + (torch.rand(n, k // group, 1, generator=g) - 0.5) * 0.01).bfloat16().float()
            p.copy_((low + scale * q).reshape(n, k))


def test_int4_weights_are_exact_for_four_bit_weights_and_leave_the_parameters_alone():
    from clozelm.model import packed
    if not packed.INT4_AVAILABLE:
        pytest.fail("this torch has no int4 weight-only CPU kernel (aten._weight_int4pack_mm_for_cpu)")
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=320, n_positions=32, n_embd=64, n_layer=2, n_head=4)).eval()
    ids = torch.randint(0, 320, (2, 20))

    def logits(kind):
        packed.use_quantized_weights(model, kind)
        with torch.inference_mode():
            return model(ids).logits

    random_error = (logits("int4") - logits(None)).abs().max() / logits(None).abs().max()
    _four_bit_representable(model, packed.INT4_GROUP)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref = logits(None)
    got = logits("int4")
    assert not torch.equal(got, ref)  # the int4 path ran (its activations are bf16)
    error = (got - ref).abs().max() / ref.abs().max()
    assert error < 0.01  # only the activations' bf16 rounding is left
    assert error < random_error / 4  # random weights lose what a 4-bit grid cannot hold
    assert torch.equal(logits(None), ref)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("units", [True, False], ids=["bf16-units", "no-bf16-units"])
@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_products_of_many_rows_multiply_by_the_kernel_s_own_weights(kind, units, monkeypatch):
    """From AS_DENSE_FROM_ROWS rows on, a quantized product is a dense product with the weights the weight-only
    kernel multiplies by (read back through the kernel itself: the identity's rows pick out one weight each), in bf16
    where the CPU has bf16 units and in fp32 where bf16 is emulated; fewer rows (a token, a short draft) go through
    the kernel (model/native.c's, where products of a few rows go through it)."""
    from clozelm.model import native, packed
    monkeypatch.setattr(packed, "has_bf16_units", lambda: units)
    dtype = torch.bfloat16 if units else torch.float32
    torch.manual_seed(0)
    lin = packed.Linear(64, 48)
    lin.weight_format = kind
    rows = packed.AS_DENSE_FROM_ROWS
    with torch.inference_mode():
        kind, parts = packed.quantized_parts(lin, lin.weight, kind)
        weights = packed.quantized_product(torch.eye(64), kind, parts).T.to(dtype).contiguous()  # [48, 64]
        x = torch.randn(2, rows, 64)
        expected = torch.nn.functional.linear(x.to(dtype), weights).float() + lin.bias
        assert torch.equal(lin(x), expected)
        few = x[:1, :rows // 2]
        copy = packed.native_copy(lin, lin.weight)  # model/native.c, where it multiplies few rows: the same codes
        if copy is not None:
            kernel = native.product(few.reshape(-1, 64), copy).view(1, rows // 2, 48)
        else:
            kernel = packed.quantized_product(few, kind, parts)
        assert torch.equal(lin(few), kernel + lin.bias)
        full = torch.nn.functional.linear(x, lin.weight, lin.bias)
        assert (lin(x) - full).abs().max() < 0.1 * full.abs().max()  # the quantized weights, not others


@pytest.mark.parametrize("activation", [None, "gelu_tanh"])
def test_bf16_products_of_many_rows_widen_to_fp32_where_the_cpu_has_no_bf16_units(activation, monkeypatch):
    """Without bf16 units (an AVX2-only CPU) a bf16 product of many rows is emulated, tens of times slower than fp32:
    it multiplies the widened weights in fp32 and rounds once; fewer rows, and CPUs with the units, stay bf16."""
    from clozelm.model import fused, packed
    torch.manual_seed(0)
    lin = packed.Linear(64, 48).to(torch.bfloat16)
    x = torch.randn(2, packed.AS_DENSE_FROM_ROWS, 64).to(torch.bfloat16)
    wide = fused.activate(torch.nn.functional.linear(x.float(), lin.weight.float(), lin.bias.float()), activation)
    plain, multiplied = packed._plain_linear, []
    monkeypatch.setattr(packed, "_plain_linear", lambda x, w, b: multiplied.append(w.dtype) or plain(x, w, b))
    monkeypatch.setattr(fused, "AVAILABLE", False)  # every bf16 product through _plain_linear, to be seen
    monkeypatch.setattr(packed, "BF16_PACKABLE", False)
    monkeypatch.setenv("CLOZELM_NATIVE_KERNELS", "0")  # torch's products, which this test watches (not model/native.c)

    def product_dtypes(rows: torch.Tensor) -> list:
        multiplied.clear()
        assert lin(rows, activation).dtype == torch.bfloat16
        return list(multiplied)

    with torch.inference_mode():
        monkeypatch.setattr(packed, "has_bf16_units", lambda: False)
        assert torch.equal(lin(x, activation), wide.to(torch.bfloat16))
        assert product_dtypes(x) == [torch.float32]
        assert product_dtypes(x[:1, :packed.AS_DENSE_FROM_ROWS // 2]) == [torch.bfloat16]
        monkeypatch.setattr(packed, "has_bf16_units", lambda: True)
        assert product_dtypes(x) == [torch.bfloat16]


def test_int4_falls_back_to_int8_where_only_int8_fits():
    from clozelm.model import packed
    torch.manual_seed(0)
    a, b = packed.Linear(48, 32), packed.Linear(48, 32)  # 48 inputs: a multiple of 16, not of 32
    b.load_state_dict(a.state_dict())
    a.weight_format, b.weight_format = "int4", "int8"
    x = torch.randn(3, 48)
    with torch.inference_mode():
        assert torch.equal(a(x), b(x))
        assert not torch.equal(b(x), torch.nn.functional.linear(x, b.weight, b.bias))


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_quantized_modes_leave_widths_their_kernels_cannot_take_to_the_full_weights(kind):
    from clozelm.model import packed
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=100, n_positions=16, n_embd=18, n_layer=1, n_head=2)).eval()
    ids = torch.randint(0, 100, (1, 9))
    with torch.inference_mode():
        ref = model(ids).logits
        packed.use_quantized_weights(model, kind)  # 18 and 72 inputs: neither multiples of 16 nor groups of 32
        assert torch.equal(model(ids).logits, ref)
    with pytest.raises(ValueError):
        packed.use_quantized_weights(model, "int3")


def test_the_causal_switch_overrides_the_config_for_one_pass():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=40, n_positions=12, n_embd=16, n_layer=2, n_head=2)
    causal = Transformer(cfg).eval()
    both_ways = Transformer(cfg.replace(causal=False)).eval()
    both_ways.load_state_dict(causal.state_dict())
    ids = torch.randint(0, 40, (3, 12))
    with torch.no_grad():
        plain = causal(ids).logits
        assert torch.equal(causal(ids, causal=None).logits, plain)  # not given: the config's, bit for bit
        assert torch.allclose(causal(ids, causal=True).logits, plain)
        assert torch.allclose(causal(ids, causal=False).logits, both_ways(ids).logits, atol=1e-6)
        assert torch.allclose(both_ways(ids, causal=True).logits, plain, atol=1e-6)
        assert not torch.allclose(causal(ids, causal=False).logits, plain, atol=1e-3)
    with pytest.raises(ValueError, match="KV cache"):
        causal(ids, cache=causal.new_cache(3), causal=False)


def _bf16_layer(n_in=96, n_out=160, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 50, n_in, generator=g).to(torch.bfloat16)
    w = (torch.randn(n_out, n_in, generator=g) * 0.15).to(torch.bfloat16)
    b = (torch.randn(n_out, generator=g) * 0.5).to(torch.bfloat16)
    return x, w, b


@pytest.mark.skipif(not fused.AVAILABLE, reason="no oneDNN bf16 product here (a torch build without it, or a CPU without AVX-512)")
@pytest.mark.parametrize("activation", [None, *fused.POST_OPS])
def test_fused_bf16_product_is_rounded_once_from_the_exact_value(activation):
    x, w, b = _bf16_layer()
    exact = fused.activate(F.linear(x.double(), w.double(), b.double()), activation)
    rounded_once = exact.to(torch.bfloat16)
    plain = fused.activate(F.linear(x, w, b), activation)
    got = fused.linear(x, w, b, activation)
    assert got.dtype == torch.bfloat16 and got.shape == plain.shape
    ulp = torch.finfo(torch.bfloat16).eps * exact.abs().clamp(min=1e-2)
    assert ((got.double() - exact).abs() <= ulp).all()  # within one bf16 step of the exact value everywhere
    same = (got == rounded_once).float().mean()
    assert same >= 0.99 and same >= (plain == rounded_once).float().mean()  # never less exact than the plain path
    if activation in (None, "relu"):  # nothing between the product and the rounding: exactly the plain path
        assert torch.equal(got, plain)


@pytest.mark.skipif(not fused.AVAILABLE, reason="no oneDNN bf16 product here (a torch build without it, or a CPU without AVX-512)")
@pytest.mark.parametrize("activation,kernels", [*((a, "torch's") for a in [None, *fused.POST_OPS]),
                                                ("gelu_tanh", "native.c's")])  # native.c has GELU's tanh form
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("wanted", ["all", "input", "weights"])
def test_fused_bf16_product_has_the_plain_path_s_gradients(activation, bias, wanted, kernels, monkeypatch):
    """The plain path's gradients: exactly with torch's activation backward; with native.c's GELU backward (x86
    CPUs) within the rounding of the activation's gradient (its fp32 value rounds the other way now and then)."""
    from clozelm.model import native

    if kernels == "torch's":
        monkeypatch.setattr(native, "usable", lambda: False)
    elif not native.usable():
        pytest.skip("native.c's kernels run on x86 CPUs with AVX2 and FMA")
    x, w, b = _bf16_layer(seed=1)
    grad_out = torch.randn(3, 50, 160, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    grads = []
    for use_fused in (True, False):
        leaves = [t.clone() for t in (x, w, b)]
        for i, t in enumerate(leaves):
            t.requires_grad_(wanted == "all" or (wanted == "input") == (i == 0))
        layer_b = leaves[2] if bias else None
        if use_fused:
            y = fused.linear(leaves[0], leaves[1], layer_b, activation)
        else:
            y = fused.activate(F.linear(leaves[0], leaves[1], layer_b), activation)
        y.backward(grad_out)
        grads.append([t.grad for t in leaves])
    for got, want in zip(*grads):  # the same formulas on the same bf16 pre-activation, recomputed
        assert (got is None) == (want is None)
        if got is not None and kernels == "torch's":
            assert got.dtype == want.dtype and torch.equal(got, want)
        elif got is not None:
            assert got.dtype == want.dtype
            assert torch.allclose(got, want, rtol=2 ** -7, atol=2 ** -7 * float(want.abs().max()))
    assert grads[0][0] is not None or wanted == "weights"


@pytest.mark.skipif(not fused.AVAILABLE, reason="no oneDNN bf16 product here (a torch build without it, or a CPU without AVX-512)")
def test_under_autocast_fp32_layers_get_autocast_s_gradients(monkeypatch):
    from clozelm.model import packed

    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 20, 48, generator=g)
    grad_out = torch.randn(4, 20, 64, generator=g).to(torch.bfloat16)
    grads, outputs = [], []
    for use_fused in (True, False):
        monkeypatch.setattr(fused, "AVAILABLE", use_fused)
        torch.manual_seed(0)
        layer = packed.Linear(48, 64).train()
        inputs = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(inputs, "gelu_tanh")  # use_fused False: torch's autocast F.linear, then its GELU
        y.backward(grad_out)
        outputs.append(y.detach())
        grads.append([inputs.grad, layer.weight.grad, layer.bias.grad])
    for got, want in zip(*grads):
        assert got.dtype == want.dtype == torch.float32 and torch.equal(got, want)
    assert outputs[0].dtype == outputs[1].dtype == torch.bfloat16
    assert (outputs[0].float() - outputs[1].float()).abs().max() <= 2 ** -7 * outputs[1].float().abs().max()


@pytest.mark.skipif(not fused.AVAILABLE, reason="no oneDNN bf16 product here (a torch build without it, or a CPU without AVX-512)")
def test_fused_product_refuses_a_second_derivative():
    x, w, b = (t.requires_grad_() for t in _bf16_layer())
    y = fused.linear(x, w, b, "gelu_tanh")
    (grad_x,) = torch.autograd.grad(y.float().square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):  # never a silently wrong second derivative
        grad_x.float().sum().backward()


@pytest.mark.skipif(not fused.AVAILABLE, reason="no oneDNN bf16 product here (a torch build without it, or a CPU without AVX-512)")
@pytest.mark.parametrize("switches", [dict(), dict(mlp="gated", activation="silu", norm="rmsnorm", positions="rope", bias=False),
                                      dict(causal=False, pre_ln=False, activation="gelu", head="mlm")])
def test_bf16_models_with_and_without_the_fused_product_agree(switches, monkeypatch):
    # both passes attend through the flash kernel (a Xeon's training pass would take model/native_attention.py's,
    # which its own tests compare with the flash kernel's)
    monkeypatch.setenv("CLOZELM_NATIVE_ATTENTION", "0")
    config = ModelConfig(vocab_size=64, n_positions=32, n_embd=48, n_layer=2, n_head=4, **switches)
    torch.manual_seed(0)
    model = Transformer(config).to(torch.bfloat16)
    ids = torch.randint(0, 64, (2, 12))
    results = {}
    for use_fused in (True, False):
        monkeypatch.setattr(fused, "AVAILABLE", use_fused)
        model.zero_grad()
        logits = model(ids).logits
        logits.float().square().mean().backward()
        with torch.no_grad():
            inference = model.eval()(ids).logits  # the packed weights' path
        model.train()
        results[use_fused] = (logits.detach().float(), inference.float(),
                              [p.grad.float() for p in model.parameters() if p.grad is not None])
    (train_a, infer_a, grads_a), (train_b, infer_b, grads_b) = results[True], results[False]
    scale = train_b.abs().max()
    assert (train_a - train_b).abs().max() < 0.05 * scale and (infer_a - infer_b).abs().max() < 0.05 * scale
    assert torch.equal(train_a, infer_a)  # training and inference passes compute the same function
    assert len(grads_a) == len(grads_b)
    for a, b in zip(grads_a, grads_b):
        assert (a - b).norm() <= 0.05 * b.norm() + 1e-6


def test_linear_layers_take_the_fused_product_for_bf16_on_the_cpu_only(monkeypatch):
    calls = []
    real = fused._product
    monkeypatch.setattr(fused, "_product", lambda *a: calls.append(a[3]) or real(*a))
    config = ModelConfig(vocab_size=50, n_positions=16, n_embd=32, n_layer=1, n_head=4)
    ids = torch.randint(0, 50, (2, 7))
    model = Transformer(config).train()
    model(ids).logits.sum().backward()  # fp32: torch's own product and GELU
    assert calls == []
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(ids).logits.sum().backward()  # autocast's bf16 products, for training and inference alike
    if not fused.AVAILABLE:
        assert calls == []
        return
    # c_attn, attn.c_proj, mlp.c_fc with its GELU, mlp.c_proj, the output projection; then the backward
    # recomputes c_fc's pre-activation
    assert calls == [None, None, "gelu_tanh", None, None, None]
    assert model.h[0].mlp.c_fc.weight.grad.dtype == torch.float32
    calls.clear()
    model.to(torch.bfloat16).eval()
    with torch.no_grad():
        model(ids)
    assert calls == [None, None, "gelu_tanh", None, None]  # inference on bf16 weights: the packed copies, fused


def test_the_fused_product_can_be_turned_off():
    import subprocess
    import sys

    from clozelm.model import packed

    code = "from clozelm.model import fused, packed; print(fused.AVAILABLE, packed.AVAILABLE)"
    for setting in ("0", "1"):
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "CLOZELM_FUSED_LINEAR": setting},
                             capture_output=True, text=True, check=True).stdout.split()
        assert out == [str(setting == "1" and fused.AVAILABLE), str(packed.AVAILABLE)]


@pytest.mark.parametrize("kv_heads, mask_heads", [(6, 1), (2, 1), (2, 6), (6, None)])
def test_one_query_attention_is_as_exact_as_sdpa(kv_heads, mask_heads):
    """Decoding's one-query attention in bf16 (fp32 products): within float rounding of a float64 reference, and no
    further from it than torch's SDPA on the same bf16 tensors; grouped key heads and masks of either width."""
    from clozelm.model.transformer import _one_query
    torch.manual_seed(0)
    B, H, S, Dh = 3, 6, 37, 16
    q = torch.randn(B, H, 1, Dh).bfloat16()
    k, v = (torch.randn(B, kv_heads, S, Dh).bfloat16() for _ in range(2))
    mask = None
    if mask_heads is not None:
        mask = torch.zeros(B, mask_heads, 1, S).masked_fill(torch.rand(B, mask_heads, 1, S) < 0.3,
                                                             torch.finfo(torch.bfloat16).min).bfloat16()
        mask[..., 0] = 0  # every row sees a key
    group = H // kv_heads
    k_full, v_full = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    exact = F.scaled_dot_product_attention(q.double(), k_full.double(), v_full.double(),
                                           attn_mask=None if mask is None else mask.double())
    ours = _one_query(q, k, v, mask)
    sdpa = F.scaled_dot_product_attention(q, k_full, v_full, attn_mask=mask)
    assert ours.dtype == torch.bfloat16 and ours.shape == (B, H, 1, Dh)
    assert (ours.double() - exact).abs().max() <= max(2 ** -8, (sdpa.double() - exact).abs().max())


ONE_QUERY_CONFIGS = {
    "gpt2": dict(),
    "llama": dict(norm="rmsnorm", mlp="gated", activation="silu", positions="rope", bias=False, head="untied"),
    "llama-gqa": dict(norm="rmsnorm", mlp="gated", activation="silu", positions="rope", bias=False, head="untied",
                      n_kv_head=2),
}


@pytest.mark.parametrize("family, autocast", [("gpt2", False), ("gpt2", True), ("llama", False), ("llama-gqa", False)])
def test_decoding_through_the_one_query_path_matches_sdpa(family, autocast, monkeypatch):
    """A cached decoding step that takes `_one_query` (plain and grouped heads, a left-padded batch, a bf16 model or
    an fp32 one under bf16 autocast, as fill runs) gives what the same step gives through SDPA, within bf16
    rounding; attention made sharp (large q/k weights) so that the scores decide the output."""
    from clozelm.model import transformer
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=64, n_positions=80, n_embd=32, n_layer=2, n_head=4, **ONE_QUERY_CONFIGS[family])
    net = Transformer(config).eval()
    with torch.no_grad():
        for block in net.h:
            block.attn.c_attn.weight.mul_(25)
        (net.lm_head if net.lm_head is not None else net.wte).weight.mul_(50)  # logits large enough to differ
    if not autocast:
        net = net.to(torch.bfloat16)
    ids = torch.randint(0, 64, (2, 72))
    valid = torch.ones(2, 72, dtype=torch.bool)
    valid[1, :5] = False  # left padding in the second row: a mask reaches the attention

    def step(one_query: bool):
        taken = []
        original = transformer._one_query
        monkeypatch.setattr(transformer, "_one_query", lambda *a: taken.append(1) or original(*a))
        if not one_query:
            monkeypatch.setattr(transformer, "_takes_one_query", lambda *a: False)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            cache = net.new_cache(2, 72)
            net(ids[:, :71], attention_mask=valid[:, :71], cache=cache)
            logits = net(ids[:, 71:], attention_mask=valid[:, 71:], cache=cache).logits[:, -1].float()
        monkeypatch.undo()
        return logits, len(taken)

    ours, taken = step(True)
    reference, not_taken = step(False)
    assert taken == config.n_layer and not_taken == 0
    assert ours.std() > 1  # sharp enough that a wrong score would show
    assert (ours - reference).abs().max() <= 0.02 * reference.abs().max()  # a bf16 place or two


@pytest.mark.parametrize("family, autocast", [("gpt2", False), ("gpt2", True), ("llama", False), ("llama-gqa", False),
                                              ("llama-gqa", True)])
def test_rows_forked_from_one_context_read_it_as_copies_of_it_would(family, autocast):
    """`KVCache.fork` shares one row's cached context with many rows instead of copying it (fill's look-ahead, beam
    and judge): one new token per row or several, a fork pruned by `select` and continued, the attention
    probabilities, and a context that starts with padding all give what rows holding copies give."""
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=64, n_positions=48, n_embd=32, n_layer=2, n_head=4, **ONE_QUERY_CONFIGS[family])
    net = Transformer(config).eval()
    with torch.no_grad():
        for block in net.h:
            block.attn.c_attn.weight.mul_(25)  # sharp attention: a misplaced key or a wrong mask would show
    context = torch.randint(0, 64, (1, 20))
    valid = torch.ones(1, 20, dtype=torch.bool)
    valid[0, :3] = False  # the context starts with padding: its mask reaches every row of the fork
    rows, follow = torch.randint(0, 64, (6, 1)), torch.randint(0, 64, (6, 5))
    keep = torch.tensor([4, 0, 0, 2])

    def run(net, forked: bool, autocast: bool):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            cache = net.new_cache(1, 30)
            net(context, attention_mask=valid, cache=cache)
            many = cache.fork(6) if forked else cache.select(torch.zeros(6, dtype=torch.long))
            first = net(rows, cache=many, attentions=True)
            second = net(follow, cache=many).logits
            pruned = many.select(keep)
            third = net(follow[keep, :2], cache=pruned).logits
            return [t.double() for t in (first.logits, first.attentions[-1], second, third)]

    ours, copies = run(net, True, autocast), run(net, False, autocast)
    exact = run(net.double(), False, False)  # float64: what both round
    probs = exact[1]
    assert probs[..., :3].max() == 0 and probs.amax(-1).mean() > 0.5  # the padding unread, the rest sharp
    for mine, theirs, truth in zip(ours, copies, exact):
        assert mine.shape == theirs.shape and truth.std() > 0.1
        # fp32: equal up to the order of additions; bf16: no further from the exact values than the copies are
        limit = 2 * (theirs - truth).abs().max() if autocast else 1e-5 * truth.abs().max()
        assert (mine - truth).abs().max() <= max(limit, 1e-6)


def test_a_fork_or_selection_holds_the_room_asked_for():
    """`fork` and `select` given `room` hold that many positions past the cached ones (fill adds a few tokens to
    hundreds of rows, and a buffer as long as the model's context cost a page fault in every row and head), read
    as the longer ones do, and refuse a token past their room before touching the cache."""
    torch.manual_seed(0)
    net = Transformer(ModelConfig(vocab_size=64, n_positions=48, n_embd=32, n_layer=2, n_head=4)).eval()
    context, rows, follow = torch.randint(0, 64, (1, 20)), torch.randint(0, 64, (6, 1)), torch.randint(0, 64, (6, 5))
    keep = torch.tensor([4, 0, 2])

    def run(fork_room, select_room):
        with torch.inference_mode():
            cache = net.new_cache(1, 40)
            net(context, cache=cache)
            many = cache.fork(6, room=fork_room)
            logits = [net(rows, cache=many).logits, net(follow, cache=many).logits]
            pruned = many.select(keep, room=select_room)
            logits.append(net(follow[keep, :2], cache=pruned).logits)
            return many, pruned, logits

    many, pruned, small = run(6, 2)
    assert many.keys[0].size(2) == 6 and pruned.keys[0].size(2) == 8 and pruned.room == 0
    full_many, full_pruned, full = run(None, None)
    assert full_many.keys[0].size(2) == full_pruned.keys[0].size(2) == 20 and full_pruned.room == 12
    for mine, theirs in zip(small, full):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
    length = pruned.length
    with torch.inference_mode(), pytest.raises(ValueError, match="room for 0 more positions, not 1"):
        net(rows[keep], cache=pruned)
    assert pruned.length == length and int(pruned.seen[0]) == length


def test_a_fork_keeps_its_shared_context():
    net = Transformer(ModelConfig(vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=4)).eval()
    cache = net.new_cache(2, 16)
    with torch.inference_mode():
        net(torch.randint(0, 64, (2, 4)), cache=cache)
    with pytest.raises(ValueError, match="only a cache of one row"):
        cache.fork(3)
    one = cache.select(torch.tensor([0]))
    fork = one.fork(3)
    with pytest.raises(ValueError, match="only a cache of one row that is not itself a fork"):
        fork.select(torch.tensor([0])).fork(2)
    with torch.inference_mode():
        net(torch.randint(0, 64, (3, 2)), cache=fork)
    fork.truncate(5)
    with pytest.raises(ValueError, match="its first 4 are shared"):
        fork.truncate(3)


@pytest.mark.parametrize("masking", ["causal", "padding", "none"])
def test_compiled_training_attention_is_about_as_exact_as_the_flash_kernel(masking):
    """The spelled-out attention of compiled CPU training (`_products_and_softmax`: bf16 scores, fp32 softmax), in
    bf16, measured against float64 beside torch's flash kernel on the same bf16 tensors: its output and its three
    gradients stay within twice the kernel's error, on sharp attention (large scores) where the rounding of the
    scores shows most."""
    from clozelm.model.transformer import _products_and_softmax
    torch.manual_seed(0)
    B, H, T, Dh = 2, 3, 40, 16
    q, k, v = (torch.randn(B, H, T, Dh) for _ in range(3))
    q = q * 3  # scores of tens
    grad = torch.randn(B, H, T, Dh)
    mask = None
    if masking == "padding":
        mask = torch.zeros(B, 1, T, T).masked_fill(torch.rand(B, 1, 1, T) < 0.3, torch.finfo(torch.bfloat16).min)
        mask[..., 0] = 0
    causal = masking == "causal"

    def run(attend, dtype):
        leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
        m = None if mask is None else mask.to(dtype)
        out = attend(*leaves, m)
        out.backward(grad.to(dtype))
        return [t.double() for t in (out, *(leaf.grad for leaf in leaves))]

    exact = run(lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=causal), torch.float64)
    flash = run(lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=causal), torch.bfloat16)
    ours = run(lambda q, k, v, m: _products_and_softmax(q, k, v, m, causal, 0.0), torch.bfloat16)
    for mine, theirs, truth in zip(ours, flash, exact):
        assert (mine - truth).norm() <= 2 * (theirs - truth).norm() + 1e-3 * truth.norm()
        assert (mine - truth).norm() <= 0.02 * truth.norm()


def test_compiled_cpu_training_attends_through_products_and_softmax(monkeypatch):
    """Only while torch.compile traces a bf16 step that records gradients on the CPU; eager steps, inference and
    fp32 models keep the flash kernel."""
    from clozelm.model import transformer
    q = torch.zeros(1, 1, 2, 4, dtype=torch.bfloat16)
    assert not transformer._compiled_cpu_training(q)  # eager
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert transformer._compiled_cpu_training(q)
    assert not transformer._compiled_cpu_training(q.float())
    with torch.no_grad():
        assert not transformer._compiled_cpu_training(q)


@pytest.mark.parametrize("case", ["causal", "padded", "bidirectional", "locality bias"])
def test_a_compiled_cpu_training_pass_attends_as_the_flash_kernel_does(case, monkeypatch):
    """Through the whole network, as torch.compile traces a bf16 training pass (`is_compiling` made true here, so
    the spelled-out attention runs eager): every layer takes `_products_and_softmax`, and the logits and the
    gradients follow the flash kernel's pass within bf16 rounding: a causal model, one with padding, a causal
    model read bidirectionally (the hybrid's masked batches) and one with the locality warm-up's bias."""
    from clozelm.model import transformer
    torch.manual_seed(0)
    net = Transformer(ModelConfig(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4))
    with torch.no_grad():
        for block in net.h:
            block.attn.c_attn.weight.mul_(8)  # sharp attention: a misplaced mask would show
    net = net.to(torch.bfloat16).train()
    ids = torch.randint(0, 64, (3, 24))
    kwargs, valid = {}, torch.ones(3, 24, dtype=torch.bool)
    if case == "padded":
        valid[1, :6] = False
        kwargs["attention_mask"] = valid
    elif case == "bidirectional":
        kwargs["causal"] = False
    elif case == "locality bias":
        distance = (torch.arange(24)[None] - torch.arange(24)[:, None]).abs()
        kwargs.update(causal=False, attention_bias=(-0.5 * distance * torch.arange(1, 5)[:, None, None]).bfloat16())

    def run(compiling: bool):
        taken = []
        if compiling:
            original = transformer._products_and_softmax
            monkeypatch.setattr(transformer, "_products_and_softmax", lambda *a: taken.append(1) or original(*a))
            monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        net.zero_grad(set_to_none=True)
        # the loss read where there is text: a padding query sees no key, and its gradient is garbage (the flash
        # kernel's backward even takes every masked key's probability for 1 there)
        logits = net(ids, **kwargs).logits.float()[valid]
        (logits.square().mean()).backward()
        grads = torch.cat([p.grad.float().flatten() for p in net.parameters() if p.grad is not None])
        monkeypatch.undo()
        return logits, grads, len(taken)

    ours, our_grads, taken = run(True)
    flash, flash_grads, not_taken = run(False)
    assert taken == 2 and not_taken == 0
    assert (ours - flash).norm() <= 0.02 * flash.norm()
    assert (our_grads - flash_grads).norm() <= 0.03 * flash_grads.norm()


def test_grouped_keys_repeated_per_query_head_give_the_grouped_attention(monkeypatch):
    """On CUDA, where SDPA would take grouped keys only in its math kernel (a mask, or fp32), each key head is
    repeated for its query heads instead: the same attention. Forced here on the CPU."""
    from clozelm.model import transformer
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=64, n_positions=40, n_embd=32, n_layer=2, n_head=4, **ONE_QUERY_CONFIGS["llama-gqa"])
    net = Transformer(config).eval()
    ids, valid = torch.randint(0, 64, (2, 24)), torch.ones(2, 24, dtype=torch.bool)
    valid[1, :3] = False  # a mask reaches the attention
    assert not transformer._gqa_falls_to_math(torch.zeros(1, 4, 2, 8), torch.zeros(1, 1, 2, 2))  # not on the CPU
    asked = []
    with torch.no_grad():
        grouped = net(ids, attention_mask=valid).logits
        monkeypatch.setattr(transformer, "_gqa_falls_to_math", lambda q, mask: asked.append(1) or True)
        repeated = net(ids, attention_mask=valid).logits
    assert len(asked) == config.n_layer
    assert (repeated - grouped).abs().max() <= 1e-5 and grouped.std() > 0


@pytest.mark.parametrize("out,width", [(96, 40), (40, 96), (64, 64)])  # transposed rows; x and back; neither
def test_a_weight_gradient_is_the_transposed_product_however_it_is_laid_out(out, width, monkeypatch):
    """fused.weight_gradient: rows^T x within one bf16 rounding of float64, and exactly the plain product's where it
    takes it; native.c's transpositions run where the CPU is a Xeon with AMX (flags made so here where native.c runs
    at all, to check their arithmetic on any x86 CPU)."""
    from clozelm.model import native

    if native.usable():
        flags = native.cpu_flags() | {"amx_tile"}
        monkeypatch.setattr(native, "cpu_flags", lambda: flags)
    g = torch.Generator().manual_seed(out)
    rows = torch.randn(300, out, generator=g).to(torch.bfloat16)
    x = torch.randn(300, width, generator=g).to(torch.bfloat16)
    got = fused.weight_gradient(rows, x)
    exact = rows.double().t() @ x.double()
    assert got.dtype == torch.bfloat16 and got.shape == (out, width) and got.is_contiguous()
    assert bool(((got.double() - exact).abs() <= exact.abs() * 2.0 ** -8 + 1e-6).all())
    if out == width or not native.usable():
        assert torch.equal(got, rows.t() @ x)
