"""The results of `evaluate` as people read them: a table for the terminal and report.md."""

from __future__ import annotations

import json
import math


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _rows(tasks: dict) -> list[tuple[str, str, str]]:
    """(task, figure, value) lines, in the order the tasks ran."""
    out: list[tuple[str, str, str]] = []
    for task, r in tasks.items():
        add = lambda label, value: out.append((task, label, value))  # noqa: E731
        if task == "ppl":
            if "bits_per_byte_se" in r:
                add("bits per byte (upper bound)", f"{r['bits_per_byte']:.4f} ± {r['bits_per_byte_se']:.4f}")
                add("token perplexity (upper bound)", f"{r['token_perplexity']:.2f}")
            else:
                add("bits per byte", f"{r['bits_per_byte']:.4f}")
                add("token perplexity", f"{r['token_perplexity']:.2f}")
            add("tokens / bytes", f"{r['tokens']:,} / {r['bytes']:,}")
            add("method", r["method"].split(":")[0] + f", context {r['context']}, stride {r['stride']}"
                + (f", {r['samples']} mask rates per window" if "samples" in r else ""))
            pll = r.get("word_l2r_pll")
            if pll:
                add("word-l2r PLL, NOT a likelihood", f"{pll['bits_per_byte']:.4f} ± {pll['bits_per_byte_se']:.4f} "
                    f"bits per byte ({pll['positions']:,} positions)")
            if "tokenizer_note" in r:
                add("note", r["tokenizer_note"])
        elif task == "lastword":
            add("accuracy (fill)", f"{_pct(r['accuracy'])} of {r['n']:,}")
            if "left_only_accuracy" in r:
                add("left-only accuracy (lm-eval)", _pct(r["left_only_accuracy"]))
                add("last-word perplexity", f"{r['perplexity']:.2f}")
        elif task == "cloze":
            kinds = ([("middle word", r["middle_word"])] if "middle_word" in r else []) + \
                [(f"{k} token{'s' if k != '1' else ''}", v) for k, v in r["tokens"].items()]
            for label, v in kinds:
                text = f"{_pct(v['exact'])} / {_pct(v['top5'])}"
                if "left_only_exact" in v:
                    text += f"   left-only {_pct(v['left_only_exact'])} / {_pct(v['left_only_top5'])}"
                add(f"{label}: exact / top-5", text + f"   (n={v['n']})")
        elif task == "pairs":
            add(f"accuracy (mean of {len(r['phenomena'])})",
                f"{_pct(r['accuracy'])} of {r['n']:,} pairs, by {r['score']}")
            for name, v in r["phenomena"].items():  # a name from the user's file, on one line
                add(f"  {' '.join(name.split())}", f"{_pct(v['accuracy'])} (n={v['n']})")
        elif task == "probe":
            add("accuracy", f"{_pct(r['accuracy'])} ± {_pct(r['std'])} ({r['folds']} folds, {r['n']:,} texts, "
                f"chance {_pct(r['chance'])})")
    return out


def _all_rows(results: dict) -> list[tuple[str, str, str]]:
    """The figures' rows, then a row for each task left out for want of input."""
    return _rows(results["tasks"]) + [(task, "not run", why) for task, why in results.get("skipped", {}).items()]


def table(results: dict) -> str:
    rows = _all_rows(results)
    head = f"{results['model']}" + (f" ({results['objective']})" if results.get("objective") else "") + \
        f", seed {results['seed']}"
    if not rows:
        return head + "\n(no task ran)"
    w1 = max(len(t) for t, _, _ in rows)
    w2 = max(len(f) for _, f, _ in rows)
    lines, last = [head], None
    for task, figure, value in rows:
        lines.append(f"{task if task != last else '':{w1}}  {figure:{w2}}  {value}")
        last = task
    return "\n".join(lines)


DEFINITIONS = """\
## What the figures are

- **ppl**: bits per byte = -log2 P(text) / UTF-8 bytes; token perplexity = exp(mean negative log-likelihood per
  token). Causal models: sliding window (each token predicted from everything before it, or at least context -
  stride tokens). Masked models: the masked-diffusion bound (MDLM: mask rate t ~ U(0,1), loss weighted 1/t), an
  upper bound on the same quantity, estimated by Monte Carlo with a fixed seed (± one standard error); the
  word-l2r pseudo-log-likelihood beside it is not a likelihood and is not comparable.
- **lastword**: the final word of a passage hidden. `accuracy`: clozelm's fill of `context ___`, top answer
  exact. `left-only accuracy`: lm-eval-harness's definition (every token of the word is the argmax after the
  true prefix).
- **cloze**: a middle word (`___`) and k consecutive middle tokens (`[MASK]` x k) of sentences: the fill's top
  answer exact / among its top five; left-only: a beam over the text before the blank alone.
- **pairs**: share of minimal pairs whose good sentence scores higher (causal: log-probability; masked:
  word-l2r pseudo-log-likelihood, or the masked-diffusion bound for diffusion models); mean over phenomena.
- **probe**: logistic regression on mean-pooled last hidden states, k-fold cross-validation (mean ± std).
"""


def markdown(results: dict) -> str:
    rows = _all_rows(results)
    lines = [f"# clozelm eval: {results['model']}", ""]
    meta = [f"objective: {results['objective']}" if results.get("objective") else None, f"seed: {results['seed']}"]
    if results.get("files"):
        meta.append("files: " + ", ".join(f"`{f}`" for f in results["files"]))
    lines += [" · ".join(m for m in meta if m), "", "| task | figure | value |", "|---|---|---|"]
    last = None
    for task, figure, value in rows:
        cell = lambda s: s.replace("|", "\\|")  # noqa: E731
        lines.append(f"| {task if task != last else ''} | {cell(figure.strip())} | {cell(value)} |")
        last = task
    return "\n".join(lines) + "\n\n" + DEFINITIONS


def to_json(results: dict) -> str:
    """The results as strict JSON: an infinite figure (a perplexity past what a float holds) is written null,
    since JSON has no infinity (Python's `Infinity` is not JSON that jq or a browser reads)."""
    def finite(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, list):
            return [finite(v) for v in value]
        return value
    return json.dumps(finite(results), indent=2, ensure_ascii=False, allow_nan=False)
