"""ByteBPE on GPT-2's own files, held to three oracles:

* ``reference_encode`` -- our plain port of the original GPT-2 algorithm (pair ranks);
* the compiled Hugging Face ``tokenizers`` BPE loaded straight from OpenAI's files;
* transformers' ``GPT2Tokenizer`` opening the HF-format copy that ``save`` writes.

Unicode note: tiktoken and HF ``tokenizers`` classify characters with Unicode 16 tables, the
``regex`` module used by ``reference_encode`` with Unicode 17. Fuzzing against the reference
therefore draws only characters that Python's own database (Unicode 14) assigns;
``test_engine_matches_reference_on_every_assigned_code_point`` covers those exhaustively,
and the fuzzing against HF ``tokenizers`` uses every code point.
"""

from __future__ import annotations

import json
import unicodedata

import numpy as np
import pytest
import tiktoken.load
from hypothesis import given, settings
from hypothesis import strategies as st

from clozelm.errors import ClozelmError
from clozelm.tokenizers import ByteBPE, load_tokenizer
from clozelm.tokenizers.bpe import BYTE_TO_SYMBOL, GPT2_BYTE_ORDER, LoneSurrogateError
from corpora import documents, gpt2_vocab_files, penn_treebank

GPT2_TEST_VECTOR = ("Power, give me more power!", [13434, 11, 1577, 502, 517, 1176, 0])
EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def gpt2() -> ByteBPE:
    return ByteBPE.from_gpt2_files(*gpt2_vocab_files())


@pytest.fixture(scope="module")
def gpt2_hf_dir(gpt2, tmp_path_factory):
    return gpt2.save(tmp_path_factory.mktemp("gpt2_hf"), format="hf")


@pytest.fixture(scope="module")
def hf_tokenizers_bpe():
    """The compiled HF BPE on OpenAI's original files: independent of our loading and saving."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    encoder_json, vocab_bpe = gpt2_vocab_files()
    oracle = Tokenizer(models.BPE.from_file(str(encoder_json), str(vocab_bpe)))
    oracle.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    oracle.decoder = decoders.ByteLevel()
    return oracle


@pytest.fixture(scope="module")
def transformers_gpt2(gpt2_hf_dir):
    from transformers import GPT2Tokenizer

    return GPT2Tokenizer.from_pretrained(str(gpt2_hf_dir))


# ---------------------------------------------------------------------------- strategies

EMOJI = ["😀", "👍🏽", "👨‍👩‍👧", "🇫🇷", "❤️", "🫠", "🧑🏿‍🚀"]
COMBINING = [chr(c) for c in range(0x300, 0x370)] + ["\u20dd", "\u0e31", "\u093f"]
RTL = ["שלום", "مرحبا", "\u200e", "\u200f", "\u202e", "\u2067", "٣", "ـ"]
CONTROL = [chr(c) for c in range(0x20)] + ["\x7f", "\x85", "\u200b", "\ufeff", "\u2028", "\u2029"]
WHITESPACE = [" ", "\t", "\n", "\r\n", "\x0b", "\x0c", "\xa0", "\u2003", "\u3000", "  ", "\n\n"]
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "’s", "'"]
MIXED = ["Hello", " world", "naïve", "Ελληνικά", "русский", "中文", "日本語", "한국어", "हिन्दी", "ไทย", "১২৩", "１２３", "x²", "3.14", "$100"]
PIECES = EMOJI + COMBINING + RTL + CONTROL + WHITESPACE + CONTRACTIONS + MIXED


# Characters the regex engines agree on (see module docstring).
assigned_chars = st.characters(exclude_categories=("Cs", "Cn"))
any_chars = st.characters(exclude_categories=("Cs",))
long_whitespace = st.builds(lambda ws, n: ws * n, st.sampled_from(WHITESPACE), st.integers(1, 300))


def texts(chars) -> st.SearchStrategy[str]:
    pieces = st.one_of(st.text(chars, max_size=12), st.sampled_from(PIECES), long_whitespace)
    return st.lists(pieces, max_size=25).map("".join)


# ---------------------------------------------------------------------------- basics


def test_gpt2_test_vector(gpt2):
    text, ids = GPT2_TEST_VECTOR
    assert gpt2.encode(text) == ids
    assert gpt2.reference_encode(text) == ids
    assert gpt2.decode(ids) == text
    assert gpt2.vocab_size == 50257
    assert gpt2.special_tokens == {EOT: 50256}
    assert gpt2.eos_id == 50256 and gpt2.pad_id is None and gpt2.mask_id is None
    assert gpt2.name == "bpe"


def test_endoftext_is_special_only_when_allowed(gpt2):
    text = f"end{EOT}start"
    as_text = gpt2.encode(text)
    assert 50256 not in as_text and gpt2.decode(as_text) == text
    assert as_text == gpt2.reference_encode(text)
    for allowed in ({EOT}, True, EOT):
        assert gpt2.encode(text, specials=allowed) == gpt2.encode("end") + [50256] + gpt2.encode("start")
        assert gpt2.reference_encode(text, specials=allowed) == gpt2.encode(text, specials=allowed)
    # The old keyword, for a release.
    for allowed in ({EOT}, "all", EOT):
        with pytest.warns(DeprecationWarning, match="specials=True"):
            assert gpt2.encode(text, allowed_special=allowed) == gpt2.encode("end") + [50256] + gpt2.encode("start")
        with pytest.warns(DeprecationWarning, match="specials=True"):
            assert gpt2.reference_encode(text, allowed_special=allowed) == gpt2.encode(text, specials=True)
    with pytest.warns(DeprecationWarning, match="specials=True"):
        assert gpt2.encode(text, allowed_special=()) == as_text
    assert gpt2.decode([50256]) == EOT


def test_unknown_allowed_special_is_an_error(gpt2):
    with pytest.raises(ClozelmError, match="<|fim_prefix|>"):
        gpt2.encode("x", specials={"<|fim_prefix|>"})


@pytest.mark.parametrize("text, position", [("\ud800", 0), ("ab\udfffc", 2), ("é\ud83d", 1)])
def test_lone_surrogates_are_rejected_with_their_position(gpt2, text, position):
    for encode in (gpt2.encode, gpt2.reference_encode, lambda t: gpt2.encode_batch(["ok", t])):
        with pytest.raises(LoneSurrogateError, match=f"position {position}"):
            encode(text)
    assert issubclass(LoneSurrogateError, ClozelmError) and issubclass(LoneSurrogateError, ValueError)


def test_surrogate_pairs_written_properly_are_fine(gpt2):
    text = "\U0001F600 smile"  # a real astral character, not a pair of lone surrogates
    assert gpt2.decode(gpt2.encode(text)) == text


def test_lookups(gpt2):
    assert gpt2.id_to_token(13434) == "Power"
    assert gpt2.id_to_token(1176) == "Ġpower"
    assert gpt2.token_to_id("Ġpower") == 1176
    assert gpt2.token_to_id(EOT) == 50256
    assert gpt2.token_to_id("not a token") is None
    assert gpt2.token_bytes(1176) == b" power"
    assert gpt2.token_bytes(50256) == EOT.encode()
    # The first 256 ids are the single bytes in GPT-2's order: printable ones first.
    assert [gpt2.token_bytes(i) for i in range(256)] == [bytes([b]) for b in GPT2_BYTE_ORDER]
    assert gpt2.id_to_token(220) == "Ġ" and gpt2.id_to_token(198) == "Ċ"
    assert BYTE_TO_SYMBOL[ord(" ")] == "Ġ"


def test_decode_handles_broken_utf8_like_the_original(gpt2):
    ids = gpt2.encode("😀")
    assert len(ids) > 1  # the emoji's 4 bytes span several tokens
    assert gpt2.decode_bytes(ids[:1]) == "😀".encode()[: len(gpt2.token_bytes(ids[0]))]
    assert set(gpt2.decode(ids[:1])) == {"\ufffd"}
    assert gpt2.decode(np.array(ids)) == "😀"


@pytest.mark.parametrize("bad_ids", [[50257], [-1], [5, 99999]])
def test_decode_rejects_unknown_ids(gpt2, bad_ids):
    with pytest.raises(ClozelmError, match="outside this vocabulary"):
        gpt2.decode(bad_ids)


def test_encode_batch_matches_encode(gpt2):
    batch = ["a", "", f"b{EOT}c", "  spaced  out  "]
    assert gpt2.encode_batch(batch) == [gpt2.encode(t) for t in batch]
    assert gpt2.encode_batch(batch, specials=True) == [gpt2.encode(t, specials=True) for t in batch]
    with pytest.warns(DeprecationWarning, match="specials=True"):
        assert gpt2.encode_batch(batch, allowed_special="all") == [gpt2.encode(t, specials=True) for t in batch]


# ---------------------------------------------------------------------------- why engine == original


def test_gpt2_merge_table_is_self_consistent(gpt2):
    """Every GPT-2 token is rebuilt from its own bytes by the original algorithm.

    That is the condition (see clozelm/tokenizers/bpe.py) under which tiktoken's
    bytes-rank merging equals the original pair-rank merging on every input.
    """
    assert gpt2.inconsistent_tokens() == []


def test_engine_ranks_equal_tiktokens_own_loader(gpt2, monkeypatch):
    """Our merge table equals the one tiktoken's loader builds from the same files."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # read the files themselves, no cache
    encoder_json, vocab_bpe = gpt2_vocab_files()
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(str(vocab_bpe), str(encoder_json))
    assert gpt2._engine._mergeable_ranks == ranks


# ---------------------------------------------------------------------------- real text


def test_engine_matches_reference_encode_on_real_text(gpt2):
    docs = documents(800_000)
    assert sum(len(d.encode()) for d in docs) >= 800_000
    assert gpt2.encode_batch(docs) == [gpt2.reference_encode(d) for d in docs]


def test_engine_matches_hf_tokenizers_on_4mb_of_real_text(gpt2, hf_tokenizers_bpe):
    docs = documents(4_000_000)
    assert sum(len(d.encode()) for d in docs) >= 4_000_000
    ours = gpt2.encode_batch(docs)
    assert ours == [e.ids for e in hf_tokenizers_bpe.encode_batch(docs)]
    assert [gpt2.decode(ids) for ids in ours] == docs


def test_engine_matches_transformers_gpt2_tokenizer_on_saved_hf_dir(gpt2, transformers_gpt2):
    docs = documents(600_000, block_chars=2_000)
    assert transformers_gpt2(docs)["input_ids"] == gpt2.encode_batch(docs)
    text = f"first{EOT} second"
    assert transformers_gpt2(text)["input_ids"] == gpt2.encode(text, specials=True)
    assert transformers_gpt2.eos_token_id == 50256


def test_transformers_gpt2_tokenizer_fast_opens_saved_hf_dir(gpt2, gpt2_hf_dir):
    from transformers import GPT2TokenizerFast

    fast = GPT2TokenizerFast.from_pretrained(str(gpt2_hf_dir))
    docs = documents(100_000, block_chars=2_000)
    assert fast(docs)["input_ids"] == gpt2.encode_batch(docs)
    assert fast.decode(gpt2.encode(docs[0])) == docs[0]


def test_one_long_string_matches_both_oracles(gpt2, hf_tokenizers_bpe):
    """A whole 400 kB corpus split as one string (the others are encoded in chunks)."""
    text = penn_treebank("valid")
    assert gpt2.encode(text) == hf_tokenizers_bpe.encode(text).ids == gpt2.reference_encode(text)


def test_engine_matches_reference_on_every_assigned_code_point(gpt2):
    """Each character Python knows, next to letters, digits, symbols and itself."""
    chars = [chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) not in ("Cn", "Cs", "Co")]
    text = " ".join(f"a{c}a 1{c}1 !{c}{c}" for c in chars)
    assert gpt2.encode(text) == gpt2.reference_encode(text)


# ---------------------------------------------------------------------------- fuzzing


@settings(max_examples=300, deadline=None)
@given(texts(assigned_chars))
def test_fuzz_engine_matches_reference_and_round_trips(gpt2, text):
    ids = gpt2.encode(text)
    assert ids == gpt2.reference_encode(text)
    assert gpt2.decode(ids) == text


@settings(max_examples=300, deadline=None)
@given(texts(any_chars))
def test_fuzz_engine_matches_hf_tokenizers_on_any_code_point(gpt2, hf_tokenizers_bpe, text):
    ids = gpt2.encode(text)
    assert ids == hf_tokenizers_bpe.encode(text).ids
    assert gpt2.decode(ids) == text


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(texts(assigned_chars), st.just(EOT)), max_size=5).map("".join))
def test_fuzz_special_token_handling(gpt2, text):
    for allowed in (False, True):
        ids = gpt2.encode(text, specials=allowed)
        assert ids == gpt2.reference_encode(text, specials=allowed)
        assert gpt2.decode(ids) == text
        assert (50256 in ids) == (allowed and EOT in text)


# ---------------------------------------------------------------------------- file formats


def test_hf_format_copy_gives_identical_ids(gpt2, gpt2_hf_dir):
    assert sorted(p.name for p in gpt2_hf_dir.iterdir()) == [
        "merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json",
    ]  # fmt: skip
    from_hf = ByteBPE.from_hf_files(gpt2_hf_dir / "vocab.json", gpt2_hf_dir / "merges.txt")
    from_dir = ByteBPE.from_dir(gpt2_hf_dir)
    docs = documents(300_000)
    expected = gpt2.encode_batch(docs)
    assert from_hf.encode_batch(docs) == expected == from_dir.encode_batch(docs)
    assert from_hf.special_tokens == from_dir.special_tokens == {EOT: 50256}
    assert from_dir.eos_id == 50256


def test_gpt2_format_save_reproduces_the_original_files(gpt2, tmp_path):
    gpt2.save(tmp_path, format="gpt2")
    encoder_json, vocab_bpe = gpt2_vocab_files()
    assert json.loads((tmp_path / "encoder.json").read_text()) == json.loads(encoder_json.read_text())
    assert (tmp_path / "vocab.bpe").read_text().split("\n")[1:] == vocab_bpe.read_text().split("\n")[1:]
    assert isinstance(load_tokenizer(tmp_path), ByteBPE)


def test_save_both_and_unknown_format(gpt2, tmp_path):
    gpt2.save(tmp_path, format="both")
    assert {"encoder.json", "vocab.bpe", "vocab.json", "merges.txt"} <= {p.name for p in tmp_path.iterdir()}
    with pytest.raises(ClozelmError, match="unknown tokenizer format"):
        gpt2.save(tmp_path, format="sentencepiece")


def test_ids_that_differ_from_ranks_are_mapped(gpt2, tmp_path):
    """A vocab.json with the special token first (ids shifted by one) still encodes right."""
    vocab = json.loads((gpt2_vocab_files()[0]).read_text())
    shifted = {token: (0 if token == EOT else token_id + 1) for token, token_id in vocab.items()}
    (tmp_path / "vocab.json").write_text(json.dumps(shifted))
    merges = tmp_path / "merges.txt"
    merges.write_text(gpt2_vocab_files()[1].read_text())
    moved = ByteBPE.from_hf_files(tmp_path / "vocab.json", merges)
    assert not moved._ids_are_ranks
    text = f"Power, give me more power!{EOT}ok"
    expected = [0 if i == 50256 else i + 1 for i in gpt2.encode(text, specials=True)]
    assert moved.encode(text, specials=True) == expected
    assert moved.reference_encode(text, specials=True) == expected
    assert moved.decode(expected) == text
    assert moved.encode_batch([text], specials=True) == [expected]
    assert moved.eos_id == 0 and moved.vocab_size == 50257


def test_from_dir_reads_hf_added_tokens(gpt2_hf_dir, tmp_path):
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((gpt2_hf_dir / name).read_bytes())
    (tmp_path / "added_tokens.json").write_text(json.dumps({"<|pad|>": 50257}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<|pad|>"}))
    tokenizer = ByteBPE.from_dir(tmp_path)
    assert tokenizer.special_tokens == {EOT: 50256, "<|pad|>": 50257}
    assert tokenizer.pad_id == 50257 and tokenizer.vocab_size == 50258
    assert tokenizer.encode("a<|pad|>", specials=True) == [64, 50257]


# ---------------------------------------------------------------------------- errors


def _one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_missing_and_malformed_files_are_clear_errors(tmp_path):
    with pytest.raises(ClozelmError, match="not found") as excinfo:
        ByteBPE.from_gpt2_files(tmp_path / "encoder.json", tmp_path / "vocab.bpe")
    _one_line_error(excinfo)
    (tmp_path / "vocab.json").write_text("{not json")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(ClozelmError, match="not valid JSON") as excinfo:
        ByteBPE.from_hf_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    _one_line_error(excinfo)
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0}))
    with pytest.raises(ClozelmError, match="lacks") as excinfo:
        ByteBPE.from_hf_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    _one_line_error(excinfo)


def test_bad_merge_lines_are_clear_errors(gpt2_hf_dir, tmp_path):
    vocab = tmp_path / "vocab.json"
    vocab.write_bytes((gpt2_hf_dir / "vocab.json").read_bytes())
    merges = tmp_path / "merges.txt"
    for lines, expected in [
        ("Ġ t x", "expected two symbols"),
        ("Ġ zz", "no earlier merge produces"),
        ("Ġ \u4e00", "non-byte symbol"),
        ("Ġ t\nĠ t", "already exists"),
    ]:
        merges.write_text("#version: 0.2\n" + lines + "\n")
        with pytest.raises(ClozelmError, match=expected) as excinfo:
            ByteBPE.from_hf_files(vocab, merges)
        _one_line_error(excinfo)


def test_load_tokenizer_names_what_it_looked_for(tmp_path):
    with pytest.raises(ClozelmError, match="encoder.json.*vocab.txt") as excinfo:
        load_tokenizer(tmp_path)
    _one_line_error(excinfo)
    with pytest.raises(ClozelmError, match="not found"):
        load_tokenizer(tmp_path / "nope")
