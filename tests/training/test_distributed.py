"""DDP: `torchrun --nproc_per_node 2 -m clozelm train` (gloo, CPU) follows the same loss curve and ends with the
same weights as one process with the same global batch. fp32, so the only differences are float summation order."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from .helpers import TINY, losses

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def test_two_gloo_ranks_match_one_process(tmp_path, corpus, bpe_dir):
    common = ["train", corpus, "--tokenizer", bpe_dir, *TINY, "--steps", "6", "--precision", "fp32", "--seed", "5",
              "--dropout", "0", "--eval-every", "3"]
    common = [str(a) for a in common]
    single = subprocess.Popen([sys.executable, "-m", "clozelm", *common, "--out", str(tmp_path / "single"),
                               "--batch-size", "8"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Per rank: 2 sequences x 2 accumulation steps; x 2 ranks = the single run's 8 sequences per step.
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "clozelm", *common, "--out", str(tmp_path / "ddp"), "--batch-size", "2", "--grad-accum", "2"],
                         env=ENV, capture_output=True, text=True, timeout=120)
    out, err = single.communicate(timeout=120)
    assert single.returncode == 0, err
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stderr.count("done: 6 steps") == 1  # only rank 0 reports and writes

    a, b = losses(tmp_path / "single"), losses(tmp_path / "ddp")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-5, abs=1e-6), (step, a[step], b[step])
    wa = load_file(tmp_path / "single" / "model" / "model.safetensors")
    wb = load_file(tmp_path / "ddp" / "model" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5, rtol=0), (k, (wa[k] - wb[k]).abs().max())
    state = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)
    assert len(state["rng_cpu"]) == 2 and state["train_config"]["world_size"] == 2


def test_bf16_master_gradients_are_averaged_across_ranks(tmp_path, corpus, bpe_dir):
    """The default precision under DDP: bf16 gradients go through fp32_mean_hook (summed in fp32 across ranks), and
    the run follows one process with the same global batch within bf16 rounding."""
    common = [str(a) for a in ["train", corpus, "--tokenizer", bpe_dir, *TINY, "--steps", "6", "--seed", "5",
                               "--dropout", "0", "--eval-every", "3"]]
    single = subprocess.run([sys.executable, "-m", "clozelm", *common, "--out", str(tmp_path / "single"),
                             "--batch-size", "8"], env=ENV, capture_output=True, text=True, timeout=120)
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "clozelm", *common, "--out", str(tmp_path / "ddp"), "--batch-size", "4"],
                         env=ENV, capture_output=True, text=True, timeout=120)
    assert single.returncode == 0, single.stderr[-3000:]
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = losses(tmp_path / "single"), losses(tmp_path / "ddp")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-2), (step, a[step], b[step])


def test_the_fp32_mean_hook_averages_in_fp32():
    """One rank of a gloo group: the hook's mean of a bf16 bucket comes back in the bucket's own buffer."""
    import torch.distributed as dist

    from clozelm.training.distributed import fp32_mean_hook

    class Bucket:
        def __init__(self, t):
            self.t = t

        def buffer(self):
            return self.t

    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        grads = torch.tensor([1.0, 3.0, 1e-3], dtype=torch.bfloat16)
        out = fp32_mean_hook(None, Bucket(grads)).wait()
        assert out.dtype == torch.bfloat16 and out.data_ptr() == grads.data_ptr()
        assert torch.equal(out, torch.tensor([1.0, 3.0, 1e-3], dtype=torch.bfloat16))
    finally:
        dist.destroy_process_group()
