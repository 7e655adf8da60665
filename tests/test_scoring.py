"""The shared search pieces (clozelm.scoring) against the plain computations they replace."""

import torch
import torch.nn.functional as F

from clozelm import scoring


def test_gathered_sum_is_the_log_probability_of_the_targets():
    torch.manual_seed(0)
    logp = F.log_softmax(torch.randn(5, 11), -1)
    targets = [3, 0, 10, 7]
    assert abs(scoring.gathered_sum(logp, targets) - sum(float(logp[i, t]) for i, t in enumerate(targets))) < 1e-5
    assert scoring.gathered_sum(logp, []) == 0.0
    assert scoring.token_logprob(torch.tensor([0.0, 0.0]), 1) == float(torch.log(torch.tensor(0.5)))


def test_sequence_logprobs_of_a_right_padded_batch():
    torch.manual_seed(1)
    seqs = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    batch = scoring.pad_right(seqs)
    assert batch.tolist() == [[1, 2, 3, 0], [4, 5, 0, 0], [6, 7, 8, 9]]
    logits = torch.randn(3, 4, 12)
    got = scoring.sequence_logprobs(logits, seqs)
    for r, s in enumerate(seqs):
        logp = F.log_softmax(logits[r], -1)
        assert abs(got[r] - sum(float(logp[i - 1, s[i]]) for i in range(1, len(s)))) < 1e-5


def test_beam_step_picks_the_best_pairs():
    scores = torch.tensor([[0.0, -1.0, -5.0], [-0.5, float("-inf"), -3.0]])
    values, rows, tokens = scoring.beam_step(scores, 3)
    assert list(zip(rows.tolist(), tokens.tolist())) == [(0, 0), (1, 0), (0, 1)]
    assert values.tolist() == [0.0, -0.5, -1.0]
    values, rows, tokens = scoring.beam_step(scores, 10, finite_only=True)  # k larger than the table
    assert len(values) == 5 and torch.isfinite(values).all()
