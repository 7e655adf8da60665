"""Parsing a text with blanks: `___` (3+ underscores) hides one word of unknown length, `[MASK]` hides
exactly one token (`[MASK][MASK]` hides two, in a row)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ClozelmError
from ..tokenizers.base import is_wordish

BLANK = re.compile(r"_{3,}|(?:\[MASK\])+")


@dataclass(frozen=True)
class Blank:
    kind: str  # "word" (unknown number of tokens) or "tokens" (exactly n_tokens)
    n_tokens: int | None
    lead_space: bool  # a space stood before the blank: the hidden text starts with it (" fortune")
    source: str  # as written: "___" or "[MASK][MASK]"


@dataclass(frozen=True)
class Template:
    segments: tuple[str, ...]  # known text around the blanks; len(segments) == len(blanks) + 1
    blanks: tuple[Blank, ...]

    def parts(self, fills: list[str]) -> list[tuple[str, bool]]:
        """The text with `fills` in its blanks as (text, is_fill) pairs, in order (empty known text left out)."""
        parts = [(self.segments[0], False)]
        for blank, fill, segment in zip(self.blanks, fills, self.segments[1:]):
            parts += [(" " if blank.lead_space else "", False), (fill, True), (segment, False)]
        return [(text, filled) for text, filled in parts if text or filled]

    def render(self, fills: list[str]) -> str:
        """The whole text with `fills` in its blanks."""
        return "".join(text for text, _ in self.parts(fills))


def parse(text: str) -> Template:
    if not text.strip():
        raise ClozelmError("empty text: give a text with at least one blank (___ or [MASK])")
    segments, blanks, last = [], [], 0
    for m in BLANK.finditer(text):
        left = text[last:m.start()]
        lead_space = left.endswith(" ")
        segments.append(left[:-1] if lead_space else left)
        if m.group().startswith("_"):
            blanks.append(Blank("word", None, lead_space, m.group()))
        else:
            blanks.append(Blank("tokens", len(m.group()) // len("[MASK]"), lead_space, m.group()))
        last = m.end()
    segments.append(text[last:])
    if not blanks:
        raise ClozelmError("no blank in the text: hide words with ___ or tokens with [MASK] "
                           "(to continue a text instead, use `clozelm generate`)")
    return Template(tuple(segments), tuple(blanks))


def whole_characters(tokenizer, ids) -> bool:
    """Whether tokens `ids` spell whole characters: a fill may not end (or start) inside a multi-byte
    character, whose other bytes no known text supplies."""
    try:
        b"".join(map(tokenizer.token_bytes, ids)).decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def spells_a_word(tokenizer, ids) -> bool:
    """Whether a `___` fill of whole characters spells a word: a token that only opens a character may start one
    (its character is known once whole), and "。" must not pass for a word."""
    return is_wordish(tokenizer.blank_text(ids))
