"""What `evaluate` can be asked to do: the task names and one typed, self-checking set of options."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ClozelmError

TASKS = ("ppl", "lastword", "cloze", "pairs", "probe")
# What runs when no task is named: every task whose input is at hand (see `evaluate`). The probe is left
# out unless asked for or given a folder: its built-in data set costs more than the other tasks together.
DEFAULT_TASKS = ("ppl", "lastword", "cloze", "pairs")
MASKED_SCORES = ("auto", "pll", "bound")

# Items a task takes when `limit` is None and it draws them from FILES (or the built-in probe set).
DEFAULT_LIMITS = {"lastword": 200, "cloze": 100, "probe": 500}


@dataclass(frozen=True)
class EvalOptions:
    """Options of `clozelm.eval.evaluate`; every value is checked when the object is made."""

    seed: int = 0  # every random choice (items drawn, mask rates, masks, folds) follows from it
    stride: int | None = None  # ppl: tokens a window moves on (None: half the model's context)
    samples: int = 16  # ppl, masked models: mask rates drawn per window for the masked-diffusion bound
    # pairs scored by the bound: mask rates drawn per sentence (shared by a pair's two sentences). More than ppl's:
    # the two sentences of a pair differ by a few nats, far less than a few samples' noise on each
    pair_samples: int = 128
    pll_tokens: int = 256  # ppl of a masked model: token positions the word-l2r PLL is sampled at (0: all)
    limit: int | None = None  # items per task, pairs per phenomenon (None: all of a file, DEFAULT_LIMITS of FILES)
    lambada: Path | None = None  # lastword: lm-eval-harness JSONL, one {"text": ...} per line
    pairs: Path | None = None  # pairs: JSONL of {"good": ..., "bad": ...} (None: the built-in set)
    probe: Path | None = None  # probe: a folder with one subfolder of texts per label (None: BBC News)
    folds: int = 5  # probe: k of the k-fold cross-validation
    l2: float = 1e-3  # probe: weight of the L2 penalty on the logistic regression's weights
    probe_tokens: int = 512  # probe: tokens read from the start of each text
    masked_score: str = "auto"  # pairs, masked models: "pll", "bound" ("auto": the bound for mdlm models)
    batch_tokens: int = 4096  # tokens per forward pass (rows x length), which bounds memory
    fill_options: dict = field(default_factory=dict)  # lastword/cloze: options of clozelm.cloze.fill

    def __post_init__(self) -> None:
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise ClozelmError(message)

        def is_int(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        check(is_int(self.seed) and 0 <= self.seed < 2**63, f"seed must be a non-negative integer, not {self.seed!r}")
        check(self.stride is None or (is_int(self.stride) and self.stride >= 1),
              f"stride must be a positive integer, not {self.stride!r}")
        check(is_int(self.samples) and self.samples >= 2,
              f"samples must be an integer >= 2 (the standard error needs two), not {self.samples!r}")
        check(is_int(self.pair_samples) and self.pair_samples >= 1,
              f"pair_samples must be a positive integer, not {self.pair_samples!r}")
        check(is_int(self.pll_tokens) and self.pll_tokens >= 0, f"pll_tokens must be >= 0, not {self.pll_tokens!r}")
        check(self.limit is None or (is_int(self.limit) and self.limit >= 1),
              f"limit must be a positive integer, not {self.limit!r}")
        check(is_int(self.folds) and self.folds >= 2, f"folds must be an integer >= 2, not {self.folds!r}")
        check(isinstance(self.l2, (int, float)) and not isinstance(self.l2, bool) and math.isfinite(self.l2)
              and self.l2 >= 0, f"l2 must be a finite number >= 0, not {self.l2!r}")
        check(is_int(self.probe_tokens) and self.probe_tokens >= 1,
              f"probe_tokens must be a positive integer, not {self.probe_tokens!r}")
        check(self.masked_score in MASKED_SCORES,
              f"masked_score must be one of {', '.join(MASKED_SCORES)}, not {self.masked_score!r}")
        check(is_int(self.batch_tokens) and self.batch_tokens >= 1,
              f"batch_tokens must be a positive integer, not {self.batch_tokens!r}")
        check(isinstance(self.fill_options, dict), "fill_options must be a dict of clozelm.cloze.fill options")
        for name in ("lambada", "pairs", "probe"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))

    @classmethod
    def of(cls, options: "EvalOptions | None" = None, **changes) -> "EvalOptions":
        """`options` (or the defaults) with `changes`; an unknown name is a one-line error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ClozelmError(f"unknown eval option{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)} "
                               f"(known: {', '.join(sorted(names))})")
        if options is not None and not isinstance(options, cls):
            raise ClozelmError(f"options must be an EvalOptions, not {type(options).__name__} (or give its fields "
                               "as keywords)")
        base = options if options is not None else cls()
        return dataclasses.replace(base, **changes) if changes else base

    def limit_for(self, task: str, from_files: bool) -> int | None:
        """Items `task` takes: `limit`, or all of a file the user gave, or DEFAULT_LIMITS of FILES."""
        if self.limit is not None:
            return self.limit
        return DEFAULT_LIMITS.get(task) if from_files else None


def parse_tasks(tasks) -> tuple[str, ...]:
    """"ppl,pairs" or ["ppl", "pairs"] -> ("ppl", "pairs") in the order given, each once; "all" = every task."""
    if isinstance(tasks, str):
        tasks = [t for part in tasks.split(",") for t in [part.strip()] if t]
    names = []
    for task in tasks:
        if task == "all":
            names += [t for t in TASKS if t not in names]
            continue
        if task not in TASKS:
            raise ClozelmError(f"unknown task {task!r}: choose from {', '.join(TASKS)} (or all)")
        if task not in names:
            names.append(task)
    if not names:
        raise ClozelmError(f"no task given: choose from {', '.join(TASKS)}")
    return tuple(names)


# The tasks that read each option (seed and batch_tokens: every task).
READ_BY = {"stride": ("ppl",), "samples": ("ppl",), "pll_tokens": ("ppl",), "pair_samples": ("pairs",),
           "limit": ("lastword", "cloze", "pairs", "probe"), "lambada": ("lastword",), "pairs": ("pairs",),
           "probe": ("probe",), "folds": ("probe",), "l2": ("probe",), "probe_tokens": ("probe",),
           "masked_score": ("pairs",), "fill_options": ("lastword", "cloze")}
MASKED_ONLY = ("samples", "pll_tokens", "masked_score")  # a causal model's figures are exact: nothing to sample


def unread_options(given, tasks, causal: bool | None = None, pairs_by_bound: bool | None = None,
                   label=lambda name: name) -> str | None:
    """Why options given would be silently ignored (one line), or None: an option no task of `tasks` reads, one
    that only shapes a masked model's figures given with a causal model, or pair_samples where pairs are not
    scored by the masked-diffusion bound. `causal` / `pairs_by_bound` None: not known yet (no model loaded);
    `label` names an option as the caller's user knows it (a command-line flag, say)."""
    def listed(names, last: str) -> str:
        return ", ".join(names[:-1]) + f" {last} " + names[-1] if len(names) > 1 else names[0]

    for name in sorted(set(given) & set(READ_BY), key=list(READ_BY).index):
        readers = READ_BY[name]
        if not set(readers) & set(tasks):
            return (f"{label(name)} is read by the {listed(readers, 'and')} task{'s' if len(readers) > 1 else ''}, "
                    f"which {'are' if len(readers) > 1 else 'is'} not run here; add {listed(readers, 'or')} to the "
                    f"tasks or leave out {label(name)}")
        if causal and name in MASKED_ONLY:
            return (f"{label(name)} shapes a masked model's figures; this model is causal and scored exactly: leave "
                    f"out {label(name)}")
        if name == "pair_samples" and pairs_by_bound is False:
            return (f"{label(name)} shapes the masked-diffusion bound, and this model's pairs are scored "
                    f"{'by log-probability' if causal else 'by pseudo-log-likelihood'}: leave out {label(name)}")
    return None
