"""The embedded default models: they load offline by name, are what their cards say, share one tokenizer,
and have learned English: on BBC news text (never trained on: the defaults train on public-domain books)
each predicts far better than chance, and the causal ones fill a blank using the text after it.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import clozelm
from clozelm.training.objectives import make_objective
from clozelm.training.loop import held_out_sums
from corpora import bbc_news

NAMES = {"default": "clm", "default-bert": "mlm", "default-fim": "fim"}
PACKAGE = Path(clozelm.__file__).parent / "defaults"


@pytest.fixture(scope="module")
def news_windows():
    tok = clozelm.load("default").tokenizer
    ids = np.array(tok.encode(bbc_news()[:40_000]))
    return [ids[i:i + 129] for i in range(0, len(ids) - 129, 128)][:24]  # 24 windows of 128 (+1) tokens


@pytest.fixture(scope="module", params=list(NAMES))
def name(request):
    return request.param


@pytest.fixture(scope="module")
def model(name, monkeypatch_module):
    monkeypatch_module.setenv("HF_HUB_OFFLINE", "1")
    return clozelm.load(name)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_loads_by_name_as_its_card_says(name, model):
    cfg = model.config
    assert cfg.causal == (NAMES[name] != "mlm") and cfg.extra["objective"] == NAMES[name]
    assert cfg.n_layer >= 6 and cfg.n_embd >= 384
    folder = PACKAGE / name
    with safe_open(folder / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} <= {torch.bfloat16, torch.float16}
    assert all(p.stat().st_size <= 32 * 2**20 for p in folder.iterdir())
    card = (folder / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert f"{cfg.n_layer} layers x {cfg.n_embd} wide" in card and f"{model.num_parameters():,}" in card
    loss = float(re.search(r"\| validation loss \| ([0-9.]+) nats/token", card).group(1))
    ppl = float(re.search(r"\| validation perplexity \| ([0-9.]+) \|", card).group(1))
    assert ppl == pytest.approx(math.exp(loss), rel=2e-3)
    assert re.search(r"\| tokens seen \| [0-9,]+ ", card) and "## Data" in card


def test_one_tokenizer_for_all_three():
    files = [(PACKAGE / n / "vocab.json").read_bytes() for n in NAMES]
    assert files[0] == files[1] == files[2]


def news_loss(model, objective_name: str, windows) -> float:
    objective = make_objective(objective_name, model.tokenizer, model.config.vocab_size)
    windows = [w if objective.extra_tokens else w[:-1] for w in windows]
    loss, count = held_out_sums(model, objective, windows, range(len(windows)), 8, "fp32", torch.device("cpu")).tolist()
    assert count > 300
    return loss / count


def test_predicts_unseen_news_better_than_chance(name, model, news_windows):
    chance = math.log(model.config.vocab_size)  # 9.0 nats for 8192 tokens; an untrained model scores about that
    loss = news_loss(model, NAMES[name], news_windows)
    assert loss < chance - 1.0, f"{name}: {loss:.2f} nats/token on news vs chance {chance:.2f}"


def test_uses_word_order(name, model, news_windows):
    # The same tokens in a random order: a model that learned English predicts them far worse.
    rng = np.random.default_rng(0)
    natural = news_loss(model, NAMES[name], news_windows)
    shuffled = news_loss(model, NAMES[name], [rng.permutation(w) for w in news_windows])
    assert natural < shuffled - 1.0, (natural, shuffled)


@pytest.mark.parametrize("trained", ["default", "default-bert", "default-fim"])
def test_fill_finds_the_word_the_text_after_the_blank_decides(trained):
    # The left context alone ranks "light" ~50th after "Let there be"; the text after the blank decides it.
    answers = clozelm.fill("And God said, Let there be ___: and there was light.", model=clozelm.load(trained), top=3)
    assert answers[0].blanks[0].strip() == "light", [a.text for a in answers]


@pytest.mark.parametrize("trained", ["default", "default-fim"])
def test_a_word_blank_at_the_end_outranks_the_fragments_it_begins_with(trained):
    # Both " Mediterr" + "ane" and + "anean" survive the search; the plain log-probability of the fragment is
    # always the higher one, so the final ranking must also price in that the word ends with the text.
    answers = clozelm.fill("The ship sailed across the Mediterr___", model=clozelm.load(trained), top=8,
                           precision="fp32")
    rank = {a.blanks[0]: i for i, a in enumerate(answers)}
    assert "anean" in rank and rank["anean"] < rank.get("ane", len(answers)), [a.blanks for a in answers]
