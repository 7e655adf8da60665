"""The shared search pieces (clozelm.scoring) against the plain computations they replace."""

import torch
import torch.nn.functional as F

from clozelm import scoring


def test_target_logprobs_equal_the_full_log_softmax_read_at_the_targets(monkeypatch):
    torch.manual_seed(0)
    logits = (torch.randn(4, 9, 300) * 4).to(torch.bfloat16)
    targets = torch.randint(0, 300, (4, 9))
    full = F.log_softmax(logits.float(), -1).gather(2, targets[..., None])[..., 0]
    monkeypatch.setattr(scoring, "CHUNK_FLOATS", 1000)  # three positions a chunk: chunk edges inside rows
    assert torch.equal(scoring.target_logprobs(logits, targets), full)  # the same numbers, bit for bit
    assert scoring.token_logprob(torch.tensor([0.0, 0.0]), 1) == float(torch.log(torch.tensor(0.5)))


def test_sequence_logprobs_of_a_right_padded_batch():
    torch.manual_seed(1)
    seqs = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    batch = scoring.pad_right(seqs)
    assert batch.tolist() == [[1, 2, 3, 0], [4, 5, 0, 0], [6, 7, 8, 9]]
    logits = torch.randn(3, 4, 12)
    got = scoring.sequence_logprobs(logits, seqs)
    assert scoring.sequence_logprobs(logits[:2, :1], [[5], [6]]) == [0.0, 0.0]  # nothing after the first token
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
