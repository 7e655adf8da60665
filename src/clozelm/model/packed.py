"""CPU inference fast path: matrix products with weights prepacked once in oneDNN's blocked layout.

Decoding one token at a time is bound by how fast the weights stream from memory. `F.linear` with a
row-major [out, in] weight reads them markedly slower for a single input row than the same product with the
weight reordered once into oneDNN's blocked layout (benchmarks/generate_speed.py measures what it gives).

The packed copy is made lazily, used only when no gradient is wanted and autocast is off (it has no backward
and must not change autocast's dtype choice), and remade whenever the weight changes (its version counter or
storage), so training steps, `load_state_dict` and `.to()` never meet a stale copy. It costs memory equal to
the weights it packs, so packing stops once packed copies would take more than a quarter of the RAM;
`CLOZELM_PACKED_WEIGHTS=0` turns it off.
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


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, owner: object) -> torch.Tensor:
    """F.linear(x, weight, bias), through the packed copy of `weight` (cached on `owner`) when that is safe."""
    if (AVAILABLE and x.device.type == "cpu" and weight.device.type == "cpu" and not torch.is_grad_enabled()
            and x.dtype == weight.dtype and weight.dtype in (torch.float32, torch.bfloat16)
            and (bias is None or bias.dtype == weight.dtype) and not torch.is_autocast_enabled("cpu")):
        packed = _packed(owner, weight)
        if packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    return F.linear(x, weight, bias)


class Linear(torch.nn.Linear):
    """nn.Linear (same parameters, same state dict) that takes the packed path in CPU inference."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self)
