"""Filling blanks with a masked LM (BERT), jointly rather than in one independent pass.

One pass of `fill-mask` predicts each [MASK] as if the others stayed hidden, so two blanks can each
pick a word that only fits alone. Here:

1. unmask most-confident-first: run the model, fix the single masked position it is surest about,
   run again with that token visible, and so on; a small beam branches on the top tokens each time;
2. a word blank `___` tries 1..n pieces (first piece opens a word, the rest continue it); with several,
   the shortest combinations of lengths first, then, around the best answer, each blank's other lengths;
3. finished candidates are rescored by pseudo-log-likelihood, each filled piece predicted with the
   rest of the text visible but the later pieces of its own word masked (the "word-l2r" PLL of
   Kauf & Ivanova 2023: plain PLL overrates words split into many predictable pieces).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import torch

from .. import scoring
from .blanks import Blank, spells_a_word, whole_characters
from .options import FillOptions

MAX_CONFIGS = 27  # length combinations tried first for several word blanks (the shortest), and at most again


def _shortest_first(options: list) -> Iterator[tuple[int, ...]]:
    """Every combination of one length per blank, by total length then in order, made one at a time."""
    choices = [sorted(o) for o in options]
    low, high = [0] * (len(choices) + 1), [0] * (len(choices) + 1)  # the least and most the blanks from i on take
    for i in reversed(range(len(choices))):
        low[i], high[i] = low[i + 1] + choices[i][0], high[i + 1] + choices[i][-1]

    def summing_to(i: int, total: int) -> Iterator[tuple[int, ...]]:
        if i == len(choices):
            yield ()
            return
        for n in choices[i]:
            if low[i + 1] <= total - n <= high[i + 1]:
                for tail in summing_to(i + 1, total - n):
                    yield (n, *tail)

    for total in range(low[0], high[0] + 1):
        yield from summing_to(0, total)


class BidirectionalFiller:
    def __init__(self, model, tokenizer, options: FillOptions):
        """`options` resolved for the model's method (FillOptions.for_method): no None left in them."""
        self.model, self.tok = model, tokenizer
        self.beam, self.max_word_pieces = options.beam, options.max_word_tokens
        self.vocab = model.config.vocab_size
        self.mask_id = tokenizer.mask_id
        self.classes = tokenizer.token_classes(self.vocab).to(model.device)
        self.start, self.end = tokenizer.frame_tokens(causal=False)

    @torch.inference_mode()
    def fill(self, segments: list[list[int]], blanks: list[Blank]):
        options = [range(1, self.max_word_pieces + 1) if b.kind == "word" else [b.n_tokens] for b in blanks]
        total = math.prod(len(lengths) for lengths in options)  # 3^k for k word blanks: never listed whole
        tried = list(itertools.islice(_shortest_first(options), MAX_CONFIGS))
        results = self._try(segments, blanks, tried)
        # Several word blanks have more length combinations than are tried above, and the ones left out are the
        # longest. Look around the best answer instead: each blank at each other length, the others as they are,
        # for as long as that finds a better answer (or, if nothing was found, the next shortest), trying at most
        # MAX_CONFIGS more.
        budget = MAX_CONFIGS
        while budget > 0 and len(tried) < total:
            seen = set(tried)
            if results:
                best_score, _, best = max(results, key=lambda r: r[0])
                around = {best[:i] + (n,) + best[i + 1:] for i, lengths in enumerate(options) for n in lengths}
                more_configs = sorted(around - seen, key=lambda c: (sum(c), c))[:budget]
            else:
                best_score = float("-inf")
                more_configs = list(itertools.islice((c for c in _shortest_first(options) if c not in seen), budget))
            if not more_configs:
                break
            tried += more_configs
            budget -= len(more_configs)
            more = self._try(segments, blanks, more_configs)
            results += more
            if not more or max(r[0] for r in more) <= best_score:
                break
        results.sort(key=lambda r: -r[0])
        return [(score, fills) for score, fills, _ in results]

    def _try(self, segments, blanks, configs) -> list[tuple[float, list[list[int]], tuple[int, ...]]]:
        """(score, fills, lengths) of every answer the unmasking finds with the blanks at these lengths."""
        finished = []
        for lengths in configs:
            ids, slots, allowed = self._layout(segments, blanks, lengths)
            for filled in self._unmask(ids, slots, allowed):
                finished.append((filled, slots, lengths))
        scores = self._pll([f for f, _, _ in finished], [s for _, s, _ in finished])
        out = []
        for (filled, slots, lengths), score in zip(finished, scores):
            fills, k = [], 0
            for n in lengths:
                fills.append([filled[p] for p, _ in slots[k:k + n]])
                k += n
            if all(whole_characters(self.tok, f) and (blank.kind != "word" or spells_a_word(self.tok, f))
                   for f, blank in zip(fills, blanks)):
                out.append((score, fills, lengths))
        return out

    def _layout(self, segments, blanks, lengths):
        """Token ids with masks in place; slots = [(position, index of the word's first slot)]."""
        ids, slots, allowed = list(self.start), [], []
        for i, blank in enumerate(blanks):
            ids += segments[i]
            if blank.kind == "word":
                first, cont = self.classes.word_start(blank.lead_space), self.classes.word_continue
            else:
                first, cont = self.classes.token_start(blank.lead_space), self.classes.ordinary
            word_start = len(slots)
            for j in range(lengths[i]):
                slots.append((len(ids), word_start if blank.kind == "word" else len(slots)))
                allowed.append(first if j == 0 else cont)
                ids.append(self.mask_id)
        ids += segments[-1] + self.end
        return ids, slots, torch.stack(allowed)

    def _unmask(self, ids, slots, allowed):
        positions = torch.tensor([p for p, _ in slots])
        hyps = [(torch.tensor(ids), 0.0, frozenset())]  # (ids, log-prob so far, slots already fixed)
        for _ in range(len(slots)):
            batch = torch.stack([h[0] for h in hyps])
            logp = scoring.log_probs(self.model(batch).logits[:, positions])  # [N, slots, V]
            logp = logp.masked_fill(~allowed[None], float("-inf"))
            expanded = []
            for (seq, score, done), lp in zip(hyps, logp):
                best = lp.max(-1).values
                if done:
                    best[list(done)] = float("-inf")
                slot = int(best.argmax())  # the open slot the model is surest about
                top = lp[slot].topk(min(self.beam, lp.size(-1)))
                for value, token in zip(top.values, top.indices):
                    if torch.isfinite(value):
                        new = seq.clone()
                        new[positions[slot]] = int(token)
                        expanded.append((new, score + float(value), done | {slot}))
            expanded.sort(key=lambda h: -h[1])
            hyps = _distinct(expanded)[:self.beam]
        return [h[0].tolist() for h in hyps]

    def _pll(self, filled: list[list[int]], slots_per: list[list[tuple[int, int]]]) -> list[float]:
        """Word-l2r pseudo-log-likelihood of the filled tokens, batched over every (candidate, slot)."""
        rows, targets = [], []
        for cand, (seq, slots) in enumerate(zip(filled, slots_per)):
            for k, (pos, word_start) in enumerate(slots):
                masked = list(seq)
                for later_pos, later_start in slots[k:]:
                    if later_start == word_start:
                        masked[later_pos] = self.mask_id
                rows.append(masked)
                targets.append((cand, pos, seq[pos]))
        totals = [0.0] * len(filled)
        by_length: dict[int, list[int]] = {}  # candidates with different word lengths differ in length
        for r, row in enumerate(rows):
            by_length.setdefault(len(row), []).append(r)
        for members in by_length.values():
            for start in range(0, len(members), 64):
                chunk = members[start:start + 64]
                logits = self.model(torch.tensor([rows[r] for r in chunk])).logits.float()
                for i, r in enumerate(chunk):
                    cand, pos, token = targets[r]
                    totals[cand] += scoring.token_logprob(logits[i, pos], token)
        return totals


def _distinct(hyps):
    seen, out = set(), []
    for h in hyps:
        key = tuple(h[0].tolist())
        if key not in seen:
            seen.add(key)
            out.append(h)
    return out
