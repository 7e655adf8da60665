"""Decoding speed: clozelm vs transformers' `generate`, GPT-2 124M shape, batch 1, 32-token prompt,
128 new tokens, greedy. Measured interleaved (A B C A B C ...) in one run so slow phases of the machine
hit every contender alike. Prints tokens/s, ratios, and whether the tokens are identical. The compiled rows
(model/step.py) print their compile time apart: their first call, before the rounds. Where model/native.c runs (x86
CPUs without AMX), the plain rows take the one-call step (model/native_step.py); the compiled rows and those marked
"step per operation" run without it, beside them.

Decoding one token reads every weight once, so its limit is the bytes of the weights over how fast this machine
streams memory (a sum over a 1 GB buffer, measured just before and after each timed call: the rate has phases);
each row without drafting prints its tokens/s as a fraction of the limit at the rate measured beside its own calls,
and the matrix products alone, timed back to back at the same shapes and weight formats, show how much of the limit
the kernels themselves reach.

    python benchmarks/generate_speed.py [--rounds 3] [--threads 2] [--new 128]
    python benchmarks/generate_speed.py --bf16-agreement default   # bf16 vs fp32 greedy on held-out prompts
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time

import torch


def time_it(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def interleaved(contenders: dict, rounds: int, n_tokens: int, beside=None) -> tuple[dict, dict, dict]:
    """Each contender once to warm up (allocator, packed weights, first-call paths), then `rounds` rounds of all
    of them in turn (A B C A B C ...): ({name: tokens per second, the median round}, {name: its last output},
    {name: the median of what `beside()` measured around its timed calls, the mean of just before and just after},
    empty without `beside`). The machine's memory has phases that halve or double its streaming rate, so a limit
    measured once is another machine's limit for some rows: measured beside each call, each row meets its own."""
    for fn in contenders.values():
        fn()
    times: dict = {name: [] for name in contenders}
    measured: dict = {name: [] for name in contenders}
    outputs = {}
    for _ in range(rounds):
        for name, fn in contenders.items():
            before = None if beside is None else beside()
            dt, outputs[name] = time_it(fn)
            times[name].append(dt)
            if beside is not None:
                measured[name].append((before + beside()) / 2)
    return ({name: n_tokens / statistics.median(t) for name, t in times.items()}, outputs,
            {name: statistics.median(m) for name, m in measured.items() if m})


def stream_meter(gigabytes: float = 1.0, reps: int = 3):
    """A function that measures how fast this machine streams memory, in bytes per second: a sum over a buffer far
    larger than its caches (allocated once), the best of `reps`; quick enough to run beside every timed call (which
    then starts with cold caches, as a token of a model far larger than them does anyway)."""
    buffer = torch.ones(int(gigabytes * 2**30) // 4)
    buffer.sum()
    return lambda: buffer.numel() * 4 / min(time_it(buffer.sum)[0] for _ in range(reps))


def bytes_per_token(network, quantized: str | None = None) -> int:
    """The weight bytes one decoding step reads: every matrix and vector, once (the tied output matrix is read
    whole by the head; an embedding lookup reads one row, so the position table does not count). quantized
    "int8": the matrices as one byte per weight plus a bf16 scale per row; "int4": half a byte per weight plus a
    bf16 scale and zero per group of 32, the vocabulary projection as int8 (model/packed.py)."""
    skip = {id(network.wpe.weight)} if getattr(network, "wpe", None) is not None else set()
    output = {id(owner.weight) for owner in (getattr(network, "wte", None), getattr(network, "lm_head", None))
              if owner is not None}
    total = 0
    for p in network.parameters():
        if id(p) in skip:
            continue
        if quantized == "int4" and p.dim() == 2 and p.shape[1] % 32 == 0 and p.shape[0] % 16 == 0 and id(p) not in output:
            total += p.numel() // 2 + 4 * (p.numel() // 32)
        elif quantized in ("int8", "int4") and p.dim() == 2 and p.shape[1] % 16 == 0:
            total += p.numel() + 2 * p.shape[0]
        else:
            total += p.numel() * p.element_size()
    return total


def speed(args):
    import transformers

    import clozelm
    from clozelm.generation import generate_ids
    from clozelm.model import packed

    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = clozelm.load(d, tokenizer=False)
    ours_bf16 = copy.deepcopy(ours).to(torch.bfloat16)
    ours_int8, ours_int4 = copy.deepcopy(ours), copy.deepcopy(ours)
    packed.use_quantized_weights(ours_int8.network, "int8")
    packed.use_quantized_weights(ours_int4.network, "int4")
    prompt = torch.randint(0, 50257, (1, 32))
    n = args.new

    def run_hf():
        with torch.inference_mode():
            return hf.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)[0, 32:].tolist()

    def run_ours(model, **options):
        return lambda: list(generate_ids(model, prompt[0].tolist(), n, **options))

    # clozelm's greedy decoding drafts tokens by prompt lookup (exact: the output is still plain greedy);
    # the "no drafting" row shows what the rest of the decoding path alone gives.
    contenders = {"transformers fp32": run_hf, "clozelm fp32": run_ours(ours), "clozelm bf16": run_ours(ours_bf16),
                  "clozelm fp32, no drafting": run_ours(ours, lookahead=0),
                  "clozelm bf16, no drafting": run_ours(ours_bf16, lookahead=0),
                  "clozelm int8, no drafting": run_ours(ours_int8, lookahead=0),
                  "clozelm int4, no drafting": run_ours(ours_int4, lookahead=0),
                  "clozelm fp32, compiled, no drafting": run_ours(ours, lookahead=0, compile=True),
                  "clozelm bf16, compiled, no drafting": run_ours(ours_bf16, lookahead=0, compile=True),
                  "clozelm int8, compiled, no drafting": run_ours(ours_int8, lookahead=0, compile=True),
                  "clozelm int4, compiled, no drafting": run_ours(ours_int4, lookahead=0, compile=True)}
    if packed.native_products():  # this CPU multiplies a few rows through model/native.c: torch's kernels beside
        for name in ("fp32, no drafting", "bf16, no drafting", "int8, no drafting", "int4, no drafting",
                     "int8, compiled, no drafting", "int4, compiled, no drafting"):  # compiled fp32, bf16: inductor's
            contenders[f"clozelm {name}, torch's kernels"] = torch_s(contenders[f"clozelm {name}"])
        # every row takes the one-call step there (model/native_step.py), compiled or not: the steps it replaces
        # beside them, the eager one operation by operation and the compiled one
        for d in ("fp32", "bf16", "int8", "int4"):
            contenders[f"clozelm {d}, no drafting, step per operation"] = per_operation(
                contenders[f"clozelm {d}, no drafting"])
            contenders[f"clozelm {d}, compiled, no drafting"] = per_operation(
                contenders[f"clozelm {d}, compiled, no drafting"])
    compiling = {name: time_it(fn)[0] for name, fn in contenders.items() if "compiled" in name}  # the first call
    meter = stream_meter()
    rate, outputs, bandwidth = interleaved(contenders, args.rounds, n, beside=meter)
    base = rate["transformers fp32"]
    per_token = {"fp32": bytes_per_token(ours.network), "bf16": bytes_per_token(ours_bf16.network),
                 "int8": bytes_per_token(ours.network, "int8"), "int4": bytes_per_token(ours.network, "int4")}
    seen = sorted(bandwidth.values())
    middle = statistics.median(seen)
    print(f"memory streamed at {seen[0] / 1e9:.1f}-{seen[-1] / 1e9:.1f} GB/s beside the rows (median "
          f"{middle / 1e9:.1f}); at the median the bandwidth limit is " + ", ".join(
              f"{middle / b:.1f} tok/s in {d}" for d, b in per_token.items()) + "; each row's fraction below is of the "
          "limit at the rate measured beside its own calls")
    alone = {}
    for d, network in (("fp32", ours.network), ("bf16", ours_bf16.network), ("int8", ours_int8.network),
                       ("int4", ours_int4.network)):
        alone[d] = (meter(), products_alone(network))
    print("the matrix products alone, timed back to back (what the kernels reach): " + ", ".join(
        f"{d} {per_token[d] / (b * t):.0%}" for d, (b, t) in alone.items()) + " of each limit")
    for name in contenders:
        dtype = next((d for d in ("bf16", "int8", "int4") if d in name), "fp32")
        limit = bandwidth[name] / per_token[dtype]
        fraction = (f"  {rate[name] / limit:4.0%} of the {dtype} limit at {bandwidth[name] / 1e9:.0f} GB/s"
                    if ("no drafting" in name or "transformers" in name) else "  (drafting: beyond the limit)")
        print(f"{name:52s} {rate[name]:7.1f} tok/s   x{rate[name] / base:5.2f} vs transformers{fraction}")
    for name, seconds in compiling.items():
        eager = name.replace(", compiled", "").replace(", torch's kernels", "")
        print(f"{name}: first call (compiling) {seconds:.1f} s; tokens identical to {eager}: "
              f"{outputs[name] == outputs[eager]}")
    print(f"fp32 tokens identical to transformers: {outputs['clozelm fp32'] == outputs['transformers fp32']} "
          f"(no drafting: {outputs['clozelm fp32, no drafting'] == outputs['transformers fp32']})")
    same = sum(a == b for a, b in zip(outputs["clozelm bf16"], outputs["clozelm fp32"]))
    print(f"bf16 tokens equal to fp32 (random weights): {same}/{n}")


def torch_s(fn):
    """fn run with model/native.c's products switched off (CLOZELM_NATIVE_KERNELS=0): torch's kernels."""
    return with_environment(fn, "CLOZELM_NATIVE_KERNELS", "0")


def per_operation(fn):
    """fn run without the one-call step (CLOZELM_NATIVE_STEP=0): each layer's operations one by one, eager or
    compiled."""
    return with_environment(fn, "CLOZELM_NATIVE_STEP", "0")


def with_environment(fn, variable: str, value: str):
    def run():
        before = os.environ.get(variable)
        os.environ[variable] = value
        try:
            return fn()
        finally:
            if before is None:
                del os.environ[variable]
            else:
                os.environ[variable] = before
    return run


def products_alone(network, reps: int = 10) -> float:
    """Seconds one decoding step spends in its matrix products alone: every product of the network (its Linear
    layers and the output projection) on one row, in the network's dtype and weight format, through the same
    kernels as decoding (model/packed.py), timed back to back without the rest of the step (median of `reps`
    passes). The bandwidth limit over this time is what the kernels themselves reach; the gap between it and
    the whole step is the rest of the step."""
    from clozelm.model import packed

    products = [(m, m.weight, m.bias) for m in network.modules() if isinstance(m, packed.Linear)]
    head = getattr(network, "lm_head", None) or network.wte  # the untied head is a Linear already listed
    if head is network.wte:
        products.append((head, head.weight, None))
    dtype = network.wte.weight.dtype
    rows = {w.shape[1]: torch.randn(1, 1, w.shape[1], dtype=dtype) for _, w, _ in products}
    times = []
    with torch.no_grad():
        for i in range(reps + 2):  # two warm-up passes: quantized and packed copies are made on first use
            start = time.perf_counter()
            for owner, weight, bias in products:
                packed.linear(rows[weight.shape[1]], weight, bias, owner)
            if i >= 2:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def bf16_agreement(args):
    """How often bf16 greedy output equals fp32 greedy output with real (trained) weights."""
    from pathlib import Path

    import clozelm
    from clozelm.generation import generate_ids

    model = clozelm.load(args.bf16_agreement)
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    files = sorted(Path(args.prompts).glob("*.txt")) if Path(args.prompts).is_dir() else [Path(args.prompts)]
    lines = [line.strip() for f in files for line in f.read_text(encoding="utf-8").splitlines() if len(line) > 150]
    docs = lines[:: max(1, len(lines) // args.n_prompts)][: args.n_prompts]  # spread over every held-out source
    exact, prefix = 0, []
    for doc in docs:
        ids = model.tokenizer.encode(doc)[:32]
        a = list(generate_ids(model, ids, 32))
        b = list(generate_ids(bf16, ids, 32))
        exact += a == b
        prefix.append(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a)))
    print(f"bf16 vs fp32 greedy, {len(docs)} held-out prompts x 32 tokens: identical {exact}/{len(docs)}, "
          f"mean identical prefix {statistics.mean(prefix):.1f} tokens")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--bf16-agreement", metavar="MODEL")
    p.add_argument("--prompts", default="data/corpus/valid", help="held-out text: a file or a folder of .txt")
    p.add_argument("--n-prompts", type=int, default=50)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    bf16_agreement(args) if args.bf16_agreement else speed(args)
