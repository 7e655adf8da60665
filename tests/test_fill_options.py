"""FillOptions: one typed, self-checking set of fill options; old names for a release; notes returned, not
printed."""

import re
import warnings

import pytest

from clozelm.cloze import FillOptions, fill, method_for, parse
from clozelm.errors import ClozelmError
from clozelm.loaded import Model
from clozelm.model import ModelConfig, Transformer
from handbuilt import BigramLM, NeighbourMLM, word_tokenizer

SENTENCES = ["the dog ran home"] * 10 + ["the cat sat down"] * 3 + ["a bird flew away"] * 2


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return word_tokenizer(tmp_path_factory.mktemp("tok"), SENTENCES)


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_defaults_in_one_place():
    o = FillOptions()
    assert (o.beam, o.width, o.follow_window, o.lookahead, o.lookahead_keep) == (8, 32, 12, 256, 32)
    assert (o.screen_window, o.screen_keep) == (4, 16)
    assert o.precision == "bf16"
    assert o.max_word_tokens is None and o.fim_judge is None  # they depend on the method
    assert FillOptions().for_method("causal").max_word_tokens == 4
    assert FillOptions().for_method("masked").max_word_tokens == 3
    assert FillOptions().for_method("fim").fim_judge == "both"
    assert FillOptions().for_method("causal").fim_judge == "causal"
    assert FillOptions(max_word_tokens=2).for_method("masked").max_word_tokens == 2


@pytest.mark.parametrize("name, value", [("beam", 0), ("width", -1), ("max_word_tokens", 0), ("follow_window", -1),
                                         ("lookahead", -5), ("lookahead_keep", -1), ("width", 2.5), ("beam", True),
                                         ("screen_window", -1), ("screen_keep", 0),
                                         ("width", "8")])
def test_out_of_range_is_a_one_line_error_naming_the_option(name, value):
    with pytest.raises(ClozelmError, match=name) as excinfo:
        FillOptions(**{name: value})
    one_line(excinfo)
    with pytest.raises(ClozelmError, match=name):
        FillOptions.of(**{name: value})


def test_bad_choices():
    with pytest.raises(ClozelmError, match="precision"):
        FillOptions(precision="fp16")
    with pytest.raises(ClozelmError, match="fim_judge must be"):
        FillOptions(fim_judge="middle")
    with pytest.raises(ClozelmError, match="trained with the fim objective"):
        FillOptions(fim_judge="fim").for_method("causal")


def test_unknown_option_is_a_one_line_error(tok):
    with pytest.raises(ClozelmError, match="unknown fill option 'widht'; did you mean width") as excinfo:
        FillOptions.of(widht=3)
    one_line(excinfo)
    with pytest.raises(ClozelmError, match="unknown fill option 'colour'.*options: beam, width"):
        FillOptions.of(colour="red")
    with pytest.raises(ClozelmError, match="widht"):
        fill("the ___ sat down", BigramLM(tok, SENTENCES), widht=3)


def test_old_names_warn_and_mean_the_new_ones(tok):
    causal, masked = BigramLM(tok, SENTENCES), NeighbourMLM(tok, SENTENCES)
    with pytest.warns(DeprecationWarning, match="states is deprecated: use beam"):
        old = fill("the ___ sat down", causal, top=2, states=3, width=4)
    assert old == fill("the ___ sat down", causal, top=2, beam=3, width=4)
    with pytest.warns(DeprecationWarning, match="max_word_pieces is deprecated: use max_word_tokens"):
        old = fill("a ___ flew away", masked, top=2, max_word_pieces=1)
    assert old == fill("a ___ flew away", masked, top=2, max_word_tokens=1)
    with pytest.warns(DeprecationWarning), pytest.raises(ClozelmError, match="one option"):
        FillOptions.of(states=3, beam=4)


def test_options_object_and_keywords(tok):
    model = BigramLM(tok, SENTENCES)
    opts = FillOptions(width=4, beam=3, follow_window=2)
    assert fill("the ___ sat down", model, top=2, options=opts) == fill("the ___ sat down", model, top=2, width=4,
                                                                           beam=3, follow_window=2)
    assert FillOptions.of(opts, width=5) == FillOptions(width=5, beam=3, follow_window=2)  # keywords win
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new names warn about nothing
        fill("the ___ sat down", model, top=1, options=opts)


def test_follow_window_can_be_set(tok):
    model = BigramLM(tok, SENTENCES)
    # Keeping one partial answer, with no known text after the blank in view the left context alone decides.
    assert fill("the ___ sat down", model, top=1, beam=1, follow_window=0)[0].blanks == ["dog"]
    assert fill("the ___ sat down", model, top=1, beam=1, follow_window=1)[0].blanks == ["cat"]


def test_method_comes_from_the_model(tok):
    assert method_for(BigramLM(tok, SENTENCES)) == "causal"
    assert method_for(NeighbourMLM(tok, SENTENCES)) == "bidirectional"
    net = Transformer(ModelConfig(vocab_size=tok.vocab_size, n_positions=32, n_embd=16, n_layer=1, n_head=1))
    assert method_for(Model(net, tok)) == "causal"
    with pytest.raises(ClozelmError, match="loaded model"):
        fill("the ___", net)  # a bare network has no tokenizer and no fill method


def test_notes_are_returned_per_answer_not_printed(tok, capsys):
    model = BigramLM(tok, SENTENCES)
    model.config.n_positions = 40
    text = "the dog ran home " * 12 + "the ___ sat down" + " the dog ran home" * 12
    answers = fill(text, model, top=3, precision="fp32")
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
    assert len(answers) == 3 and all(a.notes == answers[0].notes for a in answers)
    # What the note says adds up: the window holds 40 - 1 (start token) - 4 (the word's room) tokens of text, and
    # those with the ones left out are the whole text.
    kept, before, after = map(int, re.search(r"the (\d+) tokens of text nearest the blanks, not the first (\d+) or "
                                              r"the last (\d+)", answers[0].notes[0]).groups())
    assert kept == 40 - 1 - 4 and kept + before + after == sum(len(tok.encode(s)) for s in parse(text).segments)
    assert before > 0 and after > 0
    # Cut on one side only, the note names that side alone.
    note = fill("the dog ran home " * 24 + "the ___ sat down", model, top=1, precision="fp32")[0].notes[0]
    assert re.search(r"nearest the blanks, not the first \d+$", note)
    answers[0].notes.append("mine")
    assert answers[1].notes != answers[0].notes  # each answer has its own list
    assert fill("the ___ sat down", model, top=1)[0].notes == []


def test_the_screen_passes_on_the_best_by_the_first_known_tokens(tok, monkeypatch):
    """The pool is first judged on `screen_window` known tokens after the blank, and only the `screen_keep` best
    are judged on the whole `follow_window`; screen_window=0 judges every candidate on the whole window."""
    from clozelm.cloze import causal
    model = BigramLM(tok, SENTENCES)
    judged = []
    real = causal.CausalFiller._judge
    monkeypatch.setattr(causal.CausalFiller, "_judge",
                        lambda self, cache, last, pool, follow, boundary, reached=None:
                        judged.append((len(pool), len(follow)))
                        or real(self, cache, last, pool, follow, boundary, reached))
    text = "the ___ sat down and the dog ran home"
    screened = fill(text, model, top=1, screen_window=1, screen_keep=2)
    (pool, first), (kept, window) = judged
    assert pool > 2 and first == 1 and kept == 2 and window > 1
    judged.clear()
    whole = fill(text, model, top=1, screen_window=0)
    assert judged == [(pool, window)]
    assert screened[0].blanks == whole[0].blanks == ["cat"] and screened[0].score == pytest.approx(whole[0].score)


def test_fill_autocasts_to_bf16_only_where_bf16_has_units(tok, monkeypatch):
    """precision "bf16" autocasts fill's products, except on a device where bf16 is emulated (a GPU older than
    Ampere), which fills in fp32 instead."""
    import torch

    import clozelm.cloze as cloze
    net = Transformer(ModelConfig(vocab_size=tok.vocab_size, n_positions=32, n_embd=16, n_layer=1, n_head=1))
    model = Model(net, tok)
    real, entered = torch.autocast, []
    monkeypatch.setattr(torch, "autocast", lambda *a, **k: entered.append(k.get("enabled", True)) or real(*a, **k))

    def fill_autocasts(units: bool, precision: str) -> bool:
        monkeypatch.setattr(cloze, "has_bf16_units", lambda device: units)
        entered.clear()
        fill("the ___ sat down", model, top=1, precision=precision)
        return entered[0]  # fill's own; the network's one-query attention opens others, disabled

    assert fill_autocasts(True, "bf16")
    assert not fill_autocasts(False, "bf16")
    assert not fill_autocasts(True, "fp32")
