"""train_bpe: layout, determinism, special tokens, file formats, errors, and the property that
lets the tiktoken engine stand in for the original algorithm on a trained vocabulary.

The crucial check is engine == ``reference_encode`` (pair-rank semantics). It is fuzzed on a
vocabulary trained on real text and, harder, on one trained on a two-letter alphabet, where
almost every byte string is a token and a pair whose bytes spell a token without being its
merge is as likely as it can be. ``test_hand_made_inconsistent_table_is_caught`` shows such a
pair does break the engine, so these tests are not vacuous.
"""

from __future__ import annotations

import json
import random
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clozelm.errors import ClozelmError
from clozelm.tokenizers import ByteBPE, load_tokenizer, train_bpe
from clozelm.tokenizers.bpe import GPT2_BYTE_ORDER
from corpora import documents, penn_treebank, real_text

SPECIALS = ["<|endoftext|>", "[MASK]", "[PAD]", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"]
VOCAB_SIZE = 8192


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "train.txt"
    path.write_text(real_text(5_000_000), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(corpus_file) -> ByteBPE:
    return train_bpe([corpus_file], VOCAB_SIZE, special_tokens=SPECIALS)


@pytest.fixture(scope="module")
def trained_dir(trained, tmp_path_factory):
    return trained.save(tmp_path_factory.mktemp("bpe8k"), format="both")


@pytest.fixture(scope="module")
def two_letter_bpe(tmp_path_factory) -> ByteBPE:
    """Trained on random 'a'/'b' words: a dense table where pairs most often spell tokens."""
    rng = random.Random(1234)
    words = ["".join(rng.choice("ab") for _ in range(rng.randint(1, 14))) for _ in range(20_000)]
    path = tmp_path_factory.mktemp("ab") / "ab.txt"
    path.write_text(" ".join(words))
    return train_bpe([path], 256 + 1 + 600, min_frequency=1)


def write(tmp_path, name, content) -> str:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------------------- layout


def test_layout_ids_are_ranks(trained):
    assert trained.vocab_size == VOCAB_SIZE
    n_merges = VOCAB_SIZE - 256 - len(SPECIALS)
    assert len(trained.merges) == n_merges
    assert [trained.token_bytes(i) for i in range(256)] == [bytes([b]) for b in GPT2_BYTE_ORDER]
    for rank, (left, right) in enumerate(trained.merges):
        assert trained.token_bytes(256 + rank) == left + right
    assert trained.special_tokens == {s: 256 + n_merges + k for k, s in enumerate(SPECIALS)}
    assert trained.eos_id == trained.special_tokens["<|endoftext|>"]
    assert trained.mask_id == trained.special_tokens["[MASK]"]
    assert trained.pad_id == trained.special_tokens["[PAD]"]
    assert trained._ids_are_ranks


def test_learns_english(trained):
    assert trained.token_to_id("Ġthe") is not None and trained.token_to_id("Ġand") is not None
    assert len(trained.encode(" the")) == 1


def test_tie_break_is_by_bytes(tmp_path):
    # Pairs (a,b), (' ',c) and (c,d) all occur twice; (' ',c) sorts first by bytes.
    tokenizer = train_bpe([write(tmp_path, "t.txt", "ab ab cd cd")], 256 + 1 + 1, min_frequency=1)
    assert tokenizer.merges == [(b" ", b"c")]


def test_deterministic_and_independent_of_file_order(tmp_path):
    first = write(tmp_path, "a.txt", penn_treebank("valid"))
    second = write(tmp_path, "b.txt", penn_treebank("test"))
    one = train_bpe([first, second], 1500)
    two = train_bpe([second, first], 1500)
    three = train_bpe([first, second], 1500)
    assert one.merges == two.merges == three.merges


def test_stops_early_when_pairs_get_rare(tmp_path):
    tokenizer = train_bpe([write(tmp_path, "t.txt", "hello hello world")], 10_000, min_frequency=2)
    # Every pair inside "hello" occurs twice; ties go to the smaller bytes each time.
    assert tokenizer.merges == [(b"e", b"l"), (b"el", b"l"), (b"ell", b"o"), (b"h", b"ello")]
    assert tokenizer.vocab_size == 256 + 4 + 1


def test_special_token_text_does_not_train_merges(tmp_path):
    text = "<|endoftext|>".join(["a b"] * 500)
    tokenizer = train_bpe([write(tmp_path, "t.txt", text)], 400)
    for left, right in tokenizer.merges:
        assert b"|" not in left + right and b"<" not in left + right


# ---------------------------------------------------------------------------- special tokens


def test_special_tokens_never_split_when_allowed(trained):
    text = "<|fim_prefix|>def f(x):<|fim_suffix|>    return y\n<|fim_middle|>[MASK] [PAD]<|endoftext|>"
    ids = trained.encode(text, specials=True)
    for special, special_id in trained.special_tokens.items():
        assert ids.count(special_id) == 1, special
    assert ids == trained.reference_encode(text, specials=True)
    assert trained.decode(ids) == text
    only_mask = trained.encode(text, specials={"[MASK]"})
    assert only_mask.count(trained.mask_id) == 1 and trained.eos_id not in only_mask
    as_text = trained.encode(text)
    assert not set(as_text) & set(trained.special_tokens.values())
    assert trained.decode(as_text) == text


# ---------------------------------------------------------------------------- engine == original


def test_trained_table_is_self_consistent(trained, two_letter_bpe):
    assert trained.inconsistent_tokens() == []
    assert two_letter_bpe.inconsistent_tokens() == []


def test_engine_matches_reference_on_held_out_real_text(trained):
    docs = documents(700_000)
    assert trained.encode_batch(docs) == [trained.reference_encode(d) for d in docs]


def test_engine_matches_reference_on_every_assigned_code_point(trained):
    chars = [chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) not in ("Cn", "Cs", "Co")]
    text = " ".join(f"a{c}a {c}{c}" for c in chars)
    assert trained.encode(text) == trained.reference_encode(text)


# Characters on which the regex engines' Unicode versions agree (see tests/test_bpe.py).
assigned_text = st.text(st.characters(exclude_categories=("Cs", "Cn")), max_size=300)
english_like = st.lists(
    st.sampled_from(["the", " the", "ing", " and", "tion", "e", " ", "  ", "\n", ".", ",", "'s", "th", "he", "Th", "é"]),
    max_size=60,
).map("".join)
specials_mixed = st.lists(st.one_of(english_like, st.sampled_from(SPECIALS)), max_size=8).map("".join)


@settings(max_examples=250, deadline=None)
@given(st.one_of(assigned_text, english_like))
def test_fuzz_trained_engine_matches_reference(trained, text):
    ids = trained.encode(text)
    assert ids == trained.reference_encode(text)
    assert trained.decode(ids) == text


@settings(max_examples=100, deadline=None)
@given(specials_mixed)
def test_fuzz_trained_specials(trained, text):
    ids = trained.encode(text, specials=True)
    assert ids == trained.reference_encode(text, specials=True)
    assert trained.decode(ids) == text


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="ab", min_size=1, max_size=60), st.text(alphabet="ab ", max_size=200))
def test_fuzz_dense_two_letter_table(two_letter_bpe, word, text):
    for sample in (word, text, " " + word):
        assert two_letter_bpe.encode(sample) == two_letter_bpe.reference_encode(sample)


def test_hand_made_inconsistent_table_is_caught():
    """merges b+c, a+b, ab+c: the original leaves 'abc' as a|bc, tiktoken's rule joins it.

    No training run produces such a table ('ab' can never sit next to 'c' once b+c has been
    merged everywhere), and ``inconsistent_tokens`` flags it when one is loaded.
    """
    table = ByteBPE([(b"b", b"c"), (b"a", b"b"), (b"ab", b"c")])
    abc = table.token_to_id("abc")
    assert table.reference_encode("abc") == [table.token_to_id("a"), table.token_to_id("bc")]
    assert table.encode("abc") == [abc]
    assert table.inconsistent_tokens() == [abc]


# ---------------------------------------------------------------------------- files


def test_saved_files_round_trip(trained, trained_dir):
    text = real_text(200_000)[:100_000] + "".join(SPECIALS)
    expected = trained.encode(text, specials=True)
    gpt2_format = ByteBPE.from_gpt2_files(trained_dir / "encoder.json", trained_dir / "vocab.bpe")
    hf_format = ByteBPE.from_hf_files(trained_dir / "vocab.json", trained_dir / "merges.txt")
    for loaded in (gpt2_format, hf_format, ByteBPE.from_dir(trained_dir), load_tokenizer(trained_dir)):
        assert loaded.encode(text, specials=True) == expected
        assert loaded.special_tokens == trained.special_tokens
        assert loaded.merges == trained.merges
    encoder = json.loads((trained_dir / "encoder.json").read_text())
    assert encoder["[MASK]"] == trained.mask_id and len(encoder) == VOCAB_SIZE


def test_transformers_opens_saved_hf_dir(trained, trained_dir):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(trained_dir))
    assert len(hf) == VOCAB_SIZE
    assert hf.mask_token == "[MASK]" and hf.pad_token == "[PAD]" and hf.eos_token == "<|endoftext|>"
    text = "Hi [MASK] there<|fim_prefix|>x = 1<|endoftext|>[PAD]\n  end"
    assert hf(text)["input_ids"] == trained.encode(text, specials=True)
    docs = documents(300_000, block_chars=3_000)
    assert hf(docs)["input_ids"] == trained.encode_batch(docs)


def test_vocab_without_endoftext_opens_in_transformers(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = train_bpe([write(tmp_path, "t.txt", penn_treebank("test"))], 600, special_tokens=["[MASK]"])
    saved = tokenizer.save(tmp_path / "tok", format="hf")
    hf = AutoTokenizer.from_pretrained(str(saved))
    assert len(hf) == 600  # no <|endoftext|> invented by GPT2Tokenizer's defaults
    assert hf("a [MASK] b")["input_ids"] == tokenizer.encode("a [MASK] b", specials=True)


# ---------------------------------------------------------------------------- errors


def assert_one_line_error(call, match):
    with pytest.raises(ClozelmError, match=match) as excinfo:
        call()
    assert "\n" not in str(excinfo.value)


def test_user_errors_are_one_line(tmp_path):
    good = write(tmp_path, "good.txt", "some text")
    assert_one_line_error(lambda: train_bpe([good], 256), "too small.*257")
    assert_one_line_error(lambda: train_bpe([good], 260, special_tokens=SPECIALS), "too small.*262")
    assert_one_line_error(lambda: train_bpe([str(tmp_path / "missing.txt")], 300), "not found")
    assert_one_line_error(lambda: train_bpe([write(tmp_path, "empty.txt", "")], 300), "empty")
    latin1 = write(tmp_path, "latin1.txt", "caf\xe9".encode("latin-1"))
    assert_one_line_error(lambda: train_bpe([latin1], 300), "not UTF-8.*offset 3")
    assert_one_line_error(lambda: train_bpe([str(tmp_path)], 300), "directory")
    assert_one_line_error(lambda: train_bpe([], 300), "no training files")
    assert_one_line_error(lambda: train_bpe([good], 300, special_tokens=[""]), "non-empty")
    assert_one_line_error(lambda: train_bpe([good], 300, special_tokens=["[X]", "[X]"]), "twice")
    assert_one_line_error(lambda: train_bpe([good], 300, special_tokens=["a"]), "spelled like an ordinary token")
    assert_one_line_error(lambda: train_bpe([good], 300, min_frequency=0), "min_frequency")


@pytest.mark.parametrize("special", ["Ġhe", "a", "é", "ĊĊ", "Ġ", "ĠâĢ"])  # the last: " " and two bytes of "’"
def test_a_special_token_spelled_like_an_ordinary_one_is_refused_before_training(tmp_path, special):
    """"Ġhe" is how the vocabulary files spell the token " he": had merges learned it, the files could not tell
    the two apart. Refused before any file is read (a long training run must not end in the clash)."""
    with pytest.raises(ClozelmError, match="spelled like an ordinary token"):
        train_bpe([tmp_path / "not read"], vocab_size=300, special_tokens=["<|endoftext|>", special])


@pytest.mark.parametrize("special", ["hello", "Ġ<s>", "<|he|>"])
def test_special_tokens_that_merges_cannot_produce_train_on_text_that_spells_them(tmp_path, special):
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello he <s> <|he|> hello he he\n" * 60, encoding="utf-8")
    tok = train_bpe([corpus], vocab_size=300, special_tokens=["<|endoftext|>", special])
    assert special in tok.special_tokens and tok.decode(tok.encode(" he hello <s>")) == " he hello <s>"
