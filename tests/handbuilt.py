"""Hand-built language models whose right answers are known, with the call interface of a loaded
clozelm.Model (`tokenizer`, `config`, `fill_method`, `device`, `new_cache`, called like the network).

Each is an n-gram table over a tiny word-level BPE vocabulary (trained by clozelm on a few sentences
so that every word is one token), so the best reconstruction of a blank can be worked out by hand.
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn as nn

from clozelm.model import ModelConfig, Output, Transformer, packed
from clozelm.tokenizers import train_bpe

SMOOTH = 1e-4

# Small networks of both families for decoding steps, checked against the network's own forward.
GPT2_STYLE = dict(vocab_size=96, n_positions=128, n_embd=64, n_layer=2, n_head=4)
LLAMA_STYLE = dict(vocab_size=96, n_positions=128, n_embd=64, n_layer=2, n_head=4, n_kv_head=2, norm="rmsnorm",
                   positions="rope", mlp="gated", activation="silu", bias=False, qkv_bias=True, n_inner=96,
                   layer_norm_eps=1e-6)


def perturbed_network(config: dict, kind: str | None = None, dtype=torch.float32, seed: int = 0) -> Transformer:
    """A random network of `config` in `dtype` (int8/int4 `kind`: its quantized weights), whose norms and biases are
    moved away from their initial 1 and 0, so that a misread one shows, and whose queries and keys are large enough
    that attention picks positions."""
    torch.manual_seed(seed)
    net = Transformer(ModelConfig(**config)).to(dtype).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "ln" in name or "bias" in name:
                p.add_(torch.randn_like(p) * 0.1)
            elif "c_attn.weight" in name:
                p.mul_(10)
    packed.use_quantized_weights(net, kind)
    return net


def word_tokenizer(tmp_path, sentences: list[str], specials=("<|endoftext|>", "[MASK]")):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(sentences * 5) + "\n")
    return train_bpe([corpus], vocab_size=2000, special_tokens=list(specials), min_frequency=1)


def bigram_counts(tokenizer, sentences: list[str]) -> torch.Tensor:
    """counts[a, b]: how often token b follows token a in `sentences`, each between <|endoftext|>s (smoothed)."""
    V = tokenizer.vocab_size
    counts = torch.full((V, V), SMOOTH)
    eos = tokenizer.eos_id
    for s in sentences:
        ids = [eos] + tokenizer.encode(s) + [eos]
        for a, b in zip(ids, ids[1:]):
            counts[a, b] += 1
    return counts


def at_positions(logits: torch.Tensor, logits_at) -> torch.Tensor:
    """The network's `logits_at` contract: the logits [B, T, V] at the True places of `logits_at` only, [N, V] in
    row-major order."""
    return logits if logits_at is None else logits[torch.as_tensor(logits_at, dtype=torch.bool)]


class _Cache:
    def __init__(self, batch):
        self.last = torch.zeros(batch, dtype=torch.long)
        self.length = 0

    def truncate(self, length):
        self.length = length

    def select(self, rows, room=None):
        new = _Cache(len(rows))
        new.last, new.length = self.last.index_select(0, rows), self.length
        return new

    def fork(self, rows, room=None):
        return self.select(torch.zeros(rows, dtype=torch.long))


class BigramLM(nn.Module):
    """Causal: P(next | previous token) counted from `sentences`, each started by <|endoftext|>."""

    fill_method = "causal"
    device = torch.device("cpu")

    def __init__(self, tokenizer, sentences: list[str]):
        super().__init__()
        V = tokenizer.vocab_size
        self.config = ModelConfig(vocab_size=V, n_positions=256, n_embd=8, n_layer=1, n_head=1)
        self.tokenizer = tokenizer
        counts = bigram_counts(tokenizer, sentences)
        self.table = (counts / counts.sum(1, keepdim=True)).log()

    def new_cache(self, batch_size, max_len=None):
        return _Cache(batch_size)

    def forward(self, input_ids, attention_mask=None, attentions=False, *, cache=None, last_logits_only=False,
                logits_at=None, **_):
        ids = torch.as_tensor(input_ids)
        ids = ids[None] if ids.dim() == 1 else ids
        logits = self.table[ids]
        if cache is not None:
            cache.last, cache.length = ids[:, -1], cache.length + ids.size(1)
        if last_logits_only:
            logits = logits[:, -1:]
        return Output(logits=at_positions(logits, logits_at), hidden=torch.zeros(*ids.shape, 8))


class NeighbourMLM(nn.Module):
    """Bidirectional: the token at a [MASK] is scored by P(left -> x) * P(x -> right) from bigram counts;
    a visible token predicts itself."""

    fill_method = "masked"
    device = torch.device("cpu")

    def __init__(self, tokenizer, sentences: list[str]):
        super().__init__()
        V = tokenizer.vocab_size
        self.config = ModelConfig(vocab_size=V, n_positions=256, n_embd=8, n_layer=1, n_head=1, causal=False,
                                  pre_ln=False, head="mlm")
        self.tokenizer = tokenizer
        self.mask = tokenizer.mask_id
        counts = bigram_counts(tokenizer, sentences)
        self.forward_logp = (counts / counts.sum(1, keepdim=True)).log()  # [prev, x]
        self.backward_logp = (counts / counts.sum(0, keepdim=True)).log()  # [x, next]

    def forward(self, input_ids, attention_mask=None, attentions=False, *, logits_at=None, **_):
        ids = torch.as_tensor(input_ids)
        ids = ids[None] if ids.dim() == 1 else ids
        B, T = ids.shape
        V = self.config.vocab_size
        logits = torch.full((B, T, V), -30.0)
        for b in range(B):
            for t in range(T):
                if ids[b, t] != self.mask:
                    logits[b, t, ids[b, t]] = 0.0
                    continue
                score = torch.zeros(V)
                if t > 0 and ids[b, t - 1] != self.mask:
                    score = score + self.forward_logp[ids[b, t - 1]]
                if t + 1 < T and ids[b, t + 1] != self.mask:
                    score = score + self.backward_logp[:, ids[b, t + 1]]
                logits[b, t] = score
        return Output(logits=at_positions(logits, logits_at), hidden=torch.zeros(B, T, 8))


def counts_of(sentences):
    return Counter(w for s in sentences for w in s.split())


class ScriptedLM(nn.Module):
    """Causal: after a prompt of any length, greedily emits the ids of `script`, then <|endoftext|>."""

    fill_method = "causal"
    device = torch.device("cpu")

    def __init__(self, tokenizer, script: list[int], prompt_len: int):
        super().__init__()
        V = tokenizer.vocab_size
        self.config = ModelConfig(vocab_size=V, n_positions=512, n_embd=8, n_layer=1, n_head=1)
        self.tokenizer, self.script, self.prompt_len = tokenizer, script + [tokenizer.eos_id], prompt_len

    def new_cache(self, batch_size, max_len=None):
        return _Cache(batch_size)

    def forward(self, input_ids, attention_mask=None, attentions=False, *, cache=None, last_logits_only=False,
                logits_at=None, **_):
        ids = torch.as_tensor(input_ids)
        ids = ids[None] if ids.dim() == 1 else ids
        B, T = ids.shape
        start = cache.length if cache is not None else 0
        logits = torch.zeros(B, T, self.config.vocab_size)
        for t in range(T):
            k = start + t + 1 - self.prompt_len
            if 0 <= k < len(self.script):
                logits[:, t, self.script[k]] = 5.0
        if cache is not None:
            cache.length += T
        if last_logits_only:
            logits = logits[:, -1:]
        return Output(logits=at_positions(logits, logits_at), hidden=torch.zeros(B, T, 8))
