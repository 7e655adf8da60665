"""One transformer for GPT-2, BERT and the Llama family (Llama, SmolLM, Qwen2, Mistral).

Module names follow OpenAI's GPT-2 checkpoint (wte, wpe, h.{i}.ln_1, attn.c_attn, ...), so a GPT-2
state dict maps one to one; BERT's and Llama's names are translated in `clozelm.weights.hf`. The Llama
family reuses every GPT-2 module (its norms sit where GPT-2's LayerNorms do, its q/k/v are fused into
c_attn) and adds only `mlp.c_gate` (SwiGLU's gate) and `lm_head` (an untied output matrix).
Shapes in comments: B batch, T new tokens, S keys (cached + new), D n_embd, H heads, Hkv key/value
heads, Dh head_dim, V vocab.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import native_attention, native_norm, native_step, packed, step
from .config import ModelConfig, rope_kind
from .packed import Linear


@dataclass
class Output:
    logits: torch.Tensor | None  # [B, T, V]; None when the model has no LM head
    hidden: torch.Tensor  # [B, T, D] last hidden state (after ln_f for GPT-2)
    attentions: tuple[torch.Tensor, ...] | None = None  # per layer [B, H, T, S], only when asked
    pooled: torch.Tensor | None = None  # [B, D] BERT pooler output, when the model has one


class KVCache:
    """Preallocated keys and values for causal decoding, plus which cached keys are padding.

    Preallocating avoids a torch.cat per layer per token, which dominates small-batch decoding on CPU.
    """

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        shape = (batch_size, config.kv_heads, max_len, config.head_dim)  # grouped-query: Hkv heads only
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.key_valid = torch.ones(batch_size, max_len, dtype=torch.bool, device=device)
        self.seen = torch.zeros(batch_size, dtype=torch.long, device=device)  # real tokens per row
        self.has_padding = False
        self.length = 0
        self.max_len = max_len
        # A fork's first `shared` positions are one row's keys and values that every row reads (`fork`); `keys`
        # and `values` then hold each row's own positions from there on.
        self.shared = 0
        self.shared_keys: list[torch.Tensor] | None = None  # per layer [1, Hkv, shared, Dh]
        self.shared_values: list[torch.Tensor] | None = None
        # One-token steps into this cache run each layer compiled (model/step.py; a generation that asks sets it),
        # reading the weights as gathered once for the cache: (per layer, the vocabulary projection, the compiled
        # layer, the compiled projection).
        self.compiled = False
        self.step_weights: tuple | None = None
        # One-token steps through native.c, all layers in one call (model/native_step.py): None until the first
        # such step decides, then its arguments, or False where it does not take this network and cache.
        self.native_step = None

    def truncate(self, length: int) -> None:
        """Forget everything after `length` (rejected draft tokens); their slots get overwritten later."""
        if length < self.shared:
            raise ValueError(f"cannot truncate a fork to {length} positions: its first {self.shared} are shared")
        dropped = self.key_valid[:, length:self.length].sum(1)
        self.seen -= dropped
        self.key_valid[:, length:self.length] = True
        self.length = length

    def select(self, rows: torch.Tensor, room: int | None = None) -> "KVCache":
        """A new cache whose row i is this cache's row rows[i] (beam search forks and prunes rows), with room for
        `room` more positions (None: as many as this cache has room for). A caller that knows how few positions it
        will add says so: a fresh buffer costs a page fault per page first written, and with a slot written in
        each row and head of a long buffer that was most of a short forward pass."""
        rows = torch.as_tensor(rows, device=self.key_valid.device)
        new = object.__new__(KVCache)
        new.keys = [self._select_filled(k, rows, room) for k in self.keys]
        new.values = [self._select_filled(v, rows, room) for v in self.values]
        new.key_valid = self.key_valid.index_select(0, rows)
        new.seen = self.seen.index_select(0, rows)
        new.has_padding, new.length, new.max_len = self.has_padding, self.length, self.max_len
        new.shared, new.shared_keys, new.shared_values = self.shared, self.shared_keys, self.shared_values
        new.compiled, new.step_weights, new.native_step = False, None, None  # beams: rows stepped together
        return new

    def fork(self, rows: int, room: int | None = None) -> "KVCache":
        """`rows` rows that all continue this one-row cache, reading its keys and values so far without copies of
        them: fill scores hundreds of continuations of one context, and copying the context into each row cost
        more than the attention that reads it. The fork holds views of this cache's filled positions: this cache
        may go on (later positions) but must not be truncated and written over while the fork is in use. `room`:
        how many positions the fork will add (None: as many as this cache can hold), as in `select`."""
        if self.keys[0].size(0) != 1 or self.shared:
            raise ValueError("only a cache of one row that is not itself a fork can be forked")
        shared = self.length
        new = object.__new__(KVCache)
        new.shared_keys = [k[:, :, :shared] for k in self.keys]
        new.shared_values = [v[:, :, :shared] for v in self.values]
        slots = self.max_len - shared if room is None else min(room, self.max_len - shared)
        own = lambda buffer: buffer.new_empty((rows, buffer.size(1), slots, buffer.size(3)))
        new.keys, new.values = [own(k) for k in self.keys], [own(v) for v in self.values]
        new.key_valid = self.key_valid.expand(rows, -1).clone()
        new.seen = self.seen.expand(rows).clone()
        new.has_padding, new.length, new.max_len, new.shared = self.has_padding, shared, self.max_len, shared
        new.compiled, new.step_weights, new.native_step = False, None, None
        return new

    def _select_filled(self, buffer: torch.Tensor, rows: torch.Tensor, room: int | None) -> torch.Tensor:
        # Only the first `length` slots hold keys/values (later ones are written before they are read), so
        # copying just those keeps beam forks cheap when the cache is much longer than the text.
        filled = self.length - self.shared
        slots = buffer.size(2) if room is None else min(filled + room, self.max_len - self.shared)
        out = buffer.new_empty((len(rows), buffer.size(1), slots, buffer.size(3)))
        torch.index_select(buffer[:, :, :filled], 0, rows, out=out[:, :, :filled])
        return out

    @property
    def room(self) -> int:
        """How many more positions this cache holds."""
        return self.keys[0].size(2) - (self.length - self.shared)

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new positions' keys and values [B, Hkv, T, Dh] of `layer` after the cached ones; -> every
        row's own keys and values so far (all of them, unless this is a fork: then those after the shared ones)."""
        start = self.length - self.shared
        end = start + k.size(2)
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight. Normalised in fp32 and cast back before the weight, as HF's Llama
    does, so bf16 models keep the reference numerics."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        h = F.rms_norm(x.float(), self.weight.shape, eps=self.eps)  # one fused op: decoding calls this 2 x n_layer times a token
        return self.weight * h.to(x.dtype)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm; in an eager bf16 training step on an x86 CPU it normalises through native.c
    (model/native_norm.py): the same formulas, a pass a row instead of torch's several."""

    def forward(self, x):
        if self.training and native_norm.takes(x, self.weight, self.bias):
            return native_norm.layer_norm(x, self.weight, self.bias, self.eps)
        return super().forward(x)


def _norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, config.layer_norm_eps)
    return LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)


def rope_inv_freq(config: ModelConfig, device=None) -> torch.Tensor:
    """[Dh/2] rotation frequencies theta^(-2i/Dh), rescaled as `rope_scaling` says (HF's formulas)."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim))
    scaling = config.rope_scaling or {}
    kind = rope_kind(scaling)
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":  # long wavelengths slowed by `factor`, short ones kept, a smooth ramp between
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
        return torch.where(medium, smoothed, scaled)
    return inv_freq


def rope_cos_sin(config: ModelConfig, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [B, T] -> (cos, signed sin) [B, 1, T, Dh], computed in fp32 (positions reach 1e5: bf16 angles
    would be off). The sine's first half is negated: see _rotate."""
    freqs = positions[..., None].float() * rope_inv_freq(config, positions.device)  # [B, T, Dh/2]
    angles = torch.cat((freqs, freqs), dim=-1)[:, None]  # rotate-half layout: dim i pairs with i + Dh/2
    sin = angles.sin()
    sin[..., :freqs.size(-1)].neg_()
    return angles.cos().to(dtype), sin.to(dtype)


def _rotate(x, cos, signed_sin):
    """x [B, heads, T, Dh] rotated pairwise by the position angles (HF Llama's rotate_half convention:
    x * cos + cat(-x2, x1) * sin, with the sign folded into the sine: one op fewer)."""
    half = x.size(-1) // 2
    return x * cos + torch.cat((x[..., half:], x[..., :half]), dim=-1) * signed_sin


ONE_QUERY_MIN_KEYS = 64  # below this many cached keys the flash kernel's fixed cost is the smaller (`_takes_one_query`)


def _one_query(q, k, v, mask):
    """softmax(q k^T / sqrt(Dh) + mask) v for one new token per row, with fp32 products and softmax.
    q [B, H, 1, Dh]; k, v [B, Hkv, S, Dh], each key head serving H / Hkv consecutive query heads; mask None or
    additive [B, 1 or H, 1, S]. -> [B, H, 1, Dh] in q's dtype.

    Why: decoding a bf16 model on a CPU, torch's flash kernel (tiled for many queries) costs several times these
    two products at one query, and more the longer the cache; these accumulate in fp32 as it does."""
    B, H, _, Dh = q.shape
    G, S = k.size(1), k.size(2)
    with torch.autocast(q.device.type, enabled=False):  # fill runs under bf16 autocast: these products stay fp32
        # the query heads of one key head as the rows of one product: [B, Hkv, H/Hkv, Dh] x [B, Hkv, Dh, S]
        scores = torch.matmul(q.float().view(B, G, H // G, Dh), k.float().transpose(-2, -1)) * (1.0 / math.sqrt(Dh))
        if mask is not None:
            m = mask.float()
            scores = scores + (m.view(m.size(0), 1, 1, S) if m.size(1) == 1 else m.view(m.size(0), G, H // G, S))
        return torch.matmul(scores.softmax(dim=-1), v.float()).view(B, H, 1, Dh).to(q.dtype)


def _after_shared(q, k, v, shared_k, shared_v, mask, need_probs: bool):
    """Attention for rows that all continue one context (a `KVCache.fork`): q [B, H, T, Dh]; each row's own keys
    and values k, v [B, Hkv, S1, Dh]; the context's shared_k, shared_v [1, Hkv, P, Dh], read by every row without
    being copied into it; mask None or additive [B, 1 or H, T, P + S1]. Products and softmax in fp32, as the
    flash kernel accumulates. -> ([B, H, T, Dh] in q's dtype, probabilities [B, H, T, P + S1] when asked)."""
    B, H, T, Dh = q.shape
    G, S1, P = k.size(1), k.size(2), shared_k.size(2)
    R = H // G  # query heads per key head
    with torch.autocast(q.device.type, enabled=False):  # fill runs under bf16 autocast: these stay fp32
        qf = q.float().view(B, G, R, T, Dh)
        # Every row's queries against the shared keys as one product per key head: [G, B R T, Dh] x [G, Dh, P].
        rows = qf.permute(1, 0, 2, 3, 4).reshape(G, B * R * T, Dh)
        past = torch.matmul(rows, shared_k[0].float().transpose(-2, -1)).view(G, B, R, T, P).permute(1, 0, 2, 3, 4)
        own = torch.matmul(qf, k.float()[:, :, None].transpose(-2, -1))  # [B, G, R, T, S1]
        scores = torch.cat((past, own), dim=-1).view(B, H, T, P + S1) * (1.0 / math.sqrt(Dh))
        if mask is not None:
            scores = scores + mask.float()
        probs = scores.softmax(dim=-1)
        to_past, to_own = probs.view(B, G, R, T, P + S1).split((P, S1), dim=-1)
        y = torch.matmul(to_past.permute(1, 0, 2, 3, 4).reshape(G, B * R * T, P), shared_v[0].float())
        y = y.view(G, B, R, T, Dh).permute(1, 0, 2, 3, 4) + torch.matmul(to_own, v.float()[:, :, None])
        return y.reshape(B, H, T, Dh).to(q.dtype), (probs.to(q.dtype) if need_probs else None)


def _takes_one_query(q, k, mask, dropout: float, is_causal: bool) -> bool:
    """Whether `_one_query` computes this attention: inference on the CPU, one reduced-precision query per row, a
    few rows (decoding a text or a handful) over a cache of 64 keys or more. Below that the flash kernel's fixed
    cost is the smaller; with many rows, `_one_query`'s fp32 copies of the cache cost more than they save."""
    return (q.size(2) == 1 and q.size(0) <= 8 and k.size(2) >= ONE_QUERY_MIN_KEYS and q.dtype in (torch.bfloat16, torch.float16)
            and q.device.type == "cpu" and not is_causal and dropout == 0.0 and not torch.is_grad_enabled()
            and (mask is None or (mask.dim() == 4 and mask.size(2) == 1 and mask.size(3) == k.size(2))))


def _gqa_falls_to_math(q, mask) -> bool:
    """Whether SDPA with enable_gqa would take torch's math kernel, which writes every score in fp32: on CUDA it
    takes grouped keys only in flash attention, which takes no mask and no fp32 (ragged batches, a draft checked
    against the cache, an fp32 model). Keys repeated once per query head reach the efficient kernels instead."""
    return q.is_cuda and (mask is not None or q.dtype == torch.float32)


def _products_and_softmax(q, k, v, mask, is_causal: bool, dropout: float):
    """softmax(q k^T / sqrt(Dh) + mask) v spelled out: a product, an fp32 softmax, a product.
    q [B, H, T, Dh], k, v [B, H, S, Dh], mask None or additive [B, 1 or H, T, S] or [H, T, S] (the locality
    warm-up's bias) -> [B, H, T, Dh].

    Why: compiled training on a CPU, where inductor fuses the scale, the mask, the softmax and its casts into
    one pass and its backward into another, while torch's CPU flash kernel (tiled for long sequences) takes
    several times the products' own time at training's short ones. The scores are rounded to the inputs' dtype
    once, as the product writes them, and everything after that is fp32 up to the probabilities: the precision of
    transformers' and nanoGPT's explicit bf16 attention (tests/test_model.py measures it against float64 beside
    the flash kernel's)."""
    scores = (q @ k.transpose(-2, -1)).float() * (1.0 / math.sqrt(q.size(-1)))  # [B, H, T, S]
    if mask is not None:
        scores = scores + mask
    elif is_causal:
        scores = scores.masked_fill(_causal_block(q.size(2), k.size(2), q.device).logical_not(), float("-inf"))
    probs = scores.softmax(dim=-1).to(v.dtype)
    return F.dropout(probs, dropout, training=dropout > 0.0) @ v


def _compiled_cpu_training(q) -> bool:
    """Whether `_products_and_softmax` computes this attention: while torch.compile traces a training step on the
    CPU whose attention is in bf16 (bf16 weights, or bf16 autocast over fp32 ones); eager, the flash kernel is the
    faster."""
    return (torch.compiler.is_compiling() and q.device.type == "cpu" and q.dtype == torch.bfloat16
            and torch.is_grad_enabled())


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_kv_head = config.kv_heads
        self.head_dim = config.head_dim
        kv_width = self.n_kv_head * config.head_dim
        self.split = [config.n_embd, kv_width, kv_width]
        # fused q, k, v (in that order): [D + 2 * Hkv * Dh, D]
        self.c_attn = Linear(config.n_embd, config.n_embd + 2 * kv_width, bias=config.attn_qkv_bias)
        self.c_proj = Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout

    def forward(self, x, mask, is_causal, cache: KVCache | None, layer: int, need_probs: bool, rope=None):
        B, T, D = x.shape
        H, Hkv = self.n_head, self.n_kv_head
        heads = self.c_attn(x).view(B, T, H + 2 * Hkv, self.head_dim).transpose(1, 2)  # [B, H + 2 Hkv, T, Dh]
        if rope is not None:  # rotary positions, queries and keys in one go: keys are cached already rotated
            qk = _rotate(heads[:, :H + Hkv], *rope)
            q, k, v = qk[:, :H], qk[:, H:], heads[:, H + Hkv:]
        else:
            q, k, v = heads.split((H, Hkv, Hkv), dim=1)  # [B, H, T, Dh], [B, Hkv, T, Dh] twice
        if cache is not None:
            k, v = cache.store(layer, k, v)  # [B, Hkv, S, Dh]
            if cache.shared:  # rows continuing one context (inference: no dropout)
                y, probs = _after_shared(q, k, v, cache.shared_keys[layer], cache.shared_values[layer], mask,
                                         need_probs)
                return self.c_proj(y.transpose(1, 2).reshape(B, T, H * self.head_dim)), probs
        if self.n_kv_head != self.n_head:
            return self._grouped(q, k, v, mask, is_causal, need_probs)
        dropout = self.dropout if self.training else 0.0
        probs = None
        if need_probs:
            scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))  # [B, H, T, S]
            if mask is not None:
                scores = scores + mask
            elif is_causal:
                scores = scores.masked_fill(_causal_block(T, k.size(2), x.device).logical_not(), torch.finfo(scores.dtype).min)
            probs = scores.softmax(dim=-1)
            y = F.dropout(probs, dropout, self.training) @ v
        elif _takes_one_query(q, k, mask, dropout, is_causal):
            y = _one_query(q, k, v, mask)
        elif _compiled_cpu_training(q):
            y = _products_and_softmax(q, k, v, mask, is_causal, dropout)
        elif self.training and native_attention.takes(q, k, mask, dropout, is_causal):
            y = native_attention.attend(q, k, v, heads if rope is None else None)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal)
        y = y.transpose(1, 2).reshape(B, T, D)
        return self.c_proj(y), probs

    def _grouped(self, q, k, v, mask, is_causal, need_probs):
        """Grouped-query attention: each of the Hkv key/value heads serves H / Hkv consecutive query heads."""
        B, H, T, Dh = q.shape
        dropout = self.dropout if self.training else 0.0
        probs = None
        if need_probs:
            S, G = k.size(2), self.n_kv_head
            # Query heads grouped by the key head they share: [B, Hkv, H/Hkv, T, Dh] against [B, Hkv, 1, S, Dh].
            scores = (q.view(B, G, H // G, T, Dh) @ k[:, :, None].transpose(-2, -1)).view(B, H, T, S)
            scores = scores * (1.0 / math.sqrt(Dh))  # [B, H, T, S]
            if mask is not None:
                scores = scores + mask
            elif is_causal:
                scores = scores.masked_fill(_causal_block(T, S, q.device).logical_not(), torch.finfo(scores.dtype).min)
            probs = scores.softmax(dim=-1)
            y = (F.dropout(probs, dropout, self.training).view(B, G, H // G, T, S) @ v[:, :, None]).view(B, H, T, Dh)
        elif _takes_one_query(q, k, mask, dropout, is_causal):
            y = _one_query(q, k, v, mask)
        elif self.training and native_attention.takes(q, k, mask, dropout, is_causal):
            repeat = H // self.n_kv_head  # query head h reads key head h // repeat
            y = native_attention.attend(q, k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1))
        elif _gqa_falls_to_math(q, mask):
            repeat = H // self.n_kv_head  # query head h reads key head h // repeat
            y = F.scaled_dot_product_attention(q, k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1),
                                               attn_mask=mask, dropout_p=dropout, is_causal=is_causal)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal,
                                               enable_gqa=True)
        y = y.transpose(1, 2).reshape(B, T, H * Dh)
        return self.c_proj(y), probs


class MLP(nn.Module):
    """GPT-2/BERT: c_proj(act(c_fc(x))). Gated (SwiGLU): c_proj(act(c_gate(x)) * c_fc(x)), c_fc being Llama's up_proj."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.c_fc = Linear(config.n_embd, config.mlp_width, bias=config.bias)
        self.c_gate = Linear(config.n_embd, config.mlp_width, bias=config.bias) if config.mlp == "gated" else None
        self.c_proj = Linear(config.mlp_width, config.n_embd, bias=config.bias)
        self.activation = config.activation  # applied by the Linear layer that feeds it (model/fused.py)

    def forward(self, x):
        if self.c_gate is not None:
            return self.c_proj(self.c_gate(x, self.activation) * self.c_fc(x))
        return self.c_proj(self.c_fc(x, self.activation))


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.pre_ln = config.pre_ln
        self.ln_1 = _norm(config)
        self.attn = Attention(config)
        self.ln_2 = _norm(config)
        self.mlp = MLP(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x, mask, is_causal, cache, layer, need_probs, rope=None):
        if self.pre_ln:  # GPT-2, Llama
            a, probs = self.attn(self.ln_1(x), mask, is_causal, cache, layer, need_probs, rope)
            x = x + self.drop(a)
            x = x + self.drop(self.mlp(self.ln_2(x)))
        else:  # BERT
            a, probs = self.attn(x, mask, is_causal, cache, layer, need_probs)
            x = self.ln_1(x + self.drop(a))
            x = self.ln_2(x + self.drop(self.mlp(x)))
        return x, probs


class MLMHead(nn.Module):
    """BERT's masked-LM head: dense + activation + LayerNorm, then the tied decoder with its own bias."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = Linear(config.n_embd, config.n_embd)
        self.activation = config.activation
        self.ln = LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def features(self, h):
        return self.ln(self.dense(h, self.activation))

    def forward(self, h, wte):
        return packed.linear(self.features(h), wte, self.bias, self)


def _causal_block(T: int, S: int, device) -> torch.Tensor:
    """[T, S] bool: query i (the last T of S positions) may see key j."""
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)


class Transformer(nn.Module):
    """GPT-2, BERT or a Llama-family model, by configuration. The network alone: tokenizers, files and tasks
    live above it."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd) if config.positions == "learned" else None
        self.wtt = nn.Embedding(config.type_vocab_size, config.n_embd) if config.type_vocab_size else None
        self.ln_emb = None if config.pre_ln else _norm(config)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = _norm(config) if config.pre_ln else None
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False) if config.head == "untied" else None
        self.mlm = MLMHead(config) if config.head == "mlm" else None
        self.pooler = Linear(config.n_embd, config.n_embd) if config.pooler else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layer) (the paper's rule)."""
        std = 0.02
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
            elif isinstance(module, MLMHead):
                nn.init.zeros_(module.bias)
        for block in self.h:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                nn.init.normal_(proj.weight, mean=0.0, std=std / math.sqrt(2 * self.config.n_layer))

    @property
    def device(self) -> torch.device:
        return self.wte.weight.device

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """Keys and values are kept in the dtype they are computed in: the weights', or autocast's when it is
        on (bf16 keys stored as fp32 would only double what every copy and read of the cache moves)."""
        dtype = self.wte.weight.dtype
        if torch.is_autocast_enabled(self.device.type) and dtype == torch.float32:
            dtype = torch.get_autocast_dtype(self.device.type)
        return KVCache(self.config, batch_size, max_len or self.config.n_positions, device=self.device, dtype=dtype)

    def forward(self, input_ids, attention_mask=None, attentions: bool = False, *, token_type_ids=None,
                position_ids=None, cache: KVCache | None = None, last_logits_only: bool = False,
                logits_at: torch.Tensor | None = None, attention_bias: torch.Tensor | None = None,
                head: bool = True, causal: bool | None = None) -> Output:
        """input_ids [B, T] (or [T]); attention_mask [B, T] (or [B, cached + T] with a cache), 1 = real, 0 = pad.
        head=False: no logits (Output.logits is None), for a loss that applies the head itself.

        attention_bias: float, broadcastable to [B, n_head, T, cached + T], added to every layer's attention
        scores before the softmax (the trainer's locality warm-up uses it; a plain forward leaves it None).

        logits_at: bool [B, T]; when given, logits are computed only there and come back as [N, V] in row-major
        order (masked-LM training labels ~15% of positions, so the vocabulary projection of the rest is waste).

        causal: overrides the config's attention direction for this pass (None: the config's). A hybrid
        (GPT-BERT) model is causal by config and reads its masked training batches with causal=False."""
        input_ids = torch.as_tensor(input_ids, device=self.device)
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        if past + T > self.config.n_positions:
            raise ValueError(f"sequence of {past + T} tokens exceeds the model's {self.config.n_positions} positions")
        causal = self.config.causal if causal is None else bool(causal)
        if cache is not None and not causal:
            raise ValueError("a KV cache only makes sense for a causal model")
        if cache is not None and T > cache.room:
            raise ValueError(f"this cache has room for {cache.room} more positions, not {T}")

        new_valid = None  # [B, T] bool for the new tokens
        if attention_mask is not None:
            attention_mask = torch.as_tensor(attention_mask, device=self.device)
            if attention_mask.dim() == 1:
                attention_mask = attention_mask[None]
            new_valid = attention_mask[:, -T:].bool()
        if position_ids is None:
            position_ids = self._positions(B, T, past, new_valid, cache)
        if cache is not None:
            if new_valid is not None:
                cache.key_valid[:, past:past + T] = new_valid
                cache.has_padding = cache.has_padding or not bool(new_valid.all())
                cache.seen += new_valid.sum(1)
            else:
                cache.key_valid[:, past:past + T] = True
                cache.seen += T
        # a token of one row, or a token and its draft (a prompt is read as prompts are): every layer in one call to
        # native.c where it takes the network (model/native_step.py), causal over the cache and the new tokens
        # alone, so no mask is built for it; else for one token compiled layers where the generation asked for them
        # (model/step.py)
        one_row_step = (cache is not None and B == 1 and cache.length > 0 and not attentions and not cache.shared
                        and not self.training and not torch.is_grad_enabled())
        one_call = (one_row_step and T <= native_step.MAX_TOKENS and not cache.has_padding and attention_bias is None
                    and native_step.takes(self, cache))
        mask, is_causal = (None, False) if one_call else self._attention_mask(B, T, past, new_valid, cache,
                                                                                 attention_bias, causal)

        rope = None
        if self.wpe is not None:
            x = self.wte(input_ids) + self.wpe(torch.as_tensor(position_ids, device=self.device))  # [B, T, D]
        else:
            x = self.wte(input_ids)
            if not one_call:  # the one-call step keeps every position's angles
                rope = rope_cos_sin(self.config, torch.as_tensor(position_ids, device=self.device), x.dtype)
        if self.wtt is not None:
            types = torch.zeros_like(input_ids) if token_type_ids is None else torch.as_tensor(token_type_ids, device=self.device)
            x = x + self.wtt(types)
        if self.ln_emb is not None:
            x = self.ln_emb(x)
        x = self.drop(x)
        probs_per_layer = []
        stepped, compiled, logits = None, False, None
        if one_call:  # through the final norm, and the vocabulary projection where the step holds it
            wanted = "none" if not head or logits_at is not None else "last" if last_logits_only else "all"
            stepped, logits = native_step.run(self, x, cache, wanted)
        elif one_row_step and T == 1 and mask is None and cache.compiled and step.takes(self, cache):
            stepped = step.run(self, x, cache, rope)
            compiled = stepped is not None
        if stepped is not None:
            x = stepped
        else:
            for i, block in enumerate(self.h):
                x, probs = block(x, mask, is_causal, cache, i, attentions, rope)
                if attentions:
                    probs_per_layer.append(probs)
        if cache is not None:
            cache.length += T
        if self.ln_f is not None and not one_call:
            x = self.ln_f(x)
        hidden = x
        h = hidden[:, -1:] if last_logits_only else hidden
        if logits_at is not None:
            h = hidden[torch.as_tensor(logits_at, device=self.device)]  # [N, D]
        if head and self.config.head is not None and compiled:
            logits = step.head_logits(h, cache)  # None where it failed to compile
        if not head or self.config.head is None or logits is not None:
            pass
        elif self.config.head == "tied":
            logits = packed.linear(h, self.wte.weight, None, self.wte)  # no output bias, as in GPT-2
        elif self.config.head == "untied":
            logits = self.lm_head(h)
        else:
            logits = self.mlm(h, self.wte.weight)
        pooled = torch.tanh(self.pooler(hidden[:, 0])) if self.pooler is not None else None
        return Output(logits=logits, hidden=hidden, attentions=tuple(probs_per_layer) if attentions else None,
                      pooled=pooled)

    def head_features(self, hidden: torch.Tensor) -> torch.Tensor:
        """What the vocabulary projection multiplies: the hidden state itself, or BERT's dense + act + LN of it.
        logits == head_features(hidden) @ vocab_projection()[0].T (+ bias): a training loss can fuse the last
        product with the cross-entropy (forward(..., head=False) skips the head)."""
        return self.mlm.features(hidden) if self.config.head == "mlm" else hidden

    def vocab_projection(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight [V, D], bias [V] or None) of the output layer."""
        if self.config.head == "untied":
            return self.lm_head.weight, None
        if self.config.head == "mlm":
            return self.wte.weight, self.mlm.bias
        return self.wte.weight, None

    def _positions(self, B, T, past, new_valid, cache):
        """Positions count real tokens only, so a left-padded row starts at position 0 like an unpadded one."""
        if new_valid is None and (cache is None or not cache.has_padding):
            return torch.arange(past, past + T, device=self.device).expand(B, T)
        valid = new_valid.long() if new_valid is not None else torch.ones(B, T, dtype=torch.long, device=self.device)
        start = cache.seen[:, None] if cache is not None else 0
        return (start + valid.cumsum(1) - 1).clamp(min=0)

    def _attention_mask(self, B, T, past, new_valid, cache, bias=None, causal=None):
        """Returns (additive float mask [B, 1 or n_head, T, S] or None, is_causal flag for the fast path)."""
        causal = self.config.causal if causal is None else causal
        dtype = self.wte.weight.dtype
        padded = (new_valid is not None and not bool(new_valid.all())) or (cache is not None and cache.has_padding)
        if not padded:
            if not causal or T == 1:  # every key is visible
                return (None if bias is None else bias.to(self.device, dtype)), False
            if past == 0 and bias is None:
                return None, True  # plain causal: let SDPA use its fused causal kernel
        S = past + T
        allowed = torch.ones(B, 1, T, S, dtype=torch.bool, device=self.device)
        if causal:
            allowed = allowed & _causal_block(T, S, self.device)
        if cache is not None:
            allowed = allowed & cache.key_valid[:, None, None, :S]
        elif new_valid is not None:
            allowed = allowed & new_valid[:, None, None, :]
        # A large negative number rather than -inf: a fully masked (padding) query row then gets a
        # harmless uniform distribution instead of NaN, as in the reference implementations.
        low = torch.finfo(dtype).min
        mask = torch.zeros(allowed.shape, dtype=dtype, device=self.device).masked_fill(~allowed, low)
        return (mask if bias is None else (mask + bias.to(self.device, dtype)).clamp_min(low)), False

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
