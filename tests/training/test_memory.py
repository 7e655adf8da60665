"""training/memory.py: a CPU run keeps freed memory for its next step (glibc), and only when asked."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from clozelm.cli import main
from clozelm.training import runner
from clozelm.training.memory import _glibc_malloc

from .test_runner import config

# A child process (the setting is the whole process's): how many blocks malloc maps on their own (hblks) while
# a 64 MiB tensor lives, and how much free memory the heap keeps (fordblks) once the tensor is gone, before and
# after reuse_freed_memory(). Run with the environment given.
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
MiB = 1 << 20


def child(env_changes: dict) -> dict:
    import os
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True,
                         env={**env, **env_changes}).stdout
    return json.loads(out)


needs_glibc = pytest.mark.skipif(_glibc_malloc() is None or not hasattr(_glibc_malloc(), "mallinfo2"),
                                 reason="the setting is glibc's malloc's (mallinfo2 from glibc 2.33); elsewhere it does nothing")


@needs_glibc
def test_a_freed_large_block_is_kept_for_reuse_instead_of_unmapped():
    r = child({})
    assert r["before"]["mapped"] >= 1 and r["before"]["free_kept"] < 64 * MiB  # glibc's default: mapped, then returned
    assert r["took"] is True
    assert r["after"]["mapped"] == r["before"]["mapped"] - 1  # the new 64 MiB tensor is not mapped on its own
    # ... and once freed it stays in the heap with the 256 MiB top pad: neither is trimmed away
    assert r["after"]["free_kept"] >= (64 + 256) * MiB


@needs_glibc
@pytest.mark.parametrize("env", [{"MALLOC_TRIM_THRESHOLD_": "131072"}, {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=1"}])
def test_the_users_own_malloc_settings_win(env):
    r = child(env)
    assert r["took"] is False and r["after"]["mapped"] == r["before"]["mapped"]


def test_training_on_the_cpu_sets_it_when_asked(tmp_path, corpus, bpe_dir, monkeypatch):
    calls = []
    monkeypatch.setattr(runner, "reuse_freed_memory", lambda: calls.append(1) or True)
    runner.train(config(corpus, bpe_dir, tmp_path / "default", steps=1))
    assert calls == []  # from Python: a process-wide setting is the caller's to ask for
    runner.train(config(corpus, bpe_dir, tmp_path / "on", steps=1, reuse_memory=True, device="cpu"))
    assert calls == [1]


def test_cli_sets_it_unless_told_not_to(tmp_path, corpus, bpe_dir, monkeypatch):
    calls = []
    monkeypatch.setattr(runner, "reuse_freed_memory", lambda: calls.append(1) or True)
    tiny = ["--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--n-positions", "16", "--batch-size", "2",
            "--steps", "1", "--no-progress", "--tokenizer", bpe_dir, "--device", "cpu"]
    assert main(["train", corpus, "--out", tmp_path / "off", "--no-reuse-memory", *map(str, tiny)]) == 0
    assert calls == []
    assert main(["train", corpus, "--out", tmp_path / "on", *map(str, tiny)]) == 0
    assert calls == [1]
