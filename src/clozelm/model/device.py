"""Where a network runs: the CPU, a CUDA GPU, or "auto" (the GPU when there is one and the weights' products
run there)."""

from __future__ import annotations

import torch

from ..errors import ClozelmError
from . import packed

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str, dtype: str = "fp32") -> torch.device:
    """Where a model runs: "cpu", "cuda" (refused without a GPU), or "auto": a CUDA GPU when there is one and
    `dtype`'s products run there (the int8 and int4 weight-only kernels are the CPU's)."""
    if device not in DEVICES:
        raise ClozelmError(f"device must be one of {', '.join(DEVICES)}, not {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() and dtype not in packed.QUANTIZED else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ClozelmError("--device cuda: no CUDA GPU is available")
    if device == "cuda" and dtype in packed.QUANTIZED:
        raise ClozelmError(f"--dtype {dtype} multiplies with CPU kernels; on a GPU use fp32 or bf16")
    return torch.device(device)


def has_bf16_units(device: torch.device) -> bool:
    """Whether bf16 products run natively here: a CPU with bf16 units (`packed.has_bf16_units`: AMX, AVX-512 BF16,
    Arm's BF16), a CUDA GPU from Ampere on. Elsewhere (an AVX2-only CPU; a T4, a V100) bf16 is emulated, slower
    than fp32."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    return packed.has_bf16_units()
