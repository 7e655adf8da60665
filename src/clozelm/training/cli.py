"""`clozelm train`: from scratch or from a loaded model, one process or `torchrun -m clozelm train`.

A run directory holds everything needed to continue:

    run.json          the settings (training config, model config, inputs), written before step 1
    tokenizer/        the tokenizer the run uses (so resuming does not depend on the original folder)
    tokens/KEY/       the token shards (see data.py); reused by any run over the same files + tokenizer
    checkpoint.pt     the latest checkpoint (atomic), read with torch.load(weights_only=True)
    best.pt           the weights with the lowest held-out loss so far (atomic)
    metrics.jsonl     one record per step (+ held-out evaluations); metrics.csv; loss_curve.png
    model/            the trained model in Hugging Face format, tokenizer included (clozelm.load(RUN/model)):
                      the weights with the lowest held-out loss (the last ones when there is no held-out split)

Exit status: 0 done, 2 user error (including NaN loss), 130 interrupted by Ctrl-C/SIGTERM after
saving a checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from ..errors import ClozelmError
from ..model.config import PRESETS, ModelConfig
from ..model.transformer import Transformer
from .data import CorpusFiles, TokenData, build_token_cache, expand_inputs
from .objectives import OBJECTIVES, make_objective
from .trainer import CHECKPOINT, Dist, TrainConfig, Trainer, init_distributed, load_checkpoint_file

RUN_FILE = "run.json"
DEFAULT_SHAPE = dict(n_layer=6, n_embd=384, n_head=6, n_positions=256)
# Options a resumed run may change: they decide when things are logged or saved, not what is computed.
RESUMABLE_CHANGES = {"eval_every", "eval_examples", "checkpoint_every", "log_every"}
TRAIN_OPTIONS = ["objective", "seq_len", "batch_size", "grad_accum", "steps", "lr", "min_lr_ratio", "warmup",
                 "weight_decay", "grad_clip", "precision", "seed", "eval_every", "eval_examples", "checkpoint_every",
                 "log_every", "fim_rate", "spm_rate", "mask_rate", "locality_warmup"]
SETUP_OPTIONS = ["tokenizer", "init", "preset", "n_layer", "n_embd", "n_head", "n_positions", "n_inner", "dropout",
                 "valid", "valid_every", "skip_bad_files"]

EPILOG = """examples:
  clozelm train data/corpus/train --valid data/corpus/valid --tokenizer bpe/ --out runs/small --steps 2000
  clozelm train corpus/ --tokenizer bpe/ --objective mlm --n-layer 4 --n-embd 256 --n-head 4 --out runs/bert
  clozelm train corpus/ --tokenizer bpe/ --objective fim --preset gpt2 --seq-len 512 --out runs/fim
  clozelm train notes.txt --init default --steps 200 --lr 1e-4 --out runs/tuned      (fine-tune)
  clozelm train --resume --out runs/small                                           (continue after Ctrl-C or a crash)
  torchrun --nproc_per_node 2 -m clozelm train corpus/ --tokenizer bpe/ --out runs/ddp  (DDP: gloo on CPU, NCCL on GPU)

The model with the lowest held-out loss is saved to RUN/model (clozelm.load("RUN/model")). Ctrl-C saves a checkpoint and exits with
status 130; --resume continues with the same data order, optimizer state and schedule.
"""


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train or fine-tune a model (clm, mlm or fim)", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Tokenize UTF-8 text once (documents separated by blank lines), then train.")
    p.add_argument("files", nargs="*", metavar="FILES_OR_DIRS", help="UTF-8 text files or folders of them")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (checkpoints, metrics, the trained model)")
    g = p.add_argument_group("run directory")
    g.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its checkpoint")
    g.add_argument("--overwrite", action="store_true", help="start over in an existing RUN_DIR (its token cache is kept)")
    g = p.add_argument_group("model")
    g.add_argument("--init", metavar="PATH_OR_NAME", help="start from this model (fine-tuning) instead of random weights")
    g.add_argument("--tokenizer", metavar="DIR", help="tokenizer directory (required unless --init has one)")
    g.add_argument("--objective", choices=OBJECTIVES, help="clm (default for causal models), mlm (BERT; default for "
                   "bidirectional models) or fim (fill-in-the-middle, causal)")
    g.add_argument("--preset", choices=sorted(PRESETS), help="model shape preset (from scratch)")
    g.add_argument("--n-layer", type=int, metavar="N")
    g.add_argument("--n-embd", type=int, metavar="N")
    g.add_argument("--n-head", type=int, metavar="N")
    g.add_argument("--n-positions", type=int, metavar="N")
    g.add_argument("--n-inner", type=int, metavar="N", help="MLP width (default 4 x n-embd)")
    g.add_argument("--dropout", type=float, metavar="X", help="dropout rate (default 0 from scratch; the model's own with --init)")
    g = p.add_argument_group("data")
    g.add_argument("--valid", action="append", metavar="FILE_OR_DIR", help="held-out text (repeatable); default: every "
                   "--valid-every'th document of the inputs")
    g.add_argument("--valid-every", type=int, metavar="N", help="hold out one document in N (default 50; 0 = no held-out split)")
    g.add_argument("--skip-bad-files", action="store_true", help="skip non-UTF-8/binary files with a warning")
    g.add_argument("--seq-len", type=int, metavar="N", help="tokens per sequence (default: the model's n_positions)")
    g.add_argument("--fim-rate", type=float, metavar="X", help="fim: share of documents reordered (default 0.5)")
    g.add_argument("--spm-rate", type=float, metavar="X", help="fim: share of reordered documents in SPM order (default 0.5)")
    g.add_argument("--mask-rate", type=float, metavar="X",
                   help="mlm: share of tokens to predict (default 0.15, BERT's; 0.4 gives 2.7x the predictions per step)")
    g.add_argument("--locality-warmup", type=int, metavar="N",
                   help="fade a distance penalty on attention scores out over the first N steps (default 0 = off); gets "
                        "a from-scratch masked LM off its bag-of-words plateau. The saved model is a plain one")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, metavar="N", help="optimizer steps (default 1000)")
    g.add_argument("--batch-size", type=int, metavar="N", help="sequences per micro-batch per process (default 16)")
    g.add_argument("--grad-accum", type=int, metavar="N", help="micro-batches per optimizer step (default 1)")
    g.add_argument("--lr", type=float, metavar="X", help="peak learning rate (default 6e-4; 1e-4 with --init)")
    g.add_argument("--min-lr-ratio", type=float, metavar="X", help="final lr as a fraction of --lr (default 0.1)")
    g.add_argument("--warmup", type=int, metavar="N", help="linear warm-up steps (default min(100, steps/10))")
    g.add_argument("--weight-decay", type=float, metavar="X", help="AdamW decoupled weight decay on weight matrices (default 0.1)")
    g.add_argument("--grad-clip", type=float, metavar="X", help="clip the gradient norm to this (default 1.0; 0 = off)")
    g.add_argument("--precision", choices=["bf16", "fp32"], help="autocast dtype (default bf16)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--seed", type=int, metavar="N", help="seed for init, data order, masks and dropout (default 0)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    g.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch (default: all cores; 1 is often "
                   "faster on a busy machine)")
    g = p.add_argument_group("logging")
    g.add_argument("--eval-every", type=int, metavar="N", help="evaluate on held-out text every N steps (default 200; 0 = at the end)")
    g.add_argument("--eval-examples", type=int, metavar="N", help="held-out sequences per evaluation (default 256)")
    g.add_argument("--checkpoint-every", type=int, metavar="N", help="checkpoint every N steps (default 200; 0 = at the end)")
    g.add_argument("--log-every", type=int, metavar="N", help="progress lines every N steps when stderr is not a terminal (default 10)")
    g.add_argument("--no-progress", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_train)


class _OtherRankFailed(Exception):
    """Rank 0 failed during setup and has reported why; the other ranks just stop."""


def cmd_train(args) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    d = init_distributed(args.device)
    try:
        run(args, d)
    except _OtherRankFailed:
        sys.exit(2)
    finally:
        if d.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def run(args, d: Dist) -> Path:
    run_dir = Path(args.out)
    if args.resume and args.overwrite:
        raise ClozelmError("--resume and --overwrite contradict each other")
    settings = _on_main(d, lambda: _prepare(args, run_dir, d))  # rank 0 checks, tokenizes, writes run.json
    if settings is None:  # another rank: read what rank 0 wrote
        settings = _read_settings(run_dir)
    from ..tokenizers import load_tokenizer
    tok = load_tokenizer(run_dir / "tokenizer")
    data = TokenData.open(run_dir / "tokens" / settings["data_key"])
    cfg = TrainConfig.from_dict(settings["train"])
    for name in RESUMABLE_CHANGES:
        if getattr(args, name, None) is not None:
            setattr(cfg, name, getattr(args, name))
    state = None
    if args.resume and (run_dir / CHECKPOINT).is_file():
        state = load_checkpoint_file(run_dir / CHECKPOINT)
        model = Transformer(ModelConfig.from_dict(state["model_config"]))
    else:
        model = _build_model(settings, tok, cfg.seed)
    objective = make_objective(cfg.objective, tok, model.config.vocab_size, cfg.fim_rate, cfg.spm_rate, cfg.mask_rate)
    # Dropout streams: rank 0 continues the seeded stream, other ranks get their own.
    if d.rank:
        torch.manual_seed(cfg.seed + 1_000_003 * d.rank)
    trainer = Trainer(model, objective, data, cfg, run_dir, d, compile=args.compile, progress=not args.no_progress)
    if state is not None:
        trainer.load_checkpoint(state)
        trainer.progress.message(f"resuming {run_dir} at step {trainer.step}/{cfg.steps}")
    trainer.fit()
    if d.main:
        best_step = trainer.load_best_weights()
        model.tokenizer = tok
        model.save_pretrained(run_dir / "model", overwrite=True)
        if best_step is not None:
            saved = (f"the weights of step {best_step} (lowest held-out loss, {trainer.best_val:.4f}; the last "
                     f"step's are in {CHECKPOINT})")
        elif math.isfinite(trainer.best_val):
            saved = f"held-out loss {trainer.best_val:.4f}"
        else:
            saved = "no held-out evaluation"
        trainer.progress.message(f"done: {trainer.step} steps, {trainer.tokens_seen:,} tokens; model saved to "
                                 f"{run_dir / 'model'}: {saved}")
    d.barrier()
    return run_dir


def _on_main(d: Dist, fn):
    """Run fn on rank 0 only; every rank learns whether it worked, so none waits forever on a failed rank 0."""
    result, error = None, None
    if d.main:
        try:
            result = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised below after telling the other ranks
            error = e
    failed = d.all_sum(torch.tensor(1.0 if error is not None else 0.0))
    if error is not None:
        raise error
    if float(failed) > 0:
        raise _OtherRankFailed()
    return result


def _read_settings(run_dir: Path) -> dict:
    path = run_dir / RUN_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ClozelmError(f"no run to resume in {run_dir} ({RUN_FILE} is missing)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ClozelmError(f"{path} is damaged: {e}") from None


def _prepare(args, run_dir: Path, d: Dist) -> dict:
    """Rank 0: validate options, set up or reopen the run directory, tokenize. Returns the run settings."""
    if args.resume:
        settings = _read_settings(run_dir)
        _refuse_changes(args, settings)
        files = [Path(f) for f in settings["inputs"]["train"]]
        valid = settings["inputs"]["valid"]
        corpus = CorpusFiles(files, [Path(f) for f in valid] if valid is not None else None,
                             settings["inputs"]["valid_every"])
        from ..tokenizers import load_tokenizer
        tok = load_tokenizer(run_dir / "tokenizer")
        data = build_token_cache(run_dir / "tokens", corpus, tok, settings["inputs"]["skip_bad_files"])
        if data.key != settings["data_key"]:
            raise ClozelmError(f"the input files of {run_dir} changed since the run started; resume needs the same "
                               "data (or start a new run)")
        return settings

    if not args.files:
        raise ClozelmError("no input files: pass FILES_OR_DIRS (or --resume to continue a run)")
    if run_dir.exists() and not run_dir.is_dir():
        raise ClozelmError(f"{run_dir} exists and is not a directory")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not args.overwrite:
            raise ClozelmError(f"{run_dir} already exists; pass --resume to continue that run or --overwrite to start over")
    files = expand_inputs(args.files)
    valid = expand_inputs(args.valid) if args.valid else None
    corpus = CorpusFiles(files, valid, 50 if args.valid_every is None else args.valid_every)
    if corpus.valid_every < 0:
        raise ClozelmError("--valid-every must be >= 0")

    init_model, tok = None, None
    if args.init:
        from ..loading import load
        init_model = load(args.init)
        tok = init_model.tokenizer
    if args.tokenizer:
        from ..tokenizers import load_tokenizer
        tok = load_tokenizer(Path(args.tokenizer))
    if tok is None:
        raise ClozelmError(f"{args.init} has no tokenizer files; pass --tokenizer DIR" if args.init
                           else "a from-scratch run needs --tokenizer DIR (train one with: clozelm tokenizer train)")

    model_cfg = _model_config(args, init_model, tok)
    cfg = _train_config(args, model_cfg, d.world)
    make_objective(cfg.objective, tok, model_cfg.vocab_size)  # fail on missing special tokens before tokenizing

    if run_dir.is_dir() and args.overwrite:
        for entry in run_dir.iterdir():
            if entry.name == "tokens":
                continue  # keyed by content: still valid, and expensive to rebuild
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    from ..weights.hf import save_tokenizer
    save_tokenizer(tok, run_dir / "tokenizer")
    from ..tokenizers import load_tokenizer
    tok = load_tokenizer(run_dir / "tokenizer")  # the copy every rank and every resume will use
    data = build_token_cache(run_dir / "tokens", corpus, tok, args.skip_bad_files)
    settings = {
        "version": 1,
        "train": asdict(cfg),
        "model": model_cfg.to_dict(),
        "init": str(args.init) if args.init else None,
        "inputs": {"train": [str(p) for p in files], "valid": None if valid is None else [str(p) for p in valid],
                   "valid_every": corpus.valid_every, "skip_bad_files": bool(args.skip_bad_files)},
        "data_key": data.key,
        "setup": {name: _jsonable(getattr(args, name)) for name in SETUP_OPTIONS},
        "command": sys.argv,
    }
    from ..weights.tensors import atomic_write_text
    atomic_write_text(run_dir / RUN_FILE, json.dumps(settings, indent=2) + "\n")
    return settings


def _refuse_changes(args, settings: dict) -> None:
    """A resumed run keeps its settings: changing them would silently break the identical-continuation promise."""
    if args.files:
        given = [str(p) for p in expand_inputs(args.files)]
        if given != settings["inputs"]["train"]:
            raise ClozelmError("--resume continues with the run's own input files; leave FILES_OR_DIRS out")
    for name in TRAIN_OPTIONS:
        value = getattr(args, name, None)
        if value is not None and name not in RESUMABLE_CHANGES and value != settings["train"].get(name):
            flag = "--" + name.replace("_", "-")
            raise ClozelmError(f"{flag} {value} differs from the run's {settings['train'].get(name)}; "
                               "a resumed run keeps its settings (start a new run to change them)")
    recorded = settings.get("setup", {})
    for name in SETUP_OPTIONS:
        value = getattr(args, name, None)
        if value not in (None, False) and _jsonable(value) != recorded.get(name):
            raise ClozelmError(f"--{name.replace('_', '-')} {value} differs from the run's {recorded.get(name)}; "
                               "a resumed run keeps its settings (start a new run to change them)")


def _jsonable(value):
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value if isinstance(value, (bool, int, float, type(None))) else str(value)


def _model_config(args, init_model, tok) -> ModelConfig:
    shape = {k: getattr(args, k) for k in ("n_layer", "n_embd", "n_head", "n_positions", "n_inner")
             if getattr(args, k) is not None}
    if init_model is not None:
        if shape or args.preset:
            raise ClozelmError("--init fixes the model's shape; leave out --preset/--n-layer/--n-embd/--n-head/--n-positions")
        cfg = init_model.config
        if cfg.head is None:
            raise ClozelmError(f"{args.init} has no language-model head (a headless encoder); it cannot be trained here")
        if tok.vocab_size > cfg.vocab_size:
            raise ClozelmError(f"the tokenizer has {tok.vocab_size} tokens but {args.init} only {cfg.vocab_size} embeddings")
        objective = args.objective or _default_objective(cfg)
        if cfg.causal and objective == "mlm":
            raise ClozelmError(f"{args.init} is a causal model; --objective mlm needs a bidirectional (BERT) model")
        if not cfg.causal and objective in ("clm", "fim"):
            raise ClozelmError(f"{args.init} is a bidirectional model; --objective {objective} needs a causal model")
        changes = {"extra": {**cfg.extra, "objective": objective}}
        if args.dropout is not None:
            changes["dropout"] = args.dropout
        return cfg.replace(**changes)

    objective = args.objective or "clm"
    base = dict(PRESETS[args.preset]) if args.preset else dict(ModelConfig().to_dict(), **DEFAULT_SHAPE, extra={})
    base.update(shape)
    if not args.preset and "n_inner" not in shape:
        base["n_inner"] = None
    base.update(vocab_size=tok.vocab_size, dropout=args.dropout or 0.0, extra={"objective": objective},
                eos_token_id=getattr(tok, "eos_id", None), bos_token_id=getattr(tok, "eos_id", None),
                pad_token_id=getattr(tok, "pad_id", None), pooler=False)
    if objective == "mlm":  # BERT layout whatever the shape came from
        base.update(causal=False, pre_ln=False, head="mlm")
    else:
        base.update(causal=True, pre_ln=True, head="tied", type_vocab_size=0)
    return ModelConfig(**base)


def _default_objective(cfg: ModelConfig) -> str:
    saved = cfg.extra.get("objective")
    if saved in OBJECTIVES and (saved == "mlm") != cfg.causal:
        return saved
    return "clm" if cfg.causal else "mlm"


def _train_config(args, model_cfg: ModelConfig, world: int) -> TrainConfig:
    given = {name: getattr(args, name) for name in TRAIN_OPTIONS if getattr(args, name, None) is not None}
    given["objective"] = model_cfg.extra["objective"]
    given.setdefault("seq_len", model_cfg.n_positions)
    if args.init:
        given.setdefault("lr", 1e-4)
    steps = given.get("steps", TrainConfig.steps)
    given.setdefault("warmup", min(100, steps // 10))
    cfg = TrainConfig(**given, world_size=world)
    problems = []
    for name in ("seq_len", "batch_size", "grad_accum", "steps", "eval_examples"):
        if getattr(cfg, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("warmup", "eval_every", "checkpoint_every", "log_every", "locality_warmup"):
        if getattr(cfg, name) < 0:
            problems.append(f"--{name.replace('_', '-')} must be >= 0")
    if cfg.seq_len > model_cfg.n_positions:
        problems.append(f"--seq-len {cfg.seq_len} exceeds the model's {model_cfg.n_positions} positions")
    if not cfg.lr > 0:
        problems.append("--lr must be positive")
    for name in ("fim_rate", "spm_rate", "min_lr_ratio"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            problems.append(f"--{name.replace('_', '-')} must be in [0, 1]")
    if not 0.0 < cfg.mask_rate < 1.0:
        problems.append("--mask-rate must be between 0 and 1 (exclusive)")
    if problems:
        raise ClozelmError("; ".join(problems))
    return cfg


def _build_model(settings: dict, tok, seed: int) -> Transformer:
    """The run's starting weights: seeded random init, or the --init model (same on every rank and every resume)."""
    cfg = ModelConfig.from_dict(settings["model"])
    torch.manual_seed(seed)
    if settings.get("init"):
        from ..loading import load
        loaded = load(settings["init"], tokenizer=False)
        model = Transformer(cfg)
        model.load_state_dict(loaded.state_dict())
        return model.float()
    return Transformer(cfg)
