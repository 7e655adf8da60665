"""The settings that change the arithmetic are recorded in run.json and restored on resume (real processes: a
resume that leaves out --threads continues with the run's thread count and gives the straight run's losses), or a
different one is refused in one line."""

from __future__ import annotations

import json

import pytest
import torch

from clozelm.training import InvalidTrainConfig, TrainConfig, train
from clozelm.training.config import default_of

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


def test_compile_is_the_default_only_where_it_pays(monkeypatch):
    """On CPUs without AMX, for long runs in one process with a C++ compiler at hand; elsewhere the eager step."""
    from clozelm.model import packed
    from clozelm.training import numerics

    long = numerics.COMPILE_FROM_STEPS
    monkeypatch.setattr(packed, "has_amx", lambda: False)
    monkeypatch.setattr(numerics.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert numerics.compile_by_default("cpu", long, 1)
    assert not numerics.compile_by_default("cpu", long - 1, 1)
    assert numerics.compile_by_default("cpu", default_of("steps"), 1)  # `clozelm train`'s own length
    assert not numerics.compile_by_default("cpu", long, 2)
    assert not numerics.compile_by_default("cuda", long, 1)
    monkeypatch.setattr(numerics.shutil, "which", lambda name: None)
    assert not numerics.compile_by_default("cpu", long, 1)
    monkeypatch.setattr(numerics.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(packed, "has_amx", lambda: True)
    assert not numerics.compile_by_default("cpu", long, 1)
    # what a new run records: the machine's choice when the config leaves it out, the config's otherwise
    monkeypatch.setattr(packed, "has_amx", lambda: False)
    assert numerics.for_new_run(TrainConfig(device="cpu"), long, 1).compile
    assert not numerics.for_new_run(TrainConfig(device="cpu", compile=False), long, 1).compile
    assert numerics.for_new_run(TrainConfig(device="cpu", compile=True), 10, 1).compile


def test_a_compiled_run_trains_as_the_plain_one(tmp_path, corpus, bpe_dir):
    """torch.compile fuses the step's small operations, so its bf16 roundings differ a little; the losses must
    follow the plain run's."""
    runs = {}
    for compiled in (False, True):
        cfg = TrainConfig(files=[corpus], tokenizer=bpe_dir, out=tmp_path / str(compiled), n_layer=2, n_embd=32,
                          n_head=2, n_positions=32, batch_size=4, steps=8, dropout=0.0, compile=compiled,
                          eval_every=0, progress=False)
        run = train(cfg)
        assert json.loads(run.settings.read_text())["numerics"]["compile"] is compiled
        runs[compiled] = losses(run.dir)
    assert sorted(runs[True]) == sorted(runs[False]) == list(range(1, 9))
    for step, loss in runs[False].items():
        assert runs[True][step] == pytest.approx(loss, rel=1e-2), step


def test_a_compiled_run_resumes_exactly(tmp_path, corpus, bpe_dir):
    """The study trains compiled on CPUs without AMX and resumes after every stop: a resumed compiled run must log
    the losses of one never stopped (a masked objective: its masks come from the data's random draws too)."""
    def config(out, **kw):
        return TrainConfig(files=[corpus], tokenizer=bpe_dir, out=tmp_path / out, n_layer=2, n_embd=32, n_head=2,
                           n_positions=32, batch_size=4, steps=8, dropout=0.0, compile=True, eval_every=0,
                           objective="mlm", progress=False, **kw)
    straight = train(config("straight"))
    train(config("split", stop_after=3))
    resumed = train(TrainConfig(out=tmp_path / "split", resume=True, progress=False))
    assert resumed.complete and sorted(losses(straight.dir)) == list(range(1, 9))
    assert losses(resumed.dir) == losses(straight.dir)
