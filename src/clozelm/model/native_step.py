"""A token of decoding (or a token and its short draft) through every layer in one call to model/native.c
(`clozelm_step`), on x86 CPUs where its products run (model/packed.py's `native_products`).

Why: a token of a small model spends as much time on its layers' few dozen small operations a layer (norms, the
cache write, attention over the cache, activations), each dispatched from Python, as on reading its weights. The
compiled steps (model/step.py) fuse those operations, but a token still pays a compiled graph's call a layer and an
opaque call a product, and the first generation pays seconds of compiling. Here the whole stack of layers is one
call: native.c's products (on the blocked copies the eager products read where they go through native.c), the small
operations in C between them, in fp32 as the eager step computes them, and after them the final norm and the
vocabulary projection (where its eager product goes through native.c too): the operations a token leaves to Python
run after its weights have streamed through the caches, each at the cost of a cold start. Taken on every x86 CPU
with AVX2 and FMA, a Xeon with AMX included, where the eager fp32 and bf16 products are oneDNN's: there too one call
was faster in every format than the eager step (docs/performance.md).

Taken for a causal pre-norm network whose every product native.c takes: fp32 (its weights fp32, or int8/int4 codes
with fp32 rows) and bf16, whose rows the C code rounds to bf16 where the eager step rounds them; others keep the
eager or compiled steps. A cache's arguments are gathered once, on its first step: neither the weights nor the
cache's buffers change while a generation uses it. CLOZELM_NATIVE_STEP=0 turns it off (CLOZELM_NATIVE_KERNELS=0
turns off native.c altogether).
"""

from __future__ import annotations

import dataclasses
import functools
import os

import torch
from torch import nn

from . import native, packed
from .config import ModelConfig
from . import transformer  # its Transformer and RMSNorm; transformer.py imports this module too

PRODUCT_FIELDS = 7  # native.c: kind, data, scales, bias, padded rows, columns, rows
LAYER_FIELDS = 4 + 5 * PRODUCT_FIELDS + 2  # two norms' weight and bias, five products, the cache's keys and values
SPEC_FIELDS = 10
FINAL_FIELDS = 2 + PRODUCT_FIELDS  # the final norm's weight and bias, the vocabulary projection
NO_PRODUCT = [-1] + [0] * (PRODUCT_FIELDS - 1)  # native.c: PRODUCT_NONE, for a product a network does not have
KINDS = {torch.float32: 0, torch.bfloat16: 1, torch.int8: 2, torch.uint8: 3}  # a NativeWeight's data dtype
ACTIVATIONS = {"gelu_tanh": 1, "gelu": 2, "silu": 3, "relu": 4}


@dataclasses.dataclass
class Plan:
    """What `clozelm_step` reads for one cache: per layer its fields, the shapes, the final norm and the vocabulary
    projection, the rotary angles of every slot's position, and the tensors they point into (kept alive here)."""
    layers: torch.Tensor  # int64 [n_layer, LAYER_FIELDS]
    spec: torch.Tensor  # int64 [SPEC_FIELDS]
    eps: float
    final: torch.Tensor  # int64 [FINAL_FIELDS]
    vocabulary: int  # the vocabulary projection's rows, 0 where `final` holds none (the caller multiplies by it)
    rope: tuple[torch.Tensor, torch.Tensor] | None  # cos, signed sin [slots, head_dim] in fp32, or None
    tensors: list


MAX_TOKENS = packed.AS_DENSE_FROM_ROWS - 1  # a token and its draft: more rows multiply faster as a dense product


def takes(network, cache) -> bool:
    """Whether this step of `network` into `cache` (one row, at most MAX_TOKENS tokens, no padding, no fork: the
    caller checks) runs through `clozelm_step`. Decided once per cache; not under autocast, whose products would be
    bf16 ones."""
    if cache.native_step is None:
        cache.native_step = _plan(network, cache) or False
    return bool(cache.native_step) and not torch.is_autocast_enabled("cpu")


def run(network, x: torch.Tensor, cache, logits: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """After `takes`: x [1, T, D] after the embeddings (a token, or a token and its draft, each attending to the
    cache and the tokens before it, at the positions that follow it) -> (the rows after the final norm [1, T, D],
    their logits [1, T or 1, V] where `logits` asks for "all" or the "last" row's and the step holds the vocabulary
    projection, else None: the caller multiplies by it). Their keys and values go into `cache` from its current
    length (which the caller advances)."""
    plan = cache.native_step
    T = x.size(1)
    out = x.detach().reshape(-1).float().clone()  # the call overwrites it, layer by layer (a bf16 row is exact)
    cos = sin = None
    if plan.rope is not None:  # this row's positions count every token before it: the cache's slots
        step = plan.rope[0].size(1) * plan.rope[0].element_size()
        cos, sin = (table.data_ptr() + cache.length * step for table in plan.rope)
    from_row = T - 1 if logits == "last" else 0
    y = torch.empty(T - from_row, plan.vocabulary) if plan.vocabulary and logits in ("all", "last") else None
    lib = native.library()
    if lib.clozelm_step(plan.layers.data_ptr(), plan.spec.data_ptr(), plan.eps, out.data_ptr(), T, cache.length, cos,
                        sin, plan.final.data_ptr(), None if y is None else y.data_ptr(), from_row):
        raise MemoryError("no memory for a decoding step's rows")
    return out.to(x.dtype).view_as(x), None if y is None else y.to(x.dtype)[None]


def serves(network) -> bool:
    """Whether steps of `network` into a cache of one row in its own dtype run through `clozelm_step`: they then
    need no compiled steps, which they outrun (docs/performance.md)."""
    return _layers(network) is not None


def _plan(network, cache, checked: bool = True) -> Plan | None:
    """The arguments of `clozelm_step` for `network` and `cache`, or None where it does not take them."""
    layers = _layers(network, checked)
    if layers is None or cache.keys[0].size(0) != 1 or any(
            b.dtype != network.wte.weight.dtype or not b.is_contiguous() for b in cache.keys + cache.values):
        return None
    dtype = network.wte.weight.dtype
    fields, tensors = layers
    fields = [row + [keys.data_ptr(), values.data_ptr()] for row, keys, values in zip(fields, cache.keys, cache.values)]
    config = network.config
    slots = cache.keys[0].size(2)
    spec = [config.n_layer, config.n_embd, config.n_head, config.kv_heads, config.head_dim, slots,
            int(config.norm == "rmsnorm"), ACTIVATIONS[config.activation], network.h[0].mlp.c_fc.out_features,
            int(dtype == torch.bfloat16)]
    final = _final(network)
    if final is None:
        return None
    final, final_tensors, vocabulary = final
    rope = None
    if network.wpe is None:  # rotary: the angles as the eager step computes them, each position's (in its dtype)
        angles = transformer.rope_cos_sin(config, torch.arange(slots)[None], dtype)
        rope = tuple(a.reshape(slots, config.head_dim).float().contiguous() for a in angles)
    return Plan(torch.tensor(fields, dtype=torch.int64), torch.tensor(spec, dtype=torch.int64),
                float(config.layer_norm_eps), torch.tensor(final, dtype=torch.int64), vocabulary, rope,
                [*tensors, *final_tensors, *cache.keys, *cache.values, *(rope or ())])


def _final(network) -> tuple[list[int], list, int] | None:
    """The final norm's and the vocabulary projection's fields, their tensors and the projection's rows (no
    projection, 0 rows, where its eager product would not go through native.c either: a plain weight on a Xeon with
    AMX, where oneDNN's is faster); None for a final norm `clozelm_step` does not take."""
    norm = (None, None) if network.ln_f is None else _norm(network.ln_f)
    if norm is None:
        return None
    config = network.config
    owner = {"tied": network.wte, "untied": network.lm_head}.get(config.head)
    copy = None if owner is None else packed.native_copy(owner, owner.weight, plain=packed.native_plain_products())
    bias = None if owner is None or getattr(owner, "bias", None) is None else _fp32(owner.bias)
    if copy is None or copy.rows != config.vocab_size:
        return [_address(t) for t in norm] + NO_PRODUCT, list(norm), 0
    return [_address(t) for t in norm] + _product(copy, bias), [*norm, copy, bias], copy.rows


def _layers(network, checked: bool = True) -> tuple[list[list[int]], list] | None:
    """Per layer, its fields but the cache's (norms, products), and the tensors they point into; None where
    `clozelm_step` does not take the network (or, `checked`, where the library's step did not pass `_agrees`)."""
    config = getattr(network, "config", None)
    if (os.environ.get("CLOZELM_NATIVE_STEP", "1") == "0" or not isinstance(network, transformer.Transformer)
            or not (config.causal and config.pre_ln) or network.device.type != "cpu"
            or network.wte.weight.dtype not in (torch.float32, torch.bfloat16) or config.activation not in ACTIVATIONS
            or not packed.native_products()):
        return None
    lib = native.library()
    fields = (LAYER_FIELDS * 1000 + SPEC_FIELDS) * 1000 + FINAL_FIELDS
    if lib is None or lib.clozelm_step_fields() != fields or (checked and not _agrees()):
        return None
    tensors, layers = [], []
    for block in network.h:
        norms = [_norm(norm) for norm in (block.ln_1, block.ln_2)]
        mlp = block.mlp
        linears = (block.attn.c_attn, block.attn.c_proj, mlp.c_fc, mlp.c_gate, mlp.c_proj)
        copies = [None if linear is None else packed.native_copy(linear, linear.weight) for linear in linears]
        if any(n is None for n in norms) or any(c is None for c, linear in zip(copies, linears) if linear is not None):
            return None
        biases = [None if linear is None or linear.bias is None else _fp32(linear.bias) for linear in linears]
        products = [NO_PRODUCT if copy is None else _product(copy, bias)
                    for copy, bias in zip(copies, biases)]
        layers.append([_address(t) for norm in norms for t in norm] + [v for p in products for v in p])
        # the copies too: model/packed.py may let its own go
        tensors += [*copies, *(t for norm in norms for t in norm), *biases]
    return layers, tensors


def _fp32(t: torch.Tensor) -> torch.Tensor:
    """t as the C code reads it: fp32, contiguous (itself where it is already)."""
    return t.detach().float().contiguous()


def _address(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _norm(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight, bias or None) of a LayerNorm or RMSNorm in fp32; None for another kind of norm."""
    weight = getattr(norm, "weight", None)
    if not isinstance(norm, (nn.LayerNorm, transformer.RMSNorm)) or weight is None:
        return None
    bias = getattr(norm, "bias", None)
    return _fp32(weight), None if bias is None else _fp32(bias)


def _product(copy: "native.NativeWeight", bias: torch.Tensor | None) -> list[int]:
    """A product's fields as `clozelm_step` reads them: native.c's copy of the weight as the eager products read it
    (`packed.native_copy`: quantized codes in int8 and int4 modes) and the bias in fp32."""
    return [KINDS[copy.data.dtype], copy.data.data_ptr(), _address(copy.scales), _address(bias),
            copy.data.size(0) * native.BLOCK, copy.columns, copy.rows]


@functools.cache
def _agrees() -> bool:
    """Whether this machine's build of `clozelm_step` computes what the eager step computes, on two small random
    networks (GPT-2's layout; Llama's: rotary positions, RMSNorm, grouped-query attention, SwiGLU) for a prompt, a
    token and a token with its draft (as model/native.py checks the products: the library is compiled here, by
    whatever compiler this machine has)."""
    generator = torch.Generator().manual_seed(0)
    shapes = [dict(vocab_size=64, n_positions=32, n_embd=64, n_layer=2, n_head=2),
              dict(vocab_size=64, n_positions=32, n_embd=64, n_layer=2, n_head=2, n_kv_head=1, norm="rmsnorm",
                   positions="rope", mlp="gated", activation="silu", bias=False, n_inner=96)]
    ids = torch.randint(0, 64, (1, 8), generator=generator)
    with torch.inference_mode(), torch.autocast("cpu", enabled=False):
        for shape in shapes:
            network = transformer.Transformer(ModelConfig(**shape)).eval()
            for p in network.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.2 + (1 if p.dim() == 1 else 0))
            logits = []
            for native_steps in (True, False):
                cache = network.new_cache(1, 8)
                cache.native_step = _plan(network, cache, checked=False) if native_steps else False
                if native_steps and not cache.native_step:
                    return False
                parts = [network(ids[:, :3], cache=cache).logits, network(ids[:, 3:4], cache=cache).logits,
                         network(ids[:, 4:], cache=cache).logits]
                logits.append(torch.cat(parts, dim=1))
            if not torch.allclose(*logits, rtol=0, atol=1e-4 * logits[1].abs().max().item()):
                return False
    return True
