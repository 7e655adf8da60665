"""`pairs`: minimal pairs. The share of pairs whose grammatical sentence the model scores higher.

A sentence's score is its log-probability for a causal model (log P(tokens | start token), the tokens of the
sentence alone), its word-l2r pseudo-log-likelihood for a masked LM, and minus its masked-diffusion bound for a
model trained as a masked diffusion (`masked_score` picks either for a masked model; the bound's mask rates are
shared by the two sentences of a pair, so that its noise cancels as far as it can). A tie counts as a miss.

Input: JSON Lines of {"good": ..., "bad": ...} (BLiMP's {"sentence_good", "sentence_bad"} also), grouped by
"phenomenon" (or BLiMP's "UID") when present, else by the file's name; without a file, clozelm's generated set
(`minimal_pairs.py`). `accuracy` is the mean over phenomena, as BLiMP reports it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ClozelmError
from .forward import same_word, token_logprobs
from .ppl import bound_rows, pll_row, plan_windows


def read_pairs(path: Path, rows: list[tuple[int, dict]]) -> list[dict]:
    out = []
    for number, row in rows:
        good = row.get("good", row.get("sentence_good"))
        bad = row.get("bad", row.get("sentence_bad"))
        if not isinstance(good, str) or not isinstance(bad, str) or not good.strip() or not bad.strip():
            raise ClozelmError(f"{path}:{number}: expected {{\"good\": ..., \"bad\": ...}} with two non-empty "
                               "sentences (BLiMP's format)")
        phenomenon = row.get("phenomenon") or row.get("UID") or path.stem  # null or "" names none
        out.append({"phenomenon": str(phenomenon), "good": good, "bad": bad})
    return out


def how_to_score(model, masked_score: str) -> str:
    if model.config.causal:
        return "log-prob"
    if masked_score == "auto":
        return "bound" if model.info.objective == "mdlm" else "pll"
    return masked_score


def pairs_by_bound(model, opts) -> bool:
    """Whether the pairs task scores this model's sentences by the masked-diffusion bound (and so reads
    pair_samples)."""
    return how_to_score(model, opts.masked_score) == "bound"


def sentence_scores(model, texts: list[str], opts, how: str, advance=None, rates_seed: list[int] | None = None
                    ) -> list[float]:
    """The score of each text (higher: more likely), by `how`: "log-prob", "pll" or "bound"."""
    tok = model.tokenizer
    width = model.config.n_positions
    causal = model.config.causal
    start, end = tok.frame_tokens(causal=causal)
    rows, targets, owner, weights = [], [], [], []
    for i, text in enumerate(texts):
        ids = tok.encode(text)
        seq = [*start, *ids, *end]
        lo, hi = len(start), len(start) + len(ids)
        if how == "log-prob":
            for begin, stop, first, last in plan_windows(len(seq), width, width // 2, max(lo, 1), hi):
                rows.append(seq[begin:stop])
                targets.append([(p - 1 - begin, seq[p]) for p in range(first, last)])
                owner.append(i)
                weights.append(1.0)
        elif how == "pll":
            same = same_word(tok, model.config.vocab_size, seq)
            for p in range(lo, hi):
                row, target = pll_row(seq, p, hi, same, tok.mask_id, width)
                rows.append(row)
                targets.append([target])
                owner.append(i)
                weights.append(1.0)
        else:
            # one generator per pair: the two sentences of a pair draw the same mask rates
            generator = torch.Generator().manual_seed(rates_seed[i] if rates_seed else opts.seed)
            for begin, stop, first, last in plan_windows(len(seq), width, width // 2, lo, hi):
                r, t, w = bound_rows(seq, begin, stop, first, last, tok.mask_id, opts.pair_samples, generator)
                rows += r
                targets += t
                owner += [i] * len(r)
                weights += [x / opts.pair_samples for x in w]
    exclude = [] if how == "log-prob" else [tok.mask_id]
    lps = token_logprobs(model, rows, targets, batch_tokens=opts.batch_tokens, exclude=exclude)
    scores = [0.0] * len(texts)
    for i, lp, w in zip(owner, lps, weights):
        scores[i] += w * float(lp.sum())
    if advance is not None:
        advance(len(texts))
    return scores


def pairs(model, items: list[dict], opts, progress, source: str) -> dict:
    if not items:
        raise ClozelmError("pairs: no pair to score")
    how = how_to_score(model, opts.masked_score)
    tok = model.tokenizer
    if how != "log-prob" and tok.mask_id is None:
        raise ClozelmError("pairs: this masked model's tokenizer has no mask token")
    steps = progress("pairs", 2 * len(items))
    texts = [s for item in items for s in (item["good"], item["bad"])]
    seeds = [(opts.seed * 1_000_003 + i // 2) % 2**63 for i in range(len(texts))]
    scores = []
    chunk = 256  # sentences per call: the progress bar moves, memory stays small
    for at in range(0, len(texts), chunk):
        scores += sentence_scores(model, texts[at:at + chunk], opts, how, advance=steps,
                                  rates_seed=seeds[at:at + chunk])
    by_phenomenon: dict[str, list[bool]] = {}
    for k, item in enumerate(items):
        by_phenomenon.setdefault(item["phenomenon"], []).append(scores[2 * k] > scores[2 * k + 1])
    phenomena = {name: {"accuracy": sum(hits) / len(hits), "n": len(hits)} for name, hits in by_phenomenon.items()}
    return {
        "accuracy": sum(p["accuracy"] for p in phenomena.values()) / len(phenomena),
        "n": len(items),
        "score": {"log-prob": "log-probability", "pll": "word-l2r pseudo-log-likelihood",
                  "bound": "minus the masked-diffusion bound"}[how],
        "source": source,
        "phenomena": phenomena,
    }
