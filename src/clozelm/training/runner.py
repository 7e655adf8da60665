"""`train(config, init=..., callbacks=...)`: a training run from Python, new or resumed, returning a `Run`.

Order of work, so that bad input costs nothing: every option and input file is checked, the tokenizer read
and the model configured before the run directory is created; then the directory is locked (one process
trains in a run directory at a time), set up, and trained in. In DDP (torchrun) rank 0 does the set-up and
the other ranks read what it wrote.

A resume keeps the run's settings: what `config` leaves unset comes from RUN/run.json, what it gives must
agree (except when evaluations, checkpoints and log lines happen), and the machine settings that change
the arithmetic are restored (numerics.py), so a resumed run continues the uninterrupted one exactly.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..errors import ClozelmError
from ..files import expand_inputs
from ..loaded import Model
from ..model.config import PRESETS, ModelConfig
from ..model.device import has_bf16_units
from ..model.transformer import Transformer
from ..tokenizers import load_tokenizer
from ..weights.hf import save_pretrained
from . import checkpoint as ckpt
from . import numerics as num
from . import rundir
from .config import InvalidTrainConfig, TrainConfig, default_of, flag, names_in
from .data import CorpusFiles, TokenData, build_token_cache, check_corpus, token_cache_key
from .distributed import Dist, init_distributed, on_main
from .loop import Callback, Trainer
from .memory import reuse_freed_memory
from .objectives import BIDIRECTIONAL, OBJECTIVES, make_objective
from .precision import default_precision

SETTINGS_VERSION = 1
DEFAULT_LR, DEFAULT_INIT_LR = 6e-4, 1e-4


@dataclass(frozen=True)
class Run:
    """A training run as `train` leaves it: where its files are and how far it got."""

    dir: Path
    step: int  # optimizer steps done
    steps: int  # the run's total
    train_loss: float | None  # the loss of the last step trained (None: no step trained in this call)
    best_val_loss: float | None  # the lowest held-out loss (None: no held-out evaluation yet)
    best_step: int | None  # its step
    tokens_seen: int
    stopped: str | None = None  # why the run stopped before its last step (stop_after, a callback), else None

    @property
    def complete(self) -> bool:
        return self.step >= self.steps

    @property
    def model_dir(self) -> Path:
        """The trained model (Hugging Face format, tokenizer included), written when the run completes."""
        return self.dir / rundir.MODEL_DIR

    @property
    def checkpoint(self) -> Path:
        return self.dir / ckpt.CHECKPOINT

    @property
    def settings(self) -> Path:
        return self.dir / rundir.RUN_FILE

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.jsonl"

    @property
    def metrics_csv(self) -> Path:
        return self.dir / "metrics.csv"

    @property
    def loss_curve(self) -> Path:
        return self.dir / "loss_curve.png"


@dataclass
class _Setup:
    """What set-up hands to the loop (on every rank)."""
    settings: dict
    config: TrainConfig  # complete: every recipe field decided
    numerics: num.Numerics
    init: Model | None = None
    model: Transformer | None = None  # built by rank 0's set-up of a new run, before the directory was made

    @property
    def numerics_recorded(self) -> bool:
        return "numerics" in self.settings


def train(config: TrainConfig, *, init: Model | None = None, callbacks: Iterable[Callback] = (),
          resume_command: str | None = None) -> Run:
    """Train as `config` says: a new run in `config.out`, or (config.resume) continue the run there.

    `init` is the loaded model to fine-tune (`config.init` names it; `clozelm.train` loads it by that name).
    `callbacks` are called after every step as `callback(trainer, record)` (see loop.py). Ctrl-C / SIGTERM
    save a checkpoint and raise `loop.Stopped` (a KeyboardInterrupt); `stop_after` or a callback's
    `trainer.request_stop()` save one and return the incomplete Run. `resume_command` is what the message at
    such a stop tells the user to run to continue (default: `clozelm train --resume --out RUN`).
    """
    if not isinstance(config, TrainConfig):
        raise ClozelmError(f"train() takes a TrainConfig, not {type(config).__name__}")
    config = replace(config)  # checked again: the caller may have changed fields since it was made
    if config.out is None:
        raise InvalidTrainConfig([("out", "is required: the run directory")])
    if not config.resume and not config.files:
        raise InvalidTrainConfig([("files", "are required for a new run: text files or folders "
                                            "(or {resume} to continue a run)")])
    if init is not None and not isinstance(init, Model):
        raise ClozelmError(f"init must be a loaded clozelm Model (clozelm.load(...)), not {type(init).__name__}")
    if config.init is not None and init is None and not config.resume:
        raise ClozelmError(f"init {config.init!r} is a name: pass the loaded model as train(config, init=...) "
                           "or call clozelm.train(config), which loads it")
    run_dir = Path(config.out)
    d = init_distributed(_group_device(config, run_dir))
    lock = rundir.RunLock(run_dir)
    try:
        setup = on_main(d, lambda: _prepare(config, run_dir, lock, d, init))
        if setup is None:  # another rank: read what rank 0 wrote
            setup = _Setup(rundir.read_settings(run_dir), None, None, init)
            setup.config = _complete_config(config, setup.settings, d.world)
            setup.numerics = num.Numerics.from_dict(setup.settings["numerics"], str(run_dir / rundir.RUN_FILE)) \
                if "numerics" in setup.settings else num.for_new_run(config)
        with num.applied(setup.numerics):
            return _train(setup, run_dir, d, callbacks, resume_command)
    except OSError as e:  # a full disk, a file made read-only: what is on disk is whole (atomic writes)
        raise ClozelmError(f"{e.filename or run_dir}: {e.strerror or type(e).__name__}") from None
    except (MemoryError, RuntimeError) as e:
        if not _out_of_memory(e):
            raise
        raise ClozelmError("out of memory: use a smaller model, --batch-size or --seq-len (more --grad-accum keeps "
                           "the batch)") from None
    finally:
        lock.release()
        d.close()


def _out_of_memory(e: BaseException) -> bool:
    return isinstance(e, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in str(e)


def _group_device(config: TrainConfig, run_dir: Path) -> str:
    """The device the process group is made for: the run's own when resuming (gloo or NCCL follow it)."""
    if config.resume and config.device in (None, "auto"):
        try:
            recorded = rundir.read_settings(run_dir).get("numerics", {}).get("device")
        except ClozelmError:
            recorded = None  # set-up will say what is wrong
        if recorded in ("cpu", "cuda"):
            return "cuda" if recorded == "cuda" and torch.cuda.is_available() else "cpu"
    return num.resolve_device(config.device)


# ---------------------------------------------------------------- the run


def _train(setup: _Setup, run_dir: Path, d: Dist, callbacks, resume_command: str | None = None) -> Run:
    cfg, settings = setup.config, setup.settings
    tok = load_tokenizer(run_dir / rundir.TOKENIZER_DIR)
    data = TokenData.open(run_dir / rundir.TOKENS_DIR / settings["data_key"])
    state = None
    model_cfg = _read_model_config(settings, run_dir)
    if cfg.resume:
        state = ckpt.load_checkpoint_file(run_dir / ckpt.CHECKPOINT)
        model = Transformer(model_cfg)
    else:
        model = setup.model or _build_model(model_cfg, setup.init, cfg.seed)
    objective = make_objective(cfg.objective, tok, model.config.vocab_size, cfg.fim_rate, cfg.spm_rate, cfg.mask_rate,
                               cfg.hybrid_causal_share)
    # Dropout streams: rank 0 continues the seeded stream, other ranks get their own.
    if d.rank:
        torch.manual_seed(cfg.seed + 1_000_003 * d.rank)
    trainer = Trainer(model, objective, data, cfg, run_dir, d, compile=setup.numerics.compile, progress=cfg.progress,
                      callbacks=callbacks, resume_command=resume_command)
    if state is not None:
        trainer.load_checkpoint(state)
        how = ", as the run started" if setup.numerics_recorded else ""
        trainer.progress.message(f"resuming {run_dir} at step {trainer.step}/{cfg.steps} "
                                 f"({num.describe(setup.numerics)}{how})")
    if cfg.reuse_memory and setup.numerics.device == "cpu":
        reuse_freed_memory()
    stopped = trainer.fit(stop_after=cfg.stop_after)
    if stopped is None and d.main:
        best_step = trainer.load_best_weights()
        model = trainer.full_precision_model()
        model.config.extra["objective"] = cfg.objective
        save_pretrained(model, run_dir / rundir.MODEL_DIR, tokenizer=tok, overwrite=True)
        if best_step is not None:
            saved = (f"the weights of step {best_step} (lowest held-out loss, {trainer.best_val:.4f}; the last "
                     f"step's are in {ckpt.CHECKPOINT})")
        elif not cfg.keep_best:
            saved = "the last step's weights (not chosen on the held-out text)"
        elif math.isfinite(trainer.best_val):
            saved = f"held-out loss {trainer.best_val:.4f}"
        else:
            saved = "no held-out evaluation"
        trainer.progress.message(f"done: {trainer.step} steps, {trainer.tokens_seen:,} tokens; model saved to "
                                 f"{run_dir / rundir.MODEL_DIR}: {saved}")
    d.barrier()
    return Run(dir=run_dir, step=trainer.step, steps=cfg.steps, train_loss=trainer.last_loss,
               best_val_loss=trainer.best_val if math.isfinite(trainer.best_val) else None,
               best_step=trainer.best_step if math.isfinite(trainer.best_val) else None,
               tokens_seen=trainer.tokens_seen, stopped=stopped)


def _read_model_config(settings: dict, run_dir: Path) -> ModelConfig:
    try:
        return ModelConfig.from_dict(settings["model"])
    except ClozelmError as e:
        raise ClozelmError(f"{run_dir / rundir.RUN_FILE} is damaged: {e}") from None


def _build_model(cfg: ModelConfig, init: Model | None, seed: int) -> Transformer:
    """The run's starting weights: seeded random init, or the init model's (the same on every rank)."""
    torch.manual_seed(seed)
    model = Transformer(cfg)
    if init is not None:
        model.load_state_dict(init.network.state_dict())
        model.float()
    return model


# ---------------------------------------------------------------- set-up (rank 0)


def _prepare(config: TrainConfig, run_dir: Path, lock: rundir.RunLock, d: Dist, init: Model | None) -> _Setup:
    return _reopen(config, run_dir, lock, d) if config.resume else _set_up(config, run_dir, lock, d, init)


def _reopen(config: TrainConfig, run_dir: Path, lock: rundir.RunLock, d: Dist) -> _Setup:
    """Check a resume against the run, without changing anything but the (reused) token cache."""
    if not (run_dir / rundir.RUN_FILE).is_file():
        rundir.read_settings(run_dir)  # the one-line reason
    lock.acquire()
    settings = rundir.read_settings(run_dir)
    _refuse_changes(config, settings)
    cfg = _complete_config(config, settings, d.world)
    if cfg.precision != "fp32" and not has_bf16_units(d.device) and d.main:
        _say(f"clozelm: note: the run trains in {cfg.precision}, which {_device_name(d.device)} emulates (no bf16 "
             "units): slower than fp32, which only a new run can choose")
    where = str(run_dir / rundir.RUN_FILE)
    numerics = num.for_resume(config, num.Numerics.from_dict(settings["numerics"], where), _say) \
        if "numerics" in settings else num.for_new_run(config)
    if not (run_dir / ckpt.CHECKPOINT).is_file():
        raise ClozelmError(f"{run_dir} has no {ckpt.CHECKPOINT} to resume from (none was written yet, or it was "
                           "removed); start the run again with --overwrite (its token cache is kept)")
    inputs = settings["inputs"]
    corpus = CorpusFiles([Path(f) for f in inputs["train"]],
                         [Path(f) for f in inputs["valid"]] if inputs["valid"] is not None else None,
                         inputs["valid_every"])
    tok = load_tokenizer(run_dir / rundir.TOKENIZER_DIR)
    checked = check_corpus(corpus, inputs["skip_bad_files"], _say)
    if token_cache_key(checked, tok) != settings["data_key"]:  # before tokenizing a changed corpus for nothing
        raise ClozelmError(f"the input files of {run_dir} changed since the run started; resume needs the same "
                           "data (or start a new run)")
    build_token_cache(run_dir / rundir.TOKENS_DIR, checked, tok)
    if d.main:
        removed = rundir.remove_interrupted_writes(run_dir)
        if removed:
            _say(f"clozelm: note: removed what an interrupted write left: {', '.join(removed)}")
    return _Setup(settings, cfg, numerics)


def _complete_config(config: TrainConfig, settings: dict, world: int) -> TrainConfig:
    """The resumed run's config: its recorded recipe, with the schedule fields `config` gives."""
    try:
        recorded = TrainConfig.from_dict(settings["train"])
    except ClozelmError as e:
        raise ClozelmError(f"the training settings in run.json are damaged: {e}") from None
    if any(getattr(recorded, name) is None for name in names_in("recipe")):
        raise ClozelmError("the training settings in run.json are incomplete")
    changes = {name: getattr(recorded, name) for name in names_in("recipe")}
    changes.update({name: getattr(config, name) if getattr(config, name) is not None else getattr(recorded, name)
                    for name in names_in("schedule")})
    if recorded.world_size != world:
        raise ClozelmError(f"the run was set up for {recorded.world_size} process(es) but {world} are running")
    return replace(config, **changes)


def _refuse_changes(config: TrainConfig, settings: dict) -> None:
    """A resumed run keeps its settings: changing them would silently break the identical continuation."""
    if config.files:  # compared as absolute paths (runs recorded before that hold the paths as given)
        given = [p.resolve() for p in expand_inputs(config.files, exclude=[Path(config.out)])]
        if given != [Path(f).resolve() for f in settings["inputs"]["train"]]:
            raise InvalidTrainConfig([("files", "differ from the run's: a resumed run continues with its own "
                                                "input files; leave them out")])
    problems = []
    for name, value in config.given("recipe").items():
        if value != settings["train"].get(name):
            problems.append((name, f"{value} differs from the run's {settings['train'].get(name)}; a resumed run "
                                   "keeps its settings (start a new run to change them)"))
    recorded = settings.get("setup", {})
    for name, value in config.given("setup").items():
        if _jsonable(value) != recorded.get(name):
            problems.append((name, f"{value} differs from the run's {recorded.get(name)}; a resumed run keeps its "
                                   "settings (start a new run to change them)"))
    if problems:
        raise InvalidTrainConfig(problems[:1])


def _set_up(config: TrainConfig, run_dir: Path, lock: rundir.RunLock, d: Dist, init: Model | None) -> _Setup:
    """Check everything, then create, lock and fill the run directory."""
    rundir.check_new_run_dir(run_dir, config.overwrite)
    # --overwrite clears the previous run before training: the model this run starts from must not be in it (it
    # would exist only in memory until this run saves its own, and be lost if this run stops before that)
    init_path = Path(config.init).expanduser() if isinstance(config.init, (str, Path)) else None
    if run_dir.is_dir() and init_path is not None and init_path.exists() and \
            init_path.resolve().is_relative_to(run_dir.resolve()):
        raise ClozelmError(f"--init {config.init} is inside {run_dir}, which --overwrite clears before training: copy "
                           "it elsewhere first, or train into another --out")
    # A new run writes its own tokenizer folder, clearing what was there: the tokenizer it reads must live elsewhere.
    tokenizer_path = Path(config.tokenizer).expanduser() if config.tokenizer is not None else None
    if run_dir.is_dir() and tokenizer_path is not None and tokenizer_path.exists() and \
            tokenizer_path.resolve().is_relative_to(run_dir.resolve()):
        raise ClozelmError(f"--tokenizer {config.tokenizer} is inside {run_dir}, where a new run writes its own "
                           "tokenizer folder: copy it elsewhere first, or train into another --out")
    files = expand_inputs(config.files, exclude=[run_dir])  # a run inside its corpus folder does not read itself
    valid = expand_inputs(config.valid, exclude=[run_dir]) if config.valid is not None else None
    both = sorted({f.resolve() for f in files} & {f.resolve() for f in valid or []})
    if both:
        raise ClozelmError(f"{both[0]} is both training and held-out text ({len(both)} file(s) in both); held-out "
                           "text must be unseen: take it out of FILES_OR_DIRS or --valid")
    corpus = CorpusFiles(files, valid, default_of("valid_every") if config.valid_every is None else config.valid_every)
    tok = init.tokenizer if init is not None else None
    if config.tokenizer is not None:
        tok = load_tokenizer(Path(config.tokenizer))
    if tok is None:
        raise ClozelmError(f"{_init_name(config, init)} has no tokenizer files; pass --tokenizer DIR" if init
                           else "a from-scratch run needs --tokenizer DIR (train one with: clozelm tokenizer train)")
    model_cfg = _model_config(config, init, tok)
    cfg = _new_run_config(config, model_cfg, init is not None, d)
    objective = make_objective(cfg.objective, tok, model_cfg.vocab_size)  # missing special tokens: before tokenizing
    numerics = num.for_new_run(config, cfg.steps, d.world)
    checked = check_corpus(corpus, config.skip_bad_files, _say)  # every file read and checked once
    model = _build_model(model_cfg, init, cfg.seed)  # a model too big for memory fails here, before any file is made

    try:
        run_dir.mkdir(parents=True, exist_ok=True)  # nothing was created before this line
    except OSError as e:
        raise ClozelmError(f"cannot create {run_dir}: {e.strerror}") from None
    lock.acquire()
    rundir.check_new_run_dir(run_dir, config.overwrite)  # again, now that no other process can change it
    # Tokenized into the token cache (which --overwrite keeps) and checked before the previous run is removed:
    # a command that fails on its text leaves that run as it was.
    data = build_token_cache(run_dir / rundir.TOKENS_DIR, checked, tok)
    if len(data.train.windows(cfg.seq_len + objective.extra_tokens, cfg.seq_len)) == 0:
        raise ClozelmError(f"the training split has {data.train.n_tokens} tokens, fewer than one sequence of "
                           f"{cfg.seq_len + objective.extra_tokens}; use more text or a smaller --seq-len")
    rundir.clear_for_new_run(run_dir)
    tok.save_pretrained(run_dir / rundir.TOKENIZER_DIR)
    tok = load_tokenizer(run_dir / rundir.TOKENIZER_DIR)  # the copy every rank and every resume will use
    data = build_token_cache(run_dir / rundir.TOKENS_DIR, checked, tok)  # the same tokens, found by their key
    settings = {
        "version": SETTINGS_VERSION,
        "train": cfg.recipe(),
        "model": model_cfg.to_dict(),
        "init": _init_name(config, init),
        # absolute: a resume from another working directory opens the same files
        "inputs": {"train": [str(p.resolve()) for p in files],
                   "valid": None if valid is None else [str(p.resolve()) for p in valid],
                   "valid_every": corpus.valid_every, "skip_bad_files": bool(config.skip_bad_files)},
        "data_key": data.key,
        "setup": {name: _jsonable(getattr(config, name)) for name in names_in("setup")},
        "numerics": numerics.to_dict(),
        "command": sys.argv,
    }
    rundir.write_settings(run_dir, settings)
    return _Setup(settings, cfg, numerics, init, model)


def _init_name(config: TrainConfig, init: Model | None) -> str | None:
    if config.init is not None:
        return config.init
    return init.name if init is not None else None


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "this CPU"


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _jsonable(value):
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value if isinstance(value, (bool, int, float, type(None))) else str(value)


_PROBE_TEXT = "The quick brown fox, 1984: naïve café!\n\tA second line."  # two tokenizers that differ, differ here


def _model_config(config: TrainConfig, init: Model | None, tok) -> ModelConfig:
    shape = {k: getattr(config, k) for k in ("n_layer", "n_embd", "n_head", "n_positions", "n_inner")
             if getattr(config, k) is not None}
    if init is not None:
        name = _init_name(config, init)
        if shape or config.preset or config.layout:
            raise ClozelmError(f"{flag('init')} fixes the model's shape; leave out --preset/--n-layer/--n-embd/"
                               "--n-head/--n-positions/--n-inner/--layout")
        cfg = init.config
        if cfg.head is None:
            raise ClozelmError(f"{name} has no language-model head (a headless encoder); it cannot be trained here")
        if tok.vocab_size > cfg.vocab_size:
            raise ClozelmError(f"the tokenizer has {tok.vocab_size} tokens but {name} only {cfg.vocab_size} embeddings")
        own = init.tokenizer
        if own is not None and tok is not own and (own.vocab_size != tok.vocab_size
                                                   or own.encode(_PROBE_TEXT) != tok.encode(_PROBE_TEXT)):
            raise ClozelmError(f"--tokenizer is not {name}'s own tokenizer ({tok.vocab_size:,} tokens, {name}'s "
                               f"{own.vocab_size:,}): its embeddings belong to its own ids; leave --tokenizer out")
        objective = config.objective or _default_objective(init)
        if cfg.causal and objective in BIDIRECTIONAL:
            raise ClozelmError(f"{name} is a causal model; --objective {objective} needs a bidirectional (BERT) model")
        if not cfg.causal and objective not in BIDIRECTIONAL:
            raise ClozelmError(f"{name} is a bidirectional model; --objective {objective} needs a causal model")
        changes = {"extra": {**cfg.extra, "objective": objective}}
        if config.dropout is not None:
            changes["dropout"] = config.dropout
        return cfg.replace(**changes)

    # not told: BERT's for a BERT preset or layout, GPT-2's otherwise
    bert = config.layout == "bert" or (config.preset is not None and not PRESETS[config.preset].get("causal", True))
    objective = config.objective or ("mlm" if bert else "clm")
    defaults = {f: default_of(f) for f in ("n_layer", "n_embd", "n_head", "n_positions")}
    base = dict(PRESETS[config.preset]) if config.preset else dict(ModelConfig().to_dict(), **defaults, extra={})
    base.update(shape)
    if not config.preset and "n_inner" not in shape:
        base["n_inner"] = None
    base.update(vocab_size=tok.vocab_size, dropout=config.dropout or 0.0, extra={"objective": objective},
                eos_token_id=tok.eos_id, bos_token_id=tok.eos_id, pad_token_id=tok.pad_id, pooler=False)
    bidirectional = objective in BIDIRECTIONAL
    layout = config.layout or ("bert" if bidirectional else "gpt2")
    if layout == "bert" and not bidirectional:
        raise InvalidTrainConfig([("layout", f"bert is a bidirectional layout; {{objective}} {objective} needs a "
                                             "causal model ({layout} gpt2)")])
    if layout == "bert":  # BERT layout whatever the shape came from
        base.update(causal=False, pre_ln=False, head="mlm")
    else:  # GPT-2's; bidirectional for mlm/mdlm, so every objective can share one network shape
        base.update(causal=not bidirectional, pre_ln=True, head="tied", type_vocab_size=0)
    return ModelConfig(**base)


def _default_objective(init: Model) -> str:
    saved = init.info.objective
    if saved in OBJECTIVES and (saved in BIDIRECTIONAL) != init.config.causal:
        return saved
    return "clm" if init.config.causal else "mlm"


def _new_run_config(config: TrainConfig, model_cfg: ModelConfig, from_init: bool, d: Dist) -> TrainConfig:
    """Every recipe and schedule field decided: the defaults, and what follows from the model and the device."""
    world = d.world
    if config.world_size is not None and config.world_size != world:
        raise InvalidTrainConfig([("world_size", f"is {config.world_size} but {world} process(es) are running")])
    steps = config.steps if config.steps is not None else default_of("steps")
    cfg = config.with_defaults("recipe", objective=model_cfg.extra["objective"], seq_len=model_cfg.n_positions,
                               lr=DEFAULT_INIT_LR if from_init else DEFAULT_LR, warmup=min(100, steps // 10),
                               world_size=world, precision=default_precision(d.device))
    if config.precision is None and cfg.precision != default_of("precision"):
        _say(f"clozelm: note: training in {cfg.precision} ({_device_name(d.device)} has no bf16 units; --precision "
             "to choose)")
    cfg = cfg.with_defaults("schedule")
    if cfg.seq_len > model_cfg.n_positions:
        raise InvalidTrainConfig([("seq_len", f"{cfg.seq_len} exceeds the model's {model_cfg.n_positions} positions")])
    for name, what in (("warmup", "the learning rate would never reach its peak"),
                       ("locality_warmup", "the attention distance penalty would never fade out")):
        if getattr(cfg, name) > cfg.steps:
            raise InvalidTrainConfig([(name, f"{getattr(cfg, name)} is longer than the run's {cfg.steps} {{steps}}: "
                                             f"{what}; give at most {cfg.steps}")])
    for name, objectives in OBJECTIVE_SETTINGS.items():  # a setting that would change nothing is a mistake to say
        if getattr(config, name) is not None and cfg.objective not in objectives:
            raise InvalidTrainConfig([(name, f"applies to {' and '.join(objectives)} training, not {cfg.objective}; "
                                             "leave it out")])
    return cfg


# The recipe settings that only some objectives read.
OBJECTIVE_SETTINGS = {"fim_rate": ("fim",), "spm_rate": ("fim",), "mask_rate": ("mlm", "hybrid"),
                      "hybrid_causal_share": ("hybrid",)}
