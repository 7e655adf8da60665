"""Products of a few input rows for x86 CPUs with AVX2 and FMA alone, from model/native.c compiled on this machine.

One token of decoding reads every weight once, and on CPUs without AVX-512 torch's kernels for a single row read
them well below the memory's speed: its int8 weight-only kernel at about a third of it, the packed fp32 product at
about two thirds, a bf16 one (emulated there) at half. native.c reads a blocked copy of the weight as one sequential
stream and widens int8 and bf16 to fp32 in registers (docs/performance.md has the figures).

The C file is compiled once per machine with the system's C compiler (`CC`, else `cc` or `gcc`; the same kind of
toolchain torch.compile needs) into the user's cache folder, and loaded with ctypes: no build step at install time,
and nothing changes where no compiler is found (`library()` is then None and the callers keep torch's products).
A library is used only after it multiplies a test matrix as torch does.

Only callers that checked the CPU (model/packed.py: AVX2 and FMA) may load it: the code would not run elsewhere.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("native.c")
FLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC")
BLOCK = 8  # weight rows and columns per block of the packed layout (native.c)
SYMBOLS = {torch.float32: "clozelm_product_f32", torch.bfloat16: "clozelm_product_bf16",
           torch.int8: "clozelm_product_int8"}


@dataclasses.dataclass(frozen=True)
class NativeWeight:
    """A weight [rows, k] packed for native.c: data [rows_padded / 8, k / 8, 8, 8] in the weight's dtype (int8 with
    an fp32 scale per row, scales [rows_padded]). Weakly referable: model/packed.py counts its copies' bytes."""
    data: torch.Tensor
    scales: torch.Tensor | None
    rows: int


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
        getattr(lib, symbol).argtypes = [pointer, pointer, pointer, pointer, size, size, size]
        getattr(lib, symbol).restype = None
    return lib if _agrees(lib) else None


def _agrees(lib: ctypes.CDLL) -> bool:
    """Whether the library multiplies a test matrix as torch does, in every format (a padded row count, 3 rows)."""
    generator = torch.Generator().manual_seed(0)
    w = torch.randn(13, 24, generator=generator)
    x = torch.randn(3, 24, generator=generator)
    scales = torch.rand(13, generator=generator) + 0.5
    cases = [(pack(w), w), (pack(w.to(torch.bfloat16)), w.to(torch.bfloat16).float()),
             (pack(w.round().clamp(-127, 127).to(torch.int8), scales), w.round().clamp(-127, 127) * scales[:, None])]
    return all(torch.allclose(_product(lib, x, p.data, p.scales, p.rows), x @ reference.T, rtol=1e-5, atol=1e-5)
               for p, reference in cases)


def pack(weight: torch.Tensor, scales: torch.Tensor | None = None) -> NativeWeight:
    """weight [n, k] (fp32, bf16, or int8 codes with `scales` [n]: weight ~= codes * scale) in native.c's blocked
    layout, rows padded with zeros to a multiple of 8. k must be a multiple of 8."""
    n, k = weight.shape
    if weight.dtype not in SYMBOLS or k % BLOCK or (weight.dtype == torch.int8) != (scales is not None):
        raise ValueError(f"cannot pack a {weight.dtype} weight of shape {tuple(weight.shape)} for native products")
    padded = -(-n // BLOCK) * BLOCK
    w = torch.cat([weight.detach(), weight.new_zeros(padded - n, k)]) if padded > n else weight.detach()
    data = w.reshape(padded // BLOCK, BLOCK, k // BLOCK, BLOCK).transpose(1, 2).contiguous()
    if scales is not None:
        scales = torch.cat([scales.detach().float(), scales.new_zeros(padded - n, dtype=torch.float32)]).contiguous()
    return NativeWeight(data, scales, n)


def product(x: torch.Tensor, weight: NativeWeight) -> torch.Tensor:
    """x [m, k] (any float dtype; multiplied in fp32) times the packed weight -> [m, rows] fp32. Needs `library()`."""
    return _operation(x, weight.data, weight.scales, weight.rows)


def _operation(x: torch.Tensor, data: torch.Tensor, scales: torch.Tensor | None, rows: int) -> torch.Tensor:
    lib = library()
    if lib is None:
        raise RuntimeError("the native kernels are not available")
    return _product(lib, x, data, scales, rows)


def _product(lib: ctypes.CDLL, x: torch.Tensor, data: torch.Tensor, scales: torch.Tensor | None,
             rows: int) -> torch.Tensor:
    m, k = x.shape
    if data.size(1) * BLOCK != k:
        raise ValueError(f"input rows of {k} values for a weight of {data.size(1) * BLOCK} columns")
    if x.dtype != torch.float32 or not x.is_contiguous():
        x = x.detach().float().contiguous()
    n = data.size(0) * BLOCK
    y = torch.empty(m, n)
    getattr(lib, SYMBOLS[data.dtype])(data.data_ptr(), None if scales is None else scales.data_ptr(), x.data_ptr(),
                                      y.data_ptr(), m, n, k)
    return y if rows == n else y[:, :rows].contiguous()


# `product` as an operation a compiled graph calls (model/step.py): x [m, k], a NativeWeight's fields. Defined with
# the dispatcher directly: torch.library.custom_op's wrapper cost more per call than a small product itself.
_operations = torch.library.Library("clozelm", "DEF")
_operations.define("native_product(Tensor x, Tensor data, Tensor? scales, int rows) -> Tensor")
_operations.impl("native_product", _operation, "CPU")


@torch.library.register_fake("clozelm::native_product")
def _product_shape(x, data, scales, rows):
    return x.new_empty(x.size(0), rows, dtype=torch.float32)
