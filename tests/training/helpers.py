"""The toy corpus and the ways tests drive `clozelm train`: in process, as a child process, and as a child paused
at a known step (through the public API's callbacks, see pausing_train.py)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

from clozelm.cli import main

SPECIALS = ["<|endoftext|>", "<|mask|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"]
TINY = ["--n-layer", "2", "--n-embd", "32", "--n-head", "2", "--n-positions", "32", "--batch-size", "4",
        "--no-progress"]
# One thread: with other work on the machine, OpenMP threads that spin-wait for each other slow tiny models 10x.
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
PAUSING_TRAIN = Path(__file__).with_name("pausing_train.py")

ADJ = "big small red green quick lazy old young happy sad".split()
NOUN = "cat dog bird fox horse mouse king queen farmer baker".split()
VERB = "sees chases likes finds meets follows helps calls".split()
PLACE = "river hill barn garden market castle".split()


def documents(n: int, seed: int = 0) -> list[str]:
    """Little documents from a toy grammar: real structure for a tiny model to learn quickly."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        sentences = [f"The {rng.choice(ADJ)} {rng.choice(NOUN)} {rng.choice(VERB)} the {rng.choice(ADJ)} "
                     f"{rng.choice(NOUN)} near the {rng.choice(PLACE)}." for _ in range(rng.randint(3, 8))]
        docs.append(" ".join(sentences))
    return docs


def cli(argv, capsys) -> tuple[int, str]:
    """`clozelm train ARGV` in this process: (exit status, stderr)."""
    rc = main(["train", *map(str, argv)])
    return rc, capsys.readouterr().err


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def losses(run: Path) -> dict[int, float]:
    out = {}
    for r in metrics(run):
        if "loss" in r:
            assert r["step"] not in out, f"step {r['step']} logged twice"
            out[r["step"]] = r["loss"]
    return out


def assert_same_losses_and_weights(a: Path, b: Path, steps: int) -> None:
    """Two runs logged the same loss at every step 1..steps (rel 1e-5) and saved the same weights (atol 1e-5)."""
    import pytest
    import torch
    from safetensors.torch import load_file

    la, lb = losses(a), losses(b)
    assert la.keys() == lb.keys() == set(range(1, steps + 1))
    for s in la:
        assert lb[s] == pytest.approx(la[s], rel=1e-5)
    wa, wb = (load_file(r / "model" / "model.safetensors") for r in (a, b))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def child(argv, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "clozelm", *map(str, argv)], env={**CHILD_ENV, **kw.pop("env", {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def paused_child(step: int, argv, **kw) -> subprocess.Popen:
    """`clozelm ARGV` (a train command) in a child that holds still after step `step` until signalled or killed."""
    return subprocess.Popen([sys.executable, str(PAUSING_TRAIN), str(step), *map(str, argv)],
                            env={**CHILD_ENV, **kw.pop("env", {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


def wait_for_line(proc: subprocess.Popen, marker: str, timeout: float = 90) -> list[str]:
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if marker in line:
                return seen
    finally:
        timer.cancel()
    raise AssertionError(f"{marker!r} never appeared; stderr:\n{''.join(seen)}")


def one_line_error(rc, err, *words):
    """Exit status 2 and one `clozelm: error:` line (the last; progress notes may come before it), no traceback."""
    lines = [line for line in err.strip().splitlines() if line]
    assert rc == 2, err
    errors = [line for line in lines if line.startswith("clozelm: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in err, err
    for w in words:
        assert w in errors[0], err
