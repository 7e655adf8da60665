"""Training from Python: `clozelm.train(TrainConfig(...))` and `clozelm.training.train(config, init=, callbacks=)`,
new runs and resumes, the Run it returns, step limits and callbacks."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

import clozelm
from clozelm.errors import ClozelmError
from clozelm.training import InvalidTrainConfig, Run, TrainConfig, train

from .helpers import losses

TINY = dict(n_layer=2, n_embd=32, n_head=2, n_positions=32, batch_size=4, progress=False)


def config(corpus, bpe_dir, out, **changes) -> TrainConfig:
    return TrainConfig(files=[corpus], tokenizer=bpe_dir, out=out, **{**TINY, "steps": 12, "eval_every": 4,
                                                                      "precision": "fp32", **changes})


def test_public_train_new_run_then_resume_is_the_straight_run(tmp_path, corpus, bpe_dir):
    straight = clozelm.train(config(corpus, bpe_dir, tmp_path / "straight"))
    assert isinstance(straight, Run) and straight.complete and straight.stopped is None
    assert (straight.dir, straight.step, straight.steps, straight.tokens_seen) == (tmp_path / "straight", 12, 12, 12 * 4 * 32)
    assert straight.model_dir == tmp_path / "straight" / "model" and (straight.model_dir / "model.safetensors").is_file()
    assert straight.metrics.is_file() and straight.metrics_csv.is_file() and straight.loss_curve.is_file()
    assert straight.checkpoint.is_file() and straight.settings.is_file()
    recorded = losses(straight.dir)
    assert straight.train_loss == recorded[12]
    vals = [r["val_loss"] for r in map(json.loads, straight.metrics.read_text().splitlines()) if "val_loss" in r]
    assert straight.best_val_loss == min(vals) and straight.best_step in (4, 8, 12)

    first = clozelm.train(config(corpus, bpe_dir, tmp_path / "split", stop_after=5))
    assert (first.step, first.complete, first.stopped) == (5, False, "stop_after=5")
    assert not first.model_dir.exists()  # the model is written when the run is complete
    resumed = clozelm.train(TrainConfig(out=tmp_path / "split", resume=True, progress=False))
    assert resumed.complete and resumed.step == 12 and resumed.train_loss == straight.train_loss
    assert losses(tmp_path / "split") == recorded
    wa, wb = (load_file(r.model_dir / "model.safetensors") for r in (straight, resumed))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_callbacks_see_every_step_and_may_stop_the_run(tmp_path, corpus, bpe_dir):
    seen = []

    def watch(trainer, record):
        seen.append(record)
        if record["step"] == 6:
            trainer.request_stop("enough")

    run = train(config(corpus, bpe_dir, tmp_path / "run"), callbacks=[watch])
    assert [r["step"] for r in seen] == list(range(1, 7))
    assert "val_loss" in seen[3] and "val_loss" not in seen[2]  # evaluated every 4 steps
    assert (run.step, run.stopped, run.complete) == (6, "enough", False)
    assert torch.load(run.checkpoint, weights_only=True)["step"] == 6
    run = train(replace(config(corpus, bpe_dir, tmp_path / "run"), files=(), resume=True, tokenizer=None))
    assert run.complete and run.step == 12


def test_fine_tuning_takes_the_loaded_model(tmp_path, corpus, bpe_dir):
    base = train(config(corpus, bpe_dir, tmp_path / "base", steps=4))
    model = clozelm.load(base.model_dir)
    tuned = train(TrainConfig(files=[corpus / "a.txt"], out=tmp_path / "tuned", steps=3, batch_size=2, progress=False),
                  init=model)
    settings = json.loads(tuned.settings.read_text())
    assert settings["init"] == str(base.model_dir) and settings["train"]["lr"] == 1e-4  # the fine-tuning default
    assert tuned.complete and clozelm.load(tuned.model_dir).config.n_embd == 32
    with pytest.raises(ClozelmError, match="loaded"):  # a name alone: only clozelm.train loads by name
        train(TrainConfig(files=[corpus], init=str(base.model_dir), out=tmp_path / "x"))
    assert not (tmp_path / "x").exists()
    via_name = clozelm.train(TrainConfig(files=[corpus / "a.txt"], init=str(base.model_dir), out=tmp_path / "named",
                                         steps=2, batch_size=2, progress=False))
    assert via_name.complete


def test_what_train_refuses_before_touching_anything(tmp_path, corpus, bpe_dir):
    with pytest.raises(InvalidTrainConfig, match="out is required"):
        train(TrainConfig(files=[corpus], tokenizer=bpe_dir))
    with pytest.raises(InvalidTrainConfig, match="files are required"):
        train(TrainConfig(tokenizer=bpe_dir, out=tmp_path / "r"))
    with pytest.raises(InvalidTrainConfig, match="seq_len 64 exceeds"):
        train(config(corpus, bpe_dir, tmp_path / "r", seq_len=64))
    with pytest.raises(ClozelmError, match="TrainConfig"):
        train({"files": [corpus]})
    assert not (tmp_path / "r").exists()
    run = train(config(corpus, bpe_dir, tmp_path / "r", steps=2))
    with pytest.raises(InvalidTrainConfig, match="steps 5 differs from the run's 2"):
        train(TrainConfig(out=run.dir, resume=True, steps=5))
    assert train(TrainConfig(out=run.dir, resume=True, steps=2, eval_every=1)).complete  # the schedule may change


def test_a_bert_preset_or_layout_without_an_objective_trains_a_masked_lm(bpe_dir):
    from clozelm.tokenizers import load_tokenizer
    from clozelm.training.runner import _model_config

    tok = load_tokenizer(bpe_dir)
    for given in (dict(preset="bert-base"), dict(layout="bert", n_layer=1, n_embd=32, n_head=2)):
        cfg = _model_config(TrainConfig(**given), None, tok)
        assert cfg.extra["objective"] == "mlm" and not cfg.causal and cfg.head == "mlm", given
    assert _model_config(TrainConfig(preset="gpt2"), None, tok).extra["objective"] == "clm"


def test_a_run_resumes_from_another_working_directory(tmp_path, corpus, bpe_dir, monkeypatch):
    import shutil

    local = tmp_path / "work"
    shutil.copytree(corpus, local / "corpus")
    monkeypatch.chdir(local)
    first = clozelm.train(config("corpus", bpe_dir, "runs/x", steps=6, stop_after=3))
    assert first.step == 3
    assert json.loads((local / "runs" / "x" / "run.json").read_text())["inputs"]["train"][0].startswith(str(local))
    monkeypatch.chdir(local / "runs")
    resumed = clozelm.train(TrainConfig(out="x", resume=True, progress=False))
    assert resumed.complete and resumed.step == 6
    # the same files named another way are the same files
    again = clozelm.train(TrainConfig(out="x", files=["../corpus"], resume=True, progress=False))
    assert again.complete
