"""GPU readiness in one run: every path on CUDA, one line per check, PASS or FAIL with the reason.

    python scripts/gpu_check.py [--corpus DIR_OR_FILE] [--steps 40]
    PYTHONPATH=src PYTHONUNBUFFERED=1 python scripts/gpu_check.py 2>&1 | tee "$OUT/gpu_check.log"   # on a lent
                                                          # machine with torch but no install of clozelm

1. placement: `default` moved to the GPU fills and generates what it does on the CPU, and `clozelm fill`,
   `generate`, `eval` and `heads` run with `--device`;
2. bf16 and SDPA flash: a forward and backward pass under bf16 autocast with only the flash kernel allowed;
3. training: `clozelm train --device cuda` (bf16 master weights, fused AdamW, the fused loss) for a few steps,
   every loss finite and the first one the CPU's (step 1 comes before any update);
4. NCCL DDP: the same through torchrun, one process per GPU (SKIP with one GPU: a single process makes no
   process group, and NCCL refuses two ranks on one device);
5. MFU: `benchmarks/train_speed.py --mfu cuda` on GPT-2 124M's shape.

Exits 1 when a check failed, 2 when there is no GPU. Each command it starts gets at most 4 minutes: a check that
hangs fails on its own, and the others still run. Tests and CI never need a GPU;
this is for a machine that has one (the project's device tool lends one to some sessions).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import torch

import clozelm

ROOT = Path(__file__).resolve().parents[1]
TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
        "want of a ___.")
TIMEOUT = 240
results: list[tuple[str, bool | None, str]] = []


def check(name: str):
    def run(fn):
        try:
            ok, detail = fn()
        except Exception as e:  # a check that crashes is a failed check; the others still run
            ok, detail = False, f"{type(e).__name__}: {e}".splitlines()[0]
            traceback.print_exc()
        results.append((name, ok, detail))
        print(f"{'SKIP' if ok is None else 'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)
        return fn
    return run


def corpus_path(given: str | None) -> Path:
    if given:
        return Path(given)
    if (ROOT / "data" / "corpus" / "train").is_dir():
        return ROOT / "data" / "corpus" / "train"
    folder = Path(tempfile.mkdtemp(prefix="gpu-check-corpus-"))  # the repository's own prose, when data/ is absent
    for i, path in enumerate([ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]):
        (folder / f"{i}.txt").write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    return folder


def losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", help="training text (default: data/corpus/train, else the repository's docs)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--device", default="cuda", help="cuda (default); cpu runs the same checks as a dry run of this script")
    args = ap.parse_args()
    device = args.device
    on_gpu = device.startswith("cuda")
    if on_gpu and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here", file=sys.stderr)
        return 2
    gpus = torch.cuda.device_count() if on_gpu else 1
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"{f'{gpus} x {torch.cuda.get_device_name(0)}' if on_gpu else 'dry run on the CPU'}")
    corpus = corpus_path(args.corpus)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))

    @check("placement: fill and generate on the GPU give the CPU's answers")
    def _():
        model = clozelm.load("default")
        on_cpu = (clozelm.fill(TEXT, model)[0].text, clozelm.generate("It is a truth", model=model, max_new_tokens=24))
        model.to(device)
        assert next(model.network.parameters()).device == torch.device(device)
        moved = (clozelm.fill(TEXT, model)[0].text, clozelm.generate("It is a truth", model=model, max_new_tokens=24))
        fp32 = (clozelm.fill(TEXT, model, precision="fp32")[0].text == clozelm.fill(TEXT, model.to("cpu"), precision="fp32")[0].text)
        model.to(device)
        sampled = clozelm.generate("It is a truth", model=model, max_new_tokens=8, temperature=0.8, seed=1)
        beams = clozelm.generate("It is a truth", model=model, max_new_tokens=8, beams=3)
        same = on_cpu == moved
        return same or fp32, (f"fill {moved[0][-40:]!r} ({'the CPU answer' if on_cpu[0] == moved[0] else 'differs in bf16'}"
                              f", fp32 {'the same' if fp32 else 'differs'}); greedy {'identical' if on_cpu[1] == moved[1] else 'differs'}; "
                              f"sampled {sampled[:30]!r}; beams {beams[:30]!r}")

    @check("the commands that run a model take --device: fill, generate, eval, heads")
    def _():
        text = work / "heldout.txt"
        text.write_text(TEXT.replace("___", "wife") + "\n", encoding="utf-8")
        commands = {"fill": ["fill", TEXT], "generate": ["generate", "It is a truth", "--max-tokens", "8"],
                    "eval": ["eval", "default", str(text), "--tasks", "ppl", "--json"],
                    "heads": ["heads", "The cat sat on the mat.", "-o", str(work / "heads.html")]}
        failed = []
        for name, argv in commands.items():
            r = subprocess.run([sys.executable, "-m", "clozelm", *argv, "--device", device], capture_output=True,
                               text=True, timeout=TIMEOUT)
            if r.returncode != 0:
                failed.append(f"{name}: {(r.stderr.strip().splitlines() or ['exit ' + str(r.returncode)])[-1][:120]}")
        return not failed, "; ".join(failed) or "all four ran"

    @check("bf16 autocast with the flash attention kernel, forward and backward")
    def _():
        from torch.nn.attention import SDPBackend, sdpa_kernel
        network = clozelm.load("default", tokenizer=False).network.to(device).train()
        ids = torch.randint(0, network.config.vocab_size, (4, 256), device=device)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.autocast(device, dtype=torch.bfloat16):
            logits = network(ids).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids.flatten())
        loss.backward()
        ok = logits.dtype == torch.bfloat16 and all(p.grad is not None for p in network.parameters() if p.requires_grad)
        return ok, f"logits {logits.dtype}, loss {loss.item():.3f}, every parameter has a gradient: {ok}"

    train_args = [str(corpus), "--init", "default", "--steps", str(args.steps), "--eval-every", str(args.steps),
                  "--device", device, "--no-progress", "--lr", "3e-4"]

    @check("training on the GPU: bf16 master weights, fused AdamW, fused loss; the CPU's first loss")
    def _():
        got = []
        for i, (where, steps) in enumerate(((device, args.steps), ("cpu", 2))):  # the same init and batches on the CPU
            run = work / f"single-{i}-{where}"
            command = [sys.executable, "-m", "clozelm", "train", *train_args, "--out", str(run)]
            command[command.index("--device") + 1], command[command.index("--steps") + 1] = where, str(steps)
            done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
            if done.returncode:
                return False, f"{where}: exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"
            got.append(losses(run))
        ours, cpu = got
        same_start = abs(ours[0] - cpu[0]) <= 0.01 * abs(cpu[0])  # step 1's loss comes before any update
        finite = all(x == x and abs(x) != float("inf") for x in ours)
        return same_start and finite and len(ours) == args.steps, (
            f"{len(ours)} steps, loss {ours[0]:.4f} -> {ours[-1]:.4f}; step 1 on the CPU {cpu[0]:.4f}")

    @check(f"DDP over NCCL: torchrun, {gpus} process(es)")
    def _():
        if on_gpu and gpus < 2:
            return None, "one GPU: nothing to check"
        run = work / "ddp"
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
                               "-m", "clozelm", "train", *train_args, "--out", str(run)],
                              capture_output=True, text=True, timeout=TIMEOUT)
        if done.returncode:
            return False, f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"
        settings = json.loads((run / "run.json").read_text())
        world, ran_on = settings["train"].get("world_size"), settings["numerics"]["device"]
        ok = world == gpus and ran_on.startswith(device) and len(losses(run)) == args.steps
        return ok, f"{len(losses(run))} steps, world size {world}, device {ran_on}"

    @check("MFU of the training step on GPT-2 124M's shape")
    def _():
        shape = ["--shapes", "124M", "--batch", "32"] if on_gpu else ["--shapes", "default", "--batch", "2"]
        done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_speed.py"), "--mfu", device, *shape,
                               "--steps", "10" if on_gpu else "2"], capture_output=True, text=True, timeout=TIMEOUT)
        lines = done.stdout.strip().splitlines()
        if done.returncode or not lines or "MFU" not in lines[-1]:
            return False, f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"
        return True, lines[-1]

    failed = [name for name, ok, _ in results if ok is False]
    passed = sum(ok is True for _, ok, _ in results)
    print(f"{passed}/{len(results)} checks passed, {len(results) - passed - len(failed)} skipped"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
