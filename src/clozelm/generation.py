"""Decoding with the KV cache: greedy, temperature, top-k, top-p."""

from __future__ import annotations

import torch

from .model.transformer import Transformer


@torch.inference_mode()
def generate_ids(model: Transformer, prompt_ids: list[int], max_new_tokens: int = 32, *, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, seed: int | None = None, eos_id: int | None = None):
    """Yields new token ids one at a time. temperature 0 = greedy (argmax, deterministic)."""
    if not model.config.causal:
        raise ValueError("generation needs a causal model")
    if not prompt_ids:
        raise ValueError("generation needs at least one prompt token")
    total = min(len(prompt_ids) + max_new_tokens, model.config.n_positions)
    cache = model.new_cache(1, total)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    logits = model(torch.tensor([prompt_ids]), cache=cache, last_logits_only=True).logits[0, -1]
    for _ in range(total - len(prompt_ids)):
        token = pick_token(logits.float(), temperature, top_k, top_p, generator)
        yield token
        if token == eos_id or cache.length >= total:
            return
        logits = model(torch.tensor([[token]]), cache=cache, last_logits_only=True).logits[0, -1]


def pick_token(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    logits = logits / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the smallest prefix reaching top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return int(torch.multinomial(logits.softmax(-1), 1, generator=generator))
