"""TrainConfig: everything a training run is told, checked where it is made.

One dataclass for the Python API (`clozelm.train(TrainConfig(...))`) and the CLI (`clozelm train`, which
only turns its flags into a TrainConfig). Every field is checked in __post_init__ for its type and range
(an integer is not a bool or 6.5; a float is finite); a wrong value is one `InvalidTrainConfig` line naming
the field, and `describe(names)` lets the CLI name it as its flag (`--mask-rate` for `mask_rate`).

None means "automatic": for a new run, the default (or a value that follows from the model: the objective,
the sequence length, the learning rate with `init`, the warm-up); when resuming, the run's own value. So a
resume is just `TrainConfig(out=RUN, resume=True)`, and a field given on resume must agree with the run.

Fields by what they decide (`GROUP` of each field):

    recipe     what is computed: recorded in RUN/run.json ("train"); a resume refuses a change
    schedule   when things are evaluated, saved or logged: recorded, and a resume may change them (not what a
               held-out loss is measured on or whether the best one is kept: the best so far is compared
               with the losses to come, so those are the recipe's)
    setup      how the model and data were set up: recorded ("setup"); a resume refuses a change
    numerics   the machine settings that change float results (device, threads, compile): recorded
               ("numerics") and restored on resume; a resume refuses a different value (see numerics.py)
    session    this call only: where, what to read, resume/overwrite, output, a step limit, memory reuse
"""

from __future__ import annotations

import math
import numbers
import os
import re
from dataclasses import dataclass, field, fields, replace

from ..errors import ClozelmError
from ..model.config import PRESET_SHAPE, PRESETS
from ..model.device import DEVICES
from .objectives import HYBRID_CAUSAL_SHARE, OBJECTIVES

PRECISIONS = ("bf16-master", "bf16", "fp32")  # see training/precision.py
# Fields added after runs were recorded without them: a recorded run that lacks one computed it this way.
LEGACY_VALUES = {"fused_loss": False, "hybrid_causal_share": HYBRID_CAUSAL_SHARE, "eval_spread": False,
                 "keep_best": True}
# A from-scratch network's layout (see runner._model_config): GPT-2's pre-LN blocks with the output tied to the
# embeddings (bidirectional for mlm and mdlm), or BERT's post-LN blocks with its MLM head (mlm and mdlm only).
LAYOUTS = ("gpt2", "bert")
INT_LIMIT = 2**63 - 1  # torch keeps sizes, seeds and counts in 64 bits
THREAD_LIMIT = 1024
# Far above what fits in memory or time: a typo is one line, not a long wait for an allocation that fails.
BATCH_LIMIT, ACCUM_LIMIT = 2**16, 2**20


class InvalidTrainConfig(ClozelmError):
    """Fields of a TrainConfig with a wrong type, range or combination: `problems` holds (field, what is
    wrong), so the CLI can name each field as its flag. The text may name other fields as {field}."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__(self.describe())

    def describe(self, names: dict[str, str] | None = None) -> str:
        names = names or {}

        def named(match: re.Match) -> str:  # only {field} of a TrainConfig field: the text holds user values too
            return names.get(match.group(1), match.group(1)) if match.group(1) in FIELD_NAMES else match.group(0)

        return "; ".join(f"{names.get(name, name)} {_FIELD_REF.sub(named, text)}" for name, text in self.problems)


_FIELD_REF = re.compile(r"\{(\w+)\}")


def _opt(group: str, kind: str, default=None, *, lo=None, hi=None, lo_open=False, hi_open=False, choices=(),
         value=None):
    """A field that is None until set (see the module docstring); `default` is its value for a new run."""
    return field(default=value, metadata=dict(group=group, kind=kind, default=default, lo=lo, hi=hi,
                                              lo_open=lo_open, hi_open=hi_open, choices=tuple(choices)))


@dataclass
class TrainConfig:
    """A training run (new or resumed): `clozelm.train(TrainConfig(files=["corpus/"], tokenizer="bpe/",
    out="runs/small", steps=2000))`, later `clozelm.train(TrainConfig(out="runs/small", resume=True))`."""

    # ---- session: this call
    files: tuple[str, ...] = _opt("session", "paths", value=())  # UTF-8 text files or folders of them
    out: str | None = _opt("session", "path")  # the run directory (required to train)
    resume: bool = _opt("session", "bool", value=False)  # continue the run in `out` from its checkpoint
    overwrite: bool = _opt("session", "bool", value=False)  # start over in `out` (its token cache is kept)
    progress: bool = _opt("session", "bool", value=True)  # the per-step progress line (messages are printed anyway)
    stop_after: int | None = _opt("session", "int", lo=1)  # stop (with a checkpoint) after this many steps of this call
    # CPU runs: keep freed memory in the process for the next step (glibc's malloc; results unchanged). A setting
    # of the whole process that outlives the call, so off unless asked; `clozelm train` asks. See memory.py.
    reuse_memory: bool = _opt("session", "bool", value=False)

    # ---- setup: the model and the data
    init: str | None = _opt("setup", "path")  # fine-tune this model (a name or path; train() takes it loaded)
    tokenizer: str | None = _opt("setup", "path")  # tokenizer directory (required unless init has one)
    preset: str | None = _opt("setup", "str", choices=sorted(PRESETS))  # model shape preset (from scratch)
    n_layer: int | None = _opt("setup", "int", 6, lo=1)
    n_embd: int | None = _opt("setup", "int", 384, lo=1)
    n_head: int | None = _opt("setup", "int", 6, lo=1)
    n_positions: int | None = _opt("setup", "int", 256, lo=1)
    n_inner: int | None = _opt("setup", "int", lo=1)  # MLP width (None: 4 x n_embd)
    layout: str | None = _opt("setup", "str", choices=LAYOUTS)  # None: bert for mlm/mdlm, gpt2 for the rest
    dropout: float | None = _opt("setup", "float", lo=0.0, hi=1.0, hi_open=True)  # 0 from scratch; init's own
    valid: tuple[str, ...] | None = _opt("setup", "paths")  # held-out text; None: every valid_every'th document
    valid_every: int | None = _opt("setup", "int", 50, lo=0)  # hold out one document in N (0: no held-out split)
    skip_bad_files: bool = _opt("setup", "bool", value=False)  # skip non-UTF-8/binary files with a warning

    # ---- recipe: what is computed (the order of run.json's "train")
    objective: str | None = _opt("recipe", "str", choices=OBJECTIVES)  # clm/mlm from the model; fim needs asking
    seq_len: int | None = _opt("recipe", "int", lo=1)  # tokens per sequence (default: the model's n_positions)
    batch_size: int | None = _opt("recipe", "int", 16, lo=1, hi=BATCH_LIMIT)  # sequences per micro-batch per process
    grad_accum: int | None = _opt("recipe", "int", 1, lo=1, hi=ACCUM_LIMIT)  # micro-batches per optimizer step
    steps: int | None = _opt("recipe", "int", 1000, lo=1)  # optimizer steps
    lr: float | None = _opt("recipe", "float", lo=0.0, lo_open=True)  # peak learning rate (6e-4; 1e-4 with init)
    min_lr_ratio: float | None = _opt("recipe", "float", 0.1, lo=0.0, hi=1.0)  # final lr as a fraction of lr
    warmup: int | None = _opt("recipe", "int", lo=0)  # linear warm-up steps (default min(100, steps // 10))
    weight_decay: float | None = _opt("recipe", "float", 0.1, lo=0.0)
    beta1: float | None = _opt("recipe", "float", 0.9, lo=0.0, hi=1.0, hi_open=True)
    beta2: float | None = _opt("recipe", "float", 0.95, lo=0.0, hi=1.0, hi_open=True)
    adam_eps: float | None = _opt("recipe", "float", 1e-8, lo=0.0, lo_open=True)
    grad_clip: float | None = _opt("recipe", "float", 1.0, lo=0.0)  # 0 = no clipping
    # bf16-master: bf16 weights, fp32 master copies for the optimizer; bf16: autocast over fp32 weights
    precision: str | None = _opt("recipe", "str", "bf16-master", choices=PRECISIONS)
    fused_loss: bool | None = _opt("recipe", "bool", True)  # vocabulary projection + cross-entropy in one pass
    seed: int | None = _opt("recipe", "int", 0, lo=0)  # init, data order, masks, dropout
    # ---- schedule
    eval_every: int | None = _opt("schedule", "int", 200, lo=0)  # 0 = only at the end
    eval_examples: int | None = _opt("recipe", "int", 256, lo=1)  # held-out sequences per evaluation
    # those sequences spread evenly over the held-out split (False: its first ones, which may all come from the
    # first of several sources)
    eval_spread: bool | None = _opt("recipe", "bool", True)
    checkpoint_every: int | None = _opt("schedule", "int", 200, lo=0)  # 0 = only at the end (and on a stop)
    # the run's model: the evaluated weights with the lowest held-out loss (False: the last step's, for when the
    # held-out text is a test set that nothing may be chosen on)
    keep_best: bool | None = _opt("recipe", "bool", True)
    log_every: int | None = _opt("schedule", "int", 10, lo=0)  # progress lines when stderr is not a terminal (0: each step)
    # ---- recipe, continued
    fim_rate: float | None = _opt("recipe", "float", 0.5, lo=0.0, hi=1.0)  # fim: share of stretches reordered
    spm_rate: float | None = _opt("recipe", "float", 0.5, lo=0.0, hi=1.0)  # fim: share of those in SPM order
    mask_rate: float | None = _opt("recipe", "float", 0.15, lo=0.0, hi=1.0, lo_open=True, hi_open=True)  # mlm, hybrid
    locality_warmup: int | None = _opt("recipe", "int", 0, lo=0)  # steps of the fading attention distance penalty
    # hybrid: share of rows trained causally, the rest as masked next-token prediction (1/16: GPT-BERT's 1:15)
    hybrid_causal_share: float | None = _opt("recipe", "float", HYBRID_CAUSAL_SHARE, lo=0.0, hi=1.0)
    world_size: int | None = _opt("recipe", "int", lo=1)  # set by train(): the number of processes

    # ---- numerics: machine settings that change the float results
    device: str | None = _opt("numerics", "str", "auto", choices=DEVICES)
    threads: int | None = _opt("numerics", "int", lo=1, hi=THREAD_LIMIT)  # CPU threads (default: torch's)
    # torch.compile the model (default: where it pays, numerics.compile_by_default)
    compile: bool | None = _opt("numerics", "bool")

    def __post_init__(self) -> None:
        problems = []
        for f in fields(self):
            ok, value, wanted = _checked(getattr(self, f.name), f.metadata)
            if ok:
                setattr(self, f.name, value)
            else:
                problems.append((f.name, f"must be {wanted}, got {_shown(value)}"))
        if not problems and self.resume and self.overwrite:
            problems.append(("resume", "and {overwrite} contradict each other"))
        if not problems and self.valid is not None and self.valid_every is not None:
            problems.append(("valid_every", "holds out part of the training text, and {valid} gives the held-out "
                                            "text itself: give one of them"))
        if not problems and self.valid_every == 1:
            problems.append(("valid_every", "1 would hold out every document: give 0 (no held-out split) or 2 or more"))
        if not problems and self.preset is not None:
            given = [name for name in PRESET_SHAPE if getattr(self, name) is not None]
            if given:  # as `clozelm study` has it: a preset is a shape, not defaults to override one by one
                problems.append((given[0], "and {preset} contradict each other: the preset fixes the layers, the "
                                           "width and the heads"))
        if problems:
            raise InvalidTrainConfig(problems)

    # ---- derived
    @property
    def examples_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.world_size

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """A config from a recorded dict (run.json's "train", a checkpoint's "train_config"); unknown keys
        (from another version) are left out."""
        if not isinstance(d, dict):
            raise ClozelmError(f"a training config must be an object of settings, got {_shown(d)}")
        known = {f.name for f in fields(cls)}
        return cls(**{**LEGACY_VALUES, **{k: v for k, v in d.items() if k in known}})

    def recipe(self) -> dict:
        """The recipe and schedule fields (run.json's "train")."""
        return {name: getattr(self, name) for name in names_in("recipe", "schedule")}

    def given(self, group: str) -> dict:
        """The fields of `group` that were set: not None, and for a flag not False where False is what it means
        unset (a flag whose default is True, such as fused_loss, is given when False)."""
        return {name: getattr(self, name) for name in names_in(group)
                if getattr(self, name) is not None
                and not (getattr(self, name) is False and default_of(name) in (None, False))}

    def with_defaults(self, group: str, **decided) -> "TrainConfig":
        """A copy with every unset field of `group` given its default, or the value in `decided`."""
        values = {}
        for f in fields(self):
            if f.metadata["group"] == group and getattr(self, f.name) is None:
                values[f.name] = decided[f.name] if decided.get(f.name) is not None else f.metadata["default"]
        return replace(self, **values)


FIELD_NAMES = frozenset(f.name for f in fields(TrainConfig))


def names_in(*groups: str) -> list[str]:
    return [f.name for f in fields(TrainConfig) if f.metadata["group"] in groups]


def default_of(name: str):
    """The value a new run gives field `name` when it is not set."""
    return next(f.metadata["default"] for f in fields(TrainConfig) if f.name == name)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# ---------------------------------------------------------------- checking one value


def _checked(value, meta) -> tuple[bool, object, str]:
    """(True, the value normalised) or (False, the value, what was wanted)."""
    kind = meta["kind"]
    if value is None:
        return True, None, ""
    if kind == "bool":
        return isinstance(value, bool), value, "true or false"
    if kind == "paths":
        return _paths(value)
    if kind == "path":
        if isinstance(value, (str, os.PathLike)) and os.fspath(value) != "":
            return True, os.fspath(value), ""
        return False, value, "a path"
    if kind == "str":
        choices = meta["choices"]
        ok = isinstance(value, str) and value in choices
        return ok, value, "one of " + ", ".join(choices)
    if kind == "int":
        lo, hi = meta["lo"], meta["hi"] if meta["hi"] is not None else INT_LIMIT
        wanted = f"an integer from {lo} to {hi}" if meta["hi"] is not None else f"an integer >= {lo}"
        if isinstance(value, numbers.Integral) and not isinstance(value, bool) and lo <= int(value) <= hi:
            return True, int(value), ""
        return False, value, wanted
    # float
    wanted = _float_range(meta)
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return False, value, wanted
    try:
        number = float(value)
    except OverflowError:
        return False, value, wanted
    lo, hi = meta["lo"], meta["hi"]
    if not math.isfinite(number) or (lo is not None and (number <= lo if meta["lo_open"] else number < lo)) or \
            (hi is not None and (number >= hi if meta["hi_open"] else number > hi)):
        return False, value, wanted
    return True, number, ""


def _float_range(meta) -> str:
    lo, hi = meta["lo"], meta["hi"]
    if hi is None:
        return f"a finite number {'>' if meta['lo_open'] else '>='} {lo:g}"
    return f"a number in {'(' if meta['lo_open'] else '['}{lo:g}, {hi:g}{')' if meta['hi_open'] else ']'}"


def _paths(value) -> tuple[bool, object, str]:
    wanted = "a list of paths"
    if isinstance(value, (str, os.PathLike)):  # one path, not its characters
        value = [value]
    try:
        items = list(value)
    except TypeError:
        return False, value, wanted
    if not all(isinstance(v, (str, os.PathLike)) and os.fspath(v) != "" for v in items):
        return False, value, wanted
    return True, tuple(os.fspath(v) for v in items), ""


def _shown(value) -> str:
    text = repr(value) if not isinstance(value, int) or value.bit_length() < 200 else \
        f"an integer of {value.bit_length()} bits"
    return text if len(text) <= 60 else text[:57] + "..."
