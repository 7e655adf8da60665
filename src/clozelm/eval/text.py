"""The texts the tasks read: documents from FILES, their sentences, and items drawn from them by seed."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from pathlib import Path

from ..errors import ClozelmError
from ..files import expand_inputs, read_text_file

WORD = re.compile(r"[A-Za-z]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"'’”])\s+")
_PARAGRAPH = re.compile(r"\n\s*\n")


def read_documents(files: Sequence[str | Path]) -> list[tuple[str, str]]:
    """(name, text) of every file named or found under a folder named (one document each)."""
    return [(str(path), read_text_file(path, "input file")) for path in expand_inputs(files)]


def sentences(text: str) -> list[str]:
    """The sentences of a text in order, each on one line with single spaces (lines wrapped inside a paragraph
    are joined; a blank line ends a paragraph, and a sentence)."""
    out = []
    for paragraph in _PARAGRAPH.split(text):
        flat = " ".join(paragraph.split())
        out += [s for s in _SENTENCE_END.split(flat) if s]
    return out


def same(tok, answer: str, hidden: str) -> bool:
    """Whether a fill's answer spells the hidden text. A tokenizer that does not keep the text (a lower-casing,
    accent-stripping WordPiece; a tokenizer that normalises Unicode) gives back its own spelling of it: the
    answer is compared with that ("café" is "cafe" to an uncased BERT)."""
    if answer == hidden:
        return True
    return not tok.lossless and answer == tok.blank_text(tok.encode(hidden))


def draw(items: list, limit: int | None, seed: int) -> list:
    """At most `limit` of `items`, drawn by `seed`, in their original order."""
    if limit is None or len(items) <= limit:
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


def read_jsonl(path: Path, what: str) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a JSON Lines file; a one-line error for a bad line."""
    import json
    rows = []
    # Lines end at "\n" only: str.splitlines also cuts at U+2028, U+2029 and U+0085, which JSON strings may hold.
    text = read_text_file(path, what).removeprefix("\ufeff")  # a byte order mark, as Windows editors write one
    for number, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ClozelmError(f"{path}:{number}: not a JSON object ({error.msg})") from None
        if not isinstance(row, dict):
            raise ClozelmError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        rows.append((number, row))
    if not rows:
        raise ClozelmError(f"{what} {path} is empty")
    return rows
