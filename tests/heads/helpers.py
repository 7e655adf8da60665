"""Tiny models for the heads tests, and readers of the page the views write."""

from __future__ import annotations

import base64
import json
import math
import re

import numpy as np
import torch

from clozelm.heads.views import decode_map
from clozelm.loaded import Model
from clozelm.model import ModelConfig, Transformer


def random_model(tok, causal=True, n_layer=2, n_head=4, n_embd=32, n_positions=64, seed=0) -> Model:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=tok.vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                      n_head=n_head, causal=causal, pre_ln=causal, head="tied" if causal else "mlm")
    return Model(Transformer(cfg).eval(), tok)


# ------------------------------------------------------------------------------------- hand-built heads

POSITIONS, HEADS, HEAD_DIM = 32, 4, 32


def handbuilt(tok, causal: bool) -> Model:
    """Layer 0: head 0 looks at the previous token, head 1 at the first, head 2 everywhere alike,
    head 3 at the next token (bidirectional) or at itself (causal).

    Position p is embedded as +1 at dim 2p and -1 at dim 2p+1 (token embeddings are zero), so every
    embedding has mean 0 and the same variance and LayerNorm only scales it by sqrt(D/2). Keys are the
    one-hot position e_j; a query that is a large multiple of e_{i-1} (or e_0, e_{i+1}, e_i) makes the
    softmax put all its weight on that one key; a zero query gives uniform weights.
    """
    D = HEADS * HEAD_DIM
    cfg = ModelConfig(vocab_size=tok.vocab_size, n_positions=POSITIONS, n_embd=D, n_layer=2, n_head=HEADS,
                      causal=causal, pre_ln=causal, head="tied" if causal else None, layer_norm_eps=1e-6)
    network = Transformer(cfg).eval()
    sharp = 40.0 * math.sqrt(HEAD_DIM)  # score 40 after the 1/sqrt(head_dim) scaling: a one-hot softmax
    gain = math.sqrt(D / 2)
    with torch.no_grad():
        network.wte.weight.zero_()
        network.wpe.weight.zero_()
        for p in range(POSITIONS):
            network.wpe.weight[p, 2 * p], network.wpe.weight[p, 2 * p + 1] = 1.0, -1.0
        weight, bias = network.h[0].attn.c_attn.weight, network.h[0].attn.c_attn.bias
        weight[:2 * D].zero_()
        bias[:2 * D].zero_()

        def query(head, r):
            return head * HEAD_DIM + r

        def key(head, r):
            return D + head * HEAD_DIM + r

        for head in (0, 1, 3):
            for r in range(HEAD_DIM):
                weight[key(head, r), 2 * r] = 1 / gain
        for r in range(HEAD_DIM - 1):
            weight[query(0, r), 2 * (r + 1)] = sharp / gain
        bias[query(1, 0)] = sharp
        for r in range(HEAD_DIM):
            source = r if causal else r - 1
            if source >= 0:
                weight[query(3, r), 2 * source] = sharp / gain
    return Model(network, tok)


# ------------------------------------------------------------------------------------- the page

def page_payload(page: str) -> dict:
    found = re.search(r'<script type="application/json" id="heads-data">(.*?)</script>', page, re.S)
    return json.loads(found.group(1))


def check_decoded(model_data: dict, maps) -> None:
    """Every stored map decodes to the model's attention within its quantisation step."""
    sinks = np.array(model_data["sinks"], dtype=bool)
    compressed = model_data["encoding"] == "deflate"
    for layer in range(maps.n_layers):
        for head in range(maps.n_heads):
            blob = base64.b64decode(model_data["maps"][layer][head])
            decoded, step = decode_map(blob, sinks, model_data["causal"], compressed)
            error = np.abs(decoded - maps.attentions[layer][head])
            assert (error[:, ~sinks] <= step[:, None] / 2 + 1e-6).all()
            assert (error[:, sinks] <= 1 / 65535 + 1e-6).all()


def assert_self_contained(page: str) -> None:
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"""\b(src|href)\s*=\s*["']?(?!data:|#)""", page)
    assert "@import" not in page and "url(" not in page
