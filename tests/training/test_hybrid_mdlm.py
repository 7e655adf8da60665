"""The hybrid (GPT-BERT) and masked-diffusion objectives in the trainer: one forward pass for a batch of mixed
rows, the fused loss and the plain one agreeing, tiny runs giving models that load, fill and evaluate as what
they are, and a stopped run resuming exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import clozelm
from clozelm.errors import ClozelmError
from clozelm.model import ModelConfig, Transformer
from clozelm.training import InvalidTrainConfig, TrainConfig, train
from clozelm.training.loop import row_attention

from .helpers import assert_same_losses_and_weights, losses

TINY = dict(n_layer=2, n_embd=32, n_head=2, n_positions=32, batch_size=4, progress=False)


def config(corpus, bpe_dir, out, **changes) -> TrainConfig:
    return TrainConfig(files=[corpus], tokenizer=bpe_dir, out=out, **{**TINY, "steps": 12, "eval_every": 4, **changes})


def test_a_batch_of_causal_and_bidirectional_rows_is_one_pass_with_each_rows_own_attention():
    torch.manual_seed(0)
    net = Transformer(ModelConfig(vocab_size=50, n_positions=10, n_embd=16, n_layer=2, n_head=2)).eval()
    ids = torch.randint(0, 50, (4, 10))
    rows = torch.tensor([True, False, False, True])
    locality = -0.3 * torch.rand(2, 10, 10)
    for bias in (None, locality):
        causal, mixed_bias = row_attention(rows, bias, 10)
        assert causal is False
        with torch.no_grad():
            mixed = net(ids, attention_bias=mixed_bias, causal=causal).logits
            alone_causal = net(ids[rows], attention_bias=None if bias is None else bias).logits
            alone_both = net(ids[~rows], attention_bias=bias, causal=False).logits
        assert torch.allclose(mixed[rows], alone_causal, atol=1e-5)
        assert torch.allclose(mixed[~rows], alone_both, atol=1e-5)
    assert row_attention(None, locality, 10) == (None, locality)  # clm, mlm, fim: the network as configured
    assert row_attention(torch.tensor([True, True]), None, 10) == (True, None)
    assert row_attention(torch.tensor([False, False]), None, 10) == (False, None)


@pytest.mark.parametrize("objective", ["hybrid", "mdlm"])
def test_fused_loss_gives_the_plain_losses_in_fp32(tmp_path, corpus, bpe_dir, objective):
    common = dict(steps=8, precision="fp32", seed=3, objective=objective, locality_warmup=4,
                  **({"hybrid_causal_share": 0.3} if objective == "hybrid" else {}))
    train(config(corpus, bpe_dir, tmp_path / "plain", fused_loss=False, **common))
    train(config(corpus, bpe_dir, tmp_path / "fused", fused_loss=True, **common))
    assert_same_losses_and_weights(tmp_path / "plain", tmp_path / "fused", steps=8)


def test_a_hybrid_run_gives_a_causal_model_that_fills_left_to_right(tmp_path, corpus, bpe_dir):
    run = train(config(corpus, bpe_dir, tmp_path / "hybrid", objective="hybrid", steps=40, eval_every=20, lr=3e-3))
    recorded = losses(run.dir)
    assert recorded[40] < 0.8 * recorded[1]
    settings = json.loads(run.settings.read_text())
    assert settings["train"]["objective"] == "hybrid" and settings["train"]["hybrid_causal_share"] == 1 / 16
    m = clozelm.load(run.model_dir)
    assert m.config.causal and m.config.head == "tied" and m.info.objective == "hybrid"
    assert m.fill_method == "causal"
    answers = clozelm.fill("The big cat sees the ___ dog near the river.", model=m, top=3)
    assert len(answers) == 3 and all(a.text.startswith("The big cat sees the ") for a in answers)
    from clozelm.eval import evaluate
    results = evaluate(m, [corpus / "a.txt"], tasks="ppl,pairs", limit=5)["tasks"]
    assert results["ppl"]["method"].startswith("causal") and results["pairs"]["score"] == "log-probability"


def test_an_mdlm_run_gives_a_masked_model_that_fills_by_unmasking_and_has_a_bound(tmp_path, corpus, bpe_dir):
    from clozelm.eval import evaluate
    run = train(config(corpus, bpe_dir, tmp_path / "mdlm", objective="mdlm", steps=40, eval_every=20, lr=3e-3))
    recorded = losses(run.dir)
    assert recorded[40] < 0.8 * recorded[1]
    m = clozelm.load(run.model_dir)
    assert not m.config.causal and m.info.objective == "mdlm" and m.fill_method == "masked"
    assert m.config.head == "mlm"  # a from-scratch mdlm is a BERT unless --layout gpt2
    answers = clozelm.fill("The big cat sees the ___ dog near the river.", model=m, top=3)
    assert len(answers) == 3 and all(a.text.startswith("The big cat sees the ") for a in answers)
    assert all(a.text.endswith(" dog near the river.") for a in answers)
    results = evaluate(m, [corpus / "a.txt"], tasks="ppl,pairs", samples=4, limit=20, pll_tokens=32)["tasks"]
    assert "bits_per_byte_se" in results["ppl"]  # the masked-diffusion bound
    assert results["pairs"]["score"].startswith("minus the masked-diffusion bound")  # its own bound, not the PLL
    # the trained bound is on the next-token scale: near the held-out training loss (both estimate the ELBO)
    assert results["ppl"]["nats_per_token"] == pytest.approx(run.best_val_loss, rel=0.25)


@pytest.mark.parametrize("objective", ["hybrid", "mdlm"])
def test_a_stopped_run_resumes_exactly(tmp_path, corpus, bpe_dir, objective):
    # bf16 master weights (the default), dropout and the locality warm-up: the resumed run restores it all
    common = dict(objective=objective, dropout=0.1, seed=7, locality_warmup=6, checkpoint_every=100,
                  **({"hybrid_causal_share": 0.25} if objective == "hybrid" else {}))
    straight = train(config(corpus, bpe_dir, tmp_path / "straight", **common))
    first = train(config(corpus, bpe_dir, tmp_path / "split", stop_after=5, **common))
    assert first.step == 5 and not first.complete
    resumed = train(TrainConfig(out=tmp_path / "split", resume=True, progress=False))
    assert resumed.complete and losses(tmp_path / "split") == losses(tmp_path / "straight")
    assert resumed.best_val_loss == straight.best_val_loss
    wa, wb = (load_file(r.model_dir / "model.safetensors") for r in (straight, resumed))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_the_layout_and_the_objective_must_agree(tmp_path, corpus, bpe_dir):
    with pytest.raises(InvalidTrainConfig, match="layout bert is a bidirectional layout"):
        train(config(corpus, bpe_dir, tmp_path / "a", objective="hybrid", layout="bert"))
    assert not (tmp_path / "a").exists()
    run = train(config(corpus, bpe_dir, tmp_path / "b", objective="mlm", layout="gpt2", steps=2))
    m = clozelm.load(run.model_dir)
    assert not m.config.causal and m.config.pre_ln and m.config.head == "tied" and m.fill_method == "masked"
    clm = train(config(corpus, bpe_dir, tmp_path / "c", steps=2))
    assert m.num_parameters() == clozelm.load(clm.model_dir).num_parameters()  # one shape for every objective
    with pytest.raises(ClozelmError, match="causal model; --objective mdlm needs a bidirectional"):
        clozelm.train(TrainConfig(files=[corpus], out=tmp_path / "d", init=str(clm.model_dir), objective="mdlm",
                                  progress=False))
    tuned = clozelm.train(TrainConfig(files=[corpus], out=tmp_path / "e", init=str(clm.model_dir), objective="hybrid",
                                      steps=2, batch_size=4, progress=False))
    assert clozelm.load(tuned.model_dir).info.objective == "hybrid"
