"""The JSON API (endpoints.py) on two small saved models: each endpoint answers as the library does, and every
bad request gets a one-line JSON error with the right status."""

from __future__ import annotations

import http.client
import json
import re

import pytest

import clozelm
from clozelm.server.app import STATIC_DIR

from .helpers import assert_json_error, call


def test_page_and_its_files_are_served_and_reference_nothing_outside(server):
    status, response, page = call(server, "GET", "/")
    assert status == 200 and response.getheader("Content-Type").startswith("text/html")
    assert "script-src 'self'" in response.getheader("Content-Security-Policy")
    assert '<script src="/static/page.js"' in page and 'href="/static/page.css"' in page
    for path in ("/static/page.js", "/static/page.css"):
        assert call(server, "GET", path)[0] == 200
    for f in STATIC_DIR.iterdir():  # works offline: no CDN, no external font or URL
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", f.read_text()), f
    assert call(server, "HEAD", "/")[0] == 200


def test_models_lists_both_with_their_method_and_the_limits(server):
    status, _, data = call(server, "GET", "/api/models")
    assert status == 200
    assert [(m["name"], m["method"], m["can_generate"]) for m in data["models"]] == [
        ("causal", "causal", True), ("bidi", "bidirectional", False)]
    assert data["limits"]["max_text"] == 4000 and data["limits"]["timeout"] == 60


def test_fill_answers_from_both_models_as_the_library_does(server, models):
    text = "the ___ sat on the mat"
    status, _, data = call(server, "POST", "/api/fill", {"text": text, "top": 3})
    assert status == 200 and data["text"] == text
    assert [r["model"] for r in data["results"]] == ["causal", "bidi"]
    for result in data["results"]:
        model = models[result["model"]]
        expected = [a.to_dict() for a in clozelm.fill(text, model=model, top=3)]
        got = [{k: v for k, v in a.items() if k != "parts"} for a in result["answers"]]
        assert got == expected and result["method"] == clozelm.cloze.method_for(model)
        for a in result["answers"]:  # parts spell the answer, the blank marked
            assert "".join(p.get("text", p.get("fill")) for p in a["parts"]) == a["text"]
            assert [p["fill"] for p in a["parts"] if "fill" in p] == a["blanks"]
    status, _, one = call(server, "POST", "/api/fill", {"text": "a [MASK] ran in the park", "top": 1, "model": "bidi"})
    assert status == 200 and [r["model"] for r in one["results"]] == ["bidi"] and len(one["results"][0]["answers"]) == 1


def test_generate_streams_ndjson_equal_to_generate(server, models):
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("POST", "/api/generate", json.dumps({"text": "the cat", "max_tokens": 8}),
                 {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("Transfer-Encoding") == "chunked"
    assert response.getheader("Content-Type").startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.read().decode().splitlines()]
    conn.close()
    assert lines[0] == {"model": "causal"} and lines[-1]["done"] is True and lines[-1]["stopped"] is None
    streamed = "".join(line["text"] for line in lines[1:-1])
    assert streamed == clozelm.generate("the cat", model=models["causal"], max_new_tokens=8)
    assert_json_error(*call(server, "POST", "/api/generate", {"text": "the cat", "model": "bidi"}), 400, "cannot generate")
    assert_json_error(*call(server, "POST", "/api/generate", {"text": "the cat", "max_tokens": 100}), 400, "64-token context")
    assert_json_error(*call(server, "POST", "/api/generate", {"text": "x", "stop": [""]}), 400, "stop")


def test_tokenize_gives_the_tokenizers_pieces(server, models):
    status, _, data = call(server, "POST", "/api/tokenize", {"text": "the cat sat"})
    assert status == 200
    for result in data["results"]:
        tok = models[result["model"]].tokenizer
        assert [t["id"] for t in result["tokens"]] == tok.encode("the cat sat") and result["count"] == len(result["tokens"])
        assert "".join(t["text"] for t in result["tokens"]) == "the cat sat"


def test_heads_is_a_self_contained_page_for_both_models(server):
    status, response, page = call(server, "GET", "/api/heads?text=the+cat+sat+on+the+mat")
    assert status == 200 and response.getheader("Content-Type").startswith("text/html")
    assert "frame-ancestors 'self'" in response.getheader("Content-Security-Policy")
    assert 'id="heads-data"' in page and '"name":"causal"' in page and '"name":"bidi"' in page  # both models
    status, _, posted = call(server, "POST", "/api/heads", {"text": "the cat sat on the mat", "model": "causal"})
    assert status == 200 and '"name":"causal"' in posted and '"name":"bidi"' not in posted
    assert_json_error(*call(server, "GET", "/api/heads?text=+"), 400, "empty text")
    assert_json_error(*call(server, "GET", "/api/heads?text="), 400, "empty text")  # not "missing field"
    assert call(server, "GET", "/api/heads?model=&text=the+cat")[0] == 200  # a blank model: every model, as before
    assert_json_error(*call(server, "GET", "/api/heads?text=a&color=red"), 400, "unknown parameter")


# -------------------------------------------------------------------------------------------- bad input

BAD_REQUESTS = [
    ("POST", "/api/fill", "{not json", {}, 400, "invalid JSON"),
    ("POST", "/api/fill", "[1, 2]", {}, 400, "JSON object"),
    ("POST", "/api/fill", {"text": "the ___", "tpo": 3}, {}, 400, "unknown field 'tpo'"),
    ("POST", "/api/fill", {"top": 3}, {}, 400, "missing field 'text'"),
    ("POST", "/api/fill", {"text": 3}, {}, 400, "must be a string"),
    ("POST", "/api/fill", {"text": "the ___ " * 600}, {}, 413, "at most 4000"),
    ("POST", "/api/fill", {"text": "the ___", "top": 0}, {}, 400, "'top' must be an integer from 1 to 20"),
    ("POST", "/api/fill", {"text": "the ___", "top": True}, {}, 400, "'top'"),
    ("POST", "/api/fill", {"text": "the ___", "top": 2.5}, {}, 400, "'top'"),
    ("POST", "/api/fill", {"text": "the ___", "model": "../../etc"}, {}, 400, "unknown model"),
    ("POST", "/api/fill", {"text": "nothing hidden here"}, {}, 400, "no blank"),
    ("POST", "/api/fill", {"text": "   "}, {}, 400, "empty text"),
    ("POST", "/api/fill", '{"text": "the \\ud800 ___"}', {}, 400, "lone surrogate"),
    ("POST", "/api/fill", b"\xff\xfe", {}, 400, "not UTF-8"),
    ("POST", "/api/fill", "[" * 60000 + "]" * 10, {}, 400, "invalid JSON"),
    ("POST", "/api/fill", '{"text": "the ___"}', {"Content-Type": "text/plain"}, 415, "application/json"),
    ("POST", "/api/generate", {"text": "x", "temperature": float("nan")}, {}, 400, "'temperature'"),
    ("POST", "/api/generate", {"text": "x", "top_p": 0}, {}, 400, "top-p"),
    ("POST", "/api/generate", {"text": "x", "beams": 4, "temperature": 1}, {}, 400, "temperature: beams > 1 searches"),
    ("POST", "/api/generate", {"text": "x", "seed": 3}, {}, 400, "seed: temperature 0 decodes greedily"),
    ("GET", "/api/fill", None, {}, 405, "answers POST"),
    ("PUT", "/api/models", "{}", {}, 405, "answers GET"),
    ("DELETE", "/", None, {}, 405, "GET only"),
    ("GET", "/api/nothing", None, {}, 404, "no such page"),
    ("GET", "/api/models", None, {"Host": "evil.example:8765"}, 403, "unexpected Host"),
    ("POST", "/api/fill", {"text": "the ___"}, {"Sec-Fetch-Site": "cross-site"}, 403, "cross-site"),
    ("POST", "/api/fill", {"text": "the ___"}, {"Origin": "http://evil.example"}, 403, "cross-origin"),
    ("POST", "/api/fill", {"text": "the ___"}, {"Origin": "http://[::1"}, 403, "cross-origin"),  # not a URL
    ("BREW", "/api/models", None, {}, 501, "Unsupported method"),
]


@pytest.mark.parametrize("method,path,body,headers,status,fragment", BAD_REQUESTS,
                         ids=[f"{m} {p} {s} {f}" for m, p, _, _, s, f in BAD_REQUESTS])
def test_bad_requests_get_one_line_json_errors(server, method, path, body, headers, status, fragment):
    if isinstance(body, (str, bytes)) and "Content-Type" not in headers:
        headers = {**headers, "Content-Type": "application/json"}
    assert_json_error(*call(server, method, path, body, headers), status, fragment)

