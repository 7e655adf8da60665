"""`cloze`: hidden words and tokens in the middle of sentences from FILES, given back by clozelm's fill.

Sentences of 8 to 40 words are drawn by seed. In each, one middle word (letters only, not among the first two
or last two words) is hidden as `___`, and separately k = 1..5 consecutive tokens from the middle as k
`[MASK]`s. The middle words do not depend on the tokenizer, and the k rows hide runs in the same sentences
(`cases`). An answer counts when the fill's top answer (`exact`) or one of its top five (`top5`) spells the
hidden text, as `tokenizer.blank_text` spells it.

Causal models also get the left-only baseline: what the model would say from the text before the blank alone,
as a plain continuation would. A beam of five over the left context ranks words by
P(tokens) x P(the next token does not continue the word), and k-token runs by P(tokens); its best and its top
five are scored like the fill's.
"""

from __future__ import annotations

import math
import random

import torch

from ..cloze.blanks import spells_a_word, whole_characters
from ..errors import ClozelmError
from ..tokenizers.base import WORD_PUNCTUATION
from .forward import top_tokens
from .text import WORD, draw, same, sentences

MIN_WORDS, MAX_WORDS = 8, 40
K_TOKENS = (1, 2, 3, 4, 5)
BEAM = 5
MAX_WORD_TOKENS = 4


def _glued(neighbour: str) -> bool:
    """A letter-run next to this is part of a longer word ("don't", "well-known", "café", "foo_bar", Gutenberg's
    _emphasis_, whose underscores would run into the blank)."""
    return bool(neighbour) and (neighbour.isalnum() or neighbour in WORD_PUNCTUATION + "_")


def sentence_pool(docs) -> list[str]:
    return [s for _, text in docs for s in sentences(text)
            if MIN_WORDS <= len(s.split()) <= MAX_WORDS and "___" not in s and "[MASK]" not in s]


def cases(tok, sents: list[str], seed: int, vocab_size: int | None = None) -> dict[str, list[tuple[str, str]]]:
    """{"middle_word": [(text with ___, word)], "1".."5": [(text with k [MASK]s, hidden text)]}.

    Each sentence draws from generators of its own (the seed and the sentence's place), so the middle words do
    not depend on the tokenizer: models with different vocabularies are scored on the same words. The token rows
    hide runs in the same sentences for every k, so that they compare k with k: a sentence where some k finds no
    run that a fill could give back is left out of all of them. `vocab_size`: the model's (default: the
    tokenizer's)."""
    classes = tok.token_classes(vocab_size or tok.vocab_size)
    out: dict[str, list[tuple[str, str]]] = {"middle_word": [], **{str(k): [] for k in K_TOKENS}}
    for j, s in enumerate(sents):
        word = _middle_word(s, random.Random(f"{seed}:word:{j}"))
        if word is not None:
            out["middle_word"].append(word)
        runs = _token_runs(tok, classes, s, random.Random(f"{seed}:tokens:{j}"))
        if runs is not None:
            for k, run in zip(K_TOKENS, runs):
                out[str(k)].append(run)
    return out


def _middle_word(s: str, rng: random.Random) -> tuple[str, str] | None:
    """(s with one middle word as ___, the word): a word of letters alone, not among the first two or last two."""
    words = [w for w in WORD.finditer(s)
             if not _glued(s[w.start() - 1:w.start()]) and not _glued(s[w.end():w.end() + 1])]
    if len(words) < 5:
        return None
    m = words[rng.randrange(2, len(words) - 2)]
    return s[:m.start()] + "___" + s[m.end():], m.group()


def _token_runs(tok, classes, s: str, rng: random.Random) -> list[tuple[str, str]] | None:
    """For each k of K_TOKENS, (s with a run of k tokens from its middle as k [MASK]s, the hidden text); None when
    some k has no run that a fill could give back."""
    ids, spans, _ = tok.encode_with_spans(s, specials=False)
    runs = []
    for k in K_TOKENS:
        places = list(range(3, len(ids) - k - 2))  # not among the first three tokens or the last three
        rng.shuffle(places)
        run = next((r for r in (_token_run(tok, classes, s, ids, spans, i, k) for i in places) if r), None)
        if run is None:
            return None
        runs.append(run)
    return runs


def _token_run(tok, classes, s, ids, spans, i: int, k: int) -> tuple[str, str] | None:
    run = spans[i:i + k]
    # A run that starts or ends inside a multi-byte character ("é" is two byte tokens) hides text that no fill can
    # give back whole.
    if any(span is None for span in run) or not whole_characters(tok, ids[i:i + k]):
        return None
    start, end = run[0][0], max(e for _, e in run)  # a token that only ends a character spans nothing
    if s[start].isspace():  # the hidden run opens with the space its first token carries
        start += 1
    # Written after a space, a [MASK] is filled with a token that opens with one (or opens a word, in WordPiece),
    # and the rest with ordinary tokens: a run whose first token does not (Llama 3's "1" after its own " " token),
    # or that holds a token no fill proposes (WordPiece's [UNK]), could never be given back.
    if not (classes.token_start(s[:start].endswith(" "))[ids[i]] and classes.ordinary[ids[i:i + k]].all()):
        return None
    hidden = tok.blank_text(ids[i:i + k])
    return (s[:start] + "[MASK]" * k + s[end:], hidden) if hidden else None


def _log1mexp(x: float) -> float:
    """log(1 - e^x) for x <= 0."""
    if x >= 0:
        return float("-inf")
    return math.log(-math.expm1(x)) if x > -0.693 else math.log1p(-math.exp(x))


def left_only(model, text: str, opts) -> list[str]:
    """The left-only baseline's five best answers for the one blank of `text`."""
    tok = model.tokenizer
    classes = tok.token_classes(model.config.vocab_size)
    blank = text.index("___") if "___" in text else text.index("[MASK]")
    left = text[:blank]
    lead = left.endswith(" ")
    start, _ = tok.frame_tokens(causal=True)
    width = model.config.n_positions
    context = [*start, *tok.encode(left[:-1] if lead else left)]
    beams: list[tuple[list[int], float]] = [([], 0.0)]
    done: list[tuple[list[int], float]] = []
    if "___" in text:
        steps, first, then = MAX_WORD_TOKENS + 1, classes.word_start(lead), classes.word_continue
    else:
        steps, first, then = text.count("[MASK]"), classes.token_start(lead), classes.ordinary
    for step in range(steps):
        rows = [(context + toks)[-width:] for toks, _ in beams]
        dists = top_tokens(model, rows, [len(r) - 1 for r in rows], batch_tokens=opts.batch_tokens)
        grown = []
        for (toks, score), lp in zip(beams, dists):
            if "___" in text and step > 0:  # the word may end here
                done.append((toks, score + _log1mexp(float(torch.logsumexp(lp[then], 0)))))
            if "___" in text and step == steps - 1:
                continue
            allowed = first if step == 0 else then
            values, ids = lp.masked_fill(~allowed, float("-inf")).topk(BEAM)
            grown += [(toks + [int(i)], score + float(v)) for v, i in zip(values, ids) if v > float("-inf")]
        beams = sorted(grown, key=lambda b: -b[1])[:BEAM]
        if not beams:
            break
    if "[MASK]" in text:
        done = beams
    answers = []
    for toks, _ in sorted(done, key=lambda b: -b[1]):
        if "___" in text and not (whole_characters(tok, toks) and spells_a_word(tok, toks)):
            continue  # a word cut inside a character, or one that opened a character and is no word once whole
        answer = tok.blank_text(toks)
        if answer not in answers:
            answers.append(answer)
        if len(answers) == BEAM:
            break
    return answers


def cloze_sentences(docs, opts) -> list[str]:
    """The sentences the task hides words in: `limit` drawn by seed from every sentence of 8 to 40 words."""
    sents = draw(sentence_pool(docs), opts.limit_for("cloze", True), opts.seed)
    if not sents:
        raise ClozelmError(f"cloze: no sentence of {MIN_WORDS} to {MAX_WORDS} words found in the files")
    return sents


def cloze(model, sents: list[str], opts, fill, progress) -> dict:
    tok = model.tokenizer
    all_cases = cases(tok, sents, opts.seed, model.config.vocab_size)
    causal = model.config.causal
    total = sum(len(c) for c in all_cases.values())
    steps = progress("cloze", total * (2 if causal else 1))
    out: dict = {"sentences": len(sents)}
    tokens: dict = {}
    for kind, items in all_cases.items():
        if not items:
            continue
        exact = top5 = left_exact = left_top5 = 0
        for text, hidden in items:
            answers = [a.blanks[0] for a in fill(text, model, top=BEAM, **opts.fill_options)]
            exact += bool(answers) and same(tok, answers[0], hidden)
            top5 += any(same(tok, a, hidden) for a in answers)
            steps(1)
            if causal:
                guesses = left_only(model, text, opts)
                left_exact += bool(guesses) and same(tok, guesses[0], hidden)
                left_top5 += any(same(tok, g, hidden) for g in guesses)
                steps(1)
        n = len(items)
        row = {"exact": exact / n, "top5": top5 / n}
        if causal:
            row.update({"left_only_exact": left_exact / n, "left_only_top5": left_top5 / n})
        row["n"] = n
        if kind == "middle_word":
            out["middle_word"] = row
        else:
            tokens[kind] = row
    out["tokens"] = tokens
    return out
