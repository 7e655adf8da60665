"""Products of a few input rows for x86 CPUs with AVX2 and FMA, from model/native.c compiled on this machine.

One token of decoding reads every weight once, and on x86 CPUs torch's kernels for a single row read them well below
the memory's speed: with AVX2 alone its int8 weight-only kernel at about a third of it, the packed fp32 product at
about two thirds, a bf16 one (emulated there) at half; with AVX-512 (AMD's Zen 4) every format still reads slower
than through native.c, and on a Xeon with AMX the int8 and int4 ones. native.c reads a blocked copy of the weight as one sequential stream, widens bf16
to fp32 in registers, and multiplies int8 and 4-bit codes by the row rounded to 16-bit integers (docs/performance.md
has the figures; model/packed.py's `native_products` says where it is used).

The C file is compiled once per machine with the system's C compiler (`CC`, else `cc` or `gcc`; the same kind of
toolchain torch.compile needs) into the user's cache folder, and loaded with ctypes: no build step at install time,
and nothing changes where no compiler is found (`library()` is then None and the callers keep torch's products).
A library is used only after it multiplies a test matrix as torch does.

Only callers that checked the CPU (`usable`: AVX2 and FMA) may load it: the code would not run elsewhere.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import math
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("native.c")
FLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC")
BLOCK = 8  # weight rows and columns per block of the packed layout (native.c)
GROUP = 32  # int8 and int4: columns per block of the packed layout; int4's per scale and zero (packed.INT4_GROUP)
INT4_ROW_ORDER = [0, 1, 4, 5, 2, 3, 6, 7]  # int4: a block's rows in its codes (native.c sums pairs of lanes into order)
SYMBOLS = {torch.float32: "clozelm_product_f32", torch.bfloat16: "clozelm_product_bf16",
           torch.int8: "clozelm_product_int8", torch.uint8: "clozelm_product_int4"}  # uint8: two 4-bit codes a byte


@dataclasses.dataclass(frozen=True)
class NativeWeight:
    """A weight [rows, k] packed for native.c: data [rows_padded / 8, k / 8, 8, 8] in the weight's dtype (fp32,
    bf16), int8 codes [rows_padded / 8, k / 32, 8, 32] with an fp32 scale per row (scales [rows_padded]), or int4:
    data uint8 [rows_padded / 8, k / 32, 8, 16] (two codes a byte) with scales bf16 [rows_padded / 8, k / 32, 2, 8]
    (8 scales, then 8 zeros). Weakly referable: model/packed.py counts its copies' bytes."""
    data: torch.Tensor
    scales: torch.Tensor | None
    rows: int

    @property
    def columns(self) -> int:
        return _columns(self.data)


def _columns(data: torch.Tensor) -> int:
    """The weight's k from its blocked data (int4: two codes a byte)."""
    return data.size(1) * data.size(3) * (2 if data.dtype == torch.uint8 else 1)


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "clozelm" / "native"


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _build(compiler: str) -> Path | None:
    """The compiled library for this source and these flags, compiled now if no earlier run left it."""
    source = SOURCE.read_bytes()
    tag = hashlib.sha256(source + " ".join((compiler, *FLAGS)).encode()).hexdigest()[:16]
    for folder in (_cache_dir(), Path(tempfile.gettempdir()) / f"clozelm-native-{os.getuid()}"):
        path = folder / f"native-{tag}.so"
        if path.exists():
            return path
        try:
            folder.mkdir(parents=True, exist_ok=True)
            # compiled beside and renamed into place, so that processes compiling at once never load half a file
            with tempfile.TemporaryDirectory(dir=folder) as work:
                built = Path(work) / path.name
                subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(built)], check=True, capture_output=True,
                               timeout=300)
                os.replace(built, path)
            return path
        except (OSError, subprocess.SubprocessError):
            continue
    return None


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernels, compiled on first use; None where they cannot be built, loaded or trusted, or where
    the environment says CLOZELM_NATIVE_KERNELS=0."""
    if os.environ.get("CLOZELM_NATIVE_KERNELS", "1") == "0":
        return None
    compiler = _compiler()
    path = None if compiler is None else _build(compiler)
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(str(path))
    except OSError:
        return None
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    for symbol in SYMBOLS.values():
        getattr(lib, symbol).argtypes = [pointer, pointer, pointer, pointer, size, size, size, pointer, size, size]
        getattr(lib, symbol).restype = None
    lib.clozelm_step.argtypes = [pointer, pointer, ctypes.c_double, pointer, size, size, pointer, pointer, pointer,
                                 pointer, size]
    lib.clozelm_step.restype = ctypes.c_int
    lib.clozelm_step_fields.argtypes, lib.clozelm_step_fields.restype = [], size
    lib.clozelm_causal_softmax.argtypes = [pointer, pointer, pointer, size, size, ctypes.c_float]
    lib.clozelm_causal_softmax_backward.argtypes = [pointer, pointer, pointer, pointer, size, size, ctypes.c_float]
    lib.clozelm_causal_softmax.restype = lib.clozelm_causal_softmax_backward.restype = ctypes.c_int
    lib.clozelm_cross_entropy.argtypes = [pointer, pointer, pointer, pointer, size, size]
    lib.clozelm_cross_entropy.restype = ctypes.c_int
    lib.clozelm_gradient_squares.argtypes, lib.clozelm_gradient_squares.restype = [pointer, size], ctypes.c_double
    lib.clozelm_adamw.argtypes = [pointer, pointer, size, ctypes.c_double]
    lib.clozelm_adamw.restype = None
    lib.clozelm_gelu_tanh_backward.argtypes = [pointer, pointer, pointer, size]
    lib.clozelm_gelu_tanh_backward.restype = None
    lib.clozelm_transpose16.argtypes, lib.clozelm_transpose16.restype = [pointer, size, size, size, pointer], None
    lib.clozelm_layer_norm.argtypes = [pointer, pointer, pointer, pointer, pointer, size, size, ctypes.c_float]
    lib.clozelm_layer_norm_backward.argtypes = [pointer, pointer, pointer, pointer, pointer, pointer, pointer, size,
                                                size]
    lib.clozelm_layer_norm.restype = lib.clozelm_layer_norm_backward.restype = ctypes.c_int
    lib.clozelm_set_lanes.argtypes, lib.clozelm_set_lanes.restype = [ctypes.c_int], ctypes.c_int
    lib.clozelm_amx_ready.argtypes, lib.clozelm_amx_ready.restype = [], ctypes.c_int
    lib.clozelm_amx_attention.argtypes = [pointer, pointer, size, size, size, size, ctypes.c_float]
    lib.clozelm_amx_attention_backward.argtypes = [pointer, pointer, size, size, size, size, ctypes.c_float]
    lib.clozelm_amx_attention.restype = lib.clozelm_amx_attention_backward.restype = ctypes.c_int
    lib.clozelm_set_prefetch.argtypes, lib.clozelm_set_prefetch.restype = [size, size], size
    for weights, ahead in enumerate(prefetch_bytes()):  # native.c's FP32_WEIGHTS, NARROWER_WEIGHTS
        lib.clozelm_set_prefetch(weights, ahead)
    return lib if _agrees(lib) else None


def usable() -> bool:
    """Whether native.c's kernels run here: an x86 CPU with AVX2 and FMA (the code needs both) where the library
    builds and loads; CLOZELM_NATIVE_KERNELS=0 says no. The one check before `library()` may be called."""
    if os.environ.get("CLOZELM_NATIVE_KERNELS") == "0" or not {"avx2", "fma"} <= cpu_flags():
        return False
    return library() is not None


def amx_tiles() -> bool:
    """Whether native.c's AMX kernels run here: `usable()`, a CPU with AMX tiles, a compiler that knew their
    instructions, and Linux's leave for this process to use them (asked for once)."""
    return usable() and {"amx_tile", "amx_bf16"} <= cpu_flags() and _tiles_granted()


@functools.cache
def _tiles_granted() -> bool:
    return library().clozelm_amx_ready() == 0


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (x86's "flags", Arm's "Features" in /proc/cpuinfo); empty where unreadable."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def prefetch_bytes() -> tuple[int, int]:
    """How far ahead of their reads the kernels ask for the weights, (fp32 weights, bf16 / int8 / int4 ones): 2 KB
    on a Xeon with AMX, where the hardware prefetcher alone left a single-row product's stream well below the
    memory's rate; 2 KB for the narrower formats on CPUs with AVX2 and no AVX-512 (AMD's Zen 3, where fp32's stream
    ran slower with it); none on AVX-512 CPUs without AMX (on AMD's Zen 4 1 to 4 KB gained nothing from memory).
    docs/performance.md has the figures."""
    flags = cpu_flags()
    if "amx_tile" in flags:
        return 2048, 2048
    return (0, 0) if "avx512f" in flags else (0, 2048)


def _agrees(lib: ctypes.CDLL) -> bool:
    """Whether the library multiplies a test matrix as torch does, in every format (a padded row count, 3 rows, a
    bias; int8 and int4 to the rounding of their input rows to 16-bit integers), with fp32 and bf16 inputs and
    outputs."""
    generator = torch.Generator().manual_seed(0)
    w = torch.randn(13, 64, generator=generator)
    x = torch.randn(3, 64, generator=generator).to(torch.bfloat16)  # exact in fp32 too
    bias = torch.randn(13, generator=generator).to(torch.bfloat16)
    scales = torch.rand(13, generator=generator) + 0.5
    codes = torch.randint(0, 16, (13, 64), generator=generator, dtype=torch.uint8)
    scales_zeros = (torch.rand(13, 2, 2, generator=generator) - 0.5).to(torch.bfloat16)
    cases = [(pack(w), w, 1e-5), (pack(w.to(torch.bfloat16)), w.to(torch.bfloat16).float(), 1e-5),
             (pack(w.round().clamp(-127, 127).to(torch.int8), scales), w.round().clamp(-127, 127) * scales[:, None],
              1e-3), (pack(codes, scales_zeros), int4_weight(codes, scales_zeros), 1e-3)]
    with torch.autocast("cpu", enabled=False):  # the first product may come under a caller's autocast
        return all(torch.allclose(_product(lib, x.to(dtype), p.data, p.scales, p.rows, b, dtype).float(),
                                  x.float() @ reference.T + (0 if b is None else b.float()), atol=tolerance,
                                  rtol=tolerance if dtype == torch.float32 else 2 ** -8)  # bf16: half an ulp
                   for p, reference, tolerance in cases for dtype in (torch.float32, torch.bfloat16)
                   for b in (None, bias.to(dtype)))


def transposed(x: torch.Tensor) -> torch.Tensor:
    """x [rows, cols] (16-bit numbers, rows contiguous) -> its transpose [cols, rows], contiguous: native.c's
    clozelm_transpose16, at several times the speed of torch's copy of a transposed view. Needs `library()`."""
    if x.dim() != 2 or x.element_size() != 2 or x.stride(1) != 1 or x.device.type != "cpu":
        raise ValueError(f"cannot transpose a {x.dtype} tensor of shape {tuple(x.shape)} on {x.device}")
    out = x.new_empty(x.size(1), x.size(0))
    library().clozelm_transpose16(x.data_ptr(), x.size(0), x.size(1), x.stride(0), out.data_ptr())
    return out


def pack(weight: torch.Tensor, scales: torch.Tensor | None = None) -> NativeWeight:
    """weight [n, k] in native.c's blocked layout, rows padded with zeros to a multiple of 8: fp32 or bf16 (k a
    multiple of 8), int8 codes with `scales` [n] (weight ~= codes * scale; k a multiple of 32), or 4-bit codes as
    uint8 in 0..15 with `scales` [n, k / 32, 2] (scale, zero) per row and group of 32 columns (weight ~= (codes - 8)
    * scale + zero, the scales and zeros rounded to bf16; k a multiple of 32)."""
    n, k = weight.shape
    int4 = weight.dtype == torch.uint8
    if (weight.dtype not in SYMBOLS or k % columns_multiple(weight.dtype) or (weight.dtype in (torch.int8, torch.uint8))
            != (scales is not None) or (int4 and tuple(scales.shape) != (n, k // GROUP, 2))):
        raise ValueError(f"cannot pack a {weight.dtype} weight of shape {tuple(weight.shape)} for native products")
    padded = -(-n // BLOCK) * BLOCK
    w = torch.cat([weight.detach(), weight.new_zeros(padded - n, k)]) if padded > n else weight.detach()
    if int4:
        # [blocks, 8 rows, groups, nibbles, 2 halves, 8 bytes] -> per group 2 halves of [8 rows][8 bytes], the rows
        # in the order 0, 1, 4, 5, 2, 3, 6, 7; byte b of half j holds column 8 j + b in its low nibble, 16 + 8 j + b in
        # its high one (the data's last two dimensions, [8, 16], are those 128 bytes, not rows)
        w = w.reshape(padded // BLOCK, BLOCK, k // GROUP, 2, 2, 8)[:, INT4_ROW_ORDER]
        data = (w[:, :, :, 0] | (w[:, :, :, 1] << 4)).permute(0, 2, 3, 1, 4).reshape(padded // BLOCK, k // GROUP,
                                                                                    BLOCK, GROUP // 2).contiguous()
        scales = torch.cat([scales.detach().to(torch.bfloat16), scales.new_zeros(padded - n, k // GROUP, 2,
                                                                                 dtype=torch.bfloat16)])
        scales = scales.reshape(padded // BLOCK, BLOCK, k // GROUP, 2).permute(0, 2, 3, 1).contiguous()
        return NativeWeight(data, scales, n)
    columns = columns_multiple(weight.dtype)
    data = w.reshape(padded // BLOCK, BLOCK, k // columns, columns).transpose(1, 2).contiguous()
    if scales is not None:
        scales = torch.cat([scales.detach().float(), scales.new_zeros(padded - n, dtype=torch.float32)]).contiguous()
    return NativeWeight(data, scales, n)


def columns_multiple(dtype: torch.dtype) -> int:
    """What a weight's column count must be a multiple of for native.c to take it in `dtype` (int8 and int4
    multiply in groups of 32 columns)."""
    return GROUP if dtype in (torch.int8, torch.uint8) else BLOCK


def int4_weight(codes: torch.Tensor, scales_zeros: torch.Tensor) -> torch.Tensor:
    """The fp32 weight [n, k] that 4-bit codes [n, k] and their (scale, zero) pairs [n, k / 32, 2] stand for, as
    native.c multiplies by it: (codes - 8) * scale + zero, with the scales and zeros rounded to bf16."""
    n, k = codes.shape
    scale, zero = scales_zeros.to(torch.bfloat16).float().unbind(-1)  # [n, k / 32] each
    groups = codes.reshape(n, k // GROUP, GROUP).float() - 8
    return (groups * scale[..., None] + zero[..., None]).reshape(n, k)


def product(x: torch.Tensor, weight: NativeWeight, bias: torch.Tensor | None = None,
            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """x [..., k] (any float dtype; multiplied in fp32) times the packed weight, plus `bias` [rows] where given
    (added in fp32) -> [..., rows] in `dtype` (fp32, or bf16 rounded once from the fp32 result). Needs
    `library()`."""
    return _operation(x, weight.data, weight.scales, weight.rows, bias, dtype)


def _operation(x: torch.Tensor, data: torch.Tensor, scales: torch.Tensor | None, rows: int,
               bias: torch.Tensor | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    lib = library()
    if lib is None:
        raise RuntimeError("the native kernels are not available")
    return _product(lib, x, data, scales, rows, bias, dtype)


_FLAGS = {torch.float32: 0, torch.bfloat16: 1}  # native.c's flags: X_BF16 = 1, BIAS_BF16 = 2, Y_BF16 = 4


def _product(lib: ctypes.CDLL, x: torch.Tensor, data: torch.Tensor, scales: torch.Tensor | None, rows: int,
             bias: torch.Tensor | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    k = x.size(-1)
    columns = _columns(data)
    if columns != k:
        raise ValueError(f"input rows of {k} values for a weight of {columns} columns")
    if bias is not None and bias.numel() != rows:  # the kernel reads `rows` of them
        raise ValueError(f"a bias of {bias.numel()} values for a weight of {rows} rows")
    if dtype not in _FLAGS:
        raise ValueError(f"native products give fp32 or bf16, not {dtype}")
    if x.dtype not in _FLAGS:
        x = x.float()
    x = x.contiguous()
    if bias is not None and (bias.dtype not in _FLAGS or not bias.is_contiguous()):
        bias = bias.float().contiguous()
    y = torch.empty(*x.shape[:-1], rows, dtype=dtype)
    flags = _FLAGS[x.dtype] | (0 if bias is None else 2 * _FLAGS[bias.dtype]) | 4 * _FLAGS[dtype]
    getattr(lib, SYMBOLS[data.dtype])(data.data_ptr(), None if scales is None else scales.data_ptr(), x.data_ptr(),
                                      y.data_ptr(), math.prod(x.shape[:-1]), data.size(0) * BLOCK, k,
                                      None if bias is None else bias.data_ptr(), rows, flags)
    return y


# `product` as an operation a compiled graph calls (model/step.py): x [m, k], a NativeWeight's fields. Defined with
# the dispatcher directly: torch.library.custom_op's wrapper cost more per call than a small product itself.
_operations = torch.library.Library("clozelm", "DEF")
_operations.define("native_product(Tensor x, Tensor data, Tensor? scales, int rows) -> Tensor")
_operations.impl("native_product", _operation, "CPU")


@torch.library.register_fake("clozelm::native_product")
def _product_shape(x, data, scales, rows):
    return x.new_empty(*x.shape[:-1], rows, dtype=torch.float32)
