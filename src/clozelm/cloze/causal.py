"""Filling blanks with a left-to-right model, judged by the whole text.

A causal model only proposes from the left: P(next | prefix). Choosing the blank by that alone ignores
everything after it ("a ___ of tea" -> "lot", not "cup"). So, blank by blank, left to right:

1. propose: a beam over the blank's tokens from the left context gives many candidates
   (every prefix of every hypothesis, for a word of unknown length). Its first tokens are the `width`
   best by P(token | left) plus the `lookahead_keep` best by P(token | left) * P(next known token | left +
   token) among the `lookahead` best by the left alone: one batched step that lets the text after the
   blank bring in words the left context ranks too low ("Let there be ___: and there was light");
2. judge: each candidate is scored by log P(candidate + known text up to the next blank | left),
   (its first `follow_window` tokens; the best `screen_keep` by the first `screen_window` of them), read
   on from the cache row where the beam left the candidate, so that the network reads each candidate's
   tokens once, in the beam, and then only the known text after it; a word at the very end also pays
   log P(a word boundary follows), so " wif" cannot pass for " wife";
3. keep the best few partial texts and move to the next blank.

The final score is log P(whole completed text), plus log P(a word boundary follows) when a word blank
ends the text, comparable across answers of one model.

Models trained with fill-in-the-middle can also read the text after the blank natively, in the context
<|fim_prefix|> <|fim_suffix|> right <|fim_middle|> left (Bavarian et al. 2022, SPM order:
clozelm's `fim` objective trains PSM and SPM alike, but SPM, where the left text runs straight into the
middle, is what a small model learns first). With `fim_judge="both"` candidates come from the FIM beam and
the left-to-right one, and each is judged by both readings: log P(candidate + <|endoftext|> | FIM context),
the separator saying the middle is complete, and log P(whole text) as above. Both estimate the same joint
probability up to terms the candidate does not change, so the score is their mean. `fim_judge="fim"` keeps
the FIM reading alone. With several blanks, a blank's FIM suffix is the known text up to the next blank: what
comes after that still has holes, which the format has no way to show.

`clozelm.fill` judges FIM models by both readings by default. At the size of the embedded models the FIM
reading alone is not enough: a small FIM model learns how often middles end better than where they end, so
the separator after a complete middle is scarcely likelier than after one a token short, and the FIM reading
alone picks worse answers than the left-to-right search. Both readings together find answers ("Let there be
___: and there was light.") that the left-to-right search alone misses. benchmarks/fim_middle_end.py and
benchmarks/fill_quality.py --fim-judge measure this; the README quotes their figures.
"""

from __future__ import annotations

import torch

from .. import scoring
from .blanks import Blank, spells_a_word, whole_characters
from .options import FillOptions

MAX_LOGIT_FLOATS = 1 << 25  # rows x length x vocab per scoring chunk (~128 MB of float32 logits)


def _word_ends_after(blanks: list[Blank], i: int, follow: list[int]) -> bool:
    """Whether blank i's word must end where it does although no known text follows to show it: it ends the
    text, or the next blank comes right after it with a space ("the ___ ___ sat"). Without the check its
    candidates would be judged by the left context alone, where every prefix of a word scores at least as well
    as the word, and fragments would crowd the beam."""
    return not follow and (i == len(blanks) - 1 or blanks[i + 1].lead_space)


class CausalFiller:
    def __init__(self, model, tokenizer, options: FillOptions):
        """`options` resolved for the model's method (FillOptions.for_method): no None left in them."""
        self.model, self.tok = model, tokenizer
        self.fim_judge, self.follow_window = options.fim_judge, options.follow_window
        self.screen_window, self.screen_keep = options.screen_window, options.screen_keep
        self.width, self.max_word_tokens, self.n_states = options.width, options.max_word_tokens, options.beam
        self.lookahead, self.lookahead_keep = options.lookahead, options.lookahead_keep
        self.vocab = model.config.vocab_size
        self.classes = tokenizer.token_classes(self.vocab).to(model.device)
        self.start_ids = tokenizer.frame_tokens(causal=True)[0]

    @torch.inference_mode()
    def fill(self, segments: list[list[int]], blanks: list[Blank]):
        if self.fim_judge == "causal":
            return self._fill_left_to_right(segments, blanks)
        return self._fill_fim(segments, blanks)

    def _fill_fim(self, segments, blanks):
        fim = self.tok.fim_ids
        pre, suf, mid = fim.prefix, fim.suffix, fim.middle
        end = [self.tok.eos_id]
        both = self.fim_judge == "both"
        states = [(0.0, 0.0, segments[0], [])]  # (FIM score, causal score so far, text so far, fills)
        for i, blank in enumerate(blanks):
            follow = segments[i + 1]
            needs_boundary = blank.kind == "word" and _word_ends_after(blanks, i, follow)
            n_max = self.max_word_tokens if blank.kind == "word" else blank.n_tokens
            scored = []
            for fim_score, causal_score, left, fills in states:
                fim_read = self._read([pre, suf] + follow + [mid] + left, n_max + 2)
                pool, fim_reached = self._propose(*fim_read, blank, None)
                if both:
                    window = follow[:self.follow_window]
                    causal_read = self._read(self.start_ids + left, n_max + len(window) + 1)
                    seen = set(map(tuple, pool))
                    causal_pool, reached = self._propose(*causal_read, blank, follow[0] if follow else None)
                    pool += [c for c in causal_pool if tuple(c) not in seen]
                    fim_judged = self._judge(*fim_read, pool, end, False, fim_reached)
                    # screened by both readings, the left-to-right one on the first known tokens only
                    kept = self._screen(*causal_read, pool, window, [g for _, g in fim_judged], reached)
                    pool, fim_judged = [pool[j] for j in kept], [fim_judged[j] for j in kept]
                    causal_gains = [g for _, g in self._judge(*causal_read, pool, window, needs_boundary, reached)]
                else:
                    fim_judged = self._judge(*fim_read, pool, end, False, fim_reached)
                    causal_gains = [0.0] * len(pool)
                for (cand, gain), causal_gain in zip(fim_judged, causal_gains):
                    scored.append((fim_score + gain, causal_score + causal_gain, left + cand + follow, fills + [cand]))
            scored.sort(key=lambda s: -(s[0] + s[1]))
            states = self._distinct(scored, [s[3] for s in scored])
            if not states:
                return []
        if not both:
            return [(fim_score, fills) for fim_score, _, _, fills in states]
        # Two estimates of one joint probability, up to terms the fills do not change: report their mean.
        exact = self._sequence_logprobs([self.start_ids + text for _, _, text, _ in states],
                                        self._word_ends_text(segments, blanks))
        return sorted((((f + e) / 2, fills) for e, (f, _, _, fills) in zip(exact, states)), key=lambda s: -s[0])

    def _fill_left_to_right(self, segments: list[list[int]], blanks: list[Blank]):
        ctx = self.start_ids + segments[0]
        states = [(0.0, ctx, [])]
        for i, blank in enumerate(blanks):
            follow = segments[i + 1]
            at_end = _word_ends_after(blanks, i, follow)
            scored = []
            for score, ids, fills in states:
                # Judging on the next few tokens is what separates candidates; the exact score of the
                # whole text is computed for the survivors below.
                for cand, gain in self._candidates(ids, blank, follow[:self.follow_window], at_end):
                    scored.append((score + gain, ids + cand + follow, fills + [cand]))
            scored.sort(key=lambda s: -s[0])
            states = self._distinct(scored, [s[2] for s in scored])
            if not states:  # no token the tokenizer has can stand in this blank (e.g. "a[MASK]" glued to a word)
                return []
        exact = self._sequence_logprobs([ids for _, ids, _ in states], self._word_ends_text(segments, blanks))
        return sorted(((e, fills) for e, (_, _, fills) in zip(exact, states)), key=lambda s: -s[0])

    def _distinct(self, scored: list, fills: list[list[list[int]]]) -> list:
        """The best `beam` of `scored` (sorted, best first) that spell different texts: two tokenizations of one
        word (" cat", " c" + "at") are one answer, and the better-scored stands for both."""
        seen, kept = set(), []
        for state, state_fills in zip(scored, fills):
            key = tuple(self.tok.blank_text(f) for f in state_fills)
            if key not in seen:
                seen.add(key)
                kept.append(state)
                if len(kept) == self.n_states:
                    break
        return kept

    @staticmethod
    def _word_ends_text(segments, blanks) -> bool:
        return bool(blanks) and blanks[-1].kind == "word" and not segments[-1]

    def _sequence_logprobs(self, seqs: list[list[int]], word_ends: bool = False) -> list[float]:
        """log P(tokens after the first) for each sequence; with `word_ends` (a word blank ends the text), also
        log P(a word boundary follows), as the search judged it, so that a fragment (" Mediterr" + "ane") cannot
        outrank the whole word it begins (" Mediterr" + "anean"). The sequences' common beginning (the text before
        the first blank) is read once; each row reads the rest after it through a fork of its cache."""
        common = 0
        shortest = min(map(len, seqs))
        while common < shortest - 1 and all(s[common] == seqs[0][common] for s in seqs):
            common += 1
        cache = self.model.new_cache(1, max(map(len, seqs))) if common else None
        prefix, after_prefix = 0.0, None  # log P(the common tokens after the first); log P(next) after them
        piece = max(1, MAX_LOGIT_FLOATS // self.vocab)  # a long common text: its logits a piece at a time
        for start in range(0, common, piece):
            ids = seqs[0][start:min(start + piece, common)]
            logits = self.model(torch.tensor([ids]), cache=cache).logits[0]  # [len(ids), V]
            known = torch.tensor(seqs[0][start + 1:min(start + len(ids) + 1, common)], device=logits.device)
            prefix += float(scoring.target_logprobs(logits[:len(known)], known).sum())  # the common tokens predicted
            if start + len(ids) == common:
                after_prefix = scoring.log_probs(logits[-1])
        rests = [s[common:] for s in seqs]
        length = max(map(len, rests))
        rows = max(1, MAX_LOGIT_FLOATS // (length * self.vocab))  # many answers after a long text: in chunks
        scores = []
        for start in range(0, len(rests), rows):
            chunk = rests[start:start + rows]
            batch = scoring.pad_right([list(r) + [0] * (length - len(r)) for r in chunk]).to(self.model.device)
            logits = self.model(batch, cache=cache.fork(len(chunk), room=length) if cache is not None else None).logits
            chunk_scores = scoring.sequence_logprobs(logits, chunk)  # each rest's tokens after its first
            for r, rest in enumerate(chunk):
                if common:  # the rest's first token, read after the common beginning
                    chunk_scores[r] += prefix + float(after_prefix[rest[0]])
                if word_ends:
                    chunk_scores[r] += self._word_boundary(logits[r, len(rest) - 1])
            scores += chunk_scores
        return scores

    def _word_boundary(self, logits: torch.Tensor) -> float:
        """log P(the next token does not continue the word) from one position's logits [V]."""
        p_cont = scoring.log_probs(logits).exp()[self.classes.word_continue].sum().clamp(max=1 - 1e-6)
        return float(torch.log1p(-p_cont))

    def _candidates(self, ctx: list[int], blank: Blank, follow: list[int], at_end: bool):
        n_max = self.max_word_tokens if blank.kind == "word" else blank.n_tokens
        cache, last = self._read(ctx, n_max + len(follow) + 1)
        pool, reached = self._propose(cache, last, blank, follow[0] if follow else None)
        pool = [pool[j] for j in self._screen(cache, last, pool, follow, None, reached)]
        return self._judge(cache, last, pool, follow, at_end and blank.kind == "word", reached)

    def _screen(self, cache, last_logits, pool, follow, other_scores=None, reached=None) -> list[int]:
        """Indices of the `screen_keep` candidates of `pool` that read best on the first `screen_window` tokens of
        `follow` (plus `other_scores`, one per candidate), best first; all of them, in order, where no screen applies.
        Most candidates are told apart by the first few known tokens after them, so only the best need reading on
        the whole window."""
        if not (0 < self.screen_window < len(follow) and len(pool) > self.screen_keep):
            return list(range(len(pool)))
        short = self._judge(cache, last_logits, pool, follow[:self.screen_window], False, reached)
        totals = [score + (other_scores[j] if other_scores else 0.0) for j, (_, score) in enumerate(short)]
        return sorted(range(len(pool)), key=lambda j: -totals[j])[:self.screen_keep]

    def _propose(self, cache, last_logits: torch.Tensor, blank: Blank, next_known: int | None):
        """Beam over the blank's tokens from the context (first tokens also by one token of look-ahead when the
        next known token is given). Word blanks keep every prefix as a candidate. -> (candidates, reached), where
        reached[tuple(candidate)] says where the beam left a candidate, for `_judge` to read on from there:
        (a cache, its row, log P(candidate | context), log P(next token | context + candidate) [V]) where the
        cache row holds the context and the whole candidate; (a cache, its row, log P(candidate | context), None)
        where it holds the candidate but its last token (row None: `cache` itself, before one-token candidates)."""
        first_logp = scoring.log_probs(last_logits)
        if blank.kind == "word":
            first, cont = self.classes.word_start(blank.lead_space), self.classes.word_continue
            n_tokens = self.max_word_tokens
        else:
            first, cont = self.classes.token_start(blank.lead_space), self.classes.ordinary
            n_tokens = blank.n_tokens
        logp = first_logp.masked_fill(~first, float("-inf"))
        n_allowed = int(first.sum())
        firsts = logp.topk(min(self.width, n_allowed)).indices.tolist()
        reached = {}
        ahead = None  # the look-ahead's step: every first token it read, its cache and what comes next
        if next_known is not None and self.lookahead > self.width:
            seen = set(firsts)
            added, ahead = self._look_ahead(cache, logp, n_allowed, next_known)
            firsts += [t for t in added if t not in seen]
            rows_read, ahead_cache, ahead_logp = ahead
            reached.update(((t,), (ahead_cache, rows_read[t], score, ahead_logp[rows_read[t]]))
                           for t, score in zip(firsts, logp[firsts].tolist()))
        hyps = [[t] for t in firsts]
        scores = logp[firsts]
        pool = list(hyps) if blank.kind == "word" or n_tokens == 1 else []
        beam_cache = None
        for step in range(1, n_tokens):
            if beam_cache is None and ahead is not None:  # the look-ahead read these first tokens already
                rows = torch.tensor([rows_read[h[0]] for h in hyps], device=ahead_logp.device)
                beam_cache, next_logp = ahead_cache.select(rows, room=1), ahead_logp[rows]
            else:
                beam_cache = cache.fork(len(hyps), room=1) if beam_cache is None else beam_cache
                next_logp = scoring.log_probs(self.model(torch.tensor([[h[-1]] for h in hyps]), cache=beam_cache,
                                                         last_logits_only=True).logits[:, -1])
                for r, (h, score) in enumerate(zip(hyps, scores.tolist())):  # their last tokens are read now
                    reached[tuple(h)] = (beam_cache, r, score, next_logp[r])
            logp = next_logp.masked_fill(~cont, float("-inf")) + scores[:, None]
            values, rows, tokens = scoring.beam_step(logp, self.width, finite_only=True)
            if len(rows) == 0:
                break
            hyps = [hyps[r] + [t] for r, t in zip(rows.tolist(), tokens.tolist())]  # one read back from a GPU
            scores = values
            beam_cache = beam_cache.select(rows, room=1)  # the next step's token, or `_read_on`'s own select
            if blank.kind == "word" or step == n_tokens - 1:
                pool += hyps
        for r, (h, score) in enumerate(zip(hyps, scores.tolist())):  # the last hypotheses: no step read them
            reached.setdefault(tuple(h), (cache, None, score, None) if beam_cache is None else (beam_cache, r, score, None))
        pool = [h for h in pool if whole_characters(self.tok, h) and (blank.kind != "word" or spells_a_word(self.tok, h))]
        return pool, reached

    def _look_ahead(self, cache, logp: torch.Tensor, n_allowed: int, next_known: int):
        """The `lookahead_keep` best first tokens t by log P(t | left) + log P(next_known | left + t), among the
        `lookahead` best by the left alone: one batched single-token step over the cached context. -> (those
        tokens, ({token: its row}, the step's cache, log P(next token) [rows, V])): the beam goes on from there."""
        wide = logp.topk(min(self.lookahead, n_allowed))
        ahead_cache = cache.fork(len(wide.indices), room=1)
        step = scoring.log_probs(self.model(wide.indices[:, None], cache=ahead_cache, last_logits_only=True).logits[:, -1])
        both = wide.values + step[:, next_known]
        added = wide.indices[both.topk(min(self.lookahead_keep, len(both))).indices].tolist()
        return added, ({t: row for row, t in enumerate(wide.indices.tolist())}, ahead_cache, step)

    def _read(self, ctx: list[int], room: int):
        """A cache holding `ctx` with `room` more positions, and the logits after its last token."""
        cache = self.model.new_cache(1, len(ctx) + room)
        return cache, self.model(torch.tensor([ctx]), cache=cache, last_logits_only=True).logits[0, -1].float()

    def _judge(self, cache, last_logits, pool, follow, needs_boundary, reached=None):
        """log P(candidate + follow | context) for every candidate: those in `reached` (`_propose`) read on from
        where the beam left them, the others whole after the cached context."""
        reached = reached or {}
        known = [j for j, c in enumerate(pool) if tuple(c) in reached]
        if not known:
            return self._judge_whole(cache, last_logits, pool, follow, needs_boundary)
        totals = dict(zip(known, self._read_on(reached, [pool[j] for j in known], follow, needs_boundary)))
        rest = [j for j in range(len(pool)) if j not in totals]
        if rest:
            whole = self._judge_whole(cache, last_logits, [pool[j] for j in rest], follow, needs_boundary)
            totals.update(zip(rest, (total for _, total in whole)))
        return [(cand, totals[j]) for j, cand in enumerate(pool)]

    def _read_on(self, reached, pool, follow, needs_boundary) -> list[float]:
        """log P(candidate + follow | context) for candidates the beam proposed (`_propose`'s `reached`): each row
        goes on from the cache row where the beam left its candidate, so the network reads the known tokens after
        a candidate (and its last token, where no beam step read it), not the whole candidate again for every
        judgement. Rows are batched by the cache they continue, the candidates of one beam step."""
        F = len(follow)
        groups: dict[tuple, list] = {}
        totals = []
        for j, cand in enumerate(pool):
            beam_cache, row, score, next_logp = reached[tuple(cand)]
            if next_logp is not None and F:
                score += float(next_logp[follow[0]])
            totals.append(score)
            groups.setdefault((id(beam_cache), next_logp is None), [beam_cache, []])[1].append((j, row, next_logp))
        known = torch.tensor(follow, dtype=torch.long, device=self.model.device)
        for (_, unread), (beam_cache, members) in groups.items():
            # Unread: feed the candidate's last token, then position i predicts follow[i]; read: position i predicts
            # follow[i + 1], follow[0] came with the beam. The last position, after all of follow, gives the boundary.
            lead = 1 if unread else 0
            if F:
                T = lead + F - 1 + (1 if needs_boundary else 0)
            else:  # nothing known after the candidate: only its last token, for the boundary, where unread
                T = 1 if needs_boundary and unread else 0
            if T == 0:
                if needs_boundary:  # read, nothing known after it: log P(what comes next) came with the beam
                    for j, _, next_logp in members:
                        totals[j] += self._word_boundary(next_logp)
                continue
            targets = known[1 - lead:F]  # what the fed positions predict
            rows_per_chunk = max(1, MAX_LOGIT_FLOATS // (T * self.vocab))
            for start in range(0, len(members), rows_per_chunk):
                chunk = members[start:start + rows_per_chunk]
                if chunk[0][1] is None:  # one-token candidates no step read: the context is the read's own cache
                    context = beam_cache.fork(len(chunk), room=T)
                else:
                    context = beam_cache.select(torch.tensor([row for _, row, _ in chunk], device=self.model.device),
                                                room=T)
                tokens = ([[pool[j][-1]] for j, _, _ in chunk] if unread else [[] for _ in chunk])
                batch = torch.tensor([t + follow[:T - len(t)] for t in tokens], device=self.model.device)
                logits = self.model(batch, cache=context).logits  # [rows, T, V]
                if len(targets):
                    picked = scoring.target_logprobs(logits[:, :len(targets)], targets.expand(len(chunk), len(targets)))
                for r, (j, _, _) in enumerate(chunk):
                    if len(targets):
                        totals[j] += float(picked[r].sum())
                    if needs_boundary:
                        totals[j] += self._word_boundary(logits[r, T - 1])
        return totals

    def _judge_whole(self, cache, last_logits, pool, follow, needs_boundary):
        """log P(candidate + follow | context) for every candidate, batched over the cached context."""
        if not pool:
            return []
        first_logp = scoring.log_probs(last_logits)
        lengths = [len(c) + len(follow) for c in pool]
        L = max(lengths)
        rows_per_chunk = max(1, MAX_LOGIT_FLOATS // (L * self.vocab))
        results = []
        for start in range(0, len(pool), rows_per_chunk):
            chunk = pool[start:start + rows_per_chunk]
            seqs = [c + follow for c in chunk]
            # Right padding needs no mask in a causal model: real tokens never see the pads after them. Every
            # chunk is padded to the longest candidate of the pool, so a score does not depend on its chunk.
            batch = torch.tensor([s + [0] * (L - len(s)) for s in seqs], device=self.model.device)
            context = cache.fork(len(chunk), room=L)  # every row reads the one left context
            logits = self.model(batch, cache=context).logits
            # position i predicts token i + 1 of its row (the pad after a row's end predicts nothing used)
            picked = scoring.target_logprobs(logits, torch.cat((batch[:, 1:], batch[:, :1]), dim=1))
            for r, s in enumerate(seqs):
                total = float(first_logp[s[0]])
                if len(s) > 1:
                    total += float(picked[r, :len(s) - 1].sum())
                if needs_boundary:  # the word must end here: the next token may not continue it
                    total += self._word_boundary(logits[r, len(s) - 1])
                results.append((chunk[r], total))
        return results
