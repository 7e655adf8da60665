"""CPU inference fast path: matrix products with weights prepacked once in oneDNN's blocked layout.

Decoding one token at a time is bound by how fast the weights stream from memory. `F.linear` with a
row-major [out, in] weight reads them markedly slower for a single input row than the same product with the
weight reordered once into oneDNN's blocked layout (benchmarks/generate_speed.py measures what it gives).

The packed copy is made lazily, used only when no gradient is wanted and autocast is off (it has no backward
and must not change autocast's dtype choice), and remade whenever the weight changes (its version counter or
storage), so training steps, `load_state_dict` and `.to()` never meet a stale copy (an in-place change that
leaves the counter alone, as torch's fused CPU AdamW does, must move it: the trainer does). It costs memory equal to
the weights it packs, so packing stops once packed copies would take more than a quarter of the RAM;
`CLOZELM_PACKED_WEIGHTS=0` turns it off, `CLOZELM_PACK_FP32=0/1` overrides the per-machine choice for fp32.

Under bf16 autocast (fill, eval, the validation passes of training) an fp32 weight is cast to bf16 once and the
copy kept the same way: autocast's own cache of such casts lasts one autocast region and is off under inference
mode, where fill and eval run, so it cast every weight again at every forward pass. The numbers are a training
pass's under autocast: the same casts, and the bias and activation inside the product (model/fused.py).

Fewer bytes still: `use_quantized_weights` gives the products int8 or int4 copies of the weights (torch's
weight-only CPU kernels, which dequantise inside the product), made and cached the same way; products of many
rows multiply by a dense copy of the dequantised weights instead, which is faster there (`AS_DENSE_FROM_ROWS`):
bf16 where the CPU has bf16 units, fp32 where it has not.

On x86 CPUs with AVX2 and FMA, products of a few rows go through model/native.c instead (`native_products`), which
reads its own blocked copy of the weights faster than torch's kernels there: in every format on CPUs without AMX
(AVX2 alone, or AVX-512 as on AMD's Zen 4), int8 and int4 codes on a Xeon with AMX, where oneDNN's single-row fp32 and
bf16 products one at a time were faster (`native_plain_products`); not fp32 weights under autocast, whose products
are bf16 ones.
"""

from __future__ import annotations

import os
import weakref

import torch
import torch.nn.functional as F

from . import fused, native
from .native import cpu_flags

_cache: "weakref.WeakKeyDictionary[object, tuple[tuple, torch.Tensor]]" = weakref.WeakKeyDictionary()
_packed_bytes = [0]
PACK_ROWS = 4  # input rows oneDNN tunes the layout for: one token or a short draft (4 measured best of 1-16)


def _available() -> bool:
    if os.environ.get("CLOZELM_PACKED_WEIGHTS", "1") == "0" or not torch.backends.mkldnn.is_available():
        return False
    try:
        w = torch.ones(2, 2)
        out = torch.ops.mkldnn._linear_pointwise(torch.ones(1, 2), torch.ops.mkldnn._reorder_linear_weight(w, 1),
                                                 None, "none", [], "")
        return bool(torch.equal(out, torch.full((1, 2), 2.0)))
    except (AttributeError, RuntimeError):  # a torch build without these oneDNN ops
        return False


AVAILABLE = _available()


def _bf16_packable() -> bool:
    """Whether oneDNN packs bf16 weights here: it needs AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT, and refuses on
    CPUs with AVX2 alone, whose bf16 weights then multiply row-major."""
    try:
        return AVAILABLE and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


BF16_PACKABLE = _bf16_packable()


def _int8_available() -> bool:
    try:
        out = torch.ops.aten._weight_int8pack_mm(torch.ones(1, 32, dtype=torch.bfloat16),
                                                 torch.ones(8, 32, dtype=torch.int8), torch.ones(8, dtype=torch.bfloat16))
        return bool(torch.equal(out.float(), torch.full((1, 8), 32.0)))
    except (AttributeError, RuntimeError):
        return False


INT8_AVAILABLE = _int8_available()


def _limit_bytes() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    except (ValueError, OSError):
        return 1 << 30


_LIMIT = _limit_bytes()


def _version(weight: torch.Tensor) -> int:
    """The weight's version counter. Inference tensors (made under torch.inference_mode) have none: a copy of
    one changed in place inside inference mode, at the same address, is not noticed."""
    return -1 if weight.is_inference() else weight._version


def _key(weight: torch.Tensor) -> tuple:
    """What a cached copy of `weight` must match to be current."""
    return _version(weight), weight.data_ptr(), weight.dtype, tuple(weight.shape)


def _counted(make, nbytes: int) -> torch.Tensor | None:
    """make() a copy taking `nbytes` when the copies alive leave room for it under the budget (None otherwise);
    the count drops when the copy is freed."""
    if _packed_bytes[0] + nbytes > _LIMIT:
        return None
    copy = make()
    _packed_bytes[0] += nbytes
    weakref.finalize(copy, _release, nbytes)
    return copy


def _packed(owner: object, weight: torch.Tensor) -> torch.Tensor | None:
    key = _key(weight)
    hit = _cache.get(owner)
    if hit is not None and hit[0] == key:
        return hit[1]
    if hit is not None:
        del _cache[owner]
    packed = _counted(lambda: torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_ROWS),
                      weight.numel() * weight.element_size())
    if packed is not None:
        _cache[owner] = (key, packed)
    return packed


def _release(nbytes: int) -> None:
    _packed_bytes[0] -= nbytes


INT8, INT4 = "int8", "int4"
AUTOCAST_BF16 = "autocast-bf16"  # the bf16 copy autocast makes of an fp32 weight
# torch's int8 kernel returns wrong numbers (or crashes) for inner sizes that are not a multiple of 16
INT8_K_MULTIPLE = 16
INT4_GROUP = 32  # weights per scale and zero in int4 mode: llama.cpp's Q4 block (a Q4_1 GGUF keeps its 4-bit codes)
# The weight-only kernels stream the weights once per product, which is what one token or a short draft needs; with
# more rows they fall behind a dense product (timed at the 124M and SmolLM2 shapes), so products of this many rows
# or more (a prompt, fill's candidates, eval's windows) multiply by a dense copy of the weights the kernel would use,
# made once and kept like the others: bf16 where the CPU has bf16 units, else fp32 (bf16 products are then emulated,
# slower than fp32 ones).
AS_DENSE_FROM_ROWS = 8
AS_DENSE = {INT8: "int8 dequantized", INT4: "int4 dequantized"}
# native.c's blocked copies (model/native.py), by the format the product reads
NATIVE_KINDS = {torch.float32: "native fp32", torch.bfloat16: "native bf16", INT8: "native int8", INT4: "native int4"}
NATIVE_OUTPUTS = (torch.float32, torch.bfloat16)  # the dtypes native.c writes its products in
# owner -> {kind: (the weight's key, its quantized copy or None where the kind does not fit its shape)}
_quant_cache: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()


def _int4_available() -> bool:
    try:
        q = torch.full((16, 64), 9, dtype=torch.int32)  # (9 - 8) * 1 + 0 = 1 per weight
        scales_zeros = torch.stack([torch.ones(2, 16), torch.zeros(2, 16)], -1).to(torch.bfloat16)
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(torch.ones(1, 64, dtype=torch.bfloat16),
                                                         torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 8),
                                                         INT4_GROUP, scales_zeros)
        return bool(torch.equal(out.float(), torch.full((1, 16), 64.0)))
    except (AttributeError, RuntimeError):
        return False


INT4_AVAILABLE = _int4_available()
QUANTIZED = {INT8: INT8_AVAILABLE, INT4: INT4_AVAILABLE}
OUTPUT_OWNERS = ("wte", "lm_head", "mlm")  # who owns the vocabulary projection in model/transformer.py


def use_quantized_weights(network: torch.nn.Module, kind: str | None) -> None:
    """Inference products of `network` read quantized copies of their weights, dequantised inside the product:
    "int8" (per-output-channel scales; a quarter of fp32's bytes) or "int4" (a scale and a zero per group of
    INT4_GROUP weights, about a sixth; the vocabulary projection stays int8): bytes are what bounds decoding on
    a CPU. None: back to the weights themselves. The parameters stay as they are (training, saving and
    `load_state_dict` never see the copies)."""
    if kind not in (None, *QUANTIZED):
        raise ValueError(f"unknown weight format {kind!r}")
    for module in network.modules():  # every owner of a product: Linear layers, the tied embedding, the MLM head
        module.weight_format = kind
    if kind == INT4:
        # The vocabulary projection ranks tens of thousands of close logits, and 4 bits there cost the most
        # (llama.cpp's Q4 files keep it at 6 or 8 bits for the same reason): it stays at int8.
        for name in OUTPUT_OWNERS:
            owner = getattr(network, name, None)
            if owner is not None:
                owner.weight_format = INT8


def use_int8_weights(network: torch.nn.Module, on: bool = True) -> None:
    use_quantized_weights(network, INT8 if on else None)


def _quantized(owner: object, weight: torch.Tensor, kind: str) -> tuple[torch.Tensor, ...] | None:
    """The cached quantized copy of `weight` in `kind` (remade when the weight changes); None where the
    format does not fit its shape."""
    key = _key(weight)
    copies = _quant_cache.setdefault(owner, {})
    hit = copies.get(kind)
    if hit is not None and hit[0] == key:
        return hit[1]
    w = weight.detach().float()
    if kind in NATIVE_KINDS.values():  # native.c's blocked copy: int8/int4 from the same codes as torch's kernels
        source = (*_int8_codes(w),) if kind == NATIVE_KINDS[INT8] else _native_int4_codes(w) \
            if kind == NATIVE_KINDS[INT4] else (weight.detach(),)
        copy = None if source[0].shape[1] % native.columns_multiple(source[0].dtype) else \
            _counted(lambda: native.pack(*source), source[0].numel() * source[0].element_size())
        parts = None if copy is None else (copy,)
    elif kind == AUTOCAST_BF16:  # counted with the packed copies: fp32 training validates with a copy of its weights
        copy = _counted(lambda: weight.detach().to(torch.bfloat16), weight.numel() * 2)
        parts = None if copy is None else (copy,)
    elif kind in AS_DENSE.values():
        quantized = INT8 if kind == AS_DENSE[INT8] else INT4
        dtype = dense_dtype()
        copy = None if _quantized(owner, weight, quantized) is None else \
            _counted(lambda: _dequantized(w, quantized).to(dtype), weight.numel() * dtype.itemsize)
        parts = None if copy is None else (copy,)
    elif w.shape[1] % (INT8_K_MULTIPLE if kind == INT8 else INT4_GROUP):
        parts = None
    elif kind == INT8:
        parts = _int8_codes(w)
    else:
        q, scales_zeros = _int4_codes(w)
        try:
            parts = (torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 8), scales_zeros)
        except RuntimeError:  # a shape this torch's packing refuses
            parts = None
    copies[kind] = (key, parts)
    return parts


def _int8_codes(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [n, k] fp32 -> (q int8 [n, k], scales bf16 [n]), w ~= q * scale: one scale per output channel."""
    scales = w.abs().amax(1).clamp(min=1e-12) / 127.0
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
    return q, scales.to(torch.bfloat16)


def _int4_codes(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [n, k] fp32 -> (q int32 [n, k] in 0..15, scales and zeros bf16 [k / INT4_GROUP, n, 2]) as torch's int4
    kernel takes them: asymmetric, the group's minimum maps to 0 and its maximum to 15, w ~= (q - 8) * scale + zero."""
    n, k = w.shape
    groups = w.reshape(n, k // INT4_GROUP, INT4_GROUP)
    low, high = groups.amin(-1), groups.amax(-1)
    scale = ((high - low) / 15).clamp(min=1e-12)
    q = torch.round((groups - low[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int32).reshape(n, k)
    return q, torch.stack([scale, low + 8 * scale], -1).transpose(0, 1).contiguous().to(torch.bfloat16)


def _native_int4_codes(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`_int4_codes` as native.pack takes them: codes uint8 [n, k], (scale, zero) pairs [n, k / INT4_GROUP, 2]."""
    q, scales_zeros = _int4_codes(w)
    return q.to(torch.uint8), scales_zeros.transpose(0, 1)


def _dequantized(w: torch.Tensor, kind: str) -> torch.Tensor:
    """The weights the `kind` kernel multiplies by, from the same codes, scales and zeros, rounded to bf16."""
    if kind == INT8:
        q, scales = _int8_codes(w)
        return (q.float() * scales.float()[:, None]).to(torch.bfloat16)
    q, scales_zeros = _int4_codes(w)
    n, k = q.shape
    scale, zero = scales_zeros.float().transpose(0, 1).unbind(-1)  # [n, k / INT4_GROUP] each
    groups = (q.reshape(n, k // INT4_GROUP, INT4_GROUP) - 8).float()
    return (groups * scale[..., None] + zero[..., None]).reshape(n, k).to(torch.bfloat16)


def quantized_parts(owner: object, weight: torch.Tensor, kind: str) -> tuple[str, tuple[torch.Tensor, ...]] | None:
    """(the format, the cached quantized copy of `weight`) for a product in `kind`: int4 falls back to int8 for a
    shape its kernel cannot take; None where no quantized format fits."""
    parts = _quantized(owner, weight, kind)
    if parts is None and kind == INT4:
        kind = INT8
        parts = _quantized(owner, weight, kind)
    return None if parts is None else (kind, parts)


def quantized_product(x: torch.Tensor, kind: str, parts: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """x [..., in] times the weight quantized in `parts` (from `quantized_parts`) -> [..., out] in x's dtype; the
    product reads bf16 rows."""
    shape = x.shape
    rows = x.reshape(-1, shape[-1]).to(torch.bfloat16).contiguous()
    if kind == INT8:
        y = torch.ops.aten._weight_int8pack_mm(rows, *parts)
    else:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, parts[0], INT4_GROUP, parts[1])
    return y.to(x.dtype).reshape(*shape[:-1], y.size(-1))


def _quantized_linear(x, weight, bias, owner, kind):
    found = quantized_parts(owner, weight, kind)
    if found is None:
        return None
    if x.numel() >= AS_DENSE_FROM_ROWS * x.size(-1):
        copy = _quantized(owner, weight, AS_DENSE[found[0]])
        if copy is not None:
            y = _plain_linear(x.to(copy[0].dtype), copy[0], None).to(x.dtype)
            return y if bias is None else y + bias
    y = quantized_product(x, *found)
    return y if bias is None else y + bias


def native_products() -> bool:
    """Whether model/native.c's kernels are used, where they were measured faster than torch's (docs/performance.md)
    and the library builds: on x86 CPUs with AVX2 and FMA (the code needs both). CLOZELM_NATIVE_KERNELS=0 turns them
    off."""
    return native.usable()


def native_plain_products() -> bool:
    """Whether fp32 and bf16 weights (not quantized ones) multiply a few rows through native.c one product at a time,
    where `native_products` says its kernels are used: not on a Xeon with AMX, where oneDNN's single-row products
    were faster one at a time (its int8 and int4 products, and every format in model/native_step.py's one-call step,
    were not). CLOZELM_NATIVE_KERNELS=1 asks for them there too."""
    return not has_amx() or os.environ.get("CLOZELM_NATIVE_KERNELS") == "1"


def _native_rows(x: torch.Tensor) -> bool:
    """Whether x's product may go through native.c: a few rows (one token, a short draft), eager CPU inference
    (`native_copy` then says whether the kernels are on and take the weight)."""
    return (x.is_cpu and x.numel() < AS_DENSE_FROM_ROWS * x.size(-1) and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling())


def native_copy(owner: object, weight: torch.Tensor, plain: bool = True) -> "native.NativeWeight | None":
    """native.c's copy of `weight` as `owner`'s products read it (int8 or int4 codes in those modes, the weight itself
    where it is fp32 or bf16 and not quantized), cached like the others; None where the kernels are off or the shape
    has none (a width that is not a multiple of 8, or of 32 for int8 and int4 codes). plain=False: for a product
    that only quantized codes may serve (rows under autocast, whose products are bf16 ones, or rows in another dtype
    than the weight's), so no copy of the weight itself is made."""
    if not native_products():
        return None
    kind = getattr(owner, "weight_format", None)
    found = quantized_parts(owner, weight, kind) if QUANTIZED.get(kind) else None
    if found is None and not plain:
        return None
    kind = NATIVE_KINDS.get(weight.dtype) if found is None else NATIVE_KINDS[found[0]]
    parts = None if kind is None else _quantized(owner, weight, kind)
    return None if parts is None else parts[0]


def has_amx() -> bool:
    """Whether this CPU has AMX matrix units (recent Xeons): the machine classes differ in what pays."""
    return "amx_tile" in cpu_flags()


def has_avx512() -> bool:
    """Whether this x86 CPU has AVX-512 (the foundation set): compiled int8/int4 reductions pay only with it."""
    return "avx512f" in cpu_flags()


def has_bf16_units() -> bool:
    """Whether this CPU multiplies bf16 natively: AMX or AVX-512 BF16 on x86, the BF16 extension on Arm. Elsewhere
    (x86 CPUs with AVX2 only, or AVX-512 without BF16) bf16 products are emulated: with many rows several to a
    hundred times slower than fp32 ones (docs/performance.md); one row still reads half the bytes."""
    return bool(cpu_flags() & {"amx_bf16", "avx512_bf16", "bf16"})


def dense_dtype() -> torch.dtype:
    """The dtype of the dense copies products of many rows multiply by in int8/int4 mode."""
    return torch.bfloat16 if has_bf16_units() else torch.float32


# Which weights to pack, by machine class (benchmarks/generate_speed.py, A/B with CLOZELM_PACKED_WEIGHTS=0): the
# blocked layout pays for bf16 everywhere measured, and for fp32 on CPUs without AMX; on a Xeon with AMX the fp32
# single-row product is faster with the plain row-major weight.
PACK_FP32 = os.environ.get("CLOZELM_PACK_FP32", "0" if has_amx() else "1") != "0"


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, owner: object,
           activation: str | None = None) -> torch.Tensor:
    """activation(F.linear(x, weight, bias)), through the packed copy of `weight` (cached on `owner`) when that is
    safe, and with the bias and activation inside oneDNN's product where the product is bf16 (model/fused.py)."""
    plain = (x.dtype == weight.dtype and not torch.is_autocast_enabled("cpu")  # native.c's fp32 and bf16 products fit
             and native_plain_products())
    if (weight.is_cpu and x.dtype in NATIVE_OUTPUTS and _native_rows(x)
            and (plain or QUANTIZED.get(getattr(owner, "weight_format", None)))):
        copy = native_copy(owner, weight, plain)  # int8/int4 codes in those modes, else the weight in fp32 or bf16
        if copy is not None:
            if activation is None:  # the bias added in fp32, rounded once to x's dtype: in one call
                return native.product(x, copy, bias, x.dtype)
            return fused.activate(native.product(x, copy, bias), activation).to(x.dtype)
    kind = getattr(owner, "weight_format", None)
    if kind is not None and QUANTIZED.get(kind) and x.device.type == "cpu" and not torch.is_grad_enabled():
        y = _quantized_linear(x, weight, bias, owner, kind)
        if y is not None:
            return fused.activate(y, activation)
    if (weight.dtype == torch.float32 and x.device.type == weight.device.type == "cpu"
            and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16):
        # autocast's bf16 product, made here so that it can take the fused one. Under inference mode autocast
        # casts the weight to bf16 at every call: hand it the same cast, made once.
        parts = None if torch.is_grad_enabled() else _quantized(owner, weight, AUTOCAST_BF16)
        w = weight.to(torch.bfloat16) if parts is None else parts[0]
        x, b = x.to(torch.bfloat16), None if bias is None else bias.to(torch.bfloat16)
        if fused.AVAILABLE and not torch.compiler.is_compiling():
            return fused.linear(x, w, b, activation)
        return fused.activate(_plain_linear(x, w, b), activation)
    if (AVAILABLE and x.device.type == "cpu" and weight.device.type == "cpu" and not torch.is_grad_enabled()
            and x.dtype == weight.dtype and ((weight.dtype == torch.bfloat16 and BF16_PACKABLE)
                                             or (weight.dtype == torch.float32 and PACK_FP32))
            and (bias is None or bias.dtype == weight.dtype) and not torch.is_autocast_enabled("cpu")):
        packed = _packed(owner, weight)
        if packed is not None:
            if weight.dtype == torch.bfloat16 and fused.AVAILABLE:
                return fused.linear(x, packed, bias, activation)
            return fused.activate(torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], ""), activation)
    if (weight.dtype == x.dtype == torch.bfloat16 and x.device.type == weight.device.type == "cpu"
            and not torch.is_grad_enabled() and x.numel() >= AS_DENSE_FROM_ROWS * x.size(-1) and not has_bf16_units()):
        # Without bf16 units a bf16 product of many rows is emulated, tens of times slower than widening the
        # weights for it; a row or a few still read the weights in bf16, half the bytes.
        y = _plain_linear(x.float(), weight.float(), None if bias is None else bias.float())
        return fused.activate(y, activation).to(torch.bfloat16)
    if fused.applies(x, weight, bias):
        return fused.linear(x, weight, bias, activation)
    return fused.activate(_plain_linear(x, weight, bias), activation)


def _plain_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear on the rows of x. A 3-d x whose strides do not fold into rows (the last position of a longer
    text, x[:, -1:]) would send F.linear through a batched product that first copies the whole transposed
    weight: for a vocabulary projection, far more time than the product itself."""
    if x.dim() > 2:
        return F.linear(x.reshape(-1, x.size(-1)), weight, bias).view(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight, bias)


class Linear(torch.nn.Linear):
    """nn.Linear (same parameters, same state dict) that takes the packed path in CPU inference and the fused
    product for bf16 on the CPU; `activation` (a name of model/fused.py) is applied to its output."""

    weight_format: str | None = None  # `use_quantized_weights` sets it per layer (asked at every product)

    def forward(self, x: torch.Tensor, activation: str | None = None) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self, activation)
