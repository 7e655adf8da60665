"""What the study's runs say: each figure's mean and spread over seeds per objective, the winner, and the
verdict on the claim "left-to-right beats bidirectional" (report.md, and the summary in results.json).

The claim is tested figure by figure between the best left-to-right objective (clm, fim) and the best
bidirectional one (mlm, mdlm); hybrid (GPT-BERT: causal by design, masked in 15 of 16 rows) belongs to neither
and is reported beside them. A difference counts only when it is larger than twice its standard error:
each objective's spread over seeds, sd / sqrt(seeds); for an accuracy the sampling noise of its n test
items, p (1 - p) / n (every seed is measured on the same items, so more seeds do not shrink it); and for the
masked models' bound on bits per byte its Monte Carlo standard error (every model draws the same masks, so more
seeds do not shrink that either), combined over the two objectives. With one seed there is no estimate of the noise, and the report says so instead of
naming a winner.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

LEFT_TO_RIGHT = ("clm", "fim")
BIDIRECTIONAL = ("mlm", "mdlm")
GROUP = {"clm": "left-to-right", "fim": "left-to-right", "mlm": "bidirectional", "mdlm": "bidirectional",
         "hybrid": "both (GPT-BERT)"}


def _dig(*keys) -> Callable[[dict], float | None]:
    def get(tasks: dict):
        value = tasks
        for key in keys:
            if not isinstance(value, dict) or key not in value:
                return None
            value = value[key]
        return float(value) if isinstance(value, (int, float)) else None
    return get


def _cloze_tokens(tasks: dict) -> float | None:
    rows = tasks.get("cloze", {}).get("tokens", {})
    values = [row["exact"] for row in rows.values() if isinstance(row, dict) and "exact" in row]
    return sum(values) / len(values) if values else None


def _cloze_token_items(tasks: dict) -> float | None:
    rows = tasks.get("cloze", {}).get("tokens", {})
    counts = [row["n"] for row in rows.values() if isinstance(row, dict) and "exact" in row and "n" in row]
    return float(sum(counts)) if counts else None


@dataclass(frozen=True)
class Figure:
    task: str
    key: str  # the figure's name within the task
    label: str  # what it is, after the task's name
    short: str  # for the plots' axis (their pixel font is small)
    higher_is_better: bool
    get: Callable[[dict], float | None]
    claim: bool = True  # tested against the claim (False: not every objective has it)
    bound: bool = False  # the bidirectional models' figure is an upper bound on what they achieve
    note: str = ""
    items: Callable[[dict], float | None] | None = None  # an accuracy's number of test items
    monte_carlo: Callable[[dict], float | None] | None = None  # a sampled figure's standard error, where it has one


FIGURES = (
    Figure("ppl", "bits_per_byte", "bits per byte", "BITS/BYTE", False, _dig("ppl", "bits_per_byte"), bound=True,
           monte_carlo=_dig("ppl", "bits_per_byte_se"),
           note="Causal models (clm, fim, hybrid): exact, sliding window. Masked models (mlm, mdlm): the "
                "masked-diffusion upper bound, which an mlm trained at one mask rate is not trained for; a "
                "bidirectional loss here is not conclusive (the bound may be loose), a bidirectional win is."),
    Figure("lastword", "accuracy", "accuracy of the fill", "LASTWORD", True, _dig("lastword", "accuracy"),
           items=_dig("lastword", "n")),
    Figure("lastword", "left_only_accuracy", "left-only accuracy (lm-eval-harness)", "LASTWORD L2R", True,
           _dig("lastword", "left_only_accuracy"), claim=False, note="Causal models only: not compared.",
           items=_dig("lastword", "n")),
    Figure("cloze", "middle_word", "middle word, exact", "CLOZE WORD", True, _dig("cloze", "middle_word", "exact"),
           items=_dig("cloze", "middle_word", "n")),
    Figure("cloze", "tokens", "1-5 middle tokens, exact (mean over k)", "CLOZE TOKENS", True, _cloze_tokens,
           items=_cloze_token_items),
    Figure("pairs", "accuracy", "minimal pairs, accuracy", "PAIRS", True, _dig("pairs", "accuracy"),
           items=_dig("pairs", "n")),
    Figure("probe", "accuracy", "linear probe, accuracy", "PROBE", True, _dig("probe", "accuracy"),
           items=_dig("probe", "n")),
)


@dataclass
class Stats:
    values: list[float]
    items: list[float] = field(default_factory=list)  # test items behind each value, for accuracies
    monte_carlo: list[float] = field(default_factory=list)  # each value's Monte Carlo standard error, if sampled

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def spread(self) -> float | None:
        """The sample standard deviation over seeds (None with one seed)."""
        return statistics.stdev(self.values) if self.n > 1 else None

    @property
    def sampling_variance(self) -> float:
        """The noise every seed shares, which more seeds do not shrink: p (1 - p) / n for an accuracy p over n test
        items (which items the test drew), plus the squared Monte Carlo standard error of a sampled figure (the
        masks every model's bound is drawn with); 0 where neither is known."""
        variance = 0.0
        if self.items:
            p = min(max(self.mean, 0.0), 1.0)
            variance += p * (1 - p) / statistics.fmean(self.items)
        if self.monte_carlo:
            variance += statistics.fmean(se ** 2 for se in self.monte_carlo)
        return variance

    @property
    def se(self) -> float | None:
        """The standard error of the mean: the spread over seeds and the noise the seeds share (None with one
        seed)."""
        return None if self.spread is None else math.sqrt(self.spread ** 2 / self.n + self.sampling_variance)


def stats_by_objective(runs: list[dict], figure: Figure) -> dict[str, Stats]:
    out: dict[str, Stats] = {}
    for run in runs:
        value = figure.get(run.get("tasks", {}))
        if value is not None and math.isfinite(value):
            stats = out.setdefault(run["objective"], Stats([]))
            stats.values.append(value)
            items = figure.items(run.get("tasks", {})) if figure.items is not None else None
            if items:
                stats.items.append(items)
            error = figure.monte_carlo(run.get("tasks", {})) if figure.monte_carlo is not None else None
            if error is not None and math.isfinite(error):
                stats.monte_carlo.append(error)
    return out


def _better(figure: Figure, a: float, b: float) -> bool:
    return a > b if figure.higher_is_better else a < b


def best_of(figure: Figure, stats: dict[str, Stats], names) -> str | None:
    present = [n for n in names if n in stats]
    best = None
    for name in present:
        if best is None or _better(figure, stats[name].mean, stats[best].mean):
            best = name
    return best


def winners(figure: Figure, stats: dict[str, Stats]) -> list[str]:
    """Every objective with the best mean (several when they tie)."""
    best = best_of(figure, stats, list(stats))
    return [n for n in stats if stats[n].mean == stats[best].mean] if best is not None else []


def verdict(figure: Figure, stats: dict[str, Stats]) -> dict:
    """The claim on this figure: {"verdict": "left-to-right"|"left-to-right, not conclusive"|"bidirectional"|
    "within noise"|"no noise estimate"|"not measured", "text": one sentence, and the two objectives compared with
    the difference}."""
    l2r, bi = best_of(figure, stats, LEFT_TO_RIGHT), best_of(figure, stats, BIDIRECTIONAL)
    if l2r is None or bi is None:
        return {"verdict": "not measured", "text": "not measured: needs a left-to-right and a bidirectional objective"}
    a, b = stats[l2r], stats[bi]
    diff = a.mean - b.mean
    ahead = l2r if _better(figure, a.mean, b.mean) else bi
    out = {"left_to_right": l2r, "bidirectional": bi, "difference": diff}
    if a.se is None or b.se is None:
        standing = (f"a tie ({l2r} and {bi} both {a.mean:.4g})" if diff == 0 else
                    f"{ahead} is ahead ({l2r} {a.mean:.4g} vs {bi} {b.mean:.4g})")
        out.update(verdict="no noise estimate",
                   text=f"{standing}, but with one seed there is no estimate of the noise: run more seeds before "
                        "reading anything into it")
        return out
    noise = 2 * math.sqrt(a.se ** 2 + b.se ** 2)
    out["two_standard_errors"] = noise
    if diff == 0:
        out.update(verdict="within noise", text=f"a tie: {l2r} and {bi} both {a.mean:.4g}")
    elif abs(diff) <= noise:
        out.update(verdict="within noise",
                   text=f"within noise: {l2r} {a.mean:.4g} vs {bi} {b.mean:.4g} (difference {abs(diff):.3g}, two "
                        f"standard errors {noise:.3g}); the claim is neither supported nor refuted here")
    elif ahead == l2r and figure.bound:
        out.update(verdict="left-to-right, not conclusive",
                   text=f"left-to-right ahead: {l2r} {a.mean:.4g} vs {bi} {b.mean:.4g} (difference {abs(diff):.3g} > "
                        f"two standard errors {noise:.3g}), but the bidirectional figure is an upper bound: consistent "
                        "with the claim, not proof of it")
    elif ahead == l2r:
        out.update(verdict="left-to-right",
                   text=f"left-to-right wins: {l2r} {a.mean:.4g} vs {bi} {b.mean:.4g} (difference {abs(diff):.3g} > "
                        f"two standard errors {noise:.3g}): supports the claim")
    else:
        out.update(verdict="bidirectional",
                   text=f"bidirectional wins: {bi} {b.mean:.4g} vs {l2r} {a.mean:.4g} (difference {abs(diff):.3g} > "
                        f"two standard errors {noise:.3g}): against the claim")
    return out


def summary(runs: list[dict]) -> list[dict]:
    """Per figure with any value: per objective mean/spread/n, the winner, and the verdict on the claim."""
    out = []
    for figure in FIGURES:
        stats = stats_by_objective(runs, figure)
        if not stats:
            continue
        row = {"task": figure.task, "figure": figure.key, "label": figure.label,
               "higher_is_better": figure.higher_is_better,
               "objectives": {name: {"mean": s.mean, "spread": s.spread, "standard_error": s.se, "n": s.n,
                                     "values": s.values}
                              for name, s in stats.items()},
               "winners": winners(figure, stats)}
        if figure.claim:
            row["claim"] = verdict(figure, stats)
        out.append(row)
    return out


def _cell(s: dict, digits: int, percent: bool) -> str:
    scale = 100.0 if percent else 1.0
    text = f"{s['mean'] * scale:.{digits}f}"
    if s["spread"] is not None:
        text += f" ± {s['spread'] * scale:.{digits}f}"
    return text + ("%" if percent else "")


def markdown(results: dict, plots: list[str]) -> str:
    study, runs, rows = results["study"], results["runs"], results["summary"]
    objectives = [o for o in study["objectives"] if any(r["objective"] == o for r in runs)]
    fixed = study["fixed"]
    lines = ["# clozelm study: is left-to-right better than bidirectional?", ""]
    params = sorted({r["params"] for r in runs})
    lines += [
        f"Every objective trained on the same {study['train_split_tokens']:,}-token training split (one "
        f"tokenizer, {fixed['vocab_size']:,} tokens), in the same data order, at one shape: {fixed['n_layer']} layers "
        f"x {fixed['n_embd']} wide, {fixed['n_head']} head{'s' if fixed['n_head'] != 1 else ''}, {fixed['seq_len']}-token sequences, "
        f"{', '.join(f'{p:,}' for p in params)} parameters; {runs[0]['tokens']:,} training tokens per run "
        f"({runs[0]['steps']:,} steps of {fixed['batch_size']} sequences{_trained_in(fixed.get('precision'))}); seeds "
        f"{', '.join(map(str, study['seeds']))}. Measured on the held-out split "
        f"({study['heldout_documents']:,} documents, one in {fixed['valid_every']}) by `clozelm eval`.",
        "",
        *([f"**Partial**: {len(study['unfinished'])} run(s) not finished yet and left out "
           f"({', '.join(study['unfinished'])}); the seed counts below say what each figure rests on.", ""]
          if study.get("unfinished") else []),
        "Objectives: " + "; ".join(f"**{o}** ({GROUP.get(o, '')})" for o in objectives) + ". The network is the "
        "same pre-LN transformer with its output tied to the embeddings for all of them; only the attention "
        "direction and the training objective differ. Cells: mean ± standard deviation over seeds. A difference "
        "counts when it is larger than two standard errors: the seeds' spread and, for accuracies, the sampling "
        "noise of the test items (p (1 - p) / n), for the masked models' bound on bits per byte its Monte Carlo "
        "error; more seeds shrink neither of the last two.",
        "",
    ]
    lines += summary_table(rows, objectives) + [""]
    for row in rows:
        percent = row["higher_is_better"]
        digits = 1 if percent else 4
        figure = next(f for f in FIGURES if f.task == row["task"] and f.key == row["figure"])
        lines += [f"## {row['task']}: {row['label']} ({'higher' if percent else 'lower'} is better)", ""]
        lines += ["| objective | kind | " + row["label"] + " | seeds |", "|---|---|---|---|"]
        for name in objectives:
            s = row["objectives"].get(name)
            if s is None:
                continue
            mark = " **(best)**" if name in row["winners"] and len(row["winners"]) == 1 else ""
            lines.append(f"| {name}{mark} | {GROUP.get(name, '')} | {_cell(s, digits, percent)} | {s['n']} |")
        lines.append("")
        best = row["winners"]
        lines.append((f"Winner: **{best[0]}**." if len(best) == 1 else f"A tie between {', '.join(best)}.")
                     + (f" {figure.note}" if figure.note else ""))
        if "claim" in row:
            lines.append(f"The claim: {row['claim']['text']}.")
        lines.append("")
    cloze_k = cloze_by_k(runs, objectives)
    if cloze_k:
        lines += ["## cloze: exact match by number of hidden tokens k", "",
                  "| objective | " + " | ".join(f"k={k}" for k in cloze_k["ks"]) + " |",
                  "|---|" + "---|" * len(cloze_k["ks"])]
        for name, values in cloze_k["rows"].items():
            lines.append(f"| {name} | " + " | ".join("" if v is None else f"{100 * v:.1f}%" for v in values) + " |")
        lines.append("")
    failed = sorted({(task, figures["error"]) for r in runs for task, figures in r.get("tasks", {}).items()
                     if isinstance(figures, dict) and "error" in figures})
    if failed:
        lines += ["## Tasks that did not run", ""] + [f"- {task}: {why}" for task, why in failed] + [""]
    lines += ["## Runs", ""] + runs_table(runs)
    lines += ["", "Held-out loss is each objective's own training loss on held-out text (nats per predicted token: "
              "clm and fim the next token, mlm the masked tokens, hybrid its mix, mdlm the diffusion bound per "
              "token), watched during training; it compares no objectives and chooses no weights (each model is "
              "its last step's).", ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{name}]({name})" for name in plots] + [""]
    return "\n".join(lines)


PRECISION_WORDS = {"bf16-master": "bf16 with fp32 master weights", "bf16": "bf16 autocast", "fp32": "fp32"}


def _trained_in(precision: str | None) -> str:
    """", trained in ..." for the study's recorded precision; nothing for a record from before it was recorded."""
    return f", trained in {PRECISION_WORDS.get(precision, precision)}" if precision else ""


def runs_table(runs: list[dict]) -> list[str]:
    """One row per run: its size, budget, training time, final held-out loss and the machine it trained on."""
    lines = ["| objective | seed | parameters | tokens | train seconds | final held-out loss | trained on |",
             "|---|---|---|---|---|---|---|"]
    for r in runs:
        curve = r.get("held_out_loss") or []
        final = f"{curve[-1][1]:.4f}" if curve else ""
        lines.append(f"| {r['objective']} | {r['seed']} | {r['params']:,} | {r['tokens']:,} | "
                     f"{r['train_seconds']:.1f} | {final} | {r.get('machine', '')} |")
    if len({r["machine"] for r in runs if r.get("machine")}) > 1:  # records before the field have none
        lines += ["", "The runs were trained on more than one machine: their train seconds compare only runs of one "
                  "machine (the figures do not depend on it beyond float rounding)."]
    return lines


def summary_table(rows: list[dict], objectives: list[str]) -> list[str]:
    """Every figure in one table: a row per figure, a column per objective (mean ± sd over seeds, the best in
    bold), and the verdict on the claim."""
    lines = ["## Summary", "", "| figure | " + " | ".join(objectives) + " | the claim |",
             "|---|" + "---|" * (len(objectives) + 1)]
    for row in rows:
        percent = row["higher_is_better"]
        cells = []
        for name in objectives:
            s = row["objectives"].get(name)
            cell = "" if s is None else _cell(s, 1 if percent else 3, percent)
            cells.append(f"**{cell}**" if s is not None and row["winners"] == [name] else cell)
        arrow = "higher is better" if percent else "lower is better"
        lines.append(f"| {row['task']}: {row['label']} ({arrow}) | " + " | ".join(cells) + " | "
                     + row.get("claim", {}).get("verdict", "not compared") + " |")
    return lines


def cloze_by_k(runs: list[dict], objectives: list[str]) -> dict | None:
    """{"ks": [1..5], "rows": {objective: [mean exact per k over seeds]}} from the runs' cloze results."""
    ks = sorted({int(k) for r in runs for k in r.get("tasks", {}).get("cloze", {}).get("tokens", {})})
    if not ks:
        return None
    rows = {}
    for name in objectives:
        values = []
        for k in ks:
            got = [r["tasks"]["cloze"]["tokens"][str(k)]["exact"] for r in runs if r["objective"] == name
                   and str(k) in r.get("tasks", {}).get("cloze", {}).get("tokens", {})]
            values.append(statistics.fmean(got) if got else None)
        rows[name] = values
    return {"ks": ks, "rows": rows}

