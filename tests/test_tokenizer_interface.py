"""The one tokenizer interface (clozelm.tokenizers.Tokenizer), held to the same contract for both kinds:
specials on and off, roles, framing, blanks, token classes, spans, saving, and the old keywords."""

from __future__ import annotations

import dataclasses
import itertools
import unicodedata

import pytest
import torch

from clozelm.errors import ClozelmError
from clozelm.tokenizers import FIM_TOKENS, ByteBPE, FimIds, Tokenizer, WordPiece, load_tokenizer, train_bpe
from corpora import bert_uncased_model_dir

BPE_SPECIALS = ["<|endoftext|>", "<|mask|>", *FIM_TOKENS]
SENTENCES = ["the cat sat on the mat", "a dog ran in the park", "naïve café, don't stop-believing 😀!"]


@pytest.fixture(scope="module")
def bpe(tmp_path_factory) -> ByteBPE:
    corpus = tmp_path_factory.mktemp("bpe") / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES * 5) + "\n", encoding="utf-8")
    return train_bpe([corpus], vocab_size=400, special_tokens=BPE_SPECIALS, min_frequency=1)


@pytest.fixture(scope="module")
def wordpiece() -> WordPiece:
    return WordPiece.from_file(bert_uncased_model_dir() / "vocab.txt")


@pytest.fixture(scope="module", params=["bpe", "wordpiece"])
def tok(request, bpe, wordpiece) -> Tokenizer:
    return {"bpe": bpe, "wordpiece": wordpiece}[request.param]


# ---------------------------------------------------------------------------- the contract, both kinds


def test_both_are_tokenizers(bpe, wordpiece):
    assert isinstance(bpe, Tokenizer) and isinstance(wordpiece, Tokenizer)
    assert (bpe.kind, wordpiece.kind) == ("bpe", "wordpiece")
    assert (bpe.name, wordpiece.name) == ("bpe", "wordpiece")  # the old name of kind
    assert bpe.lossless and not wordpiece.lossless


def test_specials_off_and_on(tok):
    mask = "<|mask|>" if tok.kind == "bpe" else "[MASK]"
    text = f"the {mask} sat"
    plain, special = tok.encode(text), tok.encode(text, specials=True)
    assert tok.mask_id not in plain and tok.mask_id in special
    assert tok.encode(text, specials=False) == plain
    assert tok.encode(text, specials={mask}) == special
    assert tok.encode_batch([text, "cat"], specials=True) == [special, tok.encode("cat", specials=True)]
    with pytest.raises(ClozelmError, match="not special tokens"):
        tok.encode(text, specials={"<|nope|>"})


def test_pieces_and_old_name(tok):
    ids = tok.encode("the cat sat")
    assert tok.pieces(ids) == [tok.id_to_token(i) for i in ids] == [tok.piece(i) for i in ids]
    assert tok.pieces(torch.tensor(ids)) == tok.pieces(ids)


def test_token_bytes_join_to_the_text(bpe, wordpiece):
    text = "naïve café 😀"
    ids = bpe.encode(text)
    assert b"".join(map(bpe.token_bytes, ids)).decode() == text == bpe.decode(ids)
    ids = wordpiece.encode("unaffable cats, aren't they")
    assert b"".join(map(wordpiece.token_bytes, ids)).decode() == " " + wordpiece.decode(ids)


def test_roles(bpe, wordpiece):
    sp = bpe.special_tokens
    assert (bpe.eos_id, bpe.mask_id) == (sp["<|endoftext|>"], sp["<|mask|>"])
    assert bpe.bos_id is bpe.cls_id is bpe.sep_id is bpe.pad_id is None
    wp = wordpiece
    assert (wp.cls_id, wp.sep_id, wp.mask_id, wp.pad_id, wp.unk_id) == (101, 102, 103, 0, 100)
    assert (wordpiece.bos_id, wordpiece.eos_id) == (101, 102)


def test_fim_ids(bpe, wordpiece):
    sp = bpe.special_tokens
    assert bpe.fim_ids == FimIds(sp["<|fim_prefix|>"], sp["<|fim_suffix|>"], sp["<|fim_middle|>"])
    assert wordpiece.fim_ids is None


def test_frame(bpe, wordpiece, tmp_path):
    eos = bpe.eos_id
    assert bpe.frame_tokens(causal=True) == ([eos], [])
    assert bpe.frame_tokens(causal=False) == ([eos], [eos])  # clozelm's BPE MLMs: documents between <|endoftext|>
    assert bpe.frame([5, 6], causal=False) == [eos, 5, 6, eos]
    assert wordpiece.frame_tokens(causal=True) == ([101], [])
    assert wordpiece.frame_tokens(causal=False) == ([101], [102])
    assert wordpiece.frame([7], causal=False) == [101, 7, 102]
    # A start-of-text token opens a causal text; no special token at all frames nothing.
    corpus = tmp_path / "c.txt"
    corpus.write_text("one two three\n" * 5)
    with_bos = train_bpe([corpus], 300, special_tokens=["<|startoftext|>", "<|endoftext|>"], min_frequency=1)
    assert with_bos.frame_tokens(causal=True) == ([with_bos.bos_id], [])
    bare = train_bpe([corpus], 300, special_tokens=[], min_frequency=1)
    assert bare.frame([1, 2], causal=True) == [1, 2] == bare.frame([1, 2], causal=False)


def test_blank_text(bpe, wordpiece):
    assert bpe.blank_text(bpe.encode(" cat")) == "cat"
    assert bpe.blank_text(bpe.encode("café")) == "café"
    assert bpe.blank_text(bpe.encode("  cat")) == " cat"  # one space is the template's; the other was hidden
    pieces = wordpiece.encode("unaffable")
    assert len(pieces) > 1 and wordpiece.blank_text(pieces) == "unaffable"
    assert wordpiece.blank_text(wordpiece.encode("the")) == "the"
    # a [MASK] glued to a word ("un[MASK]") filled with the "##" pieces that continue it: the text, not "##..."
    head = wordpiece.blank_text(pieces[:1])
    assert wordpiece.blank_text(pieces[1:]) == "unaffable"[len(head):]


def test_spans(bpe, wordpiece):
    text = "naïve café 😀<|endoftext|>!"
    ids, spans, pieces = bpe.encode_with_spans(text)
    assert ids == bpe.encode(text, specials=True) and bpe.eos_id in ids
    assert len(spans) == len(pieces) == len(ids)
    assert "".join(text[a:b] for a, b in spans) == text
    ids, spans, pieces = bpe.encode_with_spans(text, specials=False)
    assert bpe.eos_id not in ids and "".join(text[a:b] for a, b in spans) == text
    text = "Héllo [MASK] WORLD, unaffable!"
    ids, spans, pieces = wordpiece.encode_with_spans(text)
    assert pieces == wordpiece.pieces(ids) and "[MASK]" in pieces
    assert [text[a:b] for a, b in spans][:3] == ["Héllo", "[MASK]", "WORLD"]


def test_save_pretrained(bpe, wordpiece, tmp_path):
    bpe.save_pretrained(tmp_path / "bpe")
    names = {p.name for p in (tmp_path / "bpe").iterdir()}
    assert {"encoder.json", "vocab.bpe", "vocab.json", "merges.txt", "tokenizer_config.json"} <= names
    assert not any(n.endswith(".tmp") for n in names)
    wordpiece.save_pretrained(tmp_path / "wp")
    assert {"vocab.txt", "tokenizer_config.json"} <= {p.name for p in (tmp_path / "wp").iterdir()}
    text = "the <|mask|> [MASK] café"
    for original, directory in ((bpe, "bpe"), (wordpiece, "wp")):
        reloaded = load_tokenizer(tmp_path / directory)
        assert type(reloaded) is type(original)
        assert reloaded.encode(text, specials=True) == original.encode(text, specials=True)


# ---------------------------------------------------------------------------- old keywords


def test_old_bpe_keyword_warns_and_works(bpe):
    text = "a<|endoftext|>b<|mask|>"
    with pytest.warns(DeprecationWarning, match="specials"):
        assert bpe.encode(text, allowed_special="all") == bpe.encode(text, specials=True)
    with pytest.warns(DeprecationWarning, match="specials"):
        assert bpe.encode(text, allowed_special={"<|mask|>"}) == bpe.encode(text, specials={"<|mask|>"})
    with pytest.warns(DeprecationWarning, match="specials"):
        assert bpe.encode(text, "all") == bpe.encode(text, specials=True)  # it was positional too
    with pytest.warns(DeprecationWarning, match="specials"):
        assert bpe.encode_batch([text], allowed_special="all") == [bpe.encode(text, specials=True)]


def test_old_wordpiece_keyword_warns_and_works(wordpiece):
    text = "a [MASK] b"
    with pytest.warns(DeprecationWarning, match="specials"):
        assert wordpiece.encode(text, add_special_tokens=False) == wordpiece.encode(text, specials=True)
    with pytest.warns(DeprecationWarning, match="frame"):
        framed = wordpiece.encode(text, add_special_tokens=True)
    assert framed == wordpiece.frame(wordpiece.encode(text, specials=True), causal=False)
    with pytest.warns(DeprecationWarning, match="specials"):
        assert wordpiece.encode_batch([text], add_special_tokens=True) == [framed]


# ---------------------------------------------------------------------------- token classes


WORD_PUNCTUATION = "'’-"


def _wordish(text):
    return (bool(text) and all(c.isalnum() or c in WORD_PUNCTUATION or unicodedata.category(c).startswith("M")
                               for c in text) and any(c.isalnum() for c in text))


def _may_open_a_letter(first_bytes: bytes) -> bool:
    """Some completion of these first bytes of a character decodes to a letter (by trying every completion)."""
    try:
        need = {0xC: 2, 0xD: 2, 0xE: 3, 0xF: 4}[first_bytes[0] >> 4] - len(first_bytes)
    except KeyError:
        return False
    for tail in itertools.product(range(0x80, 0xC0), repeat=need):
        try:
            if (first_bytes + bytes(tail)).decode("utf-8").isalpha():
                return True
        except UnicodeDecodeError:
            continue
    return False


def old_bpe_masks(tokenizer, vocab_size):
    """cloze/vocab.py's BPE masks as they were before the tokenizers computed them, and two changes since: a token
    that only opens a multi-byte character that may be a letter (its first bytes, nothing completed) may open a
    word, and combining marks count as word characters (a token of marks alone continues a word)."""
    start_space, start_bare, cont, any_token, spaced = (torch.zeros(vocab_size, dtype=torch.bool) for _ in range(5))
    special = set(tokenizer.special_tokens.values())
    for i in range(min(vocab_size, tokenizer.vocab_size)):
        if i in special:
            continue
        try:
            raw = tokenizer.token_bytes(i)
        except Exception:
            continue
        any_token[i] = True
        spaced[i] = raw.startswith(b" ")
        text = raw.decode("utf-8", errors="ignore")
        body = raw[1:] if raw.startswith(b" ") else raw
        opens = bool(body) and not body.decode("utf-8", errors="ignore") and _may_open_a_letter(body)
        if raw.startswith(b" "):
            start_space[i] = _wordish(text[1:]) or opens
        else:
            start_bare[i] = _wordish(text) or opens
            cont[i] = _wordish(text) or (not text and bool(raw)) or (bool(text) and all(
                unicodedata.category(c).startswith("M") for c in text))
    return {True: (start_space, cont, any_token, any_token & spaced, any_token),
            False: (start_bare, cont, any_token, any_token & ~spaced, any_token)}


def old_wordpiece_masks(tokenizer, vocab_size):
    start, cont, any_token = (torch.zeros(vocab_size, dtype=torch.bool) for _ in range(3))
    special = set(tokenizer.special_tokens.values())
    for i in range(min(vocab_size, tokenizer.vocab_size)):
        tok = tokenizer.id_to_token(i)
        if i in special or tok.startswith("[unused") or (tok.startswith("[") and tok.endswith("]")):
            continue
        any_token[i] = True
        if tok.startswith("##"):
            cont[i] = True
        elif any(c.isalnum() for c in tok):
            start[i] = True
    # after a space a [MASK] takes a piece that starts a word; glued to one, also a "##" piece that continues it
    return {True: (start, cont, any_token, any_token & ~cont, any_token), False: (start, cont, any_token, any_token,
                                                                               any_token)}


def test_token_classes_agree_with_the_old_cloze_masks(tok):
    from clozelm.cloze.vocab import token_masks, word_masks

    vocab = tok.vocab_size + 7  # a model's vocabulary may be larger than its tokenizer's
    old = (old_bpe_masks if tok.kind == "bpe" else old_wordpiece_masks)(tok, vocab)
    classes = tok.token_classes(vocab)
    assert tok.token_classes(vocab) is classes  # computed once
    for lead_space in (True, False):
        new = (classes.word_start(lead_space), classes.word_continue, classes.ordinary,
               classes.token_start(lead_space), classes.ordinary)
        for got, want in zip(new, old[lead_space]):
            assert got.dtype == torch.bool and torch.equal(got, want)
        assert all(torch.equal(a, b) for a, b in zip((*word_masks(tok, vocab, lead_space),
                                                      *token_masks(tok, vocab, lead_space)), old[lead_space]))
    assert not classes.ordinary[tok.vocab_size:].any()
    moved = classes.to("meta")  # where the model's logits are (a GPU): every mask goes along
    for f in dataclasses.fields(classes):
        assert getattr(moved, f.name).device.type == "meta" and getattr(moved, f.name).shape == (vocab,)


def test_load_tokenizer_names_a_tokenizer_json_it_cannot_read(tmp_path):
    import json
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "Unigram", "vocab": [["a", 0.0]]}}))
    with pytest.raises(ClozelmError, match="holds a Unigram tokenizer, which clozelm does not read"):
        load_tokenizer(tmp_path)


def test_a_roberta_config_beside_both_kinds_of_files_means_bpe(bpe, wordpiece, tmp_path):
    """Both BPE and WordPiece files in one directory: the config's class decides, and RoBERTa's (or DeBERTa's)
    tokenizer is a byte-level BPE although its name holds "bert"."""
    import json
    for cls, kind in (("RobertaTokenizer", ByteBPE), ("DebertaTokenizerFast", ByteBPE), ("BertTokenizer", WordPiece),
                      ("DistilBertTokenizerFast", WordPiece)):
        directory = tmp_path / cls
        bpe.save(directory, format="gpt2")
        wordpiece.save_pretrained(directory)
        (directory / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": cls}))
        assert isinstance(load_tokenizer(directory), kind), cls
