"""Pieces the search algorithms share (the fill search, masked-LM rescoring, beam search in generation):
log-probabilities of given tokens, and the beam step that keeps the best (hypothesis, next token) pairs.

Bottom layer: imports torch only. Sums run over one row at a time, in token order, so a score does not
depend on what else was in the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """log-softmax over the vocabulary, in float32 whatever the model computed in."""
    return F.log_softmax(logits.float(), -1)


def token_logprob(logits: torch.Tensor, token: int) -> float:
    """log P(token) from one position's logits [V]."""
    return float(log_probs(logits)[token])


def pad_right(seqs: Sequence[Sequence[int]], pad: int = 0) -> torch.Tensor:
    """One [N, max length] batch. In a causal model right padding needs no attention mask: real tokens never
    see the pads after them."""
    length = max(map(len, seqs))
    return torch.tensor([list(s) + [pad] * (length - len(s)) for s in seqs])


CHUNK_FLOATS = 1 << 18  # fp32 logits per chunk of target_logprobs (1 MB: stays in a core's cache)


def target_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log P(targets) read from logits [..., V] at targets [...]: the float32 log-softmax of log_probs, a few
    positions at a time, so the float32 copy of a large batch of logits is never made whole (each position's
    value is the one log_probs gives)."""
    vocab = logits.size(-1)
    flat, wanted = logits.reshape(-1, vocab), targets.reshape(-1, 1)
    out = torch.empty(flat.size(0), dtype=torch.float32, device=logits.device)
    step = max(1, CHUNK_FLOATS // vocab)
    for start in range(0, flat.size(0), step):
        rows = slice(start, start + step)
        out[rows] = log_probs(flat[rows]).gather(1, wanted[rows])[:, 0]
    return out.view(targets.shape)


def sequence_logprobs(logits: torch.Tensor, seqs: Sequence[Sequence[int]]) -> list[float]:
    """log P(each sequence's tokens after its first) from a causal model's logits [N, T, V] over the
    right-padded batch of `seqs`."""
    T = logits.size(1)  # position i predicts token i + 1; the last position (and padding) predicts nothing used
    targets = torch.tensor([(list(s[1:]) + [0] * T)[:T] for s in seqs], dtype=torch.long)
    picked = target_logprobs(logits, targets.to(logits.device))
    return [float(picked[r, :max(len(s) - 1, 0)].sum()) for r, s in enumerate(seqs)]


def beam_step(scores: torch.Tensor, k: int, finite_only: bool = False):
    """The `k` best entries of scores [hypotheses, V] (each hypothesis's score plus log P(next token)), as
    (values, rows, tokens): which hypothesis each extends and with which token. `finite_only` drops
    entries that are -inf (tokens a mask ruled out)."""
    top = scores.flatten().topk(min(k, scores.numel()))
    values, indices = top.values, top.indices
    if finite_only:
        keep = torch.isfinite(values)
        values, indices = values[keep], indices[keep]
    vocab = scores.size(1)
    return values, torch.div(indices, vocab, rounding_mode="floor"), indices % vocab


__all__ = ["log_probs", "token_logprob", "target_logprobs", "pad_right", "sequence_logprobs", "beam_step"]
