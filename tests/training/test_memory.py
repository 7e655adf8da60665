"""training/memory.py: a run keeps freed memory for its next step (glibc), and only when asked."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from clozelm.cli import main
from clozelm.training import runner
from clozelm.training.memory import _glibc

from .test_runner import config

# A child process (the setting is the whole process's): how many blocks malloc maps on their own (hblks) while
# a 64 MiB tensor lives, and how much free memory it still holds (fordblks) once the tensor is gone, before and
# after reuse_freed_memory().
CHILD = textwrap.dedent("""
    import ctypes, json, torch
    from clozelm.training.memory import reuse_freed_memory
    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = Info
    def probe():
        big = torch.ones(16 << 20)  # 64 MiB
        mapped = libc.mallinfo2().hblks
        del big
        return {"mapped": mapped, "free_kept": libc.mallinfo2().fordblks}
    before = probe()
    took = reuse_freed_memory()
    print(json.dumps({"before": before, "took": took, "after": probe()}))
""")


@pytest.mark.skipif(_glibc() is None, reason="the setting is glibc's malloc's; elsewhere it does nothing")
def test_a_freed_large_block_is_kept_for_reuse_instead_of_unmapped():
    import json
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True).stdout
    r = json.loads(out)
    assert r["before"]["mapped"] >= 1 and r["before"]["free_kept"] < 16 << 20  # glibc's default: mapped, then returned
    assert r["took"] is True
    assert r["after"]["mapped"] == r["before"]["mapped"] - 1  # the new 64 MiB tensor is not mapped on its own
    assert r["after"]["free_kept"] >= 64 << 20  # the 64 MiB came from the heap and stay there, free, for the next step


def test_training_sets_it_unless_told_not_to(tmp_path, corpus, bpe_dir, monkeypatch):
    calls = []
    monkeypatch.setattr(runner, "reuse_freed_memory", lambda: calls.append(1) or True)
    runner.train(config(corpus, bpe_dir, tmp_path / "on", steps=1))
    assert calls == [1]
    runner.train(config(corpus, bpe_dir, tmp_path / "off", steps=1, reuse_memory=False))
    assert calls == [1]


def test_cli_flag_turns_it_off(tmp_path, corpus, bpe_dir, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(runner, "reuse_freed_memory", lambda: calls.append(1) or True)
    tiny = ["--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--n-positions", "16", "--batch-size", "2",
            "--steps", "1", "--no-progress", "--tokenizer", bpe_dir]
    assert main(["train", corpus, "--out", tmp_path / "off", "--no-reuse-memory", *map(str, tiny)]) == 0
    assert calls == []
    assert main(["train", corpus, "--out", tmp_path / "on", *map(str, tiny)]) == 0
    assert calls == [1]

