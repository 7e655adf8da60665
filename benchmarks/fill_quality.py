"""Fill quality on held-out text the default models never saw (data/corpus/valid, built by
scripts/build_corpus.py): exact-match accuracy of

  last   the last word of a sentence hidden (`___`)
  middle a word in the middle hidden (`___`)
  k=1..5 k consecutive tokens hidden in the middle (`[MASK]` x k)

for each model, plus a left-context-only baseline for causal models: greedy continuation that ignores the
text after the blank (what `text-generation` would do). Also prints the mean time per fill.

    python benchmarks/fill_quality.py [--models default,default-fim,default-bert] [--n 100] [--fim-judge causal|both|fim]
"""

from __future__ import annotations

import argparse
import random
import re
import time
from pathlib import Path

import torch

import clozelm
from clozelm.cloze import fill, method_for
from clozelm.cloze.vocab import word_masks
from clozelm.generation import generate_ids

WORD = re.compile(r"[A-Za-z]+")


def sentences(valid_dir: Path, n: int, seed: int = 0) -> list[str]:
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted(valid_dir.glob("*.txt")))
    found = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if 8 <= len(s.split()) <= 40 and "\n" not in s.strip()]
    random.Random(seed).shuffle(found)
    return found[:n]


def word_cases(sents, where: str, seed: int = 0):
    """(text with ___, hidden word) for the last or a middle word of each sentence."""
    rng = random.Random(seed)
    cases = []
    for s in sents:
        words = list(WORD.finditer(s))
        if len(words) < 5:
            continue
        m = words[-1] if where == "last" else words[rng.randrange(2, len(words) - 2)]
        if where == "last" and s[m.end():].strip(" ") not in (".", "!", "?", ".'", '."', "?'", "!'"):
            continue
        cases.append((s[:m.start()] + "___" + s[m.end():], m.group()))
    return cases


def token_cases(sents, tok, k: int, seed: int = 0):
    """(text with k [MASK]s, hidden text) for k consecutive tokens in the middle of each sentence."""
    rng = random.Random(seed + k)
    cases = []
    for s in sents:
        ids = tok.encode(s)
        if len(ids) < k + 6:
            continue
        i = rng.randrange(3, len(ids) - k - 2)
        hidden = tok.decode(ids[i:i + k])
        left = tok.decode(ids[:i]) + (" " if hidden.startswith(" ") else "")
        cases.append((left + "[MASK]" * k + tok.decode(ids[i + k:]), hidden.lstrip(" ")))
    return cases


def left_only(model, text: str, answer_is_word: bool) -> str:
    """Baseline: greedy continuation of the text before the blank, ignoring what follows it."""
    tok = model.tokenizer
    m = re.search(r"_{3,}|(?:\[MASK\])+", text)
    left = text[:m.start()]
    lead = left.endswith(" ")
    ids = ([tok.eos_id] if tok.eos_id is not None else []) + tok.encode(left[:-1] if lead else left)
    if answer_is_word:
        first, cont, _ = word_masks(tok, model.config.vocab_size, lead)
        out = []
        for step in range(6):  # one word: first a word-opening token, then continuations until a boundary
            with torch.inference_mode():
                logits = model(torch.tensor([ids + out])).logits[0, -1]
            allowed = first if step == 0 else cont
            if step > 0 and not allowed[int(logits.argmax())]:
                break
            out.append(int(logits.masked_fill(~allowed, float("-inf")).argmax()))
        return tok.decode(out).strip()
    k = len(m.group()) // len("[MASK]")
    return tok.decode(list(generate_ids(model, ids, k, lookahead=0))).lstrip(" ")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="default,default-fim,default-bert")
    p.add_argument("--n", type=int, default=100, help="sentences per task")
    p.add_argument("--valid", default="data/corpus/valid")
    p.add_argument("--fim-judge", default="both", choices=["causal", "both", "fim"],
                   help="FIM models: judge by the FIM and the left-to-right reading together (the default), by the "
                        "left-to-right reading alone, or by the FIM reading alone")
    p.add_argument("--tasks", help="comma-separated subset, e.g. 'middle word,last word' (default: all)")
    args = p.parse_args()
    valid = Path(args.valid)
    if not valid.is_dir():
        raise SystemExit(f"{valid} missing: run python scripts/build_corpus.py first")
    torch.set_num_threads(2)
    sents = sentences(valid, args.n * 2)
    models = {name: clozelm.load(name) for name in args.models.split(",")}
    tok = next(iter(models.values())).tokenizer
    tasks = {"last word": word_cases(sents, "last")[:args.n], "middle word": word_cases(sents, "middle")[:args.n]}
    for k in range(1, 6):
        tasks[f"{k} token{'s' if k > 1 else ''}"] = token_cases(sents, tok, k)[:args.n]
    if args.tasks:
        tasks = {t: tasks[t] for t in args.tasks.split(",")}
    # The baseline: every causal model continuing the left context greedily (what text-generation does).
    columns = list(models) + [f"{n} left-only" for n, m in models.items() if m.config.causal]
    print(f"{'task':14s} {'n':>4s} " + " ".join(f"{c:>18s}" for c in columns))
    timings = {name: [] for name in models}
    for task, cases in tasks.items():
        row = []
        for name, model in models.items():
            hits = 0
            for text, answer in cases:
                start = time.perf_counter()
                got = fill(text, model=model, top=1, fim_judge=args.fim_judge if method_for(model) == "fim" else "causal")[0].blanks[0]
                timings[name].append(time.perf_counter() - start)
                hits += got == answer
            row.append(hits / len(cases))
        for column in columns[len(models):]:
            model = models[column.rsplit(" ", 1)[0]]
            row.append(sum(left_only(model, t, task.endswith("word")) == a for t, a in cases) / len(cases))
        print(f"{task:14s} {len(cases):4d} " + " ".join(f"{100 * r:17.1f}%" for r in row))
    print("mean seconds per fill: " + ", ".join(f"{n} {sum(t) / len(t):.3f}" for n, t in timings.items()))


if __name__ == "__main__":
    main()
