"""Rebuild the embedded default models end to end: corpus -> tokenizer -> three models -> package.

    python scripts/train_defaults.py                      # full budget, resumes where it stopped
    python scripts/train_defaults.py --steps 20 --batch-size 2 --runs /tmp/try --no-export   # a smoke run

`default` (clm), `default-bert` (mlm) and `default-fim` (fim) share one tokenizer, one shape and one token
budget (steps x batch x sequence length), so comparing them is fair. The masked LM alone trains with
--locality-warmup over its first quarter (a fading attention distance penalty; without it a from-scratch MLM
sits on a bag-of-words plateau for the whole budget: see the model card); the saved model is a plain BERT. Each run resumes from its checkpoint
when its run directory exists, so the script can be stopped and started again (across sessions too).
`clozelm train` saves the weights with the lowest held-out loss as RUN/model; unless --no-export, the
script then writes them in bf16 with a model card into src/clozelm/defaults/NAME (scripts/export_default.py,
which measures the shipped weights' held-out loss again for the card).
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = [("default", "clm"), ("default-bert", "mlm"), ("default-fim", "fim")]
SPECIALS = ["<|endoftext|>", "<|pad|>", "<|mask|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"]
SHAPE = ["--n-layer", "6", "--n-embd", "384", "--n-head", "6", "--n-positions", "256"]


def run(cmd: list[str], label: str) -> None:
    """Run one step; if it fails or is stopped, say so in one line (naming the step `label`) and exit with its
    status."""
    print("+ " + " ".join(cmd), flush=True)
    child = subprocess.Popen(cmd)
    # Ctrl-C reaches the whole foreground process group, so `clozelm train` gets it too and saves a checkpoint:
    # wait for it rather than kill it (subprocess.run would kill it 0.25 s later, mid-save). A SIGTERM sent to this
    # script alone is passed on, so `kill PID` also stops the run with a checkpoint.
    previous = signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
    try:
        while True:
            try:
                code = child.wait()
                break
            except KeyboardInterrupt:
                continue
    finally:
        signal.signal(signal.SIGTERM, previous)
    if code:
        status = 128 - code if code < 0 else code  # killed by a signal: report it as a shell does
        print(f"train_defaults.py: stopped: {label} exited with status {status}", file=sys.stderr, flush=True)
        sys.exit(status)


def clozelm(*args: str, launcher: str | None = None) -> list[str]:
    """The command line of `clozelm ARGS`, run as `python -m clozelm` or by `launcher` (e.g. torchrun)."""
    return [*(shlex.split(launcher) if launcher else [sys.executable, "-m", "clozelm"]), *args]


def notes_for(run_dir: Path) -> str:
    """What the card should say about how the run was trained beyond the shared recipe."""
    warmup = json.loads((run_dir / "run.json").read_text())["train"].get("locality_warmup", 0)
    if not warmup:
        return ""
    return (f"Trained with `--locality-warmup {warmup}`: for the first {warmup:,} steps every head's attention scores got "
            "a distance penalty -2^-h * |i - j| (ALiBi's, made symmetric) that faded linearly to zero. Without it, the "
            "same recipe sat on the masked-LM plateau: every head uniform, held-out loss 5.61-5.63 from step 2,405 to "
            "2,960 of 7,400, where the corpus's unigram entropy is 6.46 nats. The saved model is a plain post-LN BERT; "
            "nothing of the penalty is in it, and the validation figures above are measured without it.")


def stats_from_metrics(run_dir: Path, objective: str, hardware: str) -> dict:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in records if "loss" in r]
    evals = [r for r in records if "val_loss" in r]
    return {"objective": objective, "tokens_seen": max(r.get("tokens", 0) for r in steps), "steps": steps[-1]["step"],
            "seconds": max(r.get("elapsed_s", 0) for r in steps), "val_loss": min(r["val_loss"] for r in evals),
            "trainer": "clozelm train (scripts/train_defaults.py)", "hardware": hardware, "notes": notes_for(run_dir)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default=str(ROOT / "runs" / "defaults"), help="run directories (kept for resuming)")
    p.add_argument("--corpus", default=str(ROOT / "data" / "corpus"))
    p.add_argument("--steps", type=int, default=7400, help="optimizer steps per model (default: ~30M tokens)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", default="1e-3")
    p.add_argument("--threads", default="2")
    p.add_argument("--device", default="auto")
    p.add_argument("--only", help="comma-separated subset of default,default-bert,default-fim")
    p.add_argument("--vocab-size", default="8192", help="BPE vocabulary size, special tokens included")
    p.add_argument("--no-export", action="store_true")
    p.add_argument("--defaults-dir", default=str(ROOT / "src" / "clozelm" / "defaults"), help="where to export")
    p.add_argument("--hardware", default="2 CPU cores, bf16 autocast")
    p.add_argument("--launcher", help="how to run `clozelm` for the trainings (default: python -m clozelm), e.g. "
                   "'torchrun --nproc_per_node 4 -m clozelm' for DDP on four GPUs")
    args = p.parse_args()
    runs, corpus = Path(args.runs), Path(args.corpus)
    runs.mkdir(parents=True, exist_ok=True)

    if not (corpus / "MANIFEST.json").exists():
        run([sys.executable, str(ROOT / "scripts" / "build_corpus.py"), "--out", str(corpus)], "build_corpus.py")
    tokenizer = runs / "tokenizer"
    if not (tokenizer / "vocab.bpe").exists():
        specials = [a for s in SPECIALS for a in ("--special", s)]
        run(clozelm("tokenizer", "train", str(corpus / "train"), "--vocab-size", args.vocab_size, *specials,
                    "--out", str(tokenizer)), "clozelm tokenizer train")

    wanted = set(args.only.split(",")) if args.only else {n for n, _ in MODELS}
    for name, objective in MODELS:
        if name not in wanted:
            continue
        run_dir = runs / name
        started = time.time()
        common = ["--out", str(run_dir), "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                  "--threads", args.threads, "--device", args.device, "--no-progress", "--log-every", "50"]
        if (run_dir / "checkpoint.pt").exists():
            run(clozelm("train", "--resume", *common, launcher=args.launcher), "clozelm train")
        else:
            extra = ["--locality-warmup", str(max(1, args.steps // 4))] if objective == "mlm" else []
            # A run stopped before its first checkpoint has nothing to resume: start it again (tokens are kept).
            again = ["--overwrite"] if (run_dir / "run.json").exists() else []
            run(clozelm("train", str(corpus / "train"), "--valid", str(corpus / "valid"), "--tokenizer", str(tokenizer),
                        "--objective", objective, *SHAPE, *extra, "--lr", args.lr, "--warmup", str(max(1, args.steps // 50)),
                        "--eval-every", str(max(1, args.steps // 40)), "--checkpoint-every", str(max(1, args.steps // 80)),
                        "--seed", "0", *again, *common, launcher=args.launcher), "clozelm train")
        print(f"{name}: {time.time() - started:.0f} s", flush=True)
        if not args.no_export:
            stats = runs / f"{name}.stats.json"
            stats.write_text(json.dumps(stats_from_metrics(run_dir, objective, args.hardware)))
            run([sys.executable, str(ROOT / "scripts" / "export_default.py"), str(run_dir / "model"), name,
                 "--stats", str(stats), "--corpus", str(corpus), "--run", str(run_dir),
                 "--defaults-dir", args.defaults_dir], "export_default.py")


if __name__ == "__main__":
    main()
