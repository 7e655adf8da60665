"""model/native.py and native.c: products of a few rows, compiled on this machine, against float64 references."""

from __future__ import annotations

import subprocess

import pytest
import torch

from clozelm.model import native, packed

needs_avx2 = pytest.mark.skipif(not {"avx2", "fma"} <= packed.cpu_flags(), reason="native.c is x86 code for AVX2 and FMA")


def _reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return (x.double() @ weight.double().T).float()


@needs_avx2
@pytest.mark.parametrize("rows,k", [(8, 32), (13, 96), (48, 64), (200, 160)])
@pytest.mark.parametrize("m", [1, 2, 7])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
def test_products_equal_float64_in_every_format(rows, k, m, x_dtype):
    """fp32, bf16, int8 codes with a scale per row, and 4-bit codes with a scale and zero per 32 columns; row
    counts that are not a multiple of 8 (padded by the packing); one row and several; rows in fp32 and in bf16."""
    generator = torch.Generator().manual_seed(rows * 100 + k + m)
    w = torch.randn(rows, k, generator=generator)
    x = torch.randn(m, k, generator=generator).to(x_dtype)
    codes = (w * 40).round().clamp(-127, 127).to(torch.int8)
    scales = torch.rand(rows, generator=generator) + 0.01
    nibbles = torch.randint(0, 16, (rows, k), generator=generator, dtype=torch.uint8)
    scales_zeros = torch.randn(rows, k // native.GROUP, 2, generator=generator)
    fp32_sums = 1e-5 * k ** 0.5  # relative to the largest output
    cases = [(native.pack(w), w, fp32_sums),
             (native.pack(w.to(torch.bfloat16)), w.to(torch.bfloat16).float(), fp32_sums),
             (native.pack(codes, scales), codes.float() * scales[:, None], 2e-4),  # 16-bit rows
             (native.pack(nibbles, scales_zeros), native.int4_weight(nibbles, scales_zeros), 2e-4)]
    for weight, dense, tolerance in cases:
        y = native.product(x, weight)
        assert y.shape == (m, rows) and y.dtype == torch.float32
        reference = _reference(x, dense)
        assert torch.allclose(y, reference, rtol=1e-5, atol=tolerance * reference.abs().max().item())


def _every_format(rows: int, k: int, generator: torch.Generator) -> list[native.NativeWeight]:
    w = torch.randn(rows, k, generator=generator)
    return [native.pack(w), native.pack(w.to(torch.bfloat16)),
            native.pack(w.mul(40).round().clamp(-127, 127).to(torch.int8), torch.rand(rows, generator=generator) + 0.01),
            native.pack(torch.randint(0, 16, (rows, k), generator=generator, dtype=torch.uint8),
                        torch.rand(rows, k // native.GROUP, 2, generator=generator))]


@needs_avx2
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias_dtype", [None, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_bias_and_the_rounding_inside_the_product_are_torch_s(x_dtype, bias_dtype, dtype):
    """What a Linear layer does after the product, done by the kernel in the same call: the bias added in fp32
    and the sum rounded once to `dtype` (to nearest even, as torch rounds), over any leading dimensions. 13 rows: the
    padding rows never reach the output."""
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 64, generator=generator).to(x_dtype)
    bias = None if bias_dtype is None else (torch.randn(13, generator=generator) * 4).to(bias_dtype)
    for weight in _every_format(13, 64, generator):
        y = native.product(x, weight, bias, dtype)
        plain = native.product(x.reshape(6, 64), weight)  # the same sums, in fp32, without the bias
        expected = (plain if bias is None else plain + bias.float()).to(dtype).view(2, 3, 13)
        assert y.dtype == dtype and torch.equal(y, expected)


@needs_avx2
def test_product_refuses_an_output_dtype_it_cannot_write_and_a_bias_of_another_length():
    with pytest.raises(ValueError):
        native.product(torch.ones(1, 16), native.pack(torch.ones(8, 16)), dtype=torch.float16)
    with pytest.raises(ValueError):
        native.product(torch.ones(1, 16), native.pack(torch.ones(8, 16)), torch.ones(1))  # no broadcasting


@needs_avx2
def test_a_nan_in_a_row_reaches_every_output_of_that_row_in_every_format():
    """As torch's products do: the int8 and int4 kernels round rows to integers, where a NaN would become a 0."""
    generator = torch.Generator().manual_seed(3)
    w = torch.randn(16, 64, generator=generator)
    x = torch.randn(2, 64, generator=generator)
    x[1, 40] = float("nan")
    weights = [native.pack(w), native.pack(w.to(torch.bfloat16)),
               native.pack(w.mul(40).round().to(torch.int8), torch.rand(16, generator=generator) + 0.01),
               native.pack(torch.randint(0, 16, (16, 64), generator=generator, dtype=torch.uint8),
                           torch.rand(16, 2, 2, generator=generator))]
    for weight in weights:
        for dtype in (torch.float32, torch.bfloat16):
            y = native.product(x, weight, dtype=dtype)
            assert y[0].isfinite().all() and y[1].isnan().all()


@needs_avx2
def test_every_row_and_column_counts():
    """A one-hot input picks out one column of the weight in every output row, exactly (no sum to round)."""
    w = torch.arange(24 * 16, dtype=torch.float32).reshape(24, 16) - 100
    packed_w = native.pack(w)
    for column in range(16):
        x = torch.zeros(1, 16)
        x[0, column] = 1
        assert torch.equal(native.product(x, packed_w)[0], w[:, column])


def test_pack_refuses_what_native_c_cannot_take():
    with pytest.raises(ValueError):
        native.pack(torch.ones(8, 12))  # columns not a multiple of 8
    with pytest.raises(ValueError):
        native.pack(torch.ones(8, 16, dtype=torch.int8))  # int8 codes without their scales
    with pytest.raises(ValueError):
        native.pack(torch.ones(8, 16, dtype=torch.float16))
    with pytest.raises(ValueError):
        native.pack(torch.ones(8, 48, dtype=torch.uint8), torch.ones(8, 1, 2))  # 4-bit codes: columns by 32
    with pytest.raises(ValueError):
        native.pack(torch.ones(8, 48, dtype=torch.int8), torch.ones(8))  # int8 codes: columns by 32 too
    with pytest.raises(ValueError):
        native.pack(torch.ones(8, 64, dtype=torch.uint8), torch.ones(8, 2))  # a scale without its zero


def test_int4_weight_is_codes_centred_scaled_and_shifted_per_group():
    """Hand-built: group 0 scale 2 zero 1, group 1 scale -0.5 zero 0, in two rows."""
    codes = torch.tensor([[8] * 32 + [0] * 32, [15] * 32 + [9] * 32], dtype=torch.uint8)
    scales_zeros = torch.tensor([[[2.0, 1.0], [-0.5, 0.0]], [[2.0, 1.0], [-0.5, 0.0]]])
    expected = torch.tensor([[1.0] * 32 + [4.0] * 32, [15.0] * 32 + [-0.5] * 32])
    assert torch.equal(native.int4_weight(codes, scales_zeros), expected)


@needs_avx2
def test_product_refuses_rows_of_another_width():
    with pytest.raises(ValueError):
        native.product(torch.ones(1, 24), native.pack(torch.ones(8, 16)))


@needs_avx2
def test_the_library_is_compiled_once_per_machine_and_then_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    compiler = native._compiler()
    assert compiler is not None  # AVX2 machines that run these tests build it (CI has gcc)
    first = native._build(compiler)
    assert first is not None and first.parent == tmp_path / "clozelm" / "native"
    assert list(first.parent.iterdir()) == [first]  # no half-written file left beside it

    def no_compiling(*args, **kwargs):
        raise AssertionError("compiled again")

    monkeypatch.setattr(subprocess, "run", no_compiling)
    assert native._build(compiler) == first


def test_without_a_compiler_products_stay_torch_s(monkeypatch):
    monkeypatch.setattr(native, "_compiler", lambda: None)
    native.library.cache_clear()
    try:
        assert native.library() is None
        assert not packed.native_products()
        with pytest.raises(RuntimeError):
            native.product(torch.ones(1, 8), native.pack(torch.ones(8, 8)))
        lin = packed.Linear(16, 8)
        with torch.inference_mode():
            assert torch.allclose(lin(torch.ones(1, 16)), torch.nn.functional.linear(torch.ones(1, 16), lin.weight,
                                                                                     lin.bias), atol=1e-6)
    finally:
        native.library.cache_clear()


def test_a_compile_that_fails_leaves_no_library(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(native.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))

    def failing(*args, **kwargs):
        raise subprocess.CalledProcessError(1, args[0])

    monkeypatch.setattr(subprocess, "run", failing)
    assert native._build("cc") is None


@needs_avx2
def test_a_library_that_multiplies_wrongly_is_not_used(monkeypatch):
    monkeypatch.setattr(native, "_agrees", lambda lib: False)
    native.library.cache_clear()
    try:
        assert native.library() is None
    finally:
        native.library.cache_clear()


def test_the_switch_turns_the_kernels_off(monkeypatch):
    monkeypatch.setenv("CLOZELM_NATIVE_KERNELS", "0")
    native.library.cache_clear()
    try:
        assert native.library() is None and not packed.native_products()
    finally:
        native.library.cache_clear()


@pytest.mark.parametrize("flags,wanted,on", [
    ({"avx2", "fma"}, None, True),  # AVX2 alone
    ({"avx2", "fma", "avx512f", "avx512_bf16"}, None, True),  # Zen 4
    ({"avx2", "fma", "avx512f", "avx512_bf16", "amx_tile"}, None, True),  # a Xeon with AMX
    ({"avx2", "fma", "avx512f", "avx512_bf16", "amx_tile"}, "0", False),
    ({"avx2", "fma"}, "0", False),
    ({"avx2"}, "1", False),  # no FMA: the code would not run
    ({"asimd", "bf16"}, "1", False)])  # Arm
def test_which_cpus_multiply_through_native_c(flags, wanted, on, monkeypatch):
    monkeypatch.setattr(native, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(native, "library", lambda: object())  # built, wherever the flags say it may be
    if wanted is None:
        monkeypatch.delenv("CLOZELM_NATIVE_KERNELS", raising=False)
    else:
        monkeypatch.setenv("CLOZELM_NATIVE_KERNELS", wanted)
    assert packed.native_products() == on


@pytest.mark.parametrize("flags,ahead", [({"avx2", "fma", "avx512f", "amx_tile"}, (2048, 2048)),
                                         ({"avx2", "fma", "avx512f"}, (0, 0)), ({"avx2", "fma"}, (0, 2048))])
def test_the_kernels_prefetch_ahead_as_the_machine_class_gains_from_it(flags, ahead, monkeypatch):
    """(fp32 weights, narrower ones): a Xeon with AMX all; AVX2 without AVX-512 the narrower ones; Zen 4 none."""
    monkeypatch.setattr(native, "cpu_flags", lambda: frozenset(flags))
    assert native.prefetch_bytes() == ahead


@needs_avx2
@pytest.mark.parametrize("kind", ["fp32", "bf16", "int8", "int4"])
def test_prefetching_changes_no_product(kind):
    """The library prefetches as this machine class does; a product with and without prefetching is the same."""
    lib = native.library()
    assert tuple(lib.clozelm_set_prefetch(weights, -1) for weights in (0, 1)) == native.prefetch_bytes()  # -1 reads
    torch.manual_seed(0)
    w = torch.randn(200, 96)
    weight = {"fp32": lambda: native.pack(w), "bf16": lambda: native.pack(w.to(torch.bfloat16)),
              "int8": lambda: native.pack(*packed._int8_codes(w)),
              "int4": lambda: native.pack(*packed._native_int4_codes(w))}[kind]()
    x = torch.randn(3, 96)
    try:
        products = []
        for ahead in (0, 64, 2048):
            for weights in (0, 1):
                lib.clozelm_set_prefetch(weights, ahead)
            products.append(native.product(x, weight))
    finally:
        for weights, ahead in enumerate(native.prefetch_bytes()):
            lib.clozelm_set_prefetch(weights, ahead)
    assert torch.equal(products[0], products[1]) and torch.equal(products[0], products[2])


@pytest.mark.parametrize("amx,wanted,on", [(False, None, True), (True, None, False), (True, "1", True)])
def test_plain_weights_multiply_one_product_at_a_time_through_native_c_except_on_a_xeon_with_amx(
        amx, wanted, on, monkeypatch):
    monkeypatch.setattr(packed, "has_amx", lambda: amx)
    if wanted is None:
        monkeypatch.delenv("CLOZELM_NATIVE_KERNELS", raising=False)
    else:
        monkeypatch.setenv("CLOZELM_NATIVE_KERNELS", wanted)
    assert packed.native_plain_products() == on


@needs_avx2
@pytest.mark.parametrize("kind", ["fp32", "bf16", "int8", "int4"])
def test_on_a_xeon_with_amx_only_quantized_codes_take_native_c_one_product_at_a_time(kind, monkeypatch):
    """There oneDNN's fp32 and bf16 products of a row stay (with an fp32 weight no native copy is made for it);
    int8 and int4 codes multiply through native.c as elsewhere."""
    monkeypatch.delenv("CLOZELM_NATIVE_KERNELS", raising=False)
    monkeypatch.setattr(packed, "has_amx", lambda: True)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if kind == "bf16" else torch.float32
    lin = packed.Linear(64, 48).to(dtype)
    if kind in ("int8", "int4"):
        lin.weight_format = kind
    x = torch.randn(1, 1, 64).to(dtype)
    calls = []
    product = native.product
    monkeypatch.setattr(native, "product", lambda *a: calls.append(1) or product(*a))
    with torch.inference_mode():
        lin(x)
    if kind in ("int8", "int4"):
        assert len(calls) == 1
    else:
        assert not calls and not set(packed._quant_cache.get(lin, {})) & {"native fp32", "native bf16"}


@needs_avx2
@pytest.mark.parametrize("kind", ["fp32", "bf16", "int8", "int4"])
@pytest.mark.parametrize("activation", [None, "gelu_tanh"])
def test_linear_multiplies_a_few_rows_through_native_c(kind, activation, monkeypatch):
    """Where the kernels are on (CLOZELM_NATIVE_KERNELS=1 asks for them on any AVX2 CPU), a Linear layer in inference
    multiplies one row or a short draft through native.c (int8 and int4: the same codes and scales as torch's
    kernels), adds its bias and applies its activation; many rows, and products with gradients, keep torch's
    products."""
    monkeypatch.setenv("CLOZELM_NATIVE_KERNELS", "1")
    torch.manual_seed(0)
    dtype = torch.bfloat16 if kind == "bf16" else torch.float32
    lin = packed.Linear(64, 48).to(dtype)  # int4: torch packs 16 rows at a time
    if kind in ("int8", "int4"):
        lin.weight_format = kind
    x = torch.randn(1, 3, 64).to(dtype)
    with torch.inference_mode():
        if kind == "int8":
            weight = native.pack(*packed._int8_codes(lin.weight.float()))
        elif kind == "int4":
            weight = native.pack(*packed._native_int4_codes(lin.weight.float()))
        else:
            weight = native.pack(lin.weight)
        expected = native.product(x.reshape(3, 64), weight) + lin.bias
        expected = packed.fused.activate(expected, activation).to(dtype)  # activated before rounding
        assert torch.equal(lin(x, activation), expected.view(1, 3, 48))
        many = torch.randn(2, packed.AS_DENSE_FROM_ROWS, 64).to(dtype)
        monkeypatch.setenv("CLOZELM_NATIVE_KERNELS", "0")
        torch_s = lin(many, activation)
        monkeypatch.setenv("CLOZELM_NATIVE_KERNELS", "1")
        assert torch.equal(lin(many, activation), torch_s)
    y = lin(x, activation)  # with gradients: torch's product, differentiable
    assert y.requires_grad


@needs_avx2
def test_under_autocast_an_fp32_weight_keeps_autocast_s_product_and_gets_no_native_copy(monkeypatch):
    """Fill and eval run under bf16 autocast, whose products are bf16 ones: native.c's fp32 product would change
    them, and a copy made for it would only take memory. The library's own check, when autocast's product is the
    first to ask for it, still multiplies in fp32."""
    monkeypatch.setenv("CLOZELM_NATIVE_KERNELS", "1")
    native.library.cache_clear()
    torch.manual_seed(0)
    lin = packed.Linear(64, 48)
    x = torch.randn(1, 2, 64)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = lin(x)
        assert native.library() is not None  # built and checked under autocast
    assert y.dtype == torch.bfloat16 and packed.native_copy(lin, lin.weight) is not None
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = packed._packed_bytes[0]
        lin2 = packed.Linear(64, 48)
        lin2(x)
        assert packed._packed_bytes[0] - before == 64 * 48 * 2  # autocast's bf16 copy alone


@needs_avx2
def test_under_autocast_a_quantized_layer_that_no_format_fits_gets_no_native_copy(monkeypatch):
    """An int8 layer whose width no int8 kernel takes (24 columns: a multiple of 8, which native.c's fp32 copy would
    take, but not of 16) multiplies under autocast as autocast does; no copy of its weight is made for native.c,
    which that product would not read: only autocast's bf16 copy."""
    monkeypatch.setenv("CLOZELM_NATIVE_KERNELS", "1")
    lin = packed.Linear(24, 16)
    lin.weight_format = packed.INT8
    x = torch.randn(1, 1, 24)
    before = packed._packed_bytes[0]
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = lin(x)
    assert y.dtype == torch.bfloat16 and packed._packed_bytes[0] - before == 24 * 16 * 2
    assert not any(kind in packed.NATIVE_KINDS.values() for kind in packed._quant_cache.get(lin, {}))


@needs_avx2
def test_a_changed_weight_is_packed_again(monkeypatch):
    monkeypatch.setenv("CLOZELM_NATIVE_KERNELS", "1")
    torch.manual_seed(0)
    lin = packed.Linear(16, 8, bias=False)
    x = torch.randn(1, 16)
    with torch.inference_mode():
        before = lin(x)
    with torch.no_grad():
        lin.weight.mul_(2)
    with torch.inference_mode():
        assert torch.allclose(lin(x), 2 * before, rtol=1e-6, atol=1e-6)


@needs_avx2
def test_a_decoding_step_of_the_default_model_keeps_its_logits(monkeypatch):
    """The embedded default model, one cached step after a prompt: the logits with native.c's products equal
    torch's to fp32 rounding, in fp32 mode, and to the quantized kernels' rounding in int8 and int4 mode."""
    import clozelm
    model = clozelm.load("default")
    network = model.network
    ids = torch.tensor([model.tokenizer.encode("The sea was calm and the ship")])

    def step_logits() -> torch.Tensor:
        cache = network.new_cache(1, ids.size(1) + 1)
        with torch.inference_mode():
            network(ids[:, :-1], cache=cache)
            return network(ids[:, -1:], cache=cache).logits

    for quantized in (None, "int8", "int4"):
        packed.use_quantized_weights(network, quantized)
        monkeypatch.setenv("CLOZELM_NATIVE_KERNELS", "0")
        torch_s = step_logits()
        monkeypatch.setenv("CLOZELM_NATIVE_KERNELS", "1")
        natively = step_logits()
        tolerance = 1e-4 if quantized is None else 0.05  # torch's int8/int4 kernels round rows and sums to bf16
        assert (natively - torch_s).abs().max() < tolerance * torch_s.abs().max()
        assert natively.argmax() == torch_s.argmax()
    packed.use_quantized_weights(network, None)


@needs_avx2
@pytest.mark.parametrize("kind", ["int8", "int4"])
@pytest.mark.parametrize("k", [32, 96, 3072])
def test_quantized_products_are_exact_but_for_the_rounding_of_their_rows(kind, k, lanes):
    """The int8 and int4 kernels round each input row to 16-bit integers (one step per row, its largest magnitude /
    32639; int8's 8-lane form one per 32 columns, / 32767) and multiply the codes by them in integers: each output
    within the sum of its terms' worst rounding (half a step times the weight's magnitude) of float64's product, plus
    fp32's rounding of the sums. A row with one large value among small ones (the step set by it); a NaN or an
    infinity, which no integer stands for, makes every output of its row NaN and no other. Both forms: 8 lanes (AVX2),
    16 (AVX-512, VNNI's multiply-adds where the CPU has them)."""
    generator = torch.Generator().manual_seed(k)
    x = torch.randn(3, k, generator=generator)
    x[2, k // 3] = 300.0
    if kind == "int8":
        codes = torch.randint(-127, 128, (40, k), generator=generator, dtype=torch.int8)
        scales = torch.rand(40, generator=generator) + 0.01
        dense, weight = codes.double() * scales.double()[:, None], native.pack(codes, scales)
    else:
        codes = torch.randint(0, 16, (40, k), generator=generator, dtype=torch.uint8)
        scales_zeros = torch.randn(40, k // native.GROUP, 2, generator=generator)
        dense, weight = native.int4_weight(codes, scales_zeros).double(), native.pack(codes, scales_zeros)
    steps = x.double().abs().amax(-1, keepdim=True) / 32639  # [rows, 1]: at least each group's step
    bound = (steps / 2) @ dense.abs().sum(-1)[None] + 1e-6 * (x.double().abs() @ dense.abs().T)
    error = (native.product(x, weight).double() - x.double() @ dense.T).abs()
    assert (error <= bound).all()
    x[0, 7], x[1, 5] = float("inf"), float("nan")
    y = native.product(x, weight)
    assert y[0].isnan().all() and y[1].isnan().all() and not y[2].isnan().any()


@needs_avx2
@pytest.mark.skipif(not {"avx512_vnni", "avx512vl", "avx512bw"} <= packed.cpu_flags(),
                    reason="VNNI's multiply-adds are for CPUs with AVX-512 VNNI")
@pytest.mark.parametrize("m,k", [(1, 32), (3, 3072), (7, 96)])
def test_int4_products_are_the_same_numbers_with_vnni_s_multiply_adds_as_without(m, k):
    """The int4 kernel's 16-lane form sums each group's codes times the row's bytes with vpdpbusd, its 8-lane one with
    vpmaddubsw and vpmaddwd: the same integers (exact in both), so the same outputs to the last bit; with several
    rows (a draft's: 4, 2 and 1 at a time through the 16-lane form) too."""
    generator = torch.Generator().manual_seed(m + k)
    x = torch.randn(m, k, generator=generator)
    codes = torch.randint(0, 16, (24, k), generator=generator, dtype=torch.uint8)
    weight = native.pack(codes, torch.randn(24, k // native.GROUP, 2, generator=generator))
    lib = native.library()
    try:
        assert lib.clozelm_set_lanes(8) == 8
        narrow = native.product(x, weight)
        assert lib.clozelm_set_lanes(16) == 16
        assert torch.equal(native.product(x, weight), narrow)
    finally:
        lib.clozelm_set_lanes(16)


@needs_avx2
@pytest.mark.parametrize("k", [24, 72, 256])  # odd multiples of 8 (a last block of 8 columns alone) and whole blocks
@pytest.mark.parametrize("m", [1, 3, 7])  # with AVX-512 BF16: 1, 2 + 1, 4 + 2 + 1 rows at a time
def test_bf16_products_of_bf16_rows_equal_float64_in_both_forms(k, m, lanes):
    """Rows of bf16 numbers times bf16 weights: with AVX-512 BF16, vdpbf16ps's exact products summed in fp32 (16
    lanes), else the weights widened to fp32 (8 lanes); both within fp32's rounding of the sums of float64's product.
    fp32 rows that are not bf16 numbers keep the fp32 form: nothing of them is rounded away."""
    generator = torch.Generator().manual_seed(k + m)
    w = torch.randn(13, k, generator=generator).to(torch.bfloat16)
    x = torch.randn(m, k, generator=generator).to(torch.bfloat16)
    weight = native.pack(w)
    reference = _reference(x.float(), w.float())
    tolerance = 1e-5 * k ** 0.5 * reference.abs().max().item()
    for rows in (x, x.float()):  # bf16 rows, and fp32 rows that are bf16 numbers
        assert torch.allclose(native.product(rows, weight), reference, rtol=1e-5, atol=tolerance)
    fine = torch.full((1, k), 1 + 2 ** -12)  # not a bf16 number: rounded to bf16 it would be 1
    assert native.product(fine, native.pack(torch.ones(8, k, dtype=torch.bfloat16)))[0, 0] == k * (1 + 2 ** -12)


@pytest.mark.parametrize("n", [5, 16 * 40 + 13])  # a tail alone; 16-lane blocks, an 8-lane one and a padded tail
def test_gelu_backward_is_float64s_rounded_once(n, lanes):
    """clozelm_gelu_tanh_backward against float64: within one bf16 step of the exact value everywhere, the far
    tails included (x down to -12, where torch's 1 + tanh(u) cancels to nothing in fp32)."""
    g = torch.Generator().manual_seed(n)
    x = (torch.rand(n, generator=g) * 24 - 12).to(torch.bfloat16)
    dy = torch.randn(n, generator=g).to(torch.bfloat16)
    got = torch.empty_like(x)
    native.library().clozelm_gelu_tanh_backward(dy.data_ptr(), x.data_ptr(), got.data_ptr(), n)
    exact = dy.double() * _gelu_derivative(x.double())
    # one bf16 step (2^-8 relative); below x = -9.5 the kernel's floor: its exponential stays below e^88.3, so that
    # the sigmoid stays above 5e-39 and gelu' at the order of 1e-36
    assert bool(((got.double() - exact).abs() <= exact.abs() * 2.0 ** -8 + 1e-35 * dy.double().abs()).all())
    torch_s = torch.ops.aten.gelu_backward(dy, x, approximate="tanh")
    assert (got.double() - exact).abs().sum() <= (torch_s.double() - exact).abs().sum()


def _gelu_derivative(x: torch.Tensor) -> torch.Tensor:
    """d/dx of x (1 + tanh(u)) / 2, u = sqrt(2 / pi) (x + 0.044715 x^3), in float64 without cancellation: 1 + tanh(u)
    = 2 s and 1 - tanh(u)^2 = 4 s (1 - s) with s = sigmoid(2u), 1 - s = sigmoid(-2u) (torch's float64 gelu_backward
    itself rounds 1 + tanh(u) to 0 below x = -8). Checked against it where that does not happen."""
    u = (2 / torch.pi) ** 0.5 * (x + 0.044715 * x ** 3)
    s, rest = torch.sigmoid(2 * u), torch.sigmoid(-2 * u)
    derivative = s + 2 * x * s * rest * (2 / torch.pi) ** 0.5 * (1 + 3 * 0.044715 * x ** 2)
    near = x.abs() < 4
    torch_s = torch.ops.aten.gelu_backward(torch.ones_like(x), x, approximate="tanh")
    assert torch.allclose(derivative[near], torch_s[near], rtol=1e-12, atol=1e-15)
    return derivative


@needs_avx2
@pytest.mark.parametrize("rows,cols", [(1, 1), (8, 8), (13, 37), (64, 64), (130, 70), (300, 9)])
def test_transposed_is_torchs_transpose_of_any_shape(rows, cols):
    x = torch.randn(rows, cols + 5).to(torch.bfloat16)[:, 2:2 + cols]  # rows further apart than their length
    assert torch.equal(native.transposed(x), x.t().contiguous())
    assert native.transposed(x).is_contiguous()


@needs_avx2
def test_transposed_refuses_what_it_cannot_read():
    for bad in (torch.zeros(4, 4), torch.zeros(2, 3, 4, dtype=torch.bfloat16), torch.zeros(4, 4, dtype=torch.bfloat16).t()):
        with pytest.raises(ValueError, match="cannot transpose"):
            native.transposed(bad)
