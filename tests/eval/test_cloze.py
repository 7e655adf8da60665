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


# Sentences whose token counts differ between a word-level and a byte-level vocabulary from the first one on.
VARIED = ["Extraordinarily, the weatherbeaten fisherman mended his nets beside the harbour wall today.",
          "the dog ran home and the cat sat down, and a bird flew away over the hill.",
          "Nevertheless, Mr. Darcy's housekeeper showed them every portrait in the long gallery upstairs.",
          "She said that the old mill by the river had been grinding corn for three hundred years.",
          "In 1850 the village had 312 houses, 4 churches and 27 inns along its single street.",
          "the dog ran home to sleep."]  # long enough for a run of one token, too short for one of five


def test_middle_words_do_not_depend_on_the_tokenizer(tok):
    """Models with different vocabularies are scored on the same hidden words."""
    import clozelm
    other = clozelm.load("default").tokenizer
    assert [len(tok.encode(s)) for s in VARIED] != [len(other.encode(s)) for s in VARIED]
    for seed in range(5):
        ours, theirs = cases(tok, VARIED, seed)["middle_word"], cases(other, VARIED, seed)["middle_word"]
        assert ours == theirs and len(ours) == len(VARIED)


def test_the_token_rows_hide_runs_in_the_same_sentences():
    """The k rows compare k with k: a sentence too short for some k is in none of them."""
    import clozelm
    tok = clozelm.load("default").tokenizer
    assert 7 <= len(tok.encode(VARIED[-1])) < 11  # a place for one token (3 before, 3 after), none for five
    for seed in range(5):
        found = cases(tok, VARIED, seed)
        put_back = {k: [text.replace("[MASK]" * k, hidden) for text, hidden in found[str(k)]] for k in range(1, 6)}
        assert all(rows == VARIED[:-1] for rows in put_back.values())


def test_a_run_written_after_a_space_opens_with_a_token_that_may_follow_one():
    """SmolLM2's tokenizer gives the space before a digit a token of its own: a run that starts at the digit
    would be written "in [MASK]850", a blank after a space, which no fill can give back with "1"."""
    from clozelm.tokenizers import PretrainedBPE
    from clozelm.weights import gguf as G
    tok = PretrainedBPE.from_gguf_metadata(G.read_metadata(G.open_gguf(G.find_smollm2())), source="smollm2")
    sentence = "In 1850 the village had 312 houses, 4 churches, 27 inns and 1066 people along 9 streets."
    assert [tok.decode([i]) for i in tok.encode(" 1850")][:2] == [" ", "1"]
    digits_hidden = 0
    for seed in range(40):
        for k in range(1, 6):
            for text, hidden in cases(tok, [sentence], seed)[str(k)]:
                assert text.replace("[MASK]" * k, hidden) == sentence
                if " [MASK]" in text:  # the run holds the space before it: " " + what it hides is k tokens
                    assert len(tok.encode(" " + hidden)) == k, (text, hidden)
                digits_hidden += hidden[0].isdigit()
    assert digits_hidden > 0  # digits inside a number, glued to the text before the blank, are still hidden


def test_no_run_hides_a_token_no_fill_would_propose():
    """WordPiece writes what its vocabulary lacks as [UNK], which no fill proposes: a run that holds one could
    never be given back. Every other run of the sentence is still there to choose."""
    from clozelm.tokenizers import WordPiece
    from corpora import bert_uncased_model_dir
    tok = WordPiece.from_file(bert_uncased_model_dir() / "vocab.txt")
    sentence = "the fisherman mended his nets beside the \U0001F99C harbour wall and sang to the gulls."
    assert tok.unk_id in tok.encode(sentence)
    runs = 0
    for seed in range(30):
        for k in range(1, 6):
            for text, hidden in cases(tok, [sentence], seed)[str(k)]:
                runs += 1
                assert "\U0001F99C" in text and text.replace("[MASK]" * k, hidden) == sentence
    assert runs == 30 * 5


def test_no_middle_word_is_glued_to_an_underscore(tok):
    sentence = "He told me that the _old_ miller kept his foo_bar key under the stone by the door."
    for seed in range(30):
        for text, word in cases(tok, [sentence], seed)["middle_word"]:
            assert "____" not in text and word not in ("old", "foo", "bar")


def test_answers_are_compared_in_a_lossy_tokenizers_own_spelling(tok):
    from clozelm.eval.text import same
    from clozelm.tokenizers import WordPiece
    from corpora import bert_uncased_model_dir
    uncased = WordPiece.from_file(bert_uncased_model_dir() / "vocab.txt")
    assert same(uncased, "cafe", "Café") and same(uncased, "naive", "Naïve") and not same(uncased, "cafe", "tea")
    assert tok.lossless and not same(tok, "dog", "Dog")
