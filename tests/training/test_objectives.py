"""The objectives: clm shifts, mlm's exact rate and 80/10/10, fim's sentinels and reconstructable order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clozelm.errors import ClozelmError
from clozelm.tokenizers import train_bpe
from clozelm.training.objectives import IGNORE, make_objective


def test_clm_batch_is_shifted(tok):
    obj = make_objective("clm", tok, tok.vocab_size)
    window = np.arange(10, 43)
    x, y = obj.batch([window], [np.random.default_rng(0)])
    assert x.shape == y.shape == (1, 32)
    assert torch.equal(x[0], torch.arange(10, 42)) and torch.equal(y[0], torch.arange(11, 43))


@pytest.mark.parametrize("rate", [0.15, 0.4])
def test_mlm_exact_rate_and_80_10_10(tok, rate):
    obj = make_objective("mlm", tok, tok.vocab_size, mask_rate=rate)
    special = set(tok.special_tokens.values())
    mask = tok.special_tokens["<|mask|>"]
    rng = np.random.default_rng(0)
    ordinary = np.array(sorted(set(range(tok.vocab_size)) - special))
    counts = {"mask": 0, "random": 0, "same": 0}
    for i in range(2000):
        window = rng.choice(ordinary, size=64)
        window[rng.choice(64, size=rng.integers(0, 6), replace=False)] = tok.special_tokens["<|endoftext|>"]
        x, y = obj.example(window, np.random.default_rng([5, i]))
        chosen = np.flatnonzero(y != IGNORE)
        n_ordinary = int(sum(t not in special for t in window))
        assert len(chosen) == max(1, int(rate * n_ordinary + 0.5))  # exactly the rate, rounded
        assert not any(window[chosen[k]] in special for k in range(len(chosen)))  # specials never chosen
        assert np.array_equal(y[chosen], window[chosen])
        assert np.array_equal(x[y == IGNORE], window[y == IGNORE])  # the rest untouched
        for p in chosen:
            if x[p] == mask:
                counts["mask"] += 1
            elif x[p] == window[p]:
                counts["same"] += 1
            else:
                counts["random"] += 1
                assert x[p] not in special
    total = sum(counts.values())
    assert abs(counts["mask"] / total - 0.8) < 0.015
    # "same" also catches random draws that hit the original token (1 in ~315 here)
    assert abs(counts["random"] / total - 0.1) < 0.01 and abs(counts["same"] / total - 0.1) < 0.01


@pytest.mark.parametrize("name", ["mlm", "hybrid"])
def test_random_replacements_are_tokens_the_tokenizer_has(tok, name):
    """A model's vocabulary may be larger than its tokenizer's (padded to a round size): the ids past it occur in
    no text, and BERT's random replacements never draw them."""
    obj = make_objective(name, tok, tok.vocab_size + 64)
    special = set(tok.special_tokens.values())
    ordinary = np.array(sorted(set(range(tok.vocab_size)) - special))
    drawn = set()
    for i in range(400):
        window = np.random.default_rng(i).choice(ordinary, size=65)
        x = np.asarray(obj.example(window, np.random.default_rng([7, i]))[0])
        assert x.max() < tok.vocab_size
        drawn |= {int(t) for t in x[x != window[:len(x)]]} - special  # the random replacements
    assert len(drawn) > 50


def test_mlm_at_least_one_and_none_without_ordinary_tokens(tok):
    obj = make_objective("mlm", tok, tok.vocab_size)
    eot = tok.special_tokens["<|endoftext|>"]
    window = np.array([eot] * 30 + [100, 101])
    x, y = obj.example(window, np.random.default_rng(0))
    assert int((y != IGNORE).sum()) == 1
    x, y = obj.example(np.full(32, eot), np.random.default_rng(0))
    assert int((y != IGNORE).sum()) == 0


def _unfim(seq, pre, suf, mid):
    """Invert one FIM document: PSM or SPM back to the original order."""
    seq = list(seq)
    assert seq[0] == pre
    if seq[1] == suf:  # SPM: pre suf S mid P M
        m = seq.index(mid)
        suffix, rest = seq[2:m], seq[m + 1:]
        return rest + suffix, "spm"  # (prefix + middle) + suffix
    s, m = seq.index(suf), seq.index(mid)
    return seq[1:s] + seq[m + 1:] + seq[s + 1:m], "psm"


def _restore(out, window, pre, suf, mid, eot):
    """Undo FIM stretch by stretch: (the original tokens covered, positions of the separators that close a
    middle, how many original tokens were in reordered stretches)."""
    out, restored, closes, reordered, i = list(out), [], [], 0, 0
    while i < len(out):
        if out[i] != pre:
            restored.append(out[i])
            i += 1
            continue
        assert eot in out[i:], "a middle was cut off"
        j = out.index(eot, i)
        body, _ = _unfim(out[i:j], pre, suf, mid)
        restored += body
        reordered += len(body)
        closes.append(j)
        if len(restored) < len(window) and window[len(restored)] == eot:
            restored.append(eot)  # the stretch ended its document: one separator does both jobs
        i = j + 1
    return restored, closes, reordered


def test_fim_sentinels_and_reconstructable_order(tok):
    obj = make_objective("fim", tok, tok.vocab_size)
    pre, suf, mid = (tok.special_tokens[t] for t in ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"))
    eot = tok.special_tokens["<|endoftext|>"]
    rng = np.random.default_rng(1)
    for i in range(1500):  # short documents, the last one cut by the window
        docs = [rng.integers(0, 200, size=rng.integers(1, 20)) for _ in range(3)]
        window = np.concatenate([np.append(d, eot) for d in docs] + [rng.integers(0, 200, size=5)])
        out = obj.transform(window, np.random.default_rng([9, i]))
        assert len(out) == len(window)
        restored, closes, _ = _restore(out, window, pre, suf, mid, eot)
        assert restored == list(window[:len(restored)])
        assert len(restored) >= len(window) - 4 * len(closes)  # only the sentinels' room is given up
        x, y = obj.example(window, np.random.default_rng([9, i]))
        assert len(x) == len(y) == len(window) - 1
        assert np.array_equal(x[1:], y[:-1])
    # One long document, as in a corpus of chapters: half its text is reordered, and middles end all over the
    # window, so the model must learn to close a middle from the text, not from the position.
    ends, reordered, total = [], 0, 0
    for i in range(400):
        window = rng.integers(0, 200, size=257)
        restored, closes, moved = _restore(obj.transform(window, np.random.default_rng([5, i])), window, pre, suf, mid, eot)
        assert restored == list(window[:len(restored)])
        ends += closes
        reordered, total = reordered + moved, total + len(restored)
    assert abs(reordered / total - 0.5) < 0.06
    ends = np.array(ends)
    assert np.mean(ends < 128) > 0.2 and np.mean(ends >= 253) < 0.5  # (the last stretch is cut to fit)
    # PSM with an empty prefix reads like SPM, so measure the SPM share on long documents.
    body = np.arange(1000)
    spm = sum(obj.permute(body, np.random.default_rng([3, i]))[1] == suf for i in range(2000))
    assert abs(spm / 2000 - 0.5) < 0.04


def test_missing_special_tokens_are_named(tmp_path, corpus):
    plain = train_bpe([corpus / "a.txt"], 280, special_tokens=["<|endoftext|>"])
    with pytest.raises(ClozelmError, match=r"<\|fim_prefix\|>, <\|fim_suffix\|>, <\|fim_middle\|>"):
        make_objective("fim", plain, plain.vocab_size)
    with pytest.raises(ClozelmError, match="mask token"):
        make_objective("mlm", plain, plain.vocab_size)


# ---------------------------------------------------------------- hybrid (GPT-BERT) and mdlm (masked diffusion)


def _ordinary_windows(tok, n, length, seed=0):
    special = set(tok.special_tokens.values())
    ordinary = np.array(sorted(set(range(tok.vocab_size)) - special))
    rng = np.random.default_rng(seed)
    eot = tok.special_tokens["<|endoftext|>"]
    for _ in range(n):
        window = rng.choice(ordinary, size=length)
        window[rng.choice(length, size=rng.integers(0, 4), replace=False)] = eot
        yield window


def test_hybrid_rows_are_causal_or_masked_with_the_labels_shifted_by_one(tok):
    obj = make_objective("hybrid", tok, tok.vocab_size, mask_rate=0.15, hybrid_causal_share=0.25)
    special = set(tok.special_tokens.values())
    mask = tok.special_tokens["<|mask|>"]
    windows = list(_ordinary_windows(tok, 800, 33))
    batch = obj.batch(windows, [np.random.default_rng([4, i]) for i in range(len(windows))])
    as_mask = hidden_total = 0
    assert batch.inputs.shape == batch.labels.shape == (800, 32) and batch.causal.shape == (800,)
    assert batch.weights is None and batch.count == int((batch.labels != IGNORE).sum())
    assert abs(float(batch.causal.float().mean()) - 0.25) < 0.05  # the configured share of causal rows
    for window, x, y, causal in zip(windows, batch.inputs.numpy(), batch.labels.numpy(), batch.causal.tolist()):
        if causal:  # exactly clm
            assert np.array_equal(x, window[:-1]) and np.array_equal(y, window[1:])
            continue
        labelled = np.flatnonzero(y != IGNORE)
        n_ordinary = sum(t not in special for t in window[1:-1])
        assert len(labelled) == max(1, int(0.15 * n_ordinary + 0.5)) if n_ordinary else len(labelled) == 0
        assert y[-1] == IGNORE and x[0] == window[0]  # nothing predicts position 0; nothing past the input
        # the label at i-1 is the token hidden at i: the same head predicts the next token in both kinds of row
        assert np.array_equal(y[labelled], window[labelled + 1])
        assert all(window[p + 1] not in special for p in labelled)
        hidden = labelled + 1
        as_mask, hidden_total = as_mask + int((x[hidden] == mask).sum()), hidden_total + len(hidden)
        untouched = np.setdiff1d(np.arange(32), hidden)
        assert np.array_equal(x[untouched], window[untouched])
    assert abs(as_mask / hidden_total - 0.8) < 0.05  # mlm's 80/10/10 rule
    # GPT-BERT's default ratio: 1 causal row in 16
    default = make_objective("hybrid", tok, tok.vocab_size)
    flags = default.batch(windows, [np.random.default_rng([5, i]) for i in range(len(windows))]).causal
    assert abs(float(flags.float().mean()) - 1 / 16) < 0.03


def test_mdlm_mask_rates_weights_and_denominator(tok):
    obj = make_objective("mdlm", tok, tok.vocab_size)
    special = set(tok.special_tokens.values())
    mask = tok.special_tokens["<|mask|>"]
    windows = list(_ordinary_windows(tok, 1500, 64, seed=1))
    rngs = [np.random.default_rng([6, i]) for i in range(len(windows))]
    batch = obj.batch(windows, rngs)
    assert batch.causal is None and batch.inputs.shape == (1500, 64)
    ordinary = sum(int(sum(t not in special for t in w)) for w in windows)
    assert batch.count == ordinary  # the bound is per token, not per hidden token
    rates, hidden_share = [], []
    for window, x, y, w in zip(windows, batch.inputs.numpy(), batch.labels.numpy(), batch.weights.numpy()):
        labelled = y != IGNORE
        assert np.array_equal(x[labelled], np.full(labelled.sum(), mask))  # every hidden token is the mask
        assert np.array_equal(x[~labelled], window[~labelled]) and np.array_equal(y[labelled], window[labelled])
        assert not any(window[p] in special for p in np.flatnonzero(labelled))
        assert np.all(w[~labelled] == 0)
        if labelled.any():
            t = 1.0 / w[labelled]
            assert np.allclose(t, t[0]) and 1e-3 <= t[0] < 1.0  # one rate per row, kept away from 0
            rates.append(float(t[0]))
            hidden_share.append(labelled.sum() / sum(tok not in special for tok in window))
    rates, hidden_share = np.array(rates), np.array(hidden_share)
    assert abs(np.mean(hidden_share - rates)) < 0.01  # each token hidden with probability t
    assert abs(np.mean(rates) - 0.5) < 0.03 and np.mean(rates < 0.25) > 0.2  # t ~ U(0, 1)
    # 1/t-weighted hidden count is an unbiased estimate of the row's length: the ELBO's weights
    estimate = (batch.weights.double() * (batch.labels != IGNORE)).sum() / batch.count
    assert abs(float(estimate) - 1.0) < 0.1


@pytest.mark.parametrize("name", ["hybrid", "mdlm"])
def test_new_objectives_are_a_function_of_the_seed_and_position(tok, name):
    obj = make_objective(name, tok, tok.vocab_size)
    windows = list(_ordinary_windows(tok, 64, 33, seed=2))
    a = obj.batch(windows, [np.random.default_rng([9, i]) for i in range(64)])
    b = obj.batch(windows, [np.random.default_rng([9, i]) for i in range(64)])
    c = obj.batch(windows, [np.random.default_rng([10, i]) for i in range(64)])
    for field in ("inputs", "labels", "weights", "causal"):
        x, y = getattr(a, field), getattr(b, field)
        assert (x is None and y is None) or torch.equal(x, y)
    assert not torch.equal(a.inputs, c.inputs)
    # a batch split in two (accumulation, DDP ranks) is the same examples
    half = obj.batch(windows[32:], [np.random.default_rng([9, i]) for i in range(32, 64)])
    assert torch.equal(half.inputs, a.inputs[32:]) and torch.equal(half.labels, a.labels[32:])


def test_new_objectives_need_a_mask_token(corpus):
    plain = train_bpe([corpus / "a.txt"], 280, special_tokens=["<|endoftext|>"])
    for name in ("hybrid", "mdlm"):
        with pytest.raises(ClozelmError, match=f"mask token needed by --objective {name}"):
            make_objective(name, plain, plain.vocab_size)
