"""bf16 weights for the forward and backward passes, fp32 master weights for the optimizer.

Under autocast the weights stay fp32 and every matrix product casts its weight to bf16 on every use, and
casts the weight's gradient back; on a CPU those casts cost as much as a large share of the products
themselves. Here the network itself holds bf16 weights, so its passes run in bf16 with no casts, and the
optimizer updates fp32 copies (small updates would vanish in bf16's 8-bit mantissa); after each optimizer step
the copies are rounded into the network once. LayerNorm, softmax and the loss still accumulate in fp32 inside
their kernels.

Checkpoints and saved models hold the fp32 masters, so a resumed run continues from exactly the numbers an
uninterrupted one holds.

A step ends with `clip_grad_norm` and `step`. On a CPU where model/native.c's kernels run (x86 with AVX2 and FMA),
with torch's AdamW as the optimizer, they take one pass over the gradients for their norm and one for AdamW, which
reads the last micro-batch's bf16 gradients where the network left them and writes the updated masters rounded to
bf16 into the network as it goes: the step is bound by memory, and torch's path takes seven passes (the gradients'
copy to fp32, their norm, the clipping's multiplication, fused AdamW, the copy back into the network). Same
formulas, same optimizer state (checkpoints are interchangeable); the fp32 arithmetic's rounding may differ in the
last bit. Elsewhere (a GPU, CLOZELM_NATIVE_KERNELS=0) torch's path runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.autograd.graph import increment_version

from ..model import native
from ..model.device import has_bf16_units

_T_FIELDS = 7  # native.c's clozelm_adamw: per tensor master, m, v, fp32 gradient, bf16 gradient, network copy, length


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

    def _native(self) -> bool:
        """Whether native.c takes the step: every master an fp32 CPU tensor, every network parameter a bf16 copy of it,
        and its kernels run here."""
        return (all(m.device.type == "cpu" and m.dtype == torch.float32 and m.is_contiguous() for m in self.masters)
                and all(p.dtype == torch.bfloat16 and p.is_contiguous() for p in self.params)
                and native.usable())

    def _pending(self) -> list[tuple[int, torch.Tensor | None, torch.Tensor | None]]:
        """(index, fp32 gradient summed so far or None, the network's bf16 gradient or None) of every parameter that
        has a gradient this step."""
        pending = []
        for i, (p, m) in enumerate(zip(self.params, self.masters)):
            if p.grad is not None or m.grad is not None:
                g16 = None if p.grad is None else p.grad.to(torch.bfloat16).contiguous()
                acc = None if m.grad is None else m.grad.to(torch.float32).contiguous()
                pending.append((i, acc, g16))
        return pending

    @torch.no_grad()
    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        """The gradients' total 2-norm (the network's bf16 gradients not yet moved into the masters counted in), and
        from it the factor min(1, max_norm / (norm + 1e-6)) that `step` scales them by: what
        torch.nn.utils.clip_grad_norm_ computes and does."""
        self._clip = None
        if not self._native():
            self.grads_to_masters()
            return torch.nn.utils.clip_grad_norm_(self.masters, max_norm)
        pending = self._pending()  # holds the gradients the table points to
        table = self._table(pending)
        norm = torch.tensor(math.sqrt(native.library().clozelm_gradient_squares(table.data_ptr(), table.size(0))))
        self._clip = float(torch.clamp(max_norm / (norm + 1e-6), max=1.0))
        return norm

    @torch.no_grad()
    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer's step on the masters with the gradients clipped by `clip_grad_norm`, the network's weights
        rounded from the updated masters, every gradient cleared."""
        clip, self._clip = getattr(self, "_clip", None), None
        if clip is not None and _plain_adamw(optimizer):
            pending = self._pending()
            group_of = {id(m): g for g in optimizer.param_groups for m in g["params"]}
            if all(id(self.masters[i]) in group_of for i, _, _ in pending):
                self._native_step(optimizer, pending, group_of, clip)
                return
        self.grads_to_masters()
        if clip is not None:
            torch._foreach_mul_([m.grad for m in self.masters if m.grad is not None], clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.masters_to_model()  # a copy_: the weights' version counters move

    def _native_step(self, optimizer: torch.optim.AdamW, pending, group_of: dict, clip: float) -> None:
        """native.c's clozelm_adamw over the pending gradients times `clip`, in torch's AdamW state."""
        factors = []
        for i, _, _ in pending:
            master = self.masters[i]
            group, state = group_of[id(master)], optimizer.state[master]
            if not state:  # as torch's AdamW starts a parameter's state
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(master, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(master, memory_format=torch.preserve_format)
            state["step"] += 1
            step = float(state["step"])
            (beta1, beta2), lr = group["betas"], float(group["lr"])
            factors.append([1 - lr * group["weight_decay"], lr / (1 - beta1 ** step), math.sqrt(1 - beta2 ** step),
                            beta1, beta2, group["eps"]])
        table, factors = self._table(pending, optimizer), torch.tensor(factors, dtype=torch.float64)
        native.library().clozelm_adamw(table.data_ptr(), factors.data_ptr(), table.size(0), clip)
        self.zero_grad()
        # the network's weights changed under their tensors: their version counters tell inference copies of them
        # (model/packed.py) that they are stale
        increment_version(self.params)

    def zero_grad(self) -> None:
        """Clear the gradients: the masters' and those the network holds."""
        for p, m in zip(self.params, self.masters):
            p.grad = m.grad = None

    def _table(self, pending, optimizer: torch.optim.Optimizer | None = None) -> torch.Tensor:
        """native.c's description of the pending tensors [count, 7] (the moments only with an optimizer)."""
        rows = []
        for i, acc, g16 in pending:
            master, param = self.masters[i], self.params[i]
            state = optimizer.state[master] if optimizer is not None else None
            rows.append([master.data_ptr(), state["exp_avg"].data_ptr() if state else 0,
                         state["exp_avg_sq"].data_ptr() if state else 0, 0 if acc is None else acc.data_ptr(),
                         0 if g16 is None else g16.data_ptr(), param.data_ptr(), master.numel()])
        return torch.tensor(rows, dtype=torch.int64).reshape(-1, _T_FIELDS)

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


def _plain_adamw(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer is torch's AdamW with nothing native.c's clozelm_adamw does not do (amsgrad, maximize),
    its state, if any, where that kernel expects it."""
    if type(optimizer) is not torch.optim.AdamW:
        return False
    for group in optimizer.param_groups:
        if group.get("amsgrad") or group.get("maximize") or group.get("differentiable"):
            return False
        for p in group["params"]:
            state = optimizer.state.get(p)
            if state and not all(state[k].is_contiguous() and state[k].dtype == torch.float32
                                 and state[k].device.type == "cpu" for k in ("exp_avg", "exp_avg_sq")):
                return False
    return True
