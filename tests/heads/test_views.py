"""The HTML page's encoding: a 512-token, 12 x 12 random model's page, decoding its stored numbers back;
two models side by side; the notebook view."""

from __future__ import annotations

import base64

import numpy as np

from clozelm.heads import attention_map
from clozelm.heads.roles import SAMPLE_TEXT
from clozelm.heads.views import render_page

from .helpers import assert_self_contained, check_decoded, page_payload, random_model


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


def test_a_floor_rounds_no_more_in_the_sink_hidden_view():
    """The page may round faint weights to a floor to fit its budget; the sink-hidden view divides each row by what
    its sinks leave, so a floor counted in the whole row's units would grow with it (a row that gives 98% to its
    first token would see its words rounded 50 times coarser). Decoded and renormalised as the page does, every
    weight stays within half a floor (or half a row step) of the exact renormalised one."""
    import zlib
    from clozelm.heads.views import encode_map
    rng = np.random.default_rng(0)
    n, floor = 48, 1 / 2048
    logits = rng.normal(size=(n, n)) * 2
    logits[:, 0] += rng.uniform(0, 8, size=n)  # the first token draws most rows' attention, some nearly all of it
    matrix = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    sinks = np.zeros(n, dtype=bool)
    sinks[0] = True
    blob = zlib.decompress(encode_map(matrix, sinks, causal=False, floor=floor, compress=True))
    step = np.frombuffer(blob[:4 * n], "<f4")
    codes = np.frombuffer(blob[4 * n + 2 * n:], np.uint8).reshape(n, n)
    kept = 1 - matrix[:, 0]
    decoded = codes * step[:, None] / kept[:, None]
    exact = np.where(sinks, 0, matrix) / kept[:, None]
    allowed = np.maximum(floor, exact.max(1) / 255) / 2 + 1e-6
    assert kept.min() < 0.05  # rows the old floor rounded far coarser
    assert (np.abs(decoded - exact)[:, 1:] <= allowed[:, None]).all()
