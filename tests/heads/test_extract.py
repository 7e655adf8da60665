"""Attention maps of one text: shapes, readable tokens and their spans, words, sinks, long and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clozelm.errors import ClozelmError
from clozelm.heads import attention_map, hide_sink_columns, word_level
from clozelm.loaded import Model
from clozelm.model import Output, Transformer

from .helpers import random_model


def test_maps_shapes_tokens_and_words(bpe):
    model = random_model(bpe, causal=True)
    text = "The café's lamp 🙂 was lit.\nNobody asked."
    maps = attention_map(model, text)
    assert maps.n_layers == 2 and maps.n_heads == 4
    assert maps.tokens[0] == "<|endoftext|>" and maps.special[0]
    for layer in maps.attentions:
        assert layer.dtype == np.float32 and layer.shape == (4, maps.n_tokens, maps.n_tokens)
        assert np.allclose(layer.sum(-1), 1, atol=1e-5)
        assert np.allclose(np.triu(layer, 1), 0)  # causal
    # Readable pieces: decoded bytes with real spaces, no 'Ġ'; spans point back into the text.
    assert not any("Ġ" in t for t in maps.tokens)
    for token, span in zip(maps.tokens[1:], maps.spans[1:]):
        if span[1] > span[0]:
            assert text[span[0]:span[1]] == token
    assert "".join(text[s[0]:s[1]] for s in maps.spans[1:]) == text
    assert maps.words[:6] == ["<|endoftext|>", "The", "café's", "lamp", "🙂", "was"]
    assert maps.word_of_token == sorted(maps.word_of_token)


def test_wordpiece_spans_and_words(minilm):
    text = "Naïve café-owners don't like unbelievably hot coffee."
    maps = attention_map(minilm, text)
    assert maps.tokens[0] == "[CLS]" and maps.tokens[-1] == "[SEP]"
    assert not maps.causal
    pieces = {t: text[s[0]:s[1]] for t, s in zip(maps.tokens, maps.spans) if s}
    assert pieces["naive"] == "Naïve" and pieces["##bly"] == "bly"
    assert "unbelievably" in maps.words and "don't" in maps.words
    # a [MASK] (or an [UNK]) in the text stands for a word: no sink, no special token; [CLS] and [SEP] are
    masked = attention_map(minilm, "The cat sat on the [MASK].")
    at = masked.tokens.index("[MASK]")
    assert not masked.special[at] and not masked.sinks[at] and masked.special[0] and masked.special[-1]


def test_word_level_and_sinks():
    matrix = np.array([[1.0, 0.0, 0.0, 0.0],
                       [0.5, 0.2, 0.3, 0.0],
                       [0.2, 0.2, 0.2, 0.4],
                       [0.1, 0.3, 0.3, 0.3]], dtype=np.float32)
    words = word_level(matrix, np.array([0, 1, 1, 2]), 3)
    # TO a word: sum over its pieces; FROM a word: mean over its pieces.
    assert np.allclose(words[1], [(0.5 + 0.2) / 2, (0.5 + 0.4) / 2, (0.0 + 0.4) / 2])
    assert np.allclose(words.sum(-1), 1)
    kept, removed = hide_sink_columns(matrix, np.array([True, False, False, False]))
    assert np.allclose(removed, [1.0, 0.5, 0.2, 0.1])
    assert np.allclose(kept[0], 0)  # nothing left but the sink
    assert np.allclose(kept[1], [0, 0.4, 0.6, 0]) and np.allclose(kept[2:].sum(-1), 1)


def test_word_level_leaves_out_tokens_of_no_word_and_keeps_leading_dims():
    rng = np.random.default_rng(0)
    layers = rng.random((2, 3, 5, 5)).astype(np.float32)  # [L, H, T, T]
    owner = np.array([-1, 0, 0, 1, -1])  # [CLS] a a b [SEP]: the frame belongs to no word
    words = word_level(layers, owner, 2)
    assert words.shape == (2, 3, 2, 2) and words.dtype == np.float32
    expected = np.stack([layers[..., [1, 2], :][..., [1, 2]].sum(-1).mean(-1), layers[..., [1, 2], 3].mean(-1)], -1)
    assert np.allclose(words[..., 0, :], expected, atol=1e-6)
    assert np.allclose(words[..., 1, 1], layers[..., 3, 3], atol=1e-6)
    # One matrix at a time gives the same as the stack.
    assert np.allclose(words[1, 2], word_level(layers[1, 2], owner, 2), atol=1e-6)


def test_long_text_keeps_start_and_says_so(bpe):
    model = random_model(bpe, n_positions=16)
    text = "The keeper lit the lamp. " * 20
    maps = attention_map(model, text)
    assert maps.n_tokens == 16
    assert len(maps.notes) == 1 and "kept the first 15 tokens" in maps.notes[0]
    assert text.startswith(maps.text) and 10 < len(maps.text) < 100
    assert f"characters 0-{len(maps.text)} of {len(text)}" in maps.notes[0]


def test_bad_input_is_one_line_error(bpe):
    model = random_model(bpe)
    for empty in ("", "  \n "):
        with pytest.raises(ClozelmError, match="empty"):
            attention_map(model, empty)

    class NoAttentions(Transformer):
        def forward(self, ids):
            return Output(logits=None, hidden=torch.zeros(1, ids.shape[1], 8))

    class NoneAttentions(NoAttentions):
        def forward(self, ids, attentions=False):
            return Output(logits=None, hidden=torch.zeros(1, ids.shape[1], 8))

    for cls in (NoAttentions, NoneAttentions):
        with pytest.raises(ClozelmError, match="does not return attention"):
            attention_map(Model(cls(model.config), bpe), "hello there")
    headless = random_model(bpe)
    headless.tokenizer = None
    with pytest.raises(ClozelmError, match="no tokenizer"):
        attention_map(headless, "hello")
    with pytest.raises(ClozelmError, match="layer 7 does not exist"):
        attention_map(model, "hello there").head(7, 0)


def test_tasks_take_a_loaded_model_not_a_name(bpe):
    # Names become models only in the public API (clozelm.attention_map); the task says so in one line.
    for given in ("default", random_model(bpe).network):
        with pytest.raises(ClozelmError, match="loaded model") as error:
            attention_map(given, "hello there")
        assert "\n" not in str(error.value)


def test_a_document_separator_that_is_also_unk_or_pad_stays_structural(bpe, tmp_path):
    """GPT-2's Hugging Face configuration names <|endoftext|> its BOS, EOS and UNK (and many name the EOS their
    PAD): read from such files it still opens the text as a sink and a special token."""
    import json

    from clozelm.heads.extract import structural_ids
    from clozelm.tokenizers import load_tokenizer
    bpe.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config.update(bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                  pad_token="<|endoftext|>")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_tokenizer(tmp_path)
    eos = tok.special_tokens["<|endoftext|>"]
    assert tok.unk_id == tok.pad_id == eos and eos in structural_ids(tok)
    maps = attention_map(random_model(tok, causal=True), "The cat sat.")
    assert maps.tokens[0] == "<|endoftext|>" and maps.special[0]
