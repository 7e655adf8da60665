"""The shared forward passes: log-probabilities read at chosen positions equal the log-softmax of the model's
full logits there, for rows of unequal length batched together, causal and masked alike."""

from __future__ import annotations

import pytest
import torch

from clozelm.eval.forward import token_logprobs, top_tokens
from clozelm.model import ModelConfig, Transformer


@pytest.mark.parametrize("causal", [True, False])
def test_logprobs_at_chosen_positions_are_those_of_the_full_logits(causal):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=40, n_positions=16, n_embd=32, n_layer=2, n_head=4,
                                    causal=causal)).eval()
    g = torch.Generator().manual_seed(1)
    rows = [torch.randint(0, 40, (n,), generator=g).tolist() for n in (12, 5, 9, 12, 3)]
    # several targets per row, out of order and repeated, and a row with none
    targets = [[(11, 3), (0, 7), (4, 4), (4, 9)], [(2, 1)], [], [(5, 5), (1, 2)], [(2, 39), (0, 0)]]
    got = token_logprobs(model, rows, targets, batch_tokens=24, exclude=[39], greedy=True)
    best = top_tokens(model, rows, [len(r) - 1 for r in rows], batch_tokens=24)
    for row, row_targets, (lps, hits), dist in zip(rows, targets, got, best):
        with torch.no_grad():
            logits = model(torch.tensor([row])).logits[0].float()  # alone, unpadded
        assert torch.allclose(dist, torch.log_softmax(logits[-1], -1), atol=1e-5)
        logits[:, 39] = float("-inf")
        full = torch.log_softmax(logits, -1)
        assert len(lps) == len(hits) == len(row_targets)
        for lp, hit, (position, token) in zip(lps, hits, row_targets):
            assert float(lp) == pytest.approx(float(full[position, token]), abs=1e-5)
            assert bool(hit) == (int(logits[position].argmax()) == token)
