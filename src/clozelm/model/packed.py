"""CPU inference fast path: matrix products with weights prepacked once in oneDNN's blocked layout.

Decoding one token at a time is bound by how fast the weights stream from memory. `F.linear` with a
row-major [out, in] weight reads them markedly slower for a single input row than the same product with the
weight reordered once into oneDNN's blocked layout (benchmarks/generate_speed.py measures what it gives).

The packed copy is made lazily, used only when no gradient is wanted and autocast is off (it has no backward
and must not change autocast's dtype choice), and remade whenever the weight changes (its version counter or
storage), so training steps, `load_state_dict` and `.to()` never meet a stale copy. It costs memory equal to
the weights it packs, so packing stops once packed copies would take more than a quarter of the RAM;
`CLOZELM_PACKED_WEIGHTS=0` turns it off, `CLOZELM_PACK_FP32=0/1` overrides the per-machine choice for fp32.
"""

from __future__ import annotations

import os
import weakref

import torch
import torch.nn.functional as F

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


def _packed(owner: object, weight: torch.Tensor) -> torch.Tensor | None:
    key = (weight._version, weight.data_ptr(), weight.dtype, tuple(weight.shape))
    hit = _cache.get(owner)
    if hit is not None and hit[0] == key:
        return hit[1]
    if hit is not None:
        del _cache[owner]
    nbytes = weight.numel() * weight.element_size()
    if _packed_bytes[0] + nbytes > _LIMIT:
        return None
    packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_ROWS)
    _packed_bytes[0] += nbytes
    weakref.finalize(packed, _release, nbytes)
    _cache[owner] = (key, packed)
    return packed


def _release(nbytes: int) -> None:
    _packed_bytes[0] -= nbytes


INT8 = "int8"
_int8_cache: "weakref.WeakKeyDictionary[object, tuple[tuple, torch.Tensor, torch.Tensor]]" = weakref.WeakKeyDictionary()


def use_int8_weights(network: torch.nn.Module, on: bool = True) -> None:
    """Inference products of `network` read int8 copies of their weights (per-output-channel scales,
    dequantised inside the product): a quarter of fp32's bytes, which is what bounds decoding on a CPU. The
    parameters themselves stay as they are (training, saving and `load_state_dict` never see the copies)."""
    for module in network.modules():  # every owner of a product: Linear layers, the tied embedding, the MLM head
        module.weight_format = INT8 if on else None


def _int8(owner: object, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    key = (weight._version, weight.data_ptr(), weight.dtype, tuple(weight.shape))
    hit = _int8_cache.get(owner)
    if hit is not None and hit[0] == key:
        return hit[1], hit[2]
    w = weight.detach().float()
    scales = w.abs().amax(1).clamp(min=1e-12) / 127.0
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
    _int8_cache[owner] = (key, q, scales.to(torch.bfloat16))
    return q, scales.to(torch.bfloat16)


def _int8_linear(x, weight, bias, owner):
    q, scales = _int8(owner, weight)
    shape = x.shape
    y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, shape[-1]).to(torch.bfloat16).contiguous(), q, scales)
    y = y.to(x.dtype).reshape(*shape[:-1], q.shape[0])
    return y if bias is None else y + bias


def _has_amx() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return any(line.startswith("flags") and "amx_tile" in line.split() for line in f)
    except OSError:
        return False


# Which weights to pack, by machine class (benchmarks/generate_speed.py, A/B with CLOZELM_PACKED_WEIGHTS=0): the
# blocked layout pays for bf16 everywhere measured, and for fp32 on CPUs without AMX; on a Xeon with AMX the fp32
# single-row product is faster with the plain row-major weight.
PACK_FP32 = os.environ.get("CLOZELM_PACK_FP32", "0" if _has_amx() else "1") != "0"


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, owner: object) -> torch.Tensor:
    """F.linear(x, weight, bias), through the packed copy of `weight` (cached on `owner`) when that is safe."""
    if (getattr(owner, "weight_format", None) == INT8 and INT8_AVAILABLE and x.device.type == "cpu"
            and not torch.is_grad_enabled()):
        return _int8_linear(x, weight, bias, owner)
    if (AVAILABLE and x.device.type == "cpu" and weight.device.type == "cpu" and not torch.is_grad_enabled()
            and x.dtype == weight.dtype and (weight.dtype == torch.bfloat16 or (weight.dtype == torch.float32 and PACK_FP32))
            and (bias is None or bias.dtype == weight.dtype) and not torch.is_autocast_enabled("cpu")):
        packed = _packed(owner, weight)
        if packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    return F.linear(x, weight, bias)


class Linear(torch.nn.Linear):
    """nn.Linear (same parameters, same state dict) that takes the packed path in CPU inference."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self)
