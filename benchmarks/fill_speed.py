"""Fill latency: one hidden word in the middle of a ~60-token text, and one at its end, with each embedded model
(the default options: bf16 autocast where the CPU has bf16 units, fp32 elsewhere; the suffix-aware search for causal
models). Interleaved rounds, median seconds per fill, and how much of it the network's forward passes take (the rest
is the search around them).

    python benchmarks/fill_speed.py [--rounds 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import clozelm

MIDDLE = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want "
          "of a wife. However little known the feelings or views of such a man may be on his first entering a ___, "
          "this truth is so well fixed in the minds of the surrounding families.")
END = ("However little known the feelings or views of such a man may be on his first entering a neighbourhood, this "
       "truth is so well fixed in the minds of the surrounding families, that he is considered the rightful ___.")


def main(args) -> None:
    models = {name: clozelm.load(name) for name in ("default", "default-fim", "default-bert")}
    texts = {"middle": MIDDLE, "end": END}
    forward_seconds: dict[tuple[str, str], list[float]] = {}
    for name, model in models.items():  # count the forward passes' share once, outside the timed rounds
        network, spent = model.network, [0.0]
        original = network.forward

        def timed(*a, original=original, spent=spent, **k):
            start = time.perf_counter()
            out = original(*a, **k)
            spent[0] += time.perf_counter() - start
            return out
        network.forward = timed
        for where, text in texts.items():
            clozelm.fill(text, model)
            spent[0] = 0.0
            start = time.perf_counter()
            clozelm.fill(text, model)
            forward_seconds[(name, where)] = [spent[0], time.perf_counter() - start]
        network.forward = original
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for name, model in models.items():
            for where, text in texts.items():
                start = time.perf_counter()
                clozelm.fill(text, model)
                times.setdefault((name, where), []).append(time.perf_counter() - start)
    tokens = {where: len(models["default"].tokenizer.encode(text)) for where, text in texts.items()}
    print(f"median of {args.rounds} fills, {args.threads} threads; texts of {tokens['middle']} and {tokens['end']} tokens")
    for (name, where), values in times.items():
        share = forward_seconds[(name, where)][0] / forward_seconds[(name, where)][1]
        print(f"{name:13s} blank at the {where:6s} {statistics.median(values):6.3f} s   forward passes {share:4.0%} of it")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    main(args)
