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


def gathered_sum(logp: torch.Tensor, targets: Sequence[int]) -> float:
    """sum over i of logp[i, targets[i]]: the log-probability of `targets` read from one row of log-probs
    [T, V] (T >= len(targets)) where position i predicts targets[i]."""
    if not len(targets):
        return 0.0
    return float(logp[torch.arange(len(targets)), torch.tensor(list(targets))].sum())


def pad_right(seqs: Sequence[Sequence[int]], pad: int = 0) -> torch.Tensor:
    """One [N, max length] batch. In a causal model right padding needs no attention mask: real tokens never
    see the pads after them."""
    length = max(map(len, seqs))
    return torch.tensor([list(s) + [pad] * (length - len(s)) for s in seqs])


def sequence_logprobs(logits: torch.Tensor, seqs: Sequence[Sequence[int]]) -> list[float]:
    """log P(each sequence's tokens after its first) from a causal model's logits [N, T, V] over the
    right-padded batch of `seqs`."""
    logp = log_probs(logits[:, :-1])
    return [gathered_sum(logp[r], s[1:]) for r, s in enumerate(seqs)]


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


__all__ = ["log_probs", "token_logprob", "gathered_sum", "pad_right", "sequence_logprobs", "beam_step"]
