"""The settings that change the arithmetic are recorded in run.json and restored on resume (real processes: a
resume that leaves out --threads continues with the run's thread count and gives the straight run's losses), or a
different one is refused in one line."""

from __future__ import annotations

import json

import pytest
import torch

from clozelm.training import InvalidTrainConfig, TrainConfig, train

from .helpers import TINY, child, losses, one_line_error

# The parent's own thread count is not the run's: a resume that kept it would compute differently.
TWO_THREADS = {"OMP_NUM_THREADS": "2"}


def test_a_resume_without_threads_restores_them_and_the_losses(tmp_path, corpus, bpe_dir):
    common = ["train", corpus, "--tokenizer", bpe_dir, *TINY, "--steps", "12", "--threads", "1", "--dropout", "0.1",
              "--eval-every", "4"]
    straight = child([*common, "--out", tmp_path / "straight"], env=TWO_THREADS)
    split = child([*common, "--out", tmp_path / "split", "--stop-after", "5"], env=TWO_THREADS)
    for proc in (straight, split):
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    recorded = json.loads((tmp_path / "split" / "run.json").read_text())["numerics"]
    assert recorded["threads"] == 1 and recorded["device"] == "cpu" and recorded["compile"] is False
    assert recorded["torch"] == torch.__version__

    refused = child(["train", "--resume", "--out", tmp_path / "split", "--threads", "2"], env=TWO_THREADS)
    _, err = refused.communicate(timeout=60)
    one_line_error(refused.returncode, err, "--threads 2 differs from the run's 1")

    resumed = child(["train", "--resume", "--out", tmp_path / "split", "--no-progress"], env=TWO_THREADS)
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert "at step 5/12 (cpu, 1 thread, as the run started)" in err
    assert losses(tmp_path / "split") == losses(tmp_path / "straight")


def test_train_puts_the_process_settings_back_and_refuses_other_ones(tmp_path, corpus, bpe_dir):
    before = torch.get_num_threads()
    cfg = TrainConfig(files=[corpus], tokenizer=bpe_dir, out=tmp_path / "run", n_layer=2, n_embd=32, n_head=2,
                      n_positions=32, batch_size=4, steps=4, stop_after=2, threads=before + 1, progress=False)
    run = train(cfg)
    assert torch.get_num_threads() == before
    assert json.loads(run.settings.read_text())["numerics"]["threads"] == before + 1
    with pytest.raises(InvalidTrainConfig, match="compile true differs from the run's false"):
        train(TrainConfig(out=run.dir, resume=True, compile=True))
    assert train(TrainConfig(out=run.dir, resume=True, device="cpu", threads=before + 1, progress=False)).complete
    assert torch.get_num_threads() == before
