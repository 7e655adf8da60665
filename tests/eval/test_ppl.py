"""ppl: bits per byte by hand on a bigram model; the sliding window scores every token once; the
masked-diffusion bound is at least the exact negative log-likelihood of a masked model small enough to
enumerate; the word-l2r PLL by hand."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from clozelm.errors import ClozelmError
from clozelm.eval import EvalOptions
from clozelm.eval.ppl import bound_rows, perplexity, plan_windows
from clozelm.eval.progress import progress_factory
from clozelm.model import ModelConfig
from handbuilt import SMOOTH, BigramLM, NeighbourMLM

from .conftest import SENTENCES
from .handmade import ConstantLM, HandModel

LN2 = math.log(2)


def run(model, text, **options):
    return perplexity(model, [("doc", text)], EvalOptions(**options), progress_factory(None))


@pytest.mark.parametrize("n,width,stride,lo", [(10, 4, 2, 1), (37, 8, 3, 1), (8, 8, 4, 1), (9, 8, 7, 1),
                                               (50, 16, 1, 1), (40, 10, 5, 1), (23, 6, 4, 1)])
def test_windows_score_every_target_once_with_enough_left_context(n, width, stride, lo):
    windows = plan_windows(n, width, stride, lo, n)
    scored = [p for _, _, first, last in windows for p in range(first, last)]
    assert scored == list(range(lo, n))
    for begin, end, first, last in windows:
        assert 0 <= begin < first <= last <= end <= n and end - begin <= width
        for p in range(first, last):  # every earlier token, or at least width - stride of them
            assert p - begin >= min(p, width - stride)
    assert windows[-1][1] == n


def test_masked_windows_reach_the_end_of_text_tokens():
    # positions 0 (start), 1..20 (text), 21 (end): the last window sees the end token
    windows = plan_windows(22, 8, 3, 1, 21)
    assert [p for _, _, f, l in windows for p in range(f, l)] == list(range(1, 21))
    assert windows[-1][1] == 22


def bigram_logp(tok, a: str, b: str, count_ab: int, count_a: int) -> float:
    # P(b | a) as BigramLM counts it: (c(a, b) + s) / (c(a) + V s)
    return math.log((count_ab + SMOOTH) / (count_a + tok.vocab_size * SMOOTH))


def test_bits_per_byte_of_a_bigram_model_by_hand(tok):
    model = HandModel(BigramLM(tok, SENTENCES), tok, "clm")
    result = run(model, "the cat sat down")
    # <eos> opens 15 sentences, 13 times with "the"; "the" goes on 3 times of 13 with "cat"; then sat, down.
    logp = (bigram_logp(tok, "<eos>", "the", 13, 15) + bigram_logp(tok, "the", "cat", 3, 13)
            + bigram_logp(tok, "cat", "sat", 3, 3) + bigram_logp(tok, "sat", "down", 3, 3))
    assert result["tokens"] == 4 and result["bytes"] == 16
    assert result["bits_per_byte"] == pytest.approx(-logp / LN2 / 16, rel=1e-6)  # the table is float32
    # unsmoothed: 13/15 * 3/13 * 1 * 1 = 1/5 (the smoothing moves it by about 1%)
    assert result["bits_per_byte"] == pytest.approx(math.log2(5) / 16, rel=0.02)
    assert result["token_perplexity"] == pytest.approx(math.exp(-logp / 4), rel=1e-6)
    assert "bits_per_byte_se" not in result and "word_l2r_pll" not in result


@pytest.mark.parametrize("stride", [1, 2, 5])
def test_a_sliding_window_scores_every_token_once(tok, stride):
    network = BigramLM(tok, SENTENCES)
    text = " ".join(SENTENCES[8:14]) + "\n" + "the dog ran home"
    ids = [tok.eos_id, *tok.encode(text)]
    by_hand = sum(float(network.table[a, b]) for a, b in zip(ids, ids[1:]))
    network.config = ModelConfig(vocab_size=tok.vocab_size, n_positions=6, n_embd=8, n_layer=1, n_head=1)
    result = run(HandModel(network, tok, "clm"), text, stride=stride)
    assert result["tokens"] == len(ids) - 1 and result["stride"] == stride and result["context"] == 6
    assert result["bits_per_byte"] == pytest.approx(-by_hand / LN2 / len(text.encode()), rel=1e-6)


def test_stride_longer_than_the_context_is_refused(tok):
    network = BigramLM(tok, SENTENCES)
    network.config = ModelConfig(vocab_size=tok.vocab_size, n_positions=6, n_embd=8, n_layer=1, n_head=1)
    with pytest.raises(ClozelmError, match="stride must be at most 5"):
        run(HandModel(network, tok, "clm"), "the cat sat down", stride=6)


def test_empty_files_are_an_error(tok):
    with pytest.raises(ClozelmError, match="no text"):
        run(HandModel(BigramLM(tok, SENTENCES), tok, "clm"), "")


def masked_logp(network, tok, seq: list[int], hidden: set[int], position: int) -> float:
    """log p(seq[position] | seq with `hidden` masked), the mask token given no probability."""
    row = [tok.mask_id if i in hidden else t for i, t in enumerate(seq)]
    logits = network(torch.tensor([row])).logits[0, position].double()
    logits[tok.mask_id] = float("-inf")
    return float(logits.log_softmax(-1)[seq[position]])


def test_masked_diffusion_bound_is_at_least_the_exact_nll(tok):
    network = NeighbourMLM(tok, SENTENCES)
    model = HandModel(network, tok, "mlm")
    text = "the cat sat down"
    seq = tok.frame(tok.encode(text), causal=False)
    inner = list(range(1, len(seq) - 1))
    L = len(inner)
    # The exact NLL of the model that unmasks in a uniformly random order: p(x) = mean over orders of the
    # product of its conditionals (every order enumerated).
    orders = []
    for order in itertools.permutations(inner):
        hidden, logp = set(inner), 0.0
        for p in order:
            logp += masked_logp(network, tok, seq, hidden, p)
            hidden.discard(p)
        orders.append(logp)
    exact_nll = -math.log(sum(math.exp(x) for x in orders) / len(orders))
    # The bound itself, exactly: E_t[(1/t) sum over hidden] = sum over hidden sets M of
    # (|M|-1)!(L-|M|)!/L! * sum over i in M of -log p(x_i | x without M); it is the mean over orders.
    bound = 0.0
    for m in range(1, L + 1):
        weight = math.factorial(m - 1) * math.factorial(L - m) / math.factorial(L)
        for hidden in itertools.combinations(inner, m):
            bound -= weight * sum(masked_logp(network, tok, seq, set(hidden), i) for i in hidden)
    assert bound == pytest.approx(-sum(orders) / len(orders), rel=1e-9)
    assert bound > exact_nll + 0.1  # a real gap: this model's conditionals do not agree with each other

    result = run(model, text, samples=3000, pll_tokens=0)
    nbytes = len(text.encode())
    estimate, se = result["bits_per_byte"], result["bits_per_byte_se"]
    assert 0 < se < 0.02
    assert abs(estimate - bound / LN2 / nbytes) < 4 * se
    assert estimate - 3 * se > exact_nll / LN2 / nbytes
    assert result["tokens"] == L and "upper bound" in result["method"]


def test_bound_draws_hide_k_of_n_uniform_with_weight_n_over_k():
    # k uniform on 1..n, stratified: as many draws as targets hide each count once; the k hidden positions are
    # among the targets only, and each draw's loss is weighted n / k (so no weight is unbounded, unlike 1/t).
    seq = list(range(100, 112))
    for seed in range(5):
        rows, targets, weights = bound_rows(seq, 2, 12, 4, 9, 0, 5, torch.Generator().manual_seed(seed))
        assert sorted(len(t) for t in targets) == [1, 2, 3, 4, 5]
        assert weights == [5 / len(t) for t in targets]
        for row, t in zip(rows, targets):
            assert all(4 <= q + 2 < 9 and row[q] == 0 and seq[q + 2] == tid for q, tid in t)
            assert sum(x == 0 for x in row) == len(t) and len(row) == 10


def test_the_bound_is_the_same_for_the_same_seed_and_moves_with_another(tok):
    model = HandModel(NeighbourMLM(tok, SENTENCES), tok, "mlm")
    a = run(model, "the dog ran home", samples=8, pll_tokens=0, seed=1)
    b = run(model, "the dog ran home", samples=8, pll_tokens=0, seed=1)
    c = run(model, "the dog ran home", samples=8, pll_tokens=0, seed=2)
    assert a == b and a["bits_per_byte"] != c["bits_per_byte"]


def test_word_l2r_pll_by_hand(tok):
    network = NeighbourMLM(tok, SENTENCES)
    text = "the dog sat down"  # "dog sat" was never seen: a PLL far from zero
    result = run(HandModel(network, tok, "mlm"), text, samples=2, pll_tokens=0)
    seq = tok.frame(tok.encode(text), causal=False)
    # One token per word here: each token is hidden alone and read from both its neighbours.
    by_hand = 0.0
    for p in range(1, len(seq) - 1):
        scores = network.forward_logp[seq[p - 1]] + network.backward_logp[:, seq[p + 1]]
        scores = scores.double()
        scores[tok.mask_id] = float("-inf")
        by_hand += float(scores.log_softmax(-1)[seq[p]])
    pll = result["word_l2r_pll"]
    assert pll["positions"] == 4 and pll["bits_per_byte_se"] == 0.0
    assert pll["bits_per_byte"] == pytest.approx(-by_hand / LN2 / len(text.encode()), rel=1e-5)  # float32 model
    assert pll["bits_per_byte"] > 0.5
    assert "NOT a likelihood" in pll["note"]


def test_word_l2r_hides_the_rest_of_the_word(tok):
    from clozelm.eval.forward import same_word
    from clozelm.eval.ppl import pll_row
    ids = tok.encode("the catsat down")  # "catsat" is no word of the vocabulary: " cat", "s", "at"
    assert tok.pieces(ids) == ["the", "Ġcat", "s", "at", "Ġdown"]
    seq = tok.frame(ids, causal=False)
    same = same_word(tok, tok.vocab_size, seq)
    assert same == [False, False, False, True, True, False, False]
    row, (position, token) = pll_row(seq, 2, len(seq) - 1, same, tok.mask_id, 64)  # " cat": hides " cat s at"
    assert position == 2 and token == seq[2]
    assert row == seq[:2] + [tok.mask_id] * 3 + seq[-2:]
    row, _ = pll_row(seq, 3, len(seq) - 1, same, tok.mask_id, 64)  # "s": hides "s at", " cat" stays
    assert row == seq[:3] + [tok.mask_id] * 2 + seq[-2:]


def test_windows_scored_a_few_at_a_time_give_the_same_figures(tok, monkeypatch):
    import clozelm.eval.ppl as ppl
    network = NeighbourMLM(tok, SENTENCES)
    network.config = ModelConfig(vocab_size=tok.vocab_size, n_positions=6, n_embd=8, n_layer=1, n_head=1,
                                 causal=False, pre_ln=False, head="mlm")
    model = HandModel(network, tok, "mlm")
    text = " ".join(SENTENCES[8:14])
    whole = run(model, text, samples=4, pll_tokens=7, stride=2)
    monkeypatch.setattr(ppl, "WINDOWS_AT_ONCE", 1)
    monkeypatch.setattr(ppl, "POSITIONS_AT_ONCE", 2)
    assert run(model, text, samples=4, pll_tokens=7, stride=2) == whole
    assert whole["word_l2r_pll"]["positions"] == 7 and whole["word_l2r_pll"]["bits_per_byte_se"] > 0


def test_nothing_to_score_is_a_one_line_error(tmp_path):
    """Without a start token nothing predicts a document's first token: one-token documents leave nothing."""
    from clozelm.tokenizers import train_bpe
    corpus = tmp_path / "c.txt"
    corpus.write_text("a b a b\n" * 20)
    bare = train_bpe([corpus], 260, special_tokens=[], min_frequency=1)
    assert bare.frame_tokens(causal=True) == ([], [])
    model = HandModel(ConstantLM(bare, 0), bare, "clm")
    with pytest.raises(ClozelmError, match="no token to score"):
        perplexity(model, [("doc", "a"), ("doc2", "b")], EvalOptions(), progress_factory(None))
    assert run(model, "a b")["tokens"] == 1  # a second token: scored


def test_a_tokenizer_that_drops_text_is_said_to(tok):
    """Bits per byte count the bytes of the text given; a WordPiece tokenizer reads it lower-cased and without
    accents, so its figures compare only with models that drop the same."""
    from clozelm.tokenizers import WordPiece
    from corpora import bert_uncased_model_dir
    wordpiece = WordPiece.from_file(bert_uncased_model_dir() / "vocab.txt")
    lossy = run(HandModel(ConstantLM(wordpiece, 0, margin=1.0), wordpiece, "clm"), "The Café was open.")
    assert "does not keep all of the text" in lossy["tokenizer_note"]
    from clozelm.eval.report import table
    assert lossy["tokenizer_note"] in table({"model": "m", "seed": 0, "tasks": {"ppl": lossy}})
    assert "tokenizer_note" not in run(HandModel(ConstantLM(tok, 0, margin=1.0), tok, "clm"), "the dog ran home")
