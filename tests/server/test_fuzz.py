"""Property-based fuzzing of the JSON API (issue 18): for every endpoint, bodies drawn from valid and invalid
values of every field it declares (NaN, ±infinity, integers of thousands of digits, negative, empty, lone
surrogates, wrong types, extra fields, deep nesting) and whole bodies that are no JSON object (non-UTF-8
bytes, nesting deeper than the parser goes), sent to a server running in this process. Whatever comes in,
the answer is 200 or a 4xx with a one-line JSON `error`: never a 500, never an internal error in a stream.

The number of examples per endpoint is CLOZELM_FUZZ_EXAMPLES (default 40, well under a minute for all of
them); nightly runs set it higher, e.g. CLOZELM_FUZZ_EXAMPLES=2000, and then draw new examples each run
instead of the fixed ones of the normal suite.
"""

from __future__ import annotations

import http.client
import json
import os
from urllib.parse import urlencode

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from clozelm.server.fields import Integer, Number, OneOf, Strings, Text

from .helpers import running

EXAMPLES = int(os.environ.get("CLOZELM_FUZZ_EXAMPLES", "40"))
NIGHTLY = "CLOZELM_FUZZ_EXAMPLES" in os.environ
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not NIGHTLY,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PATHS = ["/api/fill", "/api/generate", "/api/tokenize", "/api/heads"]


class Raw:
    """A JSON token written as it is: numbers Python cannot print (10**5000), literals json.dumps does not make."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text[:30]!r}{'...' if len(self.text) > 30 else ''})"


def dumps(value) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(dumps(v) for v in value) + "]"
    return json.dumps(value)  # NaN and Infinity as Python writes them; lone surrogates as \ud800 escapes


WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "___", "____", "[MASK]", "[MASK][MASK]", "<|endoftext|>",
         ".", ",", " ", "\n", "\t", "é", "🙂", "日本", "\u0000", "\u200b", "\ufeff", "x" * 80]
texts = st.one_of(
    st.lists(st.sampled_from(WORDS), max_size=30).map(" ".join),
    st.lists(st.sampled_from(WORDS), max_size=30).map("".join),
    st.text(max_size=60),
    st.sampled_from(["", " ", "___", "[MASK]", "the ___ sat on the mat", "a [MASK] ran in the park",
                     "\ud800", "the \udfff ___"]),  # lone surrogates
)
words = st.lists(st.sampled_from(WORDS), min_size=1, max_size=12).map(" ".join)
with_blanks = st.tuples(texts, st.sampled_from([" ___ ", "___", " [MASK] ", "[MASK][MASK]"]), texts).map("".join)
huge_integers = st.integers(4301, 6000).flatmap(lambda n: st.sampled_from([Raw("9" * n), Raw("-1" + "0" * n)]))
special_numbers = st.sampled_from([Raw("NaN"), Raw("Infinity"), Raw("-Infinity"), Raw("1e999"), Raw("-1e999"),
                                   Raw("1e-999"), Raw("-0"), Raw("0.0"), Raw("1" + "0" * 400 + ".5")])
deep = st.integers(1, 3000).flatmap(lambda n: st.sampled_from([Raw("[" * n + "]" * n), Raw('{"a":' * n + "1" + "}" * n)]))
leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-(2 ** 70), 2 ** 70),
                   st.floats(allow_nan=True, allow_infinity=True), texts, huge_integers, special_numbers)
junk = st.one_of(leaves, deep, st.recursive(leaves, lambda inner: st.lists(inner, max_size=3)
                                            | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6))


def valid(field):
    """Values the field's declared type and range accept, its edges included."""
    if isinstance(field, Text):
        return st.one_of(texts, with_blanks, st.just("a ___ " * (field.max_chars // 6)), st.just("x" * field.max_chars))
    if isinstance(field, Integer):
        return st.one_of(st.integers(field.low, min(field.high, field.low + 300)),
                         st.sampled_from([field.low, field.high]), st.integers(field.low, field.high).map(float))
    if isinstance(field, Number):
        return st.one_of(st.floats(field.low, field.high), st.sampled_from([field.low, field.high]),
                         st.integers(int(field.low), int(field.high)))
    if isinstance(field, OneOf):
        return st.one_of(st.sampled_from(field.names), st.none())
    if isinstance(field, Strings):
        return st.one_of(st.lists(words, max_size=field.max_items), words)
    raise AssertionError(f"no strategy for {field!r}: add one so that every field is fuzzed")


def invalid(field):
    """Values just outside the field's type or range, and anything at all."""
    if isinstance(field, Text):
        edge = st.just("x" * (field.max_chars + 1))
    elif isinstance(field, (Integer, Number)):
        edge = st.sampled_from([field.low - 1, field.high + 1, field.low - 0.5, field.high + 0.5])
    elif isinstance(field, Strings):
        edge = st.lists(texts, min_size=field.max_items + 1, max_size=field.max_items + 2)
    else:
        edge = texts
    return st.one_of(edge, junk)


@st.composite
def bodies(draw, spec: dict) -> bytes:
    """A body: every field valid, one field not, a mix, something that is no JSON object, or not JSON."""
    kind = draw(st.sampled_from(["valid"] * 4 + ["one bad"] * 3 + ["mixed"] * 2 + ["junk", "bytes"]))
    if kind == "bytes":
        return draw(st.one_of(st.binary(max_size=40), st.just(b'{"text": "\xff ___"}'),
                              st.just(b"\xef\xbb\xbf{}")))
    if kind == "junk":
        return dumps(draw(junk)).encode()
    bad = draw(st.sampled_from(sorted(spec))) if kind == "one bad" else None
    data = {}
    for key, field in spec.items():
        if key == bad:
            how = "bad"
        elif kind == "mixed":
            how = draw(st.sampled_from(["valid", "absent", "bad"]))
        else:  # optional fields are often left out; required ones are there
            how = "valid" if not hasattr(field, "default") else draw(st.sampled_from(["valid", "absent"]))
        if how != "absent":
            data[key] = draw(valid(field) if how == "valid" else invalid(field))
    if kind == "mixed" and draw(st.booleans()):
        data[draw(st.text(max_size=8))] = draw(junk)  # a field the endpoint does not take
    return dumps(data).encode()


@pytest.fixture(scope="module")
def fuzzed(models):
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is much faster when the cores are shared
    try:
        with running(models) as server:
            yield server
    finally:
        torch.set_num_threads(before)


def send(server, method: str, path: str, body: bytes | None):
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=120)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        conn.close()


def check_answer(path: str, status: int, content_type: str, raw: bytes) -> None:
    assert status == 200 or 400 <= status < 500, (status, raw[:300])
    if status != 200:
        assert content_type.startswith("application/json"), content_type
        data = json.loads(raw)
        assert list(data) == ["error"] and isinstance(data["error"], str), data
        assert data["error"] and "\n" not in data["error"] and "Traceback" not in data["error"], data
    elif path == "/api/heads":
        assert content_type.startswith("text/html") and raw.startswith(b"<!DOCTYPE html>")
    elif path == "/api/generate":
        lines = [json.loads(line) for line in raw.decode("utf-8").splitlines()]
        assert "model" in lines[0], lines[0]
        last = lines[-1]
        assert last.get("done") is True or not last["error"].startswith("internal error"), last
    else:
        assert isinstance(json.loads(raw)["results"], list)


@pytest.mark.parametrize("path", PATHS)
@FUZZ
@given(data=st.data())
def test_every_body_gets_200_or_a_one_line_4xx(fuzzed, path, data):
    body = data.draw(bodies(fuzzed.fields[path]), label="body")
    answer = send(fuzzed, "POST", path, body)
    event(f"status {answer[0]} {answer[2][:50]!r}" if answer[0] != 200 else "200")
    check_answer(path, *answer)


@FUZZ
@given(data=st.data())
def test_every_heads_query_gets_200_or_a_one_line_4xx(fuzzed, data):
    params = data.draw(st.dictionaries(st.sampled_from(["text", "model", "color", "text[]", ""]), texts, max_size=3)
                       | st.lists(st.tuples(st.text(max_size=5), texts), max_size=12), label="query")
    items = params.items() if isinstance(params, dict) else params
    query = urlencode([(k.encode("utf-8", "surrogatepass"), v.encode("utf-8", "surrogatepass")) for k, v in items])
    check_answer("/api/heads", *send(fuzzed, "GET", "/api/heads?" + query, None))
