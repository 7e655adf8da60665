"""`ppl`: how well a model predicts a text, in bits per byte (comparable across tokenizers) and token perplexity.

Every document (one per file) is read as the model reads a text: `tokenizer.frame(ids, causal=...)`. Its
tokens are scored once each, inside windows of the model's context:

- causal: a sliding window moving `stride` tokens at a time (default half the context), so that each token is
  predicted from every token before it, or from at least context - stride of them: -log2 P(text) / bytes.
- masked: the masked-diffusion bound (MDLM, Sahoo et al. 2024). With each token of x hidden independently
  at rate t ~ U(0, 1), -log p(x) <= E_t [ (1/t) sum over hidden i of -log p(x_i | the visible tokens) ]
  for the generative model that unmasks x in a uniformly random order, so a masked model gets a true upper
  bound on bits per byte, on the causal models' scale. Each window's expectation is a Monte Carlo mean over
  `samples` draws of the number of hidden targets k (uniform on 1..n, stratified, fixed seed; the loss of the
  k hidden ones weighted n/k: the same expectation with a bounded variance, see `bound_rows`); the standard
  error says how far the estimate may be from the bound. Windows slide as the causal ones do; the tokens before the scored ones
  stay visible (the bound is then on -log p(scored | before), and their sum bounds the whole text by the
  chain rule), and the tokens after them are left out.
  Also the word-l2r pseudo-log-likelihood (Kauf & Ivanova 2023): each token predicted with itself and the
  rest of its word hidden and everything else visible. It is not a likelihood (it sees the future and does
  not sum to one over texts) and is not comparable with bits per byte; it is sampled at `pll_tokens`
  positions and scaled to the whole text, with a standard error.
"""

from __future__ import annotations

import math

import torch

from ..errors import ClozelmError
from .forward import same_word, token_logprobs
from .progress import Progress

LN2 = math.log(2)
WINDOWS_AT_ONCE = 64  # masked bound: windows drawn and scored together
POSITIONS_AT_ONCE = 1024  # word-l2r PLL: positions scored together



def perplexity_of(nats: float) -> float:
    """e^nats: a mean negative log-likelihood per token as a perplexity (infinite past what a float holds)."""
    try:
        return math.exp(nats)
    except OverflowError:
        return math.inf


def plan_windows(n: int, width: int, stride: int, lo: int, hi: int) -> list[tuple[int, int, int, int]]:
    """Windows (begin, end, first, last) of at most `width` positions of a sequence of `n`: the targets
    [first, last) of the windows partition [lo, hi), and each target has every earlier position of the sequence
    in its window, or at least width - stride of them. The last window reaches the end of the sequence (a
    masked model sees the end-of-text tokens after the last target)."""
    if hi <= lo:
        return []
    end = min(n, width)
    windows = [(0, end, lo, min(end, hi))]
    done = min(end, hi)
    while done < hi:
        last = min(done + stride, hi)
        end = n if last == hi else last
        windows.append((max(0, end - width), end, done, last))
        done = last
    return windows


def _documents(model, docs):
    tok = model.tokenizer
    out = []
    for name, text in docs:
        ids = tok.encode(text)
        if ids:
            out.append((name, text, ids))
    if not out:
        raise ClozelmError("ppl: the files hold no text to score")
    return out


def _stride(model, opts, framing: int) -> tuple[int, int]:
    width = model.config.n_positions
    stride = opts.stride if opts.stride is not None else width // 2
    most = width - 1 - framing
    if most < 1:
        raise ClozelmError(f"ppl: the model's context ({width} tokens) is too short to score anything")
    if stride > most:
        raise ClozelmError(f"stride must be at most {most} for this model's {width}-token context, not {stride}")
    return width, stride


def causal_ppl(model, docs, opts, progress: Progress) -> dict:
    tok = model.tokenizer
    start, _ = tok.frame_tokens(causal=True)
    documents = _documents(model, docs)
    width, stride = _stride(model, opts, 0)
    rows, targets, n_bytes, n_tokens = [], [], 0, 0
    for _, text, ids in documents:
        seq = [*start, *ids]
        n_bytes += len(text.encode("utf-8"))
        if not start:  # nothing predicts the first token: leave its bytes out of the count
            n_bytes -= len(tok.token_bytes(ids[0]))
        for begin, end, first, last in plan_windows(len(seq), width, stride, 1, len(seq)):
            rows.append(seq[begin:end])
            targets.append([(p - 1 - begin, seq[p]) for p in range(first, last)])
            n_tokens += last - first
    if n_tokens == 0:
        raise ClozelmError("ppl: no token to score: every document is one token long and this model's tokenizer has "
                           "no start token to predict it from")
    advance = progress("ppl", len(rows))
    lps = token_logprobs(model, rows, targets, batch_tokens=opts.batch_tokens, advance=advance)
    nll = -float(sum(lp.sum() for lp in lps))
    return {
        "bits_per_byte": nll / LN2 / max(n_bytes, 1),
        "token_perplexity": perplexity_of(nll / n_tokens),
        "nats_per_token": nll / n_tokens,
        "tokens": n_tokens,
        "bytes": n_bytes,
        "documents": len(documents),
        "context": width,
        "stride": stride,
        "method": "causal: sliding window",
    }


def _hidden_counts(samples: int, n: int, generator: torch.Generator) -> list[int]:
    """How many of `n` targets each of `samples` draws hides: uniform on 1..n, stratified (one uniform draw u,
    the j-th count at (j + u) / samples of the way through 1..n: lower variance than independent draws)."""
    u = float(torch.rand((), generator=generator, dtype=torch.float64))
    return [1 + min(n - 1, int((j + u) * n / samples)) for j in range(samples)]


def bound_rows(seq: list[int], begin: int, end: int, first: int, last: int, mask_id: int, samples: int,
               generator: torch.Generator):
    """The rows of one window for the masked-diffusion bound: for each draw, k of the n targets in
    [first, last) hidden, k uniform on 1..n and the k positions uniform; returns (rows, targets, weights n/k).

    The same expectation as the bound's definition (a rate t ~ U(0, 1), each target hidden with probability t,
    weight 1/t): given t, k is binomial, so over t it is uniform on 0..n (k = 0 adds nothing), and
    E[1/t | k] = (n + 1) / k. Drawn this way every draw's value is bounded, where weights 1/t near t = 0 give
    the estimate an unbounded variance."""
    n = last - first
    rows, targets, weights = [], [], []
    for k in _hidden_counts(samples, n, generator):
        hidden = sorted(first + i for i in torch.randperm(n, generator=generator)[:k].tolist())
        row = seq[begin:end]
        for p in hidden:
            row[p - begin] = mask_id
        rows.append(row)
        targets.append([(p - begin, seq[p]) for p in hidden])
        weights.append(n / k)
    return rows, targets, weights


def _bound_from(lps, weights, samples: int) -> tuple[float, float]:
    """(the window's bound estimate in nats, its variance) from `samples` weighted sums."""
    values = torch.tensor([w * float(-lp.sum()) for lp, w in zip(lps, weights)], dtype=torch.float64)
    return float(values.mean()), float(values.var(unbiased=True)) / samples


def masked_ppl(model, docs, opts, progress: Progress) -> dict:
    tok = model.tokenizer
    if tok.mask_id is None:
        raise ClozelmError("ppl: this masked model's tokenizer has no mask token")
    start, end_tokens = tok.frame_tokens(causal=False)
    documents = _documents(model, docs)
    width, stride = _stride(model, opts, len(end_tokens))
    generator = torch.Generator().manual_seed(opts.seed)
    seqs, plans = [], []
    for _, _, ids in documents:
        seq = [*start, *ids, *end_tokens]
        seqs.append((seq, len(start), len(start) + len(ids)))
        plans.append(plan_windows(len(seq), width, stride, len(start), len(start) + len(ids)))
    n_bytes = sum(len(text.encode("utf-8")) for _, text, _ in documents)
    n_tokens = sum(len(ids) for _, _, ids in documents)
    n_pll = min(opts.pll_tokens, n_tokens) if opts.pll_tokens else n_tokens
    advance = progress("ppl", sum(map(len, plans)) * opts.samples + n_pll)

    # Windows are drawn and scored a few at a time, in order: memory stays flat, the random draws do not change.
    nll, variance, pending = 0.0, 0.0, []

    def score_pending() -> None:
        nonlocal nll, variance
        rows = [row for r, _, _ in pending for row in r]
        targets = [target for _, t, _ in pending for target in t]
        lps = token_logprobs(model, rows, targets, batch_tokens=opts.batch_tokens, exclude=[tok.mask_id],
                             advance=advance)
        for k, (_, _, weights) in enumerate(pending):
            mean, var = _bound_from(lps[k * opts.samples:(k + 1) * opts.samples], weights, opts.samples)
            nll += mean
            variance += var
        pending.clear()

    for (seq, _, _), windows in zip(seqs, plans):
        for begin, end, first, last in windows:
            pending.append(bound_rows(seq, begin, end, first, last, tok.mask_id, opts.samples, generator))
            if len(pending) == WINDOWS_AT_ONCE:
                score_pending()
    score_pending()
    result = {
        "bits_per_byte": nll / LN2 / n_bytes,
        "bits_per_byte_se": math.sqrt(variance) / LN2 / n_bytes,
        "token_perplexity": perplexity_of(nll / n_tokens),
        "nats_per_token": nll / n_tokens,
        "tokens": n_tokens,
        "bytes": n_bytes,
        "documents": len(documents),
        "context": width,
        "stride": stride,
        "samples": opts.samples,
        "method": "masked: masked-diffusion bound (an upper bound on bits per byte; Monte Carlo over the number of "
                  "hidden tokens k ~ U{1..n}, loss weighted n/k: E_t[1/t * loss] for t ~ U(0,1))",
    }
    per_token = _pll(model, seqs, opts, generator, width, n_pll, advance)
    mean = float(per_token.mean())
    # Positions drawn without replacement from n_tokens: the finite-population correction makes the error
    # zero when every position is scored.
    fpc = 1.0 - len(per_token) / n_tokens
    var = float(per_token.var(unbiased=True)) if len(per_token) > 1 else 0.0
    se = math.sqrt(var / len(per_token) * fpc) if fpc > 0 else 0.0
    result["word_l2r_pll"] = {
        "bits_per_byte": mean * n_tokens / LN2 / n_bytes,
        "bits_per_byte_se": se * n_tokens / LN2 / n_bytes,
        "token_perplexity": perplexity_of(mean),
        "positions": len(per_token),
        "note": "pseudo-log-likelihood (word-l2r): NOT a likelihood; not comparable with bits_per_byte",
    }
    return result


def _pll(model, seqs, opts, generator, width: int, n_pll: int, advance) -> torch.Tensor:
    """-log p of each of `n_pll` positions drawn uniformly from every document (all when n_pll is every one),
    hidden with the rest of its word (word-l2r)."""
    tok = model.tokenizer
    index = [(d, p) for d, (_, lo, hi) in enumerate(seqs) for p in range(lo, hi)]
    if n_pll < len(index):
        chosen = torch.randperm(len(index), generator=generator)[:n_pll].sort().values.tolist()
        index = [index[i] for i in chosen]
    same = [same_word(tok, model.config.vocab_size, seq) for seq, _, _ in seqs]
    out = []
    for at in range(0, len(index), POSITIONS_AT_ONCE):
        rows, targets = [], []
        for d, p in index[at:at + POSITIONS_AT_ONCE]:
            seq, _, hi = seqs[d]
            row, target = pll_row(seq, p, hi, same[d], tok.mask_id, width)
            rows.append(row)
            targets.append([target])
        out += [-float(lp.sum()) for lp in token_logprobs(model, rows, targets, batch_tokens=opts.batch_tokens,
                                                          exclude=[tok.mask_id], advance=advance)]
    return torch.tensor(out, dtype=torch.float64)


def pll_row(seq: list[int], p: int, hi: int, same: list[bool], mask_id: int, width: int):
    """Token p hidden with the rest of its word (l2r: the tokens after it within the word), in a window of at
    most `width` centred on it; returns (row, (position in row, true token))."""
    begin = min(max(0, p - width // 2), max(0, len(seq) - width))
    end = min(len(seq), begin + width)
    row = seq[begin:end]
    q = p
    while True:
        row[q - begin] = mask_id
        q += 1
        if q >= hi or q >= end or not same[q]:
            break
    return row, (p - begin, seq[p])


def perplexity(model, docs, opts, progress: Progress) -> dict:
    result = (causal_ppl if model.config.causal else masked_ppl)(model, docs, opts, progress)
    if not model.tokenizer.lossless:
        result["tokenizer_note"] = ("this tokenizer does not keep all of the text (case, accents or characters): "
                                    "bits per byte count the bytes of the text given, and compare only with models "
                                    "whose tokenizer drops the same")
    return result
