"""StudyConfig: what a study is told, checked where it is made (one `ClozelmError` line naming the field).

The fields that decide what is trained and how (`FIXED`) are recorded in DIR/study.json by the first call; a
later call in the same DIR must give the same (it continues the study, and may add objectives or seeds). The
rest (which objectives and seeds this call covers, the evaluation's items, the machine) may change.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from dataclasses import dataclass

from ..errors import ClozelmError
from ..eval import TASKS
from ..model.config import PRESET_SHAPE, PRESETS
from ..training.config import DEVICES, PRECISIONS, THREAD_LIMIT
from ..training.objectives import OBJECTIVES

DEFAULT_SHAPE = {"n_layer": 6, "n_embd": 384, "seq_len": 256}  # the embedded models' shape
HEAD_SIZE = 64  # n_head, when not given: n_embd / 64 (GPT-2's head size) but at least 2, or the nearest divisor below
SPECIALS = ("<|endoftext|>", "<|mask|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>")
# What decides the runs: a study continued in its DIR must keep these.
FIXED = ("tokens", "n_layer", "n_embd", "n_head", "seq_len", "vocab_size", "preset", "batch_size", "lr",
         "locality_warmup", "valid_every", "evals", "precision")


@dataclass(frozen=True)
class StudyConfig:
    """`clozelm.study.run_study(StudyConfig(corpus=["corpus/"], out="study", tokens=400_000, n_layer=2,
    n_embd=64))`: every objective trained at one shape, token budget and data order, `seeds` times, then
    measured by every eval task on the held-out split."""

    corpus: tuple[str, ...]  # UTF-8 text files or folders; documents separated by blank lines
    out: str  # the study directory
    objectives: tuple[str, ...] = OBJECTIVES
    tokens: int = 1_000_000  # training tokens per run (rounded down to whole optimizer steps, at least one)
    seeds: int = 2  # runs per objective, seeds 0 .. seeds-1 (init, data order, masks)
    # The shape: n_layer/n_embd/n_head/seq_len, or a preset's layers, width and heads (with seq_len). None: the
    # default (6 x 384, 256 tokens) or the preset's.
    preset: str | None = None
    n_layer: int | None = None
    n_embd: int | None = None
    n_head: int | None = None
    seq_len: int | None = None
    vocab_size: int = 8192  # of the one BPE tokenizer every run shares
    batch_size: int = 16
    lr: float | None = None  # peak learning rate (None: clozelm train's default)
    # Share of each run's steps with the locality warm-up (see training/loop.py), the same for every objective:
    # it gets a from-scratch bidirectional model off its bag-of-words plateau, which would otherwise decide a
    # small budget's comparison by itself. 0 turns it off.
    locality_warmup: float = 0.25
    valid_every: int = 50  # one document in N is held out (training's validation split and every eval task)
    # held-out evaluations per run (the loss curves' points): every steps // evals steps and at the last, so a
    # few more than `evals` where it does not divide the steps
    evals: int = 10
    # Every run's training precision (clozelm train --precision). None: the one study.json recorded when the study
    # continues; a new study's is clozelm train's default on its device (bf16 with fp32 masters where bf16
    # products run natively, fp32 elsewhere), recorded, so that a study finished on another machine class still
    # trains every objective alike.
    precision: str | None = None
    tasks: tuple[str, ...] = TASKS  # eval tasks run on every model
    # items per eval task (None: eval's own defaults, 200 passages, 100 sentences, 500 probe texts, every pair):
    # 100 keeps a small study's evaluation, which costs more than its training, to minutes
    eval_limit: int | None = 100
    # masked-diffusion bound: mask rates per window. Fewer than eval's 16: the bound's forward passes cost the
    # masked models more than every other task together, and its standard error (in the report) stays small.
    eval_samples: int = 4
    device: str = "auto"
    threads: int | None = None
    progress: bool = True
    reuse_memory: bool = False  # TrainConfig.reuse_memory for every run (`clozelm study` sets it)
    report_only: bool = False  # write the report of the runs finished so far; train and evaluate nothing

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        set_("corpus", _paths(self.corpus, "corpus"))
        if not self.corpus:
            raise ClozelmError("corpus: give at least one text file or folder")
        if not isinstance(self.out, (str, os.PathLike)) or not os.fspath(self.out):
            raise ClozelmError(f"out must be a directory path, not {self.out!r}")
        set_("out", os.fspath(self.out))
        set_("objectives", _names(self.objectives, OBJECTIVES, "objectives"))
        set_("tasks", _names(self.tasks, TASKS, "tasks"))
        for name, lo in (("tokens", 1), ("seeds", 1), ("vocab_size", 256 + len(SPECIALS)), ("batch_size", 1),
                         ("valid_every", 2), ("evals", 1), ("eval_samples", 2)):
            _int(name, getattr(self, name), lo)
        for name in ("n_layer", "n_embd", "n_head", "seq_len", "eval_limit"):
            if getattr(self, name) is not None:
                _int(name, getattr(self, name), 1)
        if self.threads is not None:
            _int("threads", self.threads, 1, THREAD_LIMIT)
        if self.preset is not None:
            if self.preset not in PRESETS:
                raise ClozelmError(f"preset must be one of {', '.join(sorted(PRESETS))}, not {self.preset!r}")
            given = [n for n in PRESET_SHAPE if getattr(self, n) is not None]
            if given:
                raise ClozelmError(f"preset fixes the shape: leave out {', '.join(given)} (or the preset)")
        if self.lr is not None and not (_real(self.lr) and self.lr > 0):
            raise ClozelmError(f"lr must be a positive number, not {self.lr!r}")
        if not (_real(self.locality_warmup) and 0 <= self.locality_warmup <= 1):
            raise ClozelmError(f"locality_warmup must be a share of the steps in [0, 1], not {self.locality_warmup!r}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ClozelmError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.device not in DEVICES:
            raise ClozelmError(f"device must be one of {', '.join(DEVICES)}, not {self.device!r}")
        for name in ("progress", "reuse_memory", "report_only"):
            if not isinstance(getattr(self, name), bool):
                raise ClozelmError(f"{name} must be true or false, not {getattr(self, name)!r}")
        if self.shape["n_embd"] % self.shape["n_head"]:
            raise ClozelmError(f"n_embd {self.shape['n_embd']} is not divisible by n_head {self.shape['n_head']}")

    # ---- derived
    @property
    def shape(self) -> dict:
        """n_layer, n_embd, n_head, seq_len as every run gets them."""
        base = dict(DEFAULT_SHAPE)
        if self.preset is not None:
            p = PRESETS[self.preset]
            base = {"n_layer": p["n_layer"], "n_embd": p["n_embd"], "n_head": p["n_head"], "seq_len": p["n_positions"]}
        for name in ("n_layer", "n_embd", "seq_len"):
            if getattr(self, name) is not None:
                base[name] = getattr(self, name)
        if self.n_head is not None:
            base["n_head"] = self.n_head
        elif "n_head" not in base or self.n_embd is not None:
            base["n_head"] = default_heads(base["n_embd"])
        return base

    @property
    def steps(self) -> int:
        return max(1, self.tokens // self.tokens_per_step)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.shape["seq_len"]

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds))

    def fixed(self) -> dict:
        """The settings study.json records (see FIXED)."""
        shape = self.shape
        return {name: shape[name] if name in shape else getattr(self, name) for name in FIXED}

    def replace(self, **changes) -> "StudyConfig":
        return dataclasses.replace(self, **changes)


def default_heads(n_embd: int) -> int:
    """Heads of HEAD_SIZE dimensions, at least two (one head cannot attend to two things at once), or the
    nearest count below that divides n_embd."""
    heads = max(2, n_embd // HEAD_SIZE)
    while n_embd % heads:
        heads -= 1
    return heads


def _real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


def _int(name: str, value, lo: int, hi: int = 2**63 - 1) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or not lo <= int(value) <= hi:
        raise ClozelmError(f"{name} must be an integer >= {lo}" + (f" and <= {hi}" if hi < 2**63 - 1 else "") +
                           f", not {value!r}")


def _paths(value, what: str) -> tuple[str, ...]:
    if isinstance(value, (str, os.PathLike)):
        value = [value]
    try:
        items = list(value)
    except TypeError:
        raise ClozelmError(f"{what} must be a list of paths, not {value!r}") from None
    if not all(isinstance(v, (str, os.PathLike)) and os.fspath(v) for v in items):
        raise ClozelmError(f"{what} must be a list of paths, not {value!r}")
    return tuple(os.fspath(v) for v in items)


def _names(value, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    """"clm,mlm" or ["clm", "mlm"] -> ("clm", "mlm"), each once, in `allowed`'s order."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    try:
        items = list(value)
    except TypeError:
        raise ClozelmError(f"{what} must be a list of names from {', '.join(allowed)}, not {value!r}") from None
    unknown = [v for v in items if v not in allowed]
    if unknown:
        raise ClozelmError(f"unknown {what[:-1]} {unknown[0]!r}: choose from {', '.join(allowed)}")
    if not items:
        raise ClozelmError(f"{what}: name at least one of {', '.join(allowed)}")
    return tuple(a for a in allowed if a in items)
