"""cloze: the cases give the sentence back; the left-only baseline follows the left context where the fill
follows the whole text; the task's figures on a bigram model."""

from __future__ import annotations

from clozelm.eval import EvalOptions, evaluate
from clozelm.eval.cloze import cases, left_only
from handbuilt import BigramLM, word_tokenizer

from .conftest import SENTENCES
from .handmade import HandModel

# Sentences the bigram model below is built from: each word is told by its neighbours.
LONG = ("the dog ran home the cat sat down a bird flew away.\n\n"
        "a bird flew away the dog ran home the cat sat down.\n\n"
        "the cat sat down a bird flew away the dog ran home.\n")


def test_cases_put_back_give_the_sentence(tok):
    sentence = "the dog ran home and the cat sat down, and a bird flew away."
    found = cases(tok, [sentence], seed=3)
    assert len(found["middle_word"]) == 1
    text, word = found["middle_word"][0]
    assert text.count("___") == 1 and text.replace("___", word) == sentence
    for k in range(1, 6):
        (text, hidden), = found[str(k)]
        assert text.count("[MASK]") == k and text.replace("[MASK]" * k, hidden) == sentence


def test_left_only_follows_the_left_context(tok):
    model = HandModel(BigramLM(tok, SENTENCES), tok, "clm")
    opts = EvalOptions()
    # "dog" follows "the" 10 times of 13: the baseline says dog although only "cat" is ever followed by "sat"
    assert left_only(model, "the ___ sat down", opts)[:2] == ["dog", "cat"]
    assert left_only(model, "the [MASK] sat down", opts)[0] == "dog"
    assert left_only(model, "the [MASK][MASK] down", opts)[0] == "dog ran"


def test_cloze_on_a_bigram_model(tmp_path):
    path = tmp_path / "held-out.txt"
    path.write_text(LONG)
    sentences = SENTENCES + LONG.split("\n\n")
    tok = word_tokenizer(tmp_path, sentences)  # every word one token, " the" too
    model = HandModel(BigramLM(tok, sentences), tok, "clm")
    result = evaluate(model, [path], tasks="cloze", seed=0)["tasks"]["cloze"]
    assert result["sentences"] == 3
    word = result["middle_word"]
    assert word["n"] == 3 and set(word) == {"exact", "top5", "left_only_exact", "left_only_top5", "n"}
    # every word of these sentences is told by its neighbours: the fill gets them all
    assert word["exact"] == 1.0 and word["top5"] == 1.0
    assert sorted(result["tokens"]) == ["1", "2", "3", "4", "5"]
    for row in result["tokens"].values():
        assert 0 <= row["left_only_exact"] <= row["left_only_top5"] <= 1 and row["exact"] <= row["top5"]


def test_hidden_runs_are_whole_characters_with_a_byte_level_tokenizer():
    """"é" is two byte tokens in a byte-level BPE: a run of hidden tokens that starts or ends inside it would
    hide text no fill can give back whole; such runs are left out, and every case put back gives the sentence."""
    import clozelm
    tok = clozelm.load("default").tokenizer
    sentence = "He said the café in Zürich was naïve, and the señor from Łódź agreed with the old crêpe maker there."
    seen = 0
    for seed in range(60):
        for k in range(1, 6):
            for text, hidden in cases(tok, [sentence], seed=seed)[str(k)]:
                seen += 1
                assert "\ufffd" not in hidden and text.replace("[MASK]" * k, hidden) == sentence
    assert seen > 100
