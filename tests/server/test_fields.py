"""Request fields and limits (fields.py, limits.py): every field's type and range checked in one place."""

from __future__ import annotations

import math

import pytest

from clozelm.errors import ClozelmError
from clozelm.server import Limits
from clozelm.server.fields import FieldError, Integer, Number, OneOf, Strings, Text, check_number, read_fields
from clozelm.server.http import HTTPError, parse_json

SPEC = {"text": Text(10), "top": Integer(5, 1, 20), "p": Number(1.0, 0, 1), "model": OneOf(("a", "b")),
        "stop": Strings(2, 3)}


def test_defaults_are_filled_and_values_kept():
    assert read_fields({"text": "hi"}, SPEC) == {"text": "hi", "top": 5, "p": 1.0, "model": None, "stop": ()}
    assert read_fields({"text": "", "top": 3.0, "p": 0, "model": "b", "stop": "x"}, SPEC) == {
        "text": "", "top": 3, "p": 0.0, "model": "b", "stop": ["x"]}


@pytest.mark.parametrize("data,status,fragment", [
    ([1], 400, "JSON object"),
    ({}, 400, "missing field 'text'"),
    ({"text": "x", "tpo": 1}, 400, "unknown field 'tpo'"),
    ({"text": 1}, 400, "'text' must be a string"),
    ({"text": "x" * 11}, 413, "at most 10"),
    ({"text": "\ud800"}, 400, "lone surrogate"),
    ({"text": "x", "top": math.inf}, 400, "'top' must be an integer from 1 to 20"),
    ({"text": "x", "top": -math.inf}, 400, "'top'"),
    ({"text": "x", "top": math.nan}, 400, "'top'"),
    ({"text": "x", "top": True}, 400, "'top'"),
    ({"text": "x", "top": "3"}, 400, "'top'"),
    ({"text": "x", "top": 2.5}, 400, "'top'"),
    ({"text": "x", "top": 10 ** 30}, 400, "'top'"),
    ({"text": "x", "top": None}, 400, "'top'"),
    ({"text": "x", "p": math.nan}, 400, "'p' must be a number from 0 to 1"),
    ({"text": "x", "p": [0.5]}, 400, "'p'"),
    ({"text": "x", "model": "c"}, 400, "unknown model 'c'"),
    ({"text": "x", "model": ["a"]}, 400, "unknown model 'list'"),
    ({"text": "x", "stop": ["", "x"]}, 400, "'stop'"),
    ({"text": "x", "stop": ["a", "b", "c"]}, 400, "'stop'"),
    ({"text": "x", "stop": ["\udc80"]}, 400, "'stop'"),
    ({"text": "x", "stop": {"a": 1}}, 400, "'stop'"),
])
def test_bad_fields_are_one_line_errors(data, status, fragment):
    with pytest.raises(FieldError) as caught:
        read_fields(data, SPEC)
    assert caught.value.status == status and fragment in str(caught.value) and "\n" not in str(caught.value)


def test_a_5000_digit_integer_reads_as_out_of_range_not_as_a_crash():
    huge = "1" + "0" * 5000
    data = parse_json(f'{{"text": "x", "top": {huge}, "p": -{huge}}}'.encode())
    assert data["top"] == math.inf and data["p"] == -math.inf
    with pytest.raises(FieldError, match="'top' must be an integer from 1 to 20"):
        read_fields(data, SPEC)
    assert parse_json(b'{"top": 12345}') == {"top": 12345}


@pytest.mark.parametrize("raw,fragment", [(b"\xff", "not UTF-8"), (b"{", "invalid JSON"),
                                          (b"[" * 100_000, "invalid JSON")])
def test_unparsable_bodies(raw, fragment):
    with pytest.raises(HTTPError) as caught:
        parse_json(raw)
    assert caught.value.status == 400 and fragment in caught.value.message


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, True, "1", None, 1e300])
def test_check_number_refuses_what_is_not_a_finite_number_in_range(value):
    with pytest.raises(ClozelmError, match="x must be a number from 0 to 10"):
        check_number("x", value, 0, 10)


@pytest.mark.parametrize("field,value", [("timeout", math.inf), ("timeout", math.nan), ("timeout", 0),
                                         ("workers", 0), ("queue_size", -1), ("max_text", 2.5),
                                         ("receive_timeout", math.inf), ("max_body", True)])
def test_limits_check_themselves(field, value):
    with pytest.raises(ClozelmError, match=f"Limits.{field} must be"):
        Limits(**{field: value})
    assert Limits(timeout=0.5, workers=2).timeout == 0.5
