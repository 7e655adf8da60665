"""`clozelm study CORPUS... --out DIR`: the command line over `clozelm.study.run_study(StudyConfig(...))`."""

from __future__ import annotations

import argparse
import sys

from .args import float_in, int_in, positive_int
from ..model.config import PRESETS
from ..training.config import DEVICES, PRECISIONS

EPILOG = """examples:
  clozelm study corpus/ --out study/ --tokens 400000 --n-layer 2 --n-embd 64        (minutes on 2 cores)
  clozelm study corpus/ --out study-3m/ --objectives clm,mlm,mdlm --seeds 3 --tokens 3000000
  clozelm study corpus/ --out study/ --tokens 400000 --n-layer 2 --n-embd 64 --seeds 3
                                     (the same study again: continues where it stopped, adds the third seed)
  clozelm study corpus/ --out study/ --tokens 400000 --n-layer 2 --n-embd 64 --seeds 3 --report-only
                                     (the report of the runs finished so far, while the study runs on)

Trains one BPE tokenizer on the corpus (less the held-out documents: one in --valid-every), then every objective
at the same shape, token budget and data order, --seeds times; evaluates every model with every eval task on the
held-out documents; writes DIR/report.md (per task: mean and spread over seeds, the winner, what it says about
"left-to-right beats bidirectional"), DIR/results.json and PNG plots. Stopped (Ctrl-C, a kill), it continues
where it was when run again with the same DIR.
"""


def add_parser(sub) -> None:
    from ..eval import TASKS
    from ..training.objectives import OBJECTIVES
    p = sub.add_parser("study", help="train every objective on one corpus and compare them (left-to-right vs "
                                     "bidirectional)", formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=EPILOG, description="Train and evaluate clm, mlm, fim, hybrid and mdlm models alike, "
                                                  "and report which wins each task.")
    p.add_argument("corpus", nargs="+", metavar="CORPUS", help="UTF-8 text files or folders (documents separated by "
                                                               "blank lines)")
    p.add_argument("--out", required=True, metavar="DIR", help="the study directory (continued when it exists)")
    p.add_argument("--objectives", default=",".join(OBJECTIVES), metavar="LIST", help="comma-separated (default: %(default)s)")
    p.add_argument("--tokens", type=positive_int, default=1_000_000, metavar="N", help="training tokens per run (default: "
                                                                          "%(default)s)")
    p.add_argument("--seeds", type=positive_int, default=2, metavar="K", help="runs per objective, seeds 0..K-1 (default: 2)")
    g = p.add_argument_group("shape (one for every objective)")
    g.add_argument("--preset", choices=sorted(PRESETS), help="layers, width and heads of a preset")
    g.add_argument("--n-layer", type=positive_int, metavar="N", help="default 6")
    g.add_argument("--n-embd", type=positive_int, metavar="N", help="default 384")
    g.add_argument("--n-head", type=positive_int, metavar="N", help="default n-embd / 64, at least 2")
    g.add_argument("--seq-len", type=positive_int, metavar="N", help="tokens per sequence (default 256)")
    g.add_argument("--vocab-size", type=int_in(261), default=8192, metavar="N", help="BPE vocabulary (default: %(default)s)")
    g = p.add_argument_group("training")
    g.add_argument("--batch-size", type=positive_int, default=16, metavar="N", help="sequences per step (default: %(default)s)")
    g.add_argument("--lr", type=float_in(0, None, lo_open=True), metavar="X", help="peak learning rate (default: clozelm train's)")
    g.add_argument("--locality-warmup", type=float_in(0, 1), default=0.25, metavar="SHARE",
                   help="share of the steps with the locality warm-up, for every objective (default: %(default)s)")
    g.add_argument("--valid-every", type=int_in(2), default=50, metavar="N",
                   help="hold out one document in N (default: %(default)s)")
    g.add_argument("--evals", type=positive_int, default=10, metavar="N", help="held-out evaluations per run (default: 10)")
    g.add_argument("--precision", choices=PRECISIONS,
                   help="every run's training precision (default: the study's own when it continues; a new study's is "
                        "clozelm train's default on this device: bf16-master where bf16 products run natively, fp32 "
                        "elsewhere)")
    g.add_argument("--device", choices=DEVICES, default="auto")
    g.add_argument("--threads", type=int_in(1, 1024), metavar="N", help="CPU threads (default: torch's)")
    g = p.add_argument_group("evaluation")
    g.add_argument("--tasks", default=",".join(TASKS), metavar="LIST", help="comma-separated eval tasks (default: %(default)s)")
    g.add_argument("--eval-limit", type=int_in(0), default=100, metavar="N",
                   help="items per task, pairs per phenomenon (default: %(default)s; 0: eval's own defaults)")
    g.add_argument("--samples", type=int_in(2), default=4, metavar="N", help="mask rates per window for the masked-diffusion "
                                                                "bound (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no per-step progress lines")
    p.add_argument("--no-reuse-memory", action="store_true",
                   help="as clozelm train --no-reuse-memory: freed memory goes back to the system at once")
    p.add_argument("--report-only", action="store_true",
                   help="write the report of the runs finished so far (while the study runs on, too); train nothing")
    p.set_defaults(func=run)


def run(args) -> None:
    from ..study import StudyConfig, run_study
    from ..study.report import GROUP
    config = StudyConfig(corpus=tuple(args.corpus), out=args.out, objectives=args.objectives, tokens=args.tokens,
                         seeds=args.seeds, preset=args.preset, n_layer=args.n_layer, n_embd=args.n_embd,
                         n_head=args.n_head, seq_len=args.seq_len, vocab_size=args.vocab_size,
                         batch_size=args.batch_size, lr=args.lr, locality_warmup=args.locality_warmup,
                         valid_every=args.valid_every, evals=args.evals, tasks=args.tasks, eval_limit=args.eval_limit or None,
                         eval_samples=args.samples, precision=args.precision, device=args.device, threads=args.threads,
                         progress=not args.no_progress, reuse_memory=not args.no_reuse_memory,
                         report_only=args.report_only)
    results = run_study(config)
    labels = [f"{row['task']}: {row['label']}" for row in results["summary"]]
    width = max(map(len, labels), default=0)
    for label, row in zip(labels, results["summary"]):
        best = row["winners"]
        who = f"{best[0]} ({GROUP.get(best[0], '')})" if len(best) == 1 else "tie: " + ", ".join(best)
        claim = row.get("claim", {}).get("verdict", "")
        print(f"{label:{width}}  best: {who:28}" + (f"  claim: {claim}" if claim else ""))
    print(f"report: {args.out}/report.md", file=sys.stderr)
