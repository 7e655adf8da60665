"""`clozelm train`: the command line over `clozelm.train(TrainConfig(...))`. Each flag is a TrainConfig field
(`--mask-rate` is `mask_rate`); the config checks the values and names a wrong one by its flag here. One
process, or `torchrun -m clozelm train` for DDP. The run directory's layout: rundir.py.

Exit status: 0 done (or stopped by --stop-after, resumable), 2 user error (including NaN loss and a run
directory in use), 130 interrupted by Ctrl-C/SIGTERM after saving a checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from ..errors import ClozelmError
from ..model.config import InvalidConfig, PRESETS
from ..training.config import DEVICES, LAYOUTS, PRECISIONS, InvalidTrainConfig, TrainConfig, flag
from ..training.distributed import OtherRankFailed
from ..training.objectives import OBJECTIVES

EPILOG = """examples:
  clozelm train data/corpus/train --valid data/corpus/valid --tokenizer bpe/ --out runs/small --steps 2000
  clozelm train corpus/ --tokenizer bpe/ --objective mlm --n-layer 4 --n-embd 256 --n-head 4 --out runs/bert
  clozelm train corpus/ --tokenizer bpe/ --objective fim --preset gpt2 --seq-len 512 --out runs/fim
  clozelm train corpus/ --tokenizer bpe/ --objective mdlm --layout gpt2 --out runs/mdlm   (masked diffusion)
  clozelm train corpus/ --tokenizer bpe/ --objective hybrid --hybrid-causal-share 0.25 --out runs/gpt-bert
  clozelm train notes.txt --init default --steps 200 --lr 1e-4 --out runs/tuned      (fine-tune)
  clozelm train --resume --out runs/small                                           (continue after Ctrl-C or a crash)
  torchrun --nproc_per_node 2 -m clozelm train corpus/ --tokenizer bpe/ --out runs/ddp  (DDP: gloo on CPU, NCCL on GPU)

The model with the lowest held-out loss is saved to RUN/model (clozelm.load("RUN/model")). Ctrl-C saves a checkpoint and exits with
status 130; --resume continues with the same data order, optimizer state, schedule and arithmetic (threads, device,
compile). One process trains in a run directory at a time. From Python: clozelm.train(TrainConfig(...)).
"""


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train or fine-tune a model (clm, mlm, fim, hybrid or mdlm)", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Tokenize UTF-8 text once (documents separated by blank lines), then train.")
    p.add_argument("files", nargs="*", default=[], metavar="FILES_OR_DIRS", help="UTF-8 text files or folders of them")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (checkpoints, metrics, the trained model)")
    g = p.add_argument_group("run directory")
    g.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its checkpoint")
    g.add_argument("--overwrite", action="store_true", help="start over in an existing RUN_DIR (its token cache is kept)")
    g = p.add_argument_group("model")
    g.add_argument("--init", metavar="PATH_OR_NAME", help="start from this model (fine-tuning) instead of random weights")
    g.add_argument("--tokenizer", metavar="DIR", help="tokenizer directory, or an embedded model's name for its "
                   "tokenizer (default, default-fim, default-bert); required unless --init has one")
    g.add_argument("--objective", choices=OBJECTIVES, help="clm (default for causal models), mlm (BERT; default for "
                   "bidirectional models, a bert preset or --layout bert), fim (fill-in-the-middle, causal), hybrid (GPT-BERT: causal and masked "
                   "rows in one causal model) or mdlm (masked diffusion, bidirectional)")
    g.add_argument("--preset", choices=sorted(PRESETS), help="model shape preset (from scratch)")
    g.add_argument("--layout", choices=LAYOUTS, help="from scratch: gpt2 (pre-LN, output tied to the embeddings; "
                   "bidirectional for mlm/mdlm) or bert (post-LN, BERT's MLM head; mlm/mdlm only); default: bert "
                   "for mlm and mdlm, gpt2 for the rest")
    g.add_argument("--n-layer", type=int, metavar="N")
    g.add_argument("--n-embd", type=int, metavar="N")
    g.add_argument("--n-head", type=int, metavar="N")
    g.add_argument("--n-positions", type=int, metavar="N")
    g.add_argument("--n-inner", type=int, metavar="N", help="MLP width (default 4 x n-embd)")
    g.add_argument("--dropout", type=float, metavar="X", help="dropout rate (default 0 from scratch; the model's own with --init)")
    g = p.add_argument_group("data")
    g.add_argument("--valid", action="append", metavar="FILE_OR_DIR", help="held-out text (repeatable); default: every "
                   "--valid-every'th document of the inputs")
    g.add_argument("--valid-every", type=int, metavar="N", help="hold out one document in N (default 50; 0 = no held-out "
                   "split); not with --valid")
    g.add_argument("--skip-bad-files", action="store_true", help="skip non-UTF-8/binary files with a warning")
    g.add_argument("--seq-len", type=int, metavar="N", help="tokens per sequence (default: the model's n_positions)")
    g.add_argument("--fim-rate", type=float, metavar="X", help="fim: share of stretches of text reordered (default 0.5)")
    g.add_argument("--spm-rate", type=float, metavar="X", help="fim: share of reordered stretches in SPM order (default 0.5)")
    g.add_argument("--mask-rate", type=float, metavar="X",
                   help="mlm, hybrid: share of tokens to predict (default 0.15, BERT's; 0.4 gives 2.7x the predictions per step)")
    g.add_argument("--hybrid-causal-share", type=float, metavar="X",
                   help="hybrid: share of sequences trained left-to-right, the rest masked (default 0.0625: "
                        "GPT-BERT's 1 causal : 15 masked)")
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
    g.add_argument("--precision", choices=PRECISIONS,
                   help="bf16-master (default; fp32 where bf16 is emulated: CUDA GPUs older than Ampere, CPUs without AMX or AVX-512 BF16): bf16 weights with fp32 master copies; bf16: autocast over fp32 weights; fp32")
    g.add_argument("--fused-loss", action=argparse.BooleanOptionalAction, default=None,
                   help="fuse the vocabulary projection into the cross-entropy (default on; --no-fused-loss: the plain path)")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model (default: on CPUs without AMX, for runs long enough to repay the compile "
                        "time; --no-compile: never)")
    g.add_argument("--no-reuse-memory", action="store_true",
                   help="let the C library hand freed memory back to the system at once (glibc's default) instead of "
                        "keeping it for the next step (CPU runs); results are the same, steps slower")
    g.add_argument("--seed", type=int, metavar="N", help="seed for init, data order, masks and dropout (default 0)")
    g.add_argument("--device", choices=DEVICES, help="default auto: a CUDA GPU if there is one (a resumed run: the run's)")
    g.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch (default: all cores, or the run's own "
                   "when resuming; 1 is often faster on a busy machine)")
    g = p.add_argument_group("logging")
    g.add_argument("--eval-every", type=int, metavar="N", help="evaluate on held-out text every N steps (default 200; 0 = at the end)")
    g.add_argument("--eval-examples", type=int, metavar="N", help="held-out sequences per evaluation (default 256)")
    g.add_argument("--eval-spread", action=argparse.BooleanOptionalAction, default=None,
                   help="spread those sequences evenly over the held-out split (default on; --no-eval-spread: its first ones)")
    g.add_argument("--checkpoint-every", type=int, metavar="N", help="checkpoint every N steps (default 200; 0 = at the end)")
    g.add_argument("--keep-best", action=argparse.BooleanOptionalAction, default=None,
                   help="the run's model is the evaluated weights with the lowest held-out loss (default on; "
                        "--no-keep-best: the last step's, when the held-out text is a test set)")
    g.add_argument("--log-every", type=int, metavar="N", help="progress lines every N steps when stderr is not a terminal (default 10; "
                   "0: every step)")
    g.add_argument("--no-progress", action="store_true", help="no progress output")
    g.add_argument("--stop-after", type=int, metavar="N", help="stop after N steps of this call with a checkpoint "
                   "(exit 0); --resume continues")
    p.set_defaults(func=cmd_train)




# Every TrainConfig field the command line sets, and the flag that sets it (the rest keep their defaults).
FIELDS = ["files", "out", "resume", "overwrite", "init", "tokenizer", "objective", "preset", "n_layer", "n_embd",
          "n_head", "n_positions", "n_inner", "layout", "dropout", "valid", "valid_every", "skip_bad_files", "seq_len",
          "fim_rate", "spm_rate", "mask_rate", "hybrid_causal_share", "locality_warmup", "steps", "batch_size", "grad_accum", "lr",
          "min_lr_ratio", "warmup", "weight_decay", "grad_clip", "precision", "fused_loss", "compile", "seed", "device", "threads",
          "eval_every", "eval_examples", "eval_spread", "checkpoint_every", "keep_best", "log_every", "stop_after"]
FLAGS = {name: flag(name) for name in FIELDS} | {"files": "FILES_OR_DIRS", "progress": "--no-progress",
                                                  "reuse_memory": "--no-reuse-memory"}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the parsed flags describe; a wrong value is one line naming its flag."""
    values = {name: getattr(args, name) for name in FIELDS}
    values["resume"], values["overwrite"] = bool(args.resume), bool(args.overwrite)
    values["skip_bad_files"] = bool(args.skip_bad_files)
    values["files"] = tuple(args.files or ())
    values["progress"] = not args.no_progress
    values["reuse_memory"] = not args.no_reuse_memory
    with flag_names():
        return TrainConfig(**values)


@contextlib.contextmanager
def flag_names():
    """Name the fields in a config error as the flags that set them (`--mask-rate`, not mask_rate)."""
    try:
        yield
    except InvalidTrainConfig as error:
        raise ClozelmError(error.describe(FLAGS)) from None
    except InvalidConfig as error:
        raise ClozelmError("invalid model shape: " + error.describe(FLAGS)) from None


def cmd_train(args) -> None:
    """`clozelm train`: the flags as a TrainConfig, trained by the public API (which loads --init by name)."""
    from ..api import train
    config = config_from_args(args)
    try:
        with flag_names():
            train(config)
    except OtherRankFailed:  # rank 0 has said why
        sys.exit(2)
