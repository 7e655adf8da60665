"""Reading a request's fields: every field of every endpoint is declared here with its type and range, and
checked in one place (`read_fields`), so that no value a client can send reaches a model unchecked.

Each endpoint declares a dict {field: Field}; `read_fields(data, spec)` refuses unknown fields, fills in
defaults and checks every value, raising `FieldError` (status 400, or 413 for a text over the limit) with one
line naming the field. `check_number` is also how the server's own numeric limits (and so `clozelm serve`'s
options) are checked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ClozelmError

_MISSING = object()


class FieldError(ClozelmError):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def one_line(message, limit: int = 300) -> str:
    """A message as one line of at most `limit` characters."""
    line = " ".join(str(message).split())
    return line if len(line) <= limit else line[:limit - 1] + "…"


def _shown(bound: float) -> str:
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def check_number(name: str, value, low: float, high: float, integer: bool = False, unit: str = ""):
    """`value` as an int (integer=True) or float from `low` to `high`; anything else (bool, str, NaN,
    infinity, a fraction where an integer is due) raises ClozelmError naming `name`."""
    kind = "an integer" if integer else "a number"
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or (isinstance(value, float) and not math.isfinite(value))
            or (integer and isinstance(value, float) and not value.is_integer())
            or not low <= value <= high):
        raise ClozelmError(f"{name} must be {kind} from {_shown(low)} to {_shown(high)}{unit}, "
                           f"not {one_line(repr(value), 40)}")
    return int(value) if integer else float(value)


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Field:
    """One field's type and range. A subclass with a `default` attribute makes the field optional."""

    def read(self, key: str, value):
        raise NotImplementedError


@dataclass(frozen=True)
class Text(Field):
    """A string of at most `max_chars` characters (413 beyond), valid Unicode; `nonblank`: the message for
    a text of only spaces, None to accept it."""
    max_chars: int
    nonblank: str | None = None

    def read(self, key, value):
        if not isinstance(value, str):
            raise FieldError(f"{key!r} must be a string")
        if len(value) > self.max_chars:
            raise FieldError(f"the text is {len(value)} characters; this server takes at most {self.max_chars}", 413)
        if not _encodable(value):
            raise FieldError(f"{key!r} is not valid Unicode (it holds a lone surrogate)")
        if self.nonblank and not value.strip():
            raise FieldError(self.nonblank)
        return value


@dataclass(frozen=True)
class Integer(Field):
    default: int | None
    low: int
    high: int

    def read(self, key, value):
        if value is None and self.default is None:
            return None
        try:
            return check_number(repr(key), value, self.low, self.high, integer=True)
        except ClozelmError as error:
            raise FieldError(str(error)) from None


@dataclass(frozen=True)
class Number(Field):
    default: float
    low: float
    high: float

    def read(self, key, value):
        try:
            return check_number(repr(key), value, self.low, self.high)
        except ClozelmError as error:
            raise FieldError(str(error)) from None


@dataclass(frozen=True)
class OneOf(Field):
    """One of `names` (the served models), or None (all of them) when left out or null."""
    names: tuple[str, ...]
    what: str = "model"
    default = None

    def read(self, key, value):
        if value is None:
            return None
        if isinstance(value, str) and value in self.names:
            return value
        shown = one_line(value, 60) if isinstance(value, str) else type(value).__name__
        raise FieldError(f"unknown {self.what} {shown!r}: this server has {', '.join(self.names)}")


@dataclass(frozen=True)
class Strings(Field):
    """A list of at most `max_items` non-empty strings of at most `max_chars` characters (one string is a
    list of one)."""
    max_items: int
    max_chars: int
    default = ()

    def read(self, key, value):
        if isinstance(value, str):
            value = [value]
        if (not isinstance(value, list) or len(value) > self.max_items
                or not all(isinstance(s, str) and 0 < len(s) <= self.max_chars and _encodable(s) for s in value)):
            raise FieldError(f"{key!r} must be a list of at most {self.max_items} non-empty strings of at most "
                             f"{self.max_chars} characters")
        return list(value)


def read_fields(data, spec: dict[str, Field]) -> dict:
    """The request's fields, checked against `spec`, with every field of `spec` present (defaults filled)."""
    if not isinstance(data, dict):
        raise FieldError("the body must be a JSON object such as {\"text\": \"The ___ sat on the mat.\"}")
    unknown = sorted(set(data) - set(spec))
    if unknown:
        raise FieldError(f"unknown field {one_line(unknown[0], 40)!r} (this endpoint takes: {', '.join(sorted(spec))})")
    values = {}
    for key, field in spec.items():
        if key in data:
            values[key] = field.read(key, data[key])
        elif getattr(field, "default", _MISSING) is _MISSING:
            raise FieldError(f"missing field {key!r}")
        else:
            values[key] = field.default
    return values
