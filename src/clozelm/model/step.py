"""Decoding one token with each layer as one compiled graph (torch.compile), on the CPU.

Why: a 2-core CPU spends a token's time on two things, the products (reading every weight once) and each layer's
few dozen small operations (norms, rotary positions, the cache write, attention over the cache, casts) dispatched
one at a time from Python. Inductor fuses the small operations into a few kernels. Every layer has the same shapes,
so one graph, with the layer's weights and cache as its inputs, serves them all: it compiles in seconds, where a
graph of the whole network takes tens of seconds and runs barely faster (docs/performance.md). The vocabulary
projection is a second graph.

The products: int4 through torch's weight-only kernel, an ordinary operation in a graph; int8, fp32 and bf16 as a
reduction compiled into it (`_product`), each weight read once and multiplied by the row in fp32. Eager decoding
multiplies fp32 and bf16 rows by oneDNN-packed copies of the weights (native.c's blocked ones on x86 CPUs without
AMX, below), which a graph cannot take (inductor's
lowering refuses the packed layout, and wrapped as a custom operation each product costs more per call than the
fusion saves); the compiled reduction reads the weights as they are, and streams them as fast. Where int8 and int4
products of a few rows go through model/native.c (x86 CPUs with AVX2 and FMA; with AVX2 alone the compiled int8
reductions ran several times slower than eager steps), those products of the graph call that kernel instead, an opaque operation on the same blocked copy the eager step reads. Only theirs: fp32 and bf16 reductions
compile as fast as that kernel reads, and each call of an opaque operation pays a dispatch through Python, which
SmolLM2's 210 small products a token would feel (docs/performance.md).

The graph computes what `Block.forward` computes for one token of one row; it reads the layer's cache up to the
token's own slot, a view whose length is symbolic in the graph, so one compile serves every length. A generation
asks for it on the cache it makes (`KVCache.compiled`), so other callers of the same network, in the same thread or
another, are not touched.
"""

from __future__ import annotations

import shutil
import sys
import types

import torch
import torch.nn.functional as F

from . import fused, packed
from . import transformer  # its attention functions; transformer.py imports this module too

# (what the graph reads: formats, shapes, dtypes) -> (compiled layer, compiled projection), made on first use
_graphs: dict[tuple, tuple] = {}
_failure: list[str] = []  # why torch.compile failed in this process, once it has: later steps stay eager
DENSE = "dense"  # a product with the weight itself (fp32, bf16), as `_product` reads it
NATIVE = "native"  # a product through model/native.c: (NATIVE, output rows), (blocked weight, scales or None)


def compiler_available() -> bool:
    """Whether inductor can build its CPU kernels: it needs a C++ compiler."""
    return any(shutil.which(name) for name in ("g++", "c++", "clang++"))


def fits(network) -> str | None:
    """Why one-token steps of `network` cannot run compiled, or None where they can."""
    if not isinstance(network, transformer.Transformer):
        return "compiled decoding steps run clozelm's own network"
    config = network.config
    if not (config.causal and config.pre_ln):
        return "compiled decoding steps take a causal model"
    if network.device.type != "cpu":
        return "compiled decoding steps run on the CPU"
    if not compiler_available():
        return "compiled decoding steps need a C++ compiler (g++ or clang++) for torch.compile"
    if _failure:
        return f"torch.compile failed here earlier ({_failure[0]})"
    return None


def _products(block) -> tuple:
    """The Linear layers of a block, in the order `_layer` reads them."""
    mlp = block.mlp
    return block.attn.c_attn, block.attn.c_proj, mlp.c_fc, mlp.c_gate, mlp.c_proj


def takes(network, cache) -> bool:
    """Whether a one-token step of `network` into `cache`, whose generation asked for compiled steps
    (`cache.compiled`, which the caller checks, after `fits` said the network can), runs them: unless torch.compile
    has failed in this process. The layers' weights as the graph reads them are gathered once per cache: they do
    not change while it is in use (one generation)."""
    if _failure:
        return False
    if cache.step_weights is None:
        layers, head = [_weights(block) for block in network.h], _head_weights(network)
        try:
            graphs = _compiled(_signature((layers[0], head)))
        except Exception as error:  # noqa: BLE001 (a broken inductor install: decode eagerly, as in `run`)
            _failed(error)
            return False
        cache.step_weights = (layers, head, *graphs)
    return True


def _signature(tree) -> tuple:
    """What a compiled graph is specialised to in `tree` (nested tuples of tensors, formats and None): formats, and
    each tensor's dtype and shape."""
    if isinstance(tree, (tuple, list)):
        return tuple(_signature(item) for item in tree)
    return (tree.dtype, tuple(tree.shape)) if isinstance(tree, torch.Tensor) else tree


def _compiled(signature: tuple) -> tuple:
    """(layer graph, projection graph) for weights of this signature. Each signature gets functions of its own:
    dynamo keeps the graphs of one function in a list and a call tests their guards in turn, so with one function
    every model (or weight format) decoded in a process would slow down the steps of the others (docs/performance.md)."""
    if signature not in _graphs:
        if not _graphs:
            # A process that decodes several models (a test suite, a study's evaluation) needs more graphs than
            # dynamo's default of 8 per function before it would quietly stop compiling.
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
            from torch._inductor import inductor_prims  # noqa: F401  (registers prims.inductor_force_stride_order)
        _graphs[signature] = tuple(torch.compile(_copy(f, len(_graphs))) for f in (_layer, _product))
    return _graphs[signature]


def _copy(function, n: int):
    """`function` with a code object of its own (dynamo keeps its compiled graphs on the code object)."""
    name = f"{function.__name__}_{n}"
    return types.FunctionType(function.__code__.replace(co_name=name), function.__globals__, name,
                              function.__defaults__)


def _parts(owner) -> tuple[str, tuple[torch.Tensor, ...]]:
    """(format, tensors) of `owner`'s product as `_product` reads it: its quantized copy in int8 or int4 mode
    (int4 falling back to int8 where the kernel cannot take the shape), else the weight itself, `DENSE`; the
    eager forward makes the same choice."""
    kind = getattr(owner, "weight_format", None)
    found = packed.quantized_parts(owner, owner.weight, kind) if packed.QUANTIZED.get(kind) else None
    copy = None if found is None else packed.native_copy(owner, owner.weight)
    if copy is not None:  # int8 and int4 through the eager products' kernel (model/native.c), where they take it
        return (NATIVE, copy.rows), (copy.data, copy.scales)
    return (DENSE, (owner.weight,)) if found is None else found


def _head_weights(network) -> tuple | None:
    """The vocabulary projection as `_product` takes it (int8 in int4 mode too); None for a head of another kind."""
    owner = {"tied": network.wte, "untied": network.lm_head}.get(network.config.head)
    return None if owner is None else (*_parts(owner), None)


def _weights(block) -> tuple:
    """A block's tensors as `_layer` takes them: per norm (weight, bias or None); per product (format, tensors,
    bias or None), None for an MLP without a gate."""
    products = [None if linear is None else (*_parts(linear), linear.bias) for linear in _products(block)]
    norms = [(norm.weight, getattr(norm, "bias", None)) for norm in (block.ln_1, block.ln_2)]
    return (*norms, *products)


def _normed(x, weight, bias, rms: bool, eps: float):
    if rms:  # as RMSNorm.forward: normalised in fp32, cast back before the weight
        return weight * F.rms_norm(x.float(), weight.shape, eps=eps).to(x.dtype)
    return F.layer_norm(x, weight.shape, weight, bias, eps)


def _product(x, product, activation=None):
    """x [1, 1, in] times a weight. fp32, bf16 and int8 as a reduction that inductor compiles for the weight's
    shape: each weight read once, widened and multiplied by the row in fp32 (torch's int8 kernel streams slower on
    the CPUs measured), int8 rounded to bf16 as that kernel rounds it (the row too, where inductor keeps the cast; it
    may drop a cast down and back up). int4, where native.c does not take it, through torch's kernel, which streams
    faster than a compiled reduction that unpacks the nibbles."""
    kind, parts, bias = product
    if isinstance(kind, tuple) or kind == DENSE:
        # fp32 sums, the bias and the activation applied to them in fp32 and the result rounded once to x's dtype:
        # the roundings of the eager products (native.c's, oneDNN's fused bf16 one)
        if kind == DENSE:  # a bf16 row is exact in fp32
            y = (parts[0].float() * _materialized(x.reshape(1, x.size(-1)).float())).sum(-1)
        else:  # (NATIVE, rows): the kernel eager decoding takes too, an opaque call in the graph
            y = torch.ops.clozelm.native_product(x.reshape(1, x.size(-1)), *parts, kind[1])
        y = y if bias is None else y + bias.float()
        y = y if activation is None else fused.activate(y, activation)
        return y.to(x.dtype).view(*x.shape[:-1], -1)
    if kind == packed.INT8:
        weight, scales = parts  # [out, in] int8, [out] bf16
        row = _materialized(x.reshape(1, x.size(-1)).to(torch.bfloat16).float())
        y = ((weight.float() * row).sum(-1) * scales.float()).to(torch.bfloat16).to(x.dtype).view(*x.shape[:-1], -1)
    else:
        y = packed.quantized_product(x, kind, parts)
    y = y if bias is None else y + bias
    return y if activation is None else fused.activate(y, activation)


def _materialized(row: torch.Tensor) -> torch.Tensor:
    """`row` [1, in] as a buffer of its own in the compiled graph. Otherwise inductor computes what makes it (the
    norm before a product, the activation after one) inside the reduction that reads it, again for every output row:
    at the GPT-2 124M shape that took the compiled int8 step from 1.4x eager to 1.0x."""
    return torch.ops.prims.inductor_force_stride_order(row, (row.size(1), 1))


def _attend(q, keys, values):
    """softmax(q k^T / sqrt(Dh)) v for the one query of the step, as reductions inductor fuses into one kernel, in fp32
    as eager decoding's attention accumulates. q [1, H, 1, Dh]; keys, values [1, Hkv, S, Dh], each key head serving
    H / Hkv consecutive query heads -> [1, H, 1, Dh] in q's dtype. torch's flash kernel, tiled for many queries,
    cost more than the rest of the layer's small operations together (docs/performance.md)."""
    H, Dh = q.size(1), q.size(3)
    G = keys.size(1)
    queries = q.float().view(1, G, H // G, 1, Dh)  # [1, Hkv, queries per key head, 1, Dh]
    scores = (queries * keys.float().unsqueeze(2)).sum(-1) * (1.0 / Dh ** 0.5)  # [1, Hkv, H / Hkv, S]
    y = (scores.softmax(-1).unsqueeze(-1) * values.float().unsqueeze(2)).sum(-2)  # [1, Hkv, H / Hkv, Dh]
    return y.view(1, H, 1, Dh).to(q.dtype)


def _layer(x, rope, weights, keys, values, spec):
    """One block for one token: x [1, 1, D] -> [1, 1, D]. keys, values [1, Hkv, S, Dh]: the layer's cache up to and
    including the token's own slot, the last, where its key and value are written. rope: (cos, signed sin)
    [1, 1, 1, Dh] or None; spec: (n_head, kv_heads, head_dim, rms norm?, eps, activation), constants of the
    graph."""
    H, Hkv, Dh, rms, eps, activation = spec
    ln_1, ln_2, qkv, proj, fc, gate, down = weights
    heads = _product(_normed(x, *ln_1, rms, eps), qkv).view(1, 1, H + 2 * Hkv, Dh).transpose(1, 2)
    if rope is not None:
        qk = transformer._rotate(heads[:, :H + Hkv], *rope)
        q, k, v = qk[:, :H], qk[:, H:], heads[:, H + Hkv:]
    else:
        q, k, v = heads.split((H, Hkv, Hkv), dim=1)
    keys[:, :, -1:] = k
    values[:, :, -1:] = v
    y = _attend(q, keys, values)
    y = y.transpose(1, 2).reshape(1, 1, H * Dh)
    x = x + _product(y, proj)
    h = _normed(x, *ln_2, rms, eps)
    if gate is not None:  # SwiGLU: c_proj(act(c_gate(h)) * c_fc(h))
        return x + _product(_product(h, gate, activation) * _product(h, fc), down)
    return x + _product(_product(h, fc, activation), down)


def run(network, x: torch.Tensor, cache, rope) -> torch.Tensor | None:
    """After `takes` said yes: the layers of `network` for one token of one row, x [1, 1, D] after the embeddings
    -> [1, 1, D] before the final norm; the token's keys and values go into `cache` at its current length (which
    the caller advances). None where torch.compile fails (a compiler without Python's or torch's headers, say): it
    is said once, and the caller runs all the layers itself (rewriting the same keys into the slots of any layer
    that ran here first)."""
    config = network.config
    spec = (config.n_head, config.kv_heads, config.head_dim, config.norm == "rmsnorm", config.layer_norm_eps,
             config.activation)
    end = cache.length + 1
    try:
        layers, _, layer, _ = cache.step_weights  # gathered by `takes`
        for i, weights in enumerate(layers):
            keys, values = cache.keys[i][:, :, :end], cache.values[i][:, :, :end]
            torch._dynamo.maybe_mark_dynamic(keys, 2)  # one graph for every length
            torch._dynamo.maybe_mark_dynamic(values, 2)
            x = layer(x, rope, weights, keys, values, spec)
    except Exception as error:  # noqa: BLE001 (inductor raises many kinds; any of them means: decode eagerly)
        _failed(error)
        return None
    return x


def _failed(error: Exception) -> None:
    """Remember that torch.compile failed here, and say it once."""
    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    _failure.append(f"{type(error).__name__}: {first}")
    print(f"clozelm: note: compiled decoding steps failed ({_failure[0]}); decoding without them", file=sys.stderr)


def head_logits(h: torch.Tensor, cache) -> torch.Tensor | None:
    """After `run`: the logits [1, 1, V] of the final hidden state h [1, 1, D] through the vocabulary projection,
    compiled as the layers' products are (a reduction); None for another kind of head or where torch.compile
    failed."""
    _, head, _, projection = cache.step_weights
    if head is None or _failure:
        return None
    try:
        return projection(h, head)
    except Exception as error:  # noqa: BLE001 (as in `run`)
        _failed(error)
        return None
