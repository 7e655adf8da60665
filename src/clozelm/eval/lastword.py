"""`lastword`: LAMBADA's task. A passage's final word is hidden and the model must give it back.

Items are (context, word) with passage = context + " " + word, split as lm-eval-harness splits LAMBADA
(`text.rsplit(" ", 1)`): from `--lambada FILE.jsonl` (one {"text": ...} per line), or cut from FILES (a
sentence-final word with the 30 to 80 words before it).

- left_only_accuracy (causal models), lm-eval-harness's definition: with the context read left to right,
  every token of " " + word is the argmax after the true prefix. Context and word are tokenized together and
  the word's tokens are what follows the context's (as lm-eval does); the context opens with the model's start
  token (`tokenizer.frame`), and is cut from the left to fit the context window. `perplexity` is lm-eval's
  too: exp(-mean over passages of log P(word | context)).
- accuracy (every model): clozelm's fill of `context ___`, top answer == word.
"""

from __future__ import annotations

from collections.abc import Callable

from ..cloze.blanks import BLANK
from ..errors import ClozelmError
from .forward import token_logprobs
from .ppl import perplexity_of
from .text import WORD, same, sentences

MIN_CONTEXT_WORDS, MAX_CONTEXT_WORDS = 30, 80


def items_from_jsonl(rows: list[tuple[int, dict]], path, fits: Callable[[str], bool]) -> list[tuple[str, str]]:
    """(context, word) of every passage; a one-line error, with its line, for one the task cannot read as given:
    no word before the last, whitespace at the end, a blank marker (fill would read it as a blank of its own),
    or a last word longer than the model's context (`fits` says which fit)."""
    items = []
    for number, row in rows:
        text = row.get("text")
        if not isinstance(text, str):
            raise ClozelmError(f"{path}:{number}: expected {{\"text\": ...}} (lm-eval-harness's LAMBADA format)")
        if " " not in text.strip():
            raise ClozelmError(f"{path}:{number}: the passage has no word before its last one")
        if text != text.rstrip():
            raise ClozelmError(f"{path}:{number}: the passage ends with whitespace: no last word to hide")
        marker = BLANK.search(text)
        if marker:
            raise ClozelmError(f"{path}:{number}: the passage holds {marker.group()!r}, which fill reads as a blank "
                               "of its own")
        context, word = text.rsplit(" ", 1)
        if not fits(word):
            raise ClozelmError(f"{path}:{number}: the last word is longer than the model's context")
        items.append((context, word))
    return items


def word_fits(model) -> Callable[[str], bool]:
    """Whether a hidden last word's tokens leave room in the model's context for one token before them."""
    tok, width = model.tokenizer, model.config.n_positions
    return lambda word: len(tok.encode(" " + word)) < width


def items_from_documents(docs: list[tuple[str, str]], fits: Callable[[str], bool]) -> list[tuple[str, str]]:
    """Every sentence-final word (letters only, right before . ! or ?) with 30 to 80 words of context: the
    sentences before it, whole, as many as fit, and its own sentence up to the word. Passages fill would read
    another blank in (`___`, `[MASK]`), and words longer than the model's context, are left out."""
    items = []
    for _, text in docs:
        sents = sentences(text)
        for i, sentence in enumerate(sents):
            words = list(WORD.finditer(sentence))
            if not words:
                continue
            last = words[-1]
            if sentence[last.end():].strip() not in (".", "!", "?", ".'", '."', "?'", '?"', "!'", '!"', ".’", ".”"):
                continue
            head = sentence[:last.start()].rstrip()
            if head and not sentence[last.start() - 1].isspace():
                continue  # glued to what precedes it ("(word" or "-word"): not a word of its own
            parts, count = [head] if head else [], len(head.split())
            if count > MAX_CONTEXT_WORDS:  # its own sentence is already too long a passage
                continue
            for previous in reversed(sents[:i]):
                n = len(previous.split())
                if count + n > MAX_CONTEXT_WORDS:
                    break
                parts.insert(0, previous)
                count += n
            context = " ".join(parts)
            if count >= MIN_CONTEXT_WORDS and not BLANK.search(context) and fits(last.group()):
                items.append((context, last.group()))
    return items


def left_only(model, items, opts, advance=None) -> dict:
    """lm-eval-harness's greedy check and perplexity for a causal model."""
    tok = model.tokenizer
    start, _ = tok.frame_tokens(causal=True)
    width = model.config.n_positions
    rows, targets = [], []
    for context, word in items:
        context_ids = tok.encode(context)
        whole = tok.encode(context + " " + word)
        target = whole[len(context_ids):] if whole[:len(context_ids)] == context_ids else tok.encode(" " + word)
        seq = ([*start, *context_ids, *target])[-(width + 1):]
        row = seq[:-1]
        first = len(row) - len(target)  # row position whose logits predict the word's first token
        rows.append(row)
        targets.append([(first + k, t) for k, t in enumerate(target)])
    scored = token_logprobs(model, rows, targets, batch_tokens=opts.batch_tokens, greedy=True, advance=advance)
    hits = [bool(greedy.all()) for _, greedy in scored]
    logprobs = [float(lp.sum()) for lp, _ in scored]
    nll = -sum(logprobs) / len(logprobs)
    return {"left_only_accuracy": sum(hits) / len(hits), "perplexity": perplexity_of(nll)}


def by_fill(model, items, opts, fill, advance: Callable[[int], None] | None = None) -> list[bool]:
    hits = []
    for context, word in items:
        answers = fill(context + " ___", model, top=1, **opts.fill_options)
        hits.append(bool(answers) and same(model.tokenizer, answers[0].blanks[0], word))
        if advance is not None:
            advance(1)
    return hits


NO_PASSAGE = (f"lastword: no passage found (give --lambada FILE.jsonl, or FILES with sentences that end in a word "
              f"after at least {MIN_CONTEXT_WORDS} words)")


def lastword(model, items, opts, fill, progress) -> dict:
    if not items:
        raise ClozelmError(NO_PASSAGE)
    result: dict = {}
    causal = model.config.causal
    steps = progress("lastword", len(items) * (2 if causal else 1))
    if causal:
        result.update(left_only(model, items, opts, advance=steps))
    hits = by_fill(model, items, opts, fill, advance=steps)
    out = {"accuracy": sum(hits) / len(hits)}
    if causal:
        out["left_only_accuracy"] = result["left_only_accuracy"]
        out["perplexity"] = result["perplexity"]
    out["n"] = len(items)
    return out
