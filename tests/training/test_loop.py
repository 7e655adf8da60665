"""The loop: schedule, locality warm-up, loss going down, accumulation = one big batch, the same seed giving the
same run, the best weights, the three objectives end to end, fine-tuning, and the NaN stop. Tiny models (2 layers x
32) on a generated corpus, so it all runs in seconds."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import clozelm
from clozelm.cloze import method_for
from clozelm.errors import ClozelmError
from clozelm.model import ModelConfig, Transformer
from clozelm.training import TrainConfig
from clozelm.training.loop import Trainer, eval_windows, locality_bias, logits_and_labels, lr_at
from clozelm.training.objectives import MaskedLM

from .helpers import TINY, cli, losses, metrics, one_line_error


def test_warmup_then_cosine():
    cfg = TrainConfig(lr=1.0, warmup=10, steps=110, min_lr_ratio=0.1)
    assert lr_at(cfg, 0) == pytest.approx(0.1) and lr_at(cfg, 9) == pytest.approx(1.0)
    assert lr_at(cfg, 60) == pytest.approx(0.55)
    assert lr_at(cfg, 110) == pytest.approx(0.1)
    values = [lr_at(cfg, s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_evaluations_read_windows_spread_over_the_whole_held_out_split():
    spread = eval_windows(1000, 10, spread=True)
    assert spread == sorted(set(spread)) and len(spread) == 10
    assert spread[0] == 0 and spread[-1] >= 900  # the last source is measured too
    assert max(b - a for a, b in zip(spread, spread[1:])) == 100
    assert eval_windows(1000, 10, spread=False) == list(range(10))  # runs recorded before the switch
    assert eval_windows(7, 10, spread=True) == list(range(7))  # fewer than wanted: all of them
    assert eval_windows(0, 10, spread=True) == []


def test_runs_recorded_before_spread_evaluations_keep_reading_the_first_windows():
    assert TrainConfig().with_defaults("recipe").eval_spread is True
    assert TrainConfig.from_dict({"steps": 7}).eval_spread is False  # what a recorded run without the field did


def test_locality_bias_fades_linearly_to_nothing():
    cfg = TrainConfig(locality_warmup=10)
    distance = (torch.arange(5)[:, None] - torch.arange(5)[None, :]).abs().float()
    first = locality_bias(cfg, 0, 3, 5, torch.device("cpu"))
    assert first.shape == (3, 5, 5)
    for h in range(3):
        assert torch.equal(first[h], -distance / 2 ** h)
    assert torch.allclose(locality_bias(cfg, 4, 3, 5, torch.device("cpu")), 0.6 * first)
    assert locality_bias(cfg, 10, 3, 5, torch.device("cpu")) is None
    assert locality_bias(TrainConfig(), 0, 3, 5, torch.device("cpu")) is None


def test_locality_warmup_gets_a_masked_lm_off_its_plateau():
    """Copy task: every symbol is written twice, so a masked one can be read off its neighbour. From scratch, a
    bidirectional model stays near chance here (uniform heads: nothing tells it where the neighbour is); with the
    warm-up it solves the task, and keeps the solution once the bias is gone (evaluated without it)."""
    V, T, steps = 32, 48, 300
    objective = MaskedLM(V, [V - 1], V - 1, 0.15)

    def batch(rng, step, n):
        windows = [np.repeat(rng.integers(0, V - 1, size=T // 2), 2) for _ in range(n)]
        return objective.batch(windows, [np.random.default_rng([step, i]) for i in range(n)])

    def held_out_loss(warmup):
        torch.manual_seed(0)
        model = Transformer(ModelConfig(vocab_size=V, n_positions=T, n_embd=64, n_layer=2, n_head=4, causal=False,
                                        pre_ln=False, head="mlm"))
        cfg, rng = TrainConfig(locality_warmup=warmup), np.random.default_rng(0)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95))
        for step in range(steps):
            x, y = batch(rng, step, 16)
            logits, y = logits_and_labels(model, objective, x, y, locality_bias(cfg, step, 4, T, torch.device("cpu")))
            loss = torch.nn.functional.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            logits, y = logits_and_labels(model, objective, *batch(rng, 10**6, 64))
            return torch.nn.functional.cross_entropy(logits, y).item()

    chance = np.log(V - 1)
    assert held_out_loss(0) > chance - 0.4
    assert held_out_loss(steps // 2) < 1.5


def test_loss_decreases_and_model_loads(tmp_path, corpus, bpe_dir, capsys):
    run = tmp_path / "run"
    rc, err = cli([corpus, "--tokenizer", bpe_dir, "--out", run, *TINY, "--steps", "60", "--lr", "3e-3",
                   "--eval-every", "20", "--precision", "fp32"], capsys)
    assert rc == 0, err
    loss = losses(run)
    assert sorted(loss) == list(range(1, 61))
    assert np.mean([loss[s] for s in range(51, 61)]) < 0.6 * np.mean([loss[s] for s in range(1, 6)])
    vals = [r["val_loss"] for r in metrics(run) if "val_loss" in r]
    assert len(vals) == 3 and vals[-1] < vals[0]
    for name in ("checkpoint.pt", "metrics.csv", "loss_curve.png", "run.json"):
        assert (run / name).is_file()
    assert (run / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    model = clozelm.load(run / "model")
    assert model.config.causal and model.config.extra["objective"] == "clm"
    assert model.tokenizer is not None and model.tokenizer.vocab_size == 320
    text = clozelm.generate("The big cat", model=model, max_new_tokens=8)
    assert isinstance(text, str)


def test_grad_accumulation_matches_one_big_batch(tmp_path, corpus, bpe_dir, capsys):
    common = [corpus, "--tokenizer", bpe_dir, *TINY, "--steps", "6", "--precision", "fp32", "--seed", "4"]
    rc, err = cli([*common, "--out", tmp_path / "big", "--batch-size", "8"], capsys)
    assert rc == 0, err
    rc, err = cli([*common, "--out", tmp_path / "acc", "--batch-size", "4", "--grad-accum", "2"], capsys)
    assert rc == 0, err
    a, b = losses(tmp_path / "big"), losses(tmp_path / "acc")
    assert a.keys() == b.keys()
    for s in a:
        assert a[s] == pytest.approx(b[s], rel=1e-5, abs=1e-6)
    wa, wb = (load_file(tmp_path / r / "model" / "model.safetensors") for r in ("big", "acc"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_same_seed_same_run(tmp_path, corpus, bpe_dir, capsys):
    common = [corpus, "--tokenizer", bpe_dir, *TINY, "--steps", "4", "--dropout", "0.1", "--seed", "7"]
    assert cli([*common, "--out", tmp_path / "r1"], capsys)[0] == 0
    assert cli([*common, "--out", tmp_path / "r2"], capsys)[0] == 0
    assert losses(tmp_path / "r1") == losses(tmp_path / "r2")


def test_model_is_the_step_with_the_lowest_held_out_loss(tmp_path, corpus, bpe_dir, capsys, monkeypatch):
    # Held-out losses scripted to worsen after step 2: RUN/model must hold step 2's weights and survive a resume.
    scripted = {1: 3.0, 2: 2.0, 3: 2.5, 4: 2.7, 5: 2.1, 6: 2.9}
    weights, stopped = {}, []

    def evaluate(self):
        weights[self.step] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if self.step == 4 and not stopped:
            stopped.append(4)
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: checkpoint after this step, exit 130
        return scripted[self.step]

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    run = tmp_path / "run"
    common = [*TINY, "--eval-every", "1", "--checkpoint-every", "1", "--precision", "fp32", "--lr", "3e-3"]
    rc, err = cli([corpus, "--tokenizer", bpe_dir, "--out", run, *common, "--steps", "6"], capsys)
    assert rc == 130, err
    rc, err = cli(["--resume", "--out", run, "--no-progress"], capsys)  # the best (step 2) must outlive the stop
    assert rc == 0, err
    assert "weights of step 2" in err and "2.0000" in err
    model = clozelm.load(run / "model").state_dict()
    assert all(torch.equal(model[k], weights[2][k]) for k in model)
    assert not all(torch.equal(model[k], weights[6][k]) for k in model)
    last = torch.load(run / "checkpoint.pt", weights_only=True)
    assert last["step"] == 6 and last["best_step"] == 2
    assert all(torch.equal(last["model"][k], weights[6][k]) for k in last["model"])


def test_a_best_found_after_the_last_checkpoint_outlives_a_kill_and_another_eval_schedule(tmp_path, corpus, bpe_dir,
                                                                                           capsys, monkeypatch):
    # Killed without warning after step 3's evaluation wrote best.pt (the checkpoint is step 2's), then resumed
    # evaluating every 2 steps: step 3 is never evaluated again, and step 4 (better than anything step 2 knew,
    # worse than step 3) must not overwrite step 3's weights.
    scripted = {1: 3.0, 2: 2.5, 3: 1.5, 4: 2.0, 5: 2.2, 6: 2.9}
    weights, killed = {}, []

    def evaluate(self):
        if self.step == 4 and not killed:
            killed.append(4)
            raise KeyboardInterrupt  # as a kill: no checkpoint of this step
        weights[self.step] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return scripted[self.step]

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    run = tmp_path / "run"
    common = [*TINY, "--checkpoint-every", "2", "--precision", "fp32", "--lr", "3e-3"]
    rc, err = cli([corpus, "--tokenizer", bpe_dir, "--out", run, *common, "--eval-every", "1", "--steps", "6"], capsys)
    assert rc == 130, err
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 2
    rc, err = cli(["--resume", "--out", run, "--eval-every", "2", "--no-progress"], capsys)
    assert rc == 0, err
    assert "weights of step 3" in err and "1.5000" in err
    model = clozelm.load(run / "model").state_dict()
    assert all(torch.equal(model[k], weights[3][k]) for k in model)
    assert not all(torch.equal(model[k], weights[4][k]) for k in model)


def test_no_keep_best_gives_the_last_weights_whatever_the_held_out_loss(tmp_path, corpus, bpe_dir, capsys, monkeypatch):
    # When the held-out text is a test set (the study's), nothing may be chosen on it: the model is the last step's.
    scripted = {1: 3.0, 2: 2.0, 3: 2.5}
    weights = {}

    def evaluate(self):
        weights[self.step] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return scripted[self.step]

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    run = tmp_path / "run"
    rc, err = cli([corpus, "--tokenizer", bpe_dir, "--out", run, *TINY, "--eval-every", "1", "--precision", "fp32",
                   "--lr", "3e-3", "--steps", "3", "--no-keep-best"], capsys)
    assert rc == 0, err
    assert "the last step's weights" in err and not (run / "best.pt").exists()
    model = clozelm.load(run / "model").state_dict()
    assert all(torch.equal(model[k], weights[3][k]) for k in model)
    assert not all(torch.equal(model[k], weights[2][k]) for k in model)


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_held_out_loss_reads_the_weights_of_this_step(tmp_path, corpus, bpe_dir, capsys, monkeypatch, precision):
    # Validation runs without gradients, where products read cached bf16 or packed copies of the weights; the
    # fused AdamW step changes the weights in place, and the copies must follow.
    from clozelm.model import packed

    monkeypatch.setattr(packed, "PACK_FP32", True)  # fp32 weights packed as on CPUs without AMX
    original, seen = Trainer.evaluate, []

    def evaluate(self):
        cached = original(self)
        packed._cache.clear()
        packed._quant_cache.clear()
        seen.append((cached, original(self)))  # the same windows through copies made afresh
        return cached

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    rc, err = cli([corpus, "--tokenizer", bpe_dir, "--out", tmp_path / "run", *TINY, "--steps", "3", "--lr", "3e-3",
                   "--eval-every", "1", "--precision", precision], capsys)
    assert rc == 0, err
    assert len(seen) == 3 and all(cached == fresh for cached, fresh in seen)
    assert len({cached for cached, _ in seen}) == 3


def test_mlm_run_gives_a_bert_model(tmp_path, corpus, bpe_dir, capsys):
    run = tmp_path / "bert"
    rc, err = cli([corpus, "--tokenizer", bpe_dir, "--out", run, *TINY, "--objective", "mlm", "--steps", "30",
                   "--lr", "3e-3", "--precision", "fp32"], capsys)
    assert rc == 0, err
    cfg = clozelm.load(run / "model").config
    assert (cfg.causal, cfg.pre_ln, cfg.head) == (False, False, "mlm")
    loss = losses(run)
    assert np.mean([loss[s] for s in range(26, 31)]) < np.mean([loss[s] for s in range(1, 6)])


def test_fim_run_then_finetune_with_init(tmp_path, corpus, bpe_dir, capsys):
    run = tmp_path / "fim"
    rc, err = cli([corpus, "--tokenizer", bpe_dir, "--out", run, *TINY, "--objective", "fim", "--steps", "8"], capsys)
    assert rc == 0, err
    assert clozelm.load(run / "model").config.extra["objective"] == "fim"
    with pytest.raises(ClozelmError, match="is a training run; its model is .*model"):
        clozelm.load(run)
    tuned = tmp_path / "tuned"
    rc, err = cli([corpus / "a.txt", "--init", run / "model", "--out", tuned, "--steps", "3", "--batch-size", "2",
                   "--no-progress"], capsys)
    assert rc == 0, err
    tuned_model = clozelm.load(tuned / "model")
    assert tuned_model.config.extra["objective"] == "fim" and tuned_model.config.n_embd == 32
    start = load_file(run / "model" / "model.safetensors")
    assert not torch.equal(start["transformer.wte.weight"], load_file(tuned / "model" / "model.safetensors")["transformer.wte.weight"])


def test_a_fim_model_fills_in_the_format_it_was_trained_on(tmp_path, corpus, bpe_dir, capsys):
    # fim_judge="fim": log P(middle + separator | <|fim_prefix|> <|fim_suffix|> right <|fim_middle|> left), SPM order,
    # the separator that closes every middle in training saying the middle is complete. "causal": log P(whole text)
    # read left to right, the suffix-aware search of any causal model. "both", the default: the mean of the two
    # (two estimates of one joint probability).
    run = tmp_path / "fim"
    rc, err = cli([corpus, "--tokenizer", bpe_dir, "--out", run, *TINY, "--objective", "fim", "--steps", "8"], capsys)
    assert rc == 0, err
    model = clozelm.load(run / "model")
    tok, sp = model.tokenizer, model.tokenizer.special_tokens
    assert method_for(model) == "fim"
    left, right = "The old dog saw the", " cat near the river."
    ctx = [sp["<|fim_prefix|>"], sp["<|fim_suffix|>"], *tok.encode(right), sp["<|fim_middle|>"], *tok.encode(left)]

    def logp_of(seq, start):
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([seq])).logits[0].float(), -1)
        return sum(logp[i - 1, seq[i]].item() for i in range(start, len(seq)))

    for judge in ("fim", "causal", None):
        options = {} if judge is None else {"fim_judge": judge}
        answers = clozelm.fill(left + " ___" + right, model=model, top=4, precision="fp32", **options)
        assert len(answers) == 4
        for answer in answers:
            middle = tok.encode(" " + answer.blanks[0])
            fim = logp_of(ctx + middle + [tok.eos_id], len(ctx))
            causal = logp_of([tok.eos_id, *tok.encode(answer.text)], 1)
            expected = {"fim": fim, "causal": causal, None: (fim + causal) / 2}[judge]
            assert answer.score == pytest.approx(expected, abs=2e-3), (judge, answer)
    with pytest.raises(ClozelmError, match="fim_judge must be"):
        clozelm.fill(left + " ___" + right, model=model, fim_judge="middle")
    with pytest.raises(ClozelmError, match="trained with the fim objective"):
        clozelm.fill(left + " ___" + right, model="default", fim_judge="fim")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, corpus, bpe_dir, capsys):
    run = tmp_path / "run"
    rc, err = cli([corpus, "--tokenizer", bpe_dir, "--out", run, *TINY, "--steps", "20", "--lr", "1e30",
                   "--warmup", "0", "--grad-clip", "0", "--checkpoint-every", "1", "--precision", "fp32"], capsys)
    one_line_error(rc, err, "loss is", "last good checkpoint")
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    bad_step = max(losses(run)) + 1
    assert state["step"] == bad_step - 1 >= 1
    assert f"at step {bad_step}" in err
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (run / "model").exists()
