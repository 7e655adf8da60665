"""bf16 weights for the forward and backward passes, fp32 master weights for the optimizer.

Under autocast the weights stay fp32 and every matrix product casts its weight to bf16 on every use, and
casts the weight's gradient back; on a CPU those casts cost as much as a large share of the products
themselves. Here the network itself holds bf16 weights, so its passes run in bf16 with no casts, and the
optimizer updates fp32 copies (small updates would vanish in bf16's 8-bit mantissa); after each optimizer step
the copies are rounded into the network once. LayerNorm, softmax and the loss still accumulate in fp32 inside
their kernels.

Checkpoints and saved models hold the fp32 masters, so a resumed run continues from exactly the numbers an
uninterrupted one holds.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..model.device import has_bf16_units


def default_precision(device: torch.device) -> str:
    """A new run's precision when it does not say: bf16 with fp32 masters, or fp32 where bf16 products are
    emulated (a CUDA GPU older than Ampere, a CPU without AMX or AVX-512 BF16)."""
    return "bf16-master" if has_bf16_units(device) else "fp32"


class MasterWeights:
    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.bfloat16):
        self.model = model
        self.dtype = dtype
        named = [(n, p) for n, p in model.named_parameters()]
        self.names = [n for n, _ in named]
        self.masters = [p.detach().to(torch.float32).clone().requires_grad_(p.requires_grad) for _, p in named]
        model.to(dtype)
        self.params = [p for _, p in model.named_parameters()]
        self._master_of = {id(p): m for p, m in zip(self.params, self.masters)}

    def master_groups(self, groups: list[dict]) -> list[dict]:
        """Optimizer parameter groups over the masters, mirroring `groups` over the network's parameters."""
        return [{**g, "params": [self._master_of[id(p)] for p in g["params"]]} for g in groups]

    def grads_to_masters(self) -> None:
        """Add the network's bf16 gradients into the masters' fp32 .grad and clear them: after every backward
        pass, so that gradient accumulation sums in fp32 (bf16 sums would round at every micro-batch and lose
        the small ones), and before clipping and stepping. The optimizer's zero_grad clears the masters'."""
        for p, m in zip(self.params, self.masters):
            if p.grad is None:
                continue
            if m.grad is None:
                m.grad = p.grad.to(torch.float32)
            else:
                m.grad.add_(p.grad)
            p.grad = None

    @torch.no_grad()
    def masters_to_model(self) -> None:
        """Round the updated masters into the network (call after each optimizer step)."""
        torch._foreach_copy_(self.params, self.masters)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The network's state dict with its parameters at full (master) precision."""
        state = self.model.state_dict()
        for name, m in zip(self.names, self.masters):
            state[name] = m.detach().clone()
        return state

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, m in zip(self.names, self.masters):
            m.copy_(state[name])
        self.model.load_state_dict({k: v.to(self.dtype) if v.is_floating_point() else v for k, v in state.items()})
