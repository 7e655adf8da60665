"""The fill search on hand-built models whose right answers are known (tests/handbuilt.py)."""

import pytest
import torch

import clozelm
from clozelm.cloze import fill, parse
from clozelm.errors import ClozelmError
from handbuilt import BigramLM, NeighbourMLM, word_tokenizer

# Left context alone says "dog" (seen 10 times after "the"), but only "cat" is ever followed by "sat".
SENTENCES = ["the dog ran home"] * 10 + ["the cat sat down"] * 3 + ["a bird flew away"] * 2


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return word_tokenizer(tmp_path_factory.mktemp("tok"), SENTENCES)


def test_parse_blanks():
    t = parse("The ___ sat on [MASK][MASK] mat [MASK].")
    assert [b.kind for b in t.blanks] == ["word", "tokens", "tokens"]
    assert [b.n_tokens for b in t.blanks] == [None, 2, 1]
    assert t.segments == ("The", " sat on", " mat", ".")
    assert all(b.lead_space for b in t.blanks)


def test_no_blank_suggests_generate():
    with pytest.raises(ClozelmError, match="generate"):
        parse("nothing hidden here")


def test_empty_text():
    with pytest.raises(ClozelmError, match="empty"):
        parse("   ")


def test_causal_uses_the_text_after_the_blank(tok):
    model = BigramLM(tok, SENTENCES)
    assert fill("the ___", model=model, top=1)[0].blanks == ["dog"]  # nothing after: left context wins
    answers = fill("the ___ sat down", model=model, top=3)
    assert answers[0].blanks == ["cat"] and answers[0].text == "the cat sat down"
    assert answers[0].score > answers[1].score


def test_causal_joint_blanks(tok):
    model = BigramLM(tok, SENTENCES)
    best = fill("___ bird ___ away", model=model, top=2)[0]
    assert best.blanks == ["a", "flew"]
    assert best.text == "a bird flew away"


def test_causal_mask_token_blank(tok):
    model = BigramLM(tok, SENTENCES)
    assert fill("the [MASK] ran home", model=model, top=1)[0].blanks == ["dog"]


def test_answers_are_distinct_and_sorted(tok):
    answers = fill("the ___ sat down", model=BigramLM(tok, SENTENCES), top=5)
    texts = [a.text for a in answers]
    assert len(set(texts)) == len(texts) == 5
    assert [a.score for a in answers] == sorted((a.score for a in answers), reverse=True)


def test_bidirectional_joint(tok):
    model = NeighbourMLM(tok, SENTENCES)
    assert fill("the ___ sat down", model=model, top=1)[0].blanks == ["cat"]
    best = fill("a [MASK] [MASK] away", model=model, top=1)[0]
    assert best.blanks == ["bird", "flew"] and best.text == "a bird flew away"


def test_deterministic(tok):
    model = BigramLM(tok, SENTENCES)
    assert fill("the ___ sat down", model=model, top=3) == fill("the ___ sat down", model=model, top=3)


def test_a_blank_no_token_can_fill_gives_no_answers_not_a_crash(tok):
    # "a[MASK]" asks for a token glued to "a" without a space: the word-level vocabulary has none.
    assert fill("the cat sat down a[MASK][MASK] away", model=BigramLM(tok, SENTENCES), top=3) == []


def _split_into_two_tokens(tok, text: str) -> tuple[int, int]:
    """Two tokens that together spell `text` (which the tokenizer itself encodes as one)."""
    for i in range(2, len(text)):
        left, right = tok.encode(text[:i]), tok.encode(text[i:])
        if len(left) == len(right) == 1:
            return left[0], right[0]
    raise AssertionError(f"no two-token spelling of {text!r}")


def test_two_tokenizations_of_one_word_are_one_answer(tok):
    # " cat" and " c" + "at" (say) spell one answer. Made equally likely, both would fill a beam of 2 and leave a
    # single answer; the search keeps the better of the two and a second, different word.
    model = BigramLM(tok, SENTENCES)
    [the], [cat], [sat] = tok.encode("the"), tok.encode(" cat"), tok.encode(" sat")
    a, b = _split_into_two_tokens(tok, " cat")
    model.table[the, a] = model.table[the, cat]
    model.table[a, b] = 0.0  # log 1
    model.table[b, sat] = model.table[cat, sat]
    answers = fill("the ___ sat down", model=model, top=2, beam=2)
    assert [x.blanks for x in answers][0] == ["cat"] and len(answers) == 2
    assert answers[1].blanks != ["cat"]


@pytest.mark.parametrize("model_class", [BigramLM, NeighbourMLM])
def test_no_answer_ends_inside_a_character(tok, model_class):
    # The vocabulary has byte tokens that complete no character alone; an answer made with one would show U+FFFD.
    answers = fill("the ___ sat down", model=model_class(tok, SENTENCES), top=20)
    assert len(answers) == 20
    assert not [x.blanks for x in answers if "\ufffd" in x.text]


def test_masked_lm_finds_long_words_among_many_word_blanks(tmp_path):
    # "birdcat" and "flewsat" are three tokens each to a tokenizer that never saw them; with four word blanks
    # their lengths (1, 3, 3, 1) are beyond the shortest combinations, which alone give "flew" for "flewsat".
    tok = word_tokenizer(tmp_path, ["the dog ran home", "the cat sat down", "a bird flew away", "dog cat bird",
                                    "ran sat flew", "home down away"])
    assert [len(tok.encode(w)) for w in (" birdcat", " flewsat")] == [3, 3]
    model = NeighbourMLM(tok, ["a birdcat flewsat the home"] * 5)
    assert fill("a ___ ___ the home", model=model, top=1)[0].blanks == ["birdcat", "flewsat"]
    assert fill("___ ___ ___ the ___", model=model, top=1)[0].blanks == ["a", "birdcat", "flewsat", "home"]


def test_a_wordpiece_mask_glued_to_a_word_continues_it_and_a_spaced_one_starts_a_word():
    """BERT's WordPiece: "play[MASK]" may be completed by a "##" piece, and the answer reads "play...", never
    "play##..."; a [MASK] after a space takes only a piece that starts a word. A random masked LM over MiniLM's
    real vocabulary (every piece is a candidate), so only the rules decide."""
    import torch

    from clozelm.loaded import Model
    from clozelm.model import ModelConfig, Transformer
    from clozelm.tokenizers import load_tokenizer
    from corpora import bert_uncased_model_dir
    wp = load_tokenizer(bert_uncased_model_dir())
    torch.manual_seed(0)
    net = Transformer(ModelConfig(vocab_size=wp.vocab_size, n_positions=32, n_embd=16, n_layer=1, n_head=2,
                                  causal=False, pre_ln=False, head="mlm")).eval()
    model = Model(net, wp)
    for seed in range(3):
        torch.manual_seed(seed)
        with torch.no_grad():
            net.wte.weight.normal_(0, 1)  # a different random preference each time
        for answer in fill("he was play[MASK] football .", model, top=5):
            assert "#" not in answer.text and answer.text.startswith("he was play")
        for answer in fill("the [MASK] sat on the mat .", model, top=5):
            assert "#" not in answer.text and not any(wp.id_to_token(i).startswith("##") for i in
                                                      wp.encode(answer.blanks[0]))


def test_the_final_scores_are_the_same_in_chunks(tok, monkeypatch):
    """Many answers over a long text are scored a chunk of rows at a time (their logits would not fit in memory
    at once): the same scores as in one batch."""
    from clozelm.cloze import causal
    model = BigramLM(tok, SENTENCES)
    text = "the ___ sat down and the ___ ran home"
    whole = fill(text, model, top=6)
    monkeypatch.setattr(causal, "MAX_LOGIT_FLOATS", 1)  # one row a chunk
    chunked = fill(text, model, top=6)
    assert [a.blanks for a in chunked] == [a.blanks for a in whole]
    assert [a.score for a in chunked] == pytest.approx([a.score for a in whole], abs=1e-4)


def test_a_word_blank_followed_by_another_ends_where_the_next_one_starts(tok):
    """"the ___ ___ home": with nothing known between the blanks, the first word must still end there. Judged by
    the left context alone, " c" (a fragment) scores as well as " cat", and with a beam of 2 the fragments and
    spellings of one word crowd out the other word the best answer needs."""
    model = BigramLM(tok, SENTENCES)
    [the], [dog], [cat], [ran], [sat] = (tok.encode(w) for w in ("the", " dog", " cat", " ran", " sat"))
    a, b = _split_into_two_tokens(tok, " dog")
    e, f = _split_into_two_tokens(tok, " cat")
    table = model.table
    table[the, dog] = table[the, cat] = float("-inf")  # only the two-token spellings
    table[the, a], table[the, e] = -1.2, -1.0  # " c..." a little likelier than " d..." from the left
    table[a], table[e], table[b], table[f] = -20.0, -20.0, -20.0, -20.0
    table[a, b] = table[e, f] = 0.0  # " d" goes on with "og", " c" with "at"
    table[b, ran] = table[f, sat] = 0.0  # dog ran, cat sat
    answers = fill("the ___ ___ home", model=model, top=2, beam=2)
    assert answers[0].blanks == ["dog", "ran"]


def test_an_answers_score_is_the_log_probability_of_its_whole_text(tok):
    """The final score is log P(the completed text) under the model, worked out by hand from the bigram table
    (the text before the first blank is read once and shared by every answer: its log P counts in each)."""
    model = BigramLM(tok, SENTENCES)
    start = tok.frame_tokens(causal=True)[0]
    for text in ("the ___ sat down and the ___ ran home", "___ cat sat down"):
        answers = fill(text, model, top=6, precision="fp32")
        assert len(answers) >= 2
        for answer in answers:
            ids = start + tok.encode(answer.text)
            assert answer.score == pytest.approx(float(sum(model.table[a, b] for a, b in zip(ids, ids[1:]))),
                                                 abs=1e-4)


@pytest.mark.parametrize("logit_floats", [None, 3])
def test_an_answers_score_is_the_log_probability_of_its_whole_text_under_a_transformer(tok, logit_floats, monkeypatch):
    """The same with a small random transformer (float64 reference, fp32 fill), whose cached context is shared
    between answers: sharing must give what reading each whole text alone gives, also when the logits are
    computed a few positions at a time (a long text)."""
    from clozelm.cloze import causal
    if logit_floats:
        monkeypatch.setattr(causal, "MAX_LOGIT_FLOATS", logit_floats * tok.vocab_size)
    from clozelm.loaded import Model
    from clozelm.model import ModelConfig, Transformer
    torch.manual_seed(0)
    net = Transformer(ModelConfig(vocab_size=tok.vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=4)).eval()
    model = Model(net, tok)
    start = tok.frame_tokens(causal=True)[0]
    answers = fill("the ___ sat down and the ___ ran home", model, top=4, precision="fp32")
    assert len(answers) == 4
    reference = net.double()
    for answer in answers:
        ids = torch.tensor([start + tok.encode(answer.text)])
        with torch.no_grad():
            logp = torch.log_softmax(reference(ids).logits[0, :-1], -1).gather(1, ids[0, 1:, None]).sum()
        assert answer.score == pytest.approx(float(logp), abs=1e-3)


@pytest.mark.parametrize("text", ["the ___ sat down and the dog ran home", "a bird flew ___", "the [MASK][MASK] down",
                                  "the ___ ___ home"])
def test_candidates_are_judged_on_from_where_the_beam_left_them(tok, text, monkeypatch):
    """The screen and the judge read the known text after each candidate on from the cache row where the beam left
    it, never the whole candidate again: the scores are what reading each candidate whole after the context gives
    (a small random transformer, fp32), at the end of a text (the word boundary) and in the middle, for word and
    token blanks."""
    from clozelm.cloze import causal
    from clozelm.loaded import Model
    from clozelm.model import ModelConfig, Transformer
    torch.manual_seed(0)
    net = Transformer(ModelConfig(vocab_size=tok.vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=4)).eval()
    with torch.no_grad():
        net.wte.weight.mul_(8)  # confident next-token guesses: a misread position would move a score by nats
    judge, whole = causal.CausalFiller._judge, causal.CausalFiller._judge_whole
    compared, whole_calls = [], []
    monkeypatch.setattr(causal.CausalFiller, "_judge_whole", lambda self, *a: whole_calls.append(a) or whole(self, *a))

    def spy(self, cache, last, pool, follow, boundary, reached=None):
        out = judge(self, cache, last, pool, follow, boundary, reached)
        reference = whole(self, cache, last, pool, follow, boundary)
        compared.append(max(abs(a[1] - b[1]) for a, b in zip(out, reference)))
        return out
    monkeypatch.setattr(causal.CausalFiller, "_judge", spy)
    answers = fill(text, Model(net, tok), top=3, precision="fp32", screen_window=2, screen_keep=4)
    assert answers and compared and not whole_calls
    assert max(compared) < 1e-4


def test_a_fim_models_two_readings_judge_on_from_their_own_beams(monkeypatch):
    """The embedded FIM model (real weights) judges each candidate by its FIM reading and its left-to-right one: the
    candidates a reading's own beam proposed are read on from where that beam left them, the others (the other
    beam's) whole; every judgement gives what reading all of them whole gives."""
    from clozelm.cloze import causal
    judge, whole = causal.CausalFiller._judge, causal.CausalFiller._judge_whole
    compared, whole_rows = [], []
    monkeypatch.setattr(causal.CausalFiller, "_judge_whole",
                        lambda self, cache, last, pool, *a: whole_rows.append(len(pool)) or whole(self, cache, last, pool, *a))

    def spy(self, cache, last, pool, follow, boundary, reached=None):
        out = judge(self, cache, last, pool, follow, boundary, reached)
        compared.append((len(pool), max(abs(a[1] - b[1]) for a, b in zip(out, whole(self, cache, last, pool, follow,
                                                                                     boundary)))))
        return out
    monkeypatch.setattr(causal.CausalFiller, "_judge", spy)
    model = clozelm.load("default-fim")
    answers = fill("And God said, Let there be ___: and there was light.", model, top=3, precision="fp32", width=8,
                   lookahead=32, lookahead_keep=8, screen_keep=4)
    assert answers and len(compared) >= 3  # the FIM judgement, the left-to-right screen and judgement
    assert max(d for _, d in compared) < 1e-3
    assert 0 < sum(whole_rows) < sum(n for n, _ in compared)  # some candidates came from the other beam, most not


def test_a_word_whose_first_character_is_split_over_two_tokens_can_fill_a_blank():
    """In a byte-level vocabulary a CJK character is often two tokens, the first only opening it (" \\xe7\\x8c"
    + "\\xab" = " 猫"): such a token may open a `___` word, and answers that are no word once whole ("。") are
    not given."""
    from clozelm.tokenizers import ByteBPE
    cat, stop = "猫".encode(), "。".encode()
    merges = [(cat[:1], cat[1:2]), (b" ", cat[:2]), (stop[:1], stop[1:2]), (b" ", stop[:2])]
    tok = ByteBPE(merges, {"<|endoftext|>": 256 + len(merges)})
    assert tok.encode(" 猫") == [tok.encode(" 猫")[0], tok.encode(" 猫")[1]] and len(tok.encode(" 猫")) == 2
    sentences = ["我 爱 猫 。"] * 10 + ["我 爱 。"] * 3
    answers = fill("我 爱 ___ 。", BigramLM(tok, sentences), top=5)
    assert answers[0].blanks == ["猫"] and all("。" not in a.blanks[0] for a in answers)
    assert all("\ufffd" not in a.text for a in answers)


def test_words_with_combining_marks_fill_blanks(tmp_path):
    """Vowel signs (Hindi, Tamil, Thai) are combining marks, not letters: a word holding them is still a word."""
    sentences = ["मैं घर में हूँ"] * 10 + ["मैं भारत में हूँ"] * 3
    tok = word_tokenizer(tmp_path, sentences)
    for model in (BigramLM(tok, sentences), NeighbourMLM(tok, sentences)):
        answers = fill("मैं ___ में हूँ", model, top=3)
        assert answers and answers[0].blanks == ["घर"], type(model).__name__
        answers = fill("मैं घर ___ हूँ", model, top=3)
        assert answers and answers[0].blanks == ["में"], type(model).__name__


def test_length_combinations_are_made_shortest_first_one_at_a_time(tmp_path):
    """A masked LM tries the shortest length combinations of several word blanks first: there are 3^k of them for
    k blanks, and listing them all (60 blanks: 4e28) took the server's memory; they are made as they are needed."""
    import itertools
    from clozelm.cloze.bidirectional import _shortest_first
    for options in ([range(1, 4)] * 4, [range(1, 4), [2], range(1, 3)], [[1], [3]]):
        assert list(_shortest_first(options)) == sorted(itertools.product(*options), key=lambda c: (sum(c), c))
    first = list(itertools.islice(_shortest_first([range(1, 4)] * 60), 27))
    assert first[0] == (1,) * 60 and first[1] == (1,) * 59 + (2,) and len(first) == 27
    sentences = ["the cat sat down"] * 5
    tok = word_tokenizer(tmp_path, sentences)
    answers = fill(" ".join(["___"] * 16), NeighbourMLM(tok, sentences), top=2)  # 43 million combinations
    assert answers and all(len(a.blanks) == 16 for a in answers)
