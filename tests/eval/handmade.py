"""Hand-built networks for the eval tests, each wrapped as a clozelm Model, whose right figures are known.

`Model` itself wraps only a clozelm Transformer; `HandModel` puts the hand-built networks of tests/handbuilt.py
(and the two below) in the same place a loaded model has them: `.network`, `.tokenizer`, `.info`.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from clozelm.loaded import Model, ModelInfo
from clozelm.model import ModelConfig, Output

from handbuilt import at_positions


class HandModel(Model):
    device = torch.device("cpu")

    def __init__(self, network, tokenizer, objective: str):  # noqa: D107 (no Transformer check: hand-built)
        self.network = network
        self.tokenizer = tokenizer
        self.info = ModelInfo(name=type(network).__name__, objective=objective)


class _Cache:
    def __init__(self):
        self.length = 0

    def truncate(self, length):
        self.length = length

    def select(self, rows, room=None):
        new = _Cache()
        new.length = self.length
        return new

    def fork(self, rows, room=None):
        return self.select(torch.zeros(rows, dtype=torch.long))


class ConstantLM(nn.Module):
    """Causal: whatever came before, the next token is `token` with probability p = e^m / (e^m + V - 1), the
    logit margin m 5 unless told."""

    def __init__(self, tokenizer, token: int, n_positions: int = 512, margin: float = 5.0):
        super().__init__()
        V = tokenizer.vocab_size
        self.config = ModelConfig(vocab_size=V, n_positions=n_positions, n_embd=8, n_layer=1, n_head=1)
        self.token, self.margin = token, margin

    def new_cache(self, batch_size, max_len=None):
        return _Cache()

    def forward(self, input_ids, attention_mask=None, attentions=False, *, cache=None, last_logits_only=False,
                logits_at=None, **_):
        ids = torch.as_tensor(input_ids)
        ids = ids[None] if ids.dim() == 1 else ids
        B, T = ids.shape
        logits = torch.zeros(B, T, self.config.vocab_size)
        logits[:, :, self.token] = self.margin
        if cache is not None:
            cache.length += T
        if last_logits_only:
            logits = logits[:, -1:]
        return Output(logits=at_positions(logits, logits_at), hidden=torch.zeros(B, T, 8))


class TokenIdentity(nn.Module):
    """Bidirectional, for the probe: the hidden state of a token is its one-hot vector (the logits are flat)."""

    def __init__(self, tokenizer):
        super().__init__()
        V = tokenizer.vocab_size
        self.config = ModelConfig(vocab_size=V, n_positions=64, n_embd=V, n_layer=1, n_head=1, causal=False,
                                  pre_ln=False, head="mlm")

    def forward(self, input_ids, attention_mask=None, attentions=False, *, logits_at=None, **_):
        ids = torch.as_tensor(input_ids)
        ids = ids[None] if ids.dim() == 1 else ids
        hidden = torch.nn.functional.one_hot(ids, self.config.vocab_size).float()
        logits = torch.zeros(*ids.shape, self.config.vocab_size)
        return Output(logits=at_positions(logits, logits_at), hidden=hidden)
