"""BERT's WordPiece tokenizer, matching transformers' ``BertTokenizer`` exactly.

In transformers 5 ``BertTokenizer`` is backed by the compiled ``tokenizers`` library, whose
rules differ in small ways from Google's original Python (and from transformers' old Python
class). This module follows the compiled one:

1. Special tokens ([CLS] [SEP] [MASK] [PAD] [UNK]) are cut out of the *raw* text first, so
   they are never split or lowercased; "[mask]" is ordinary text.
2. Each remaining stretch is normalized: drop NUL, U+FFFD and control/format/private-use
   characters; turn whitespace into spaces; put spaces around CJK ideographs; if accents
   are stripped, decompose (NFD) and drop nonspacing marks; then lowercase character by
   character (no final-sigma rule). No NFC step, and accents go before lowercasing.
3. Split on spaces and make every punctuation character a word of its own.
4. Each word becomes the longest vocabulary prefix, then "##"-prefixed longest pieces; a
   word with no such cover, or longer than 100 characters, becomes [UNK].

``tokenizers`` carries its own Unicode tables: general categories from before Unicode 10,
case mappings newer than Unicode 14, which is what Python 3.11 ships. The ``_TOKENIZERS_*`` tables at
the end of this file list every code point where the two disagree (measured against
tokenizers 0.23 over all 1.1M code points; ``tests/test_wordpiece.py`` measures it again).
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from collections.abc import Collection, Iterable
from pathlib import Path

import torch

from clozelm.errors import ClozelmError
from clozelm.files import atomic_write_text, read_text_file
from clozelm.tokenizers.base import UNSET, TokenClasses, Tokenizer, deprecated_keyword
from clozelm.tokenizers.bpe import check_encodable

MAX_CHARS_PER_WORD = 100
CONTINUATION_PREFIX = "##"
SPECIAL_ROLES = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}

# Whitespace as Rust's char::is_whitespace (the Unicode White_Space property).
_WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"

# CJK ideograph blocks that BERT isolates as one-character words. Note the gap at
# U+2B820-U+2B91F, which the tokenizers library leaves out.
_CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)  # fmt: skip
_ASCII_PUNCTUATION = "".join(chr(c) for c in range(33, 127) if not chr(c).isalnum())


def _parse_ranges(spec: str) -> list[tuple[int, int]]:
    """'0890-0891 08E2' -> [(0x890, 0x891), (0x8E2, 0x8E2)]."""
    ranges = []
    for item in spec.split():
        low, _, high = item.partition("-")
        ranges.append((int(low, 16), int(high or low, 16)))
    return ranges


def _in_ranges(code_point: int, ranges) -> bool:
    return any(low <= code_point <= high for low, high in ranges)


def _char_class(ranges) -> str:
    """A regex character class body for code point ranges."""
    return "".join(re.escape(chr(low)) + ("-" + re.escape(chr(high)) if high > low else "") for low, high in ranges)


def _collapse(code_points) -> list[tuple[int, int]]:
    ranges: list[list[int]] = []
    for code_point in code_points:
        if ranges and ranges[-1][1] == code_point - 1:
            ranges[-1][1] = code_point
        else:
            ranges.append([code_point, code_point])
    return [(low, high) for low, high in ranges]


@functools.lru_cache(maxsize=1)
def _patterns() -> dict[str, re.Pattern]:
    """Regexes for the character classes BERT cares about, built once (about 0.3 s)."""
    format_kept = _parse_ranges(_TOKENIZERS_KEEPS_FORMAT_CHARS)
    marks_kept = _parse_ranges(_TOKENIZERS_KEEPS_MARKS)
    not_punctuation = _parse_ranges(_TOKENIZERS_NOT_PUNCTUATION)
    removed, marks, punctuation = [], [], []
    for code_point in range(0x110000):
        category = unicodedata.category(chr(code_point))
        if category in ("Cc", "Cf", "Co") or code_point in (0, 0xFFFD):
            if chr(code_point) not in "\t\n\r" and not _in_ranges(code_point, format_kept):
                removed.append(code_point)
        elif category == "Mn":
            if not _in_ranges(code_point, marks_kept):
                marks.append(code_point)
        elif category.startswith("P"):
            if not _in_ranges(code_point, not_punctuation):
                punctuation.append(code_point)
    marks += [cp for low, high in _parse_ranges(_TOKENIZERS_EXTRA_MARKS) for cp in range(low, high + 1)]
    punctuation += [ord(c) for c in _ASCII_PUNCTUATION]
    punctuation += [cp for low, high in _parse_ranges(_TOKENIZERS_EXTRA_PUNCTUATION) for cp in range(low, high + 1)]
    punctuation_class = _char_class(_collapse(sorted(set(punctuation))))
    return {
        "removed": re.compile(f"[{_char_class(_collapse(removed))}]+"),
        "whitespace": re.compile(f"[{re.escape(_WHITESPACE)}]"),
        "cjk": re.compile(f"[{_char_class(_CJK_RANGES)}]"),
        "marks": re.compile(f"[{_char_class(_collapse(sorted(marks)))}]+"),
        # After cleaning, a space is the only whitespace left.
        "words": re.compile(f"[{punctuation_class}]|[^ {punctuation_class}]+"),
    }


def _nfd(text: str) -> str:
    # U+11938 gained its decomposition in Unicode 13; tokenizers' NFD table predates that.
    if _TOKENIZERS_NO_DECOMPOSITION in text:
        return _TOKENIZERS_NO_DECOMPOSITION.join(
            unicodedata.normalize("NFD", part) for part in text.split(_TOKENIZERS_NO_DECOMPOSITION)
        )
    return unicodedata.normalize("NFD", text)


def _lowercase_each_char(text: str) -> str:
    # str.lower() applies one context rule: a final capital sigma becomes 'ς'. The Rust
    # library lowercases character by character, so every Σ becomes σ.
    return text.replace("Σ", "σ").lower().translate(_TOKENIZERS_NEWER_LOWERCASE)


def _read_vocab_lines(path: Path) -> list[str]:
    # Lines split as transformers' loader (Python's text mode) splits them: at \n, \r\n and \r.
    lines = read_text_file(path, "WordPiece vocab").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines[-1] == "":  # the newline that ends the last line opens no new one
        lines.pop()
    return lines


def _fold(text: str) -> str:
    """Case- and accent-insensitive spelling used to find WordPiece pieces in the original text."""
    decomposed = unicodedata.normalize("NFD", text.lower())
    return "".join(c for c in decomposed if unicodedata.category(c) != "Mn")


class WordPiece(Tokenizer):
    """BERT WordPiece tokenizer over a ``vocab.txt`` vocabulary."""

    kind = "wordpiece"
    lossless = False  # lowercasing, accent stripping and dropped characters lose text

    def __init__(
        self,
        tokens: list[str],
        lowercase: bool = True,
        strip_accents: bool | None = None,
        tokenize_chinese_chars: bool = True,
        source: str = "<memory>",
    ):
        """``tokens`` in id order, as the lines of ``vocab.txt``.

        ``strip_accents=None`` follows ``lowercase``, as in BERT.
        """
        if not tokens:
            raise ClozelmError(f"{source}: the WordPiece vocabulary is empty")
        self.source = source
        self.lowercase = bool(lowercase)
        self.strip_accents = strip_accents
        self.tokenize_chinese_chars = bool(tokenize_chinese_chars)
        self._strips_accents = self.lowercase if strip_accents is None else bool(strip_accents)
        self._tokens = list(tokens)
        # A token listed twice keeps its last id, as transformers' vocab loader does.
        self._id_of_token = {token: i for i, token in enumerate(self._tokens)}
        self.special_tokens = {
            token: self._id_of_token[token] for token in SPECIAL_ROLES.values() if token in self._id_of_token
        }
        unk = SPECIAL_ROLES["unk"]
        if unk not in self._id_of_token:
            raise ClozelmError(f"{source}: the vocabulary has no {unk} token")
        specials = sorted(self.special_tokens, key=len, reverse=True)
        self._special_splitter = re.compile("(" + "|".join(map(re.escape, specials)) + ")")
        self._word_cache: dict[str, list[int]] = {}

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_file(cls, vocab_txt, lowercase: bool = True, strip_accents: bool | None = None) -> "WordPiece":
        """Load ``vocab.txt`` (one token per line; line number = id)."""
        path = Path(vocab_txt)
        return cls(_read_vocab_lines(path), lowercase=lowercase, strip_accents=strip_accents, source=str(path))

    @classmethod
    def from_dir(cls, path) -> "WordPiece":
        """Load ``vocab.txt`` and the casing options of ``tokenizer_config.json`` if present."""
        directory = Path(path)
        if not (directory / "vocab.txt").is_file():
            raise ClozelmError(f"no vocab.txt in {directory}")
        config = {}
        config_file = directory / "tokenizer_config.json"
        if config_file.is_file():
            try:
                config = json.loads(read_text_file(config_file, "tokenizer config"))
            except ValueError as error:
                raise ClozelmError(f"cannot read {config_file}: {error}") from None
            if not isinstance(config, dict):
                raise ClozelmError(f"{config_file} should hold a JSON object")
        return cls(
            _read_vocab_lines(directory / "vocab.txt"),
            lowercase=config.get("do_lower_case", True),
            strip_accents=config.get("strip_accents"),
            tokenize_chinese_chars=config.get("tokenize_chinese_chars", True),
            source=str(directory),
        )

    @classmethod
    def from_tokenizer_json(cls, path) -> "WordPiece":
        """A BERT-style tokenizer.json (model WordPiece, BertNormalizer, BertPreTokenizer), for a directory that has
        no vocab.txt beside it."""
        directory = Path(path)
        file = directory / "tokenizer.json"
        try:
            data = json.loads(read_text_file(file, "tokenizer file"))
        except ValueError as error:
            raise ClozelmError(f"cannot read {file}: {error}") from None
        model = data.get("model") if isinstance(data, dict) else None
        if not isinstance(model, dict) or model.get("type") != "WordPiece" or not isinstance(model.get("vocab"), dict):
            raise ClozelmError(f"{file} holds no WordPiece vocabulary")
        unsupported = [f"{key} {model.get(key)!r}" for key, ours in (("unk_token", SPECIAL_ROLES["unk"]),
                                                                   ("continuing_subword_prefix", "##"),
                                                                   ("max_input_chars_per_word", MAX_CHARS_PER_WORD))
                       if model.get(key, ours) != ours]
        normalizer, pre = data.get("normalizer") or {}, data.get("pre_tokenizer") or {}
        if not isinstance(normalizer, dict) or not isinstance(pre, dict):
            raise ClozelmError(f"{file}: its normalizer and pre-tokenizer should be JSON objects")
        if normalizer.get("type") != "BertNormalizer" or normalizer.get("clean_text", True) is not True:
            unsupported.append(f"normalizer {json.dumps(normalizer)[:60]}")
        if pre.get("type") != "BertPreTokenizer":
            unsupported.append(f"pre-tokenizer {json.dumps(pre)[:60]}")
        if unsupported:
            raise ClozelmError(f"{file}: {unsupported[0]} is not supported (clozelm reads BERT's WordPiece)")
        vocab = model["vocab"]
        ids = sorted(vocab.values()) if all(isinstance(i, int) for i in vocab.values()) else None
        if ids != list(range(len(vocab))):
            raise ClozelmError(f"{file}: the WordPiece ids are not 0 to {len(vocab) - 1}, each once")
        tokens = sorted(vocab, key=vocab.get)
        return cls(tokens, lowercase=normalizer.get("lowercase", True), strip_accents=normalizer.get("strip_accents"),
                   tokenize_chinese_chars=normalizer.get("handle_chinese_chars", True), source=str(directory))

    # ------------------------------------------------------------------ encoding

    def _normalize(self, text: str) -> str:
        patterns = _patterns()
        text = patterns["removed"].sub("", text)
        text = patterns["whitespace"].sub(" ", text)
        if text.isascii():
            return text.lower() if self.lowercase else text
        if self.tokenize_chinese_chars:
            text = patterns["cjk"].sub(r" \g<0> ", text)
        if self._strips_accents:
            text = patterns["marks"].sub("", _nfd(text))
        if self.lowercase:
            text = _lowercase_each_char(text)
        return text

    def _greedy_pieces(self, word: str) -> list[int] | None:
        """Longest vocabulary prefix, then longest "##" pieces; None if some stretch has none."""
        vocab = self._id_of_token
        ids = []
        start = 0
        while start < len(word):
            for end in range(len(word), start, -1):
                piece = word[start:end] if start == 0 else CONTINUATION_PREFIX + word[start:end]
                if piece in vocab:
                    ids.append(vocab[piece])
                    start = end
                    break
            else:
                return None
        return ids

    def _word_ids(self, word: str) -> list[int]:
        cached = self._word_cache.get(word)
        if cached is not None:
            return cached
        ids = None
        if len(word) <= MAX_CHARS_PER_WORD:
            ids = self._greedy_pieces(word)
        if ids is None:
            ids = [self._id_of_token[SPECIAL_ROLES["unk"]]]
        if len(self._word_cache) > 500_000:
            self._word_cache.clear()
        self._word_cache[word] = ids
        return ids

    def _segments(self, text: str, allowed: frozenset[str]):
        """(segment, is_special) pieces of the raw text, where the special tokens in `allowed` are cut out."""
        check_encodable(text)
        if not allowed:
            yield text, False
            return
        if len(allowed) == len(self.special_tokens):
            splitter = self._special_splitter
        else:
            splitter = re.compile("(" + "|".join(map(re.escape, sorted(allowed, key=len, reverse=True))) + ")")
        for index, segment in enumerate(splitter.split(text)):
            if segment:
                yield segment, index % 2 == 1

    def _encode(self, text: str, allowed: frozenset[str]) -> list[int]:
        ids: list[int] = []
        words_pattern = _patterns()["words"]
        for segment, is_special in self._segments(text, allowed):
            if is_special:
                ids.append(self.special_tokens[segment])
                continue
            for word in words_pattern.findall(self._normalize(segment)):
                ids.extend(self._word_ids(word))
        return ids

    def encode(self, text: str, add_special_tokens=UNSET, *, specials: bool | Collection[str] = False) -> list[int]:
        """Token ids; special tokens written in the text count only when ``specials`` allows them (True: all
        of them; a collection: those).

        ``add_special_tokens`` is the old keyword: with it, written special tokens always count (as in
        BertTokenizer), and True wraps the ids as [CLS] ... [SEP] (now ``frame(ids, causal=False)``).
        """
        if add_special_tokens is UNSET:
            return self._encode(text, self._allowed_specials(specials))
        deprecated_keyword("encode(text, add_special_tokens=...)",
                           "encode(text, specials=True) and frame(ids, causal=False)")
        return self._legacy_encode(text, add_special_tokens)

    def encode_batch(self, texts: Iterable[str], add_special_tokens=UNSET, *,
                     specials: bool | Collection[str] = False) -> list[list[int]]:
        if add_special_tokens is UNSET:
            return super().encode_batch(texts, specials=specials)
        deprecated_keyword("encode_batch(texts, add_special_tokens=...)",
                           "encode_batch(texts, specials=True) and frame(ids, causal=False)")
        return [self._legacy_encode(text, add_special_tokens) for text in texts]

    def _legacy_encode(self, text: str, add_special_tokens: bool) -> list[int]:
        ids = self._encode(text, frozenset(self.special_tokens))
        if add_special_tokens:
            if self.cls_id is None or self.sep_id is None:
                raise ClozelmError(f"{self.source}: the vocabulary lacks [CLS] or [SEP]")
            ids = [self.cls_id, *ids, self.sep_id]
        return ids

    def tokenize(self, text: str) -> list[str]:
        """The pieces of ``text``, special tokens written in it included (as BertTokenizer.tokenize)."""
        return [self._tokens[i] for i in self._encode(text, frozenset(self.special_tokens))]

    # ------------------------------------------------------------------ decoding

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Tokens joined by spaces, with "##" pieces glued to the piece before them."""
        if hasattr(ids, "tolist"):  # numpy arrays and torch tensors
            ids = ids.tolist()
        special_ids = set(self.special_tokens.values())
        words: list[str] = []
        for i in ids:
            if skip_special_tokens and i in special_ids:
                continue
            token = self.piece(i)
            if words and token.startswith(CONTINUATION_PREFIX):
                words[-1] += token[len(CONTINUATION_PREFIX) :]
            else:
                words.append(token)
        return " ".join(words)

    # ------------------------------------------------------------------ lookups

    def piece(self, i: int) -> str:
        if not 0 <= i < len(self._tokens):
            raise ClozelmError(f"token id {i} is outside this vocabulary (0..{len(self._tokens) - 1})")
        return self._tokens[i]

    def token_bytes(self, i: int) -> bytes:
        """What the token adds to the text ``decode`` writes: a "##" piece glues on ("##ing" -> b"ing"), any
        other piece opens a new word (b" the"), so joining these gives " " + decode(ids)."""
        token = self.piece(i)
        if token.startswith(CONTINUATION_PREFIX):
            return token[len(CONTINUATION_PREFIX):].encode("utf-8")
        return (" " + token).encode("utf-8")

    def token_to_id(self, s: str) -> int | None:
        return self._id_of_token.get(s)

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    def _role_id(self, role: str) -> int | None:
        # BERT opens a text with [CLS] and closes it with [SEP]: they are its bos and eos.
        role = {"bos": "cls", "eos": "sep"}.get(role, role)
        return self.special_tokens.get(SPECIAL_ROLES[role]) if role in SPECIAL_ROLES else None

    def __repr__(self) -> str:
        return f"WordPiece(vocab_size={self.vocab_size}, lowercase={self.lowercase}, source={self.source!r})"

    # ------------------------------------------------------------------ spans and blanks

    def encode_with_spans(self, text: str, *, specials: bool | Collection[str] = True):
        """(ids, spans, pieces): the pieces as the vocabulary writes them, their spans found in the text."""
        ids = self.encode(text, specials=specials)
        pieces = self.pieces(ids)
        return ids, self._spans(text, pieces), pieces

    def _spans(self, text: str, pieces: list[str]) -> list[tuple[int, int] | None]:
        """Character spans of pieces, found by matching folded pieces against the folded text.

        WordPiece lowercases, strips accents and drops control characters, so pieces are not substrings
        of the text; folding both sides the same way makes them so, character by character.
        """
        specials = set(self.special_tokens)
        folded_chars, origin = [], []
        for index, char in enumerate(text):
            for folded in _fold(char):
                folded_chars.append(folded)
                origin.append(index)
        folded = "".join(folded_chars)
        spans: list[tuple[int, int] | None] = []
        cursor = 0
        for piece in pieces:
            if piece == SPECIAL_ROLES["unk"]:  # the unknown word: the next run of non-space characters
                while cursor < len(folded) and folded[cursor].isspace():
                    cursor += 1
                end = cursor
                while end < len(folded) and not folded[end].isspace() and (end == cursor or folded[end].isalnum()):
                    end += 1
                spans.append((origin[cursor], origin[end - 1] + 1) if end > cursor else None)
                cursor = end
                continue
            target = _fold(piece[2:] if piece.startswith("##") else piece) if piece not in specials else piece.lower()
            found = folded.find(target, cursor, cursor + len(target) + 64) if target else -1
            if found < 0:
                spans.append(None)
                continue
            spans.append((origin[found], origin[found + len(target) - 1] + 1))
            cursor = found + len(target)
        return spans

    def blank_text(self, ids) -> str:
        """The hidden pieces as one word: "##" pieces glued on (a first "##" piece too: it continues the word
        the blank is glued to), no surrounding space."""
        text = self.decode(ids).replace(" ##", "").strip()
        return text[len(CONTINUATION_PREFIX):] if text.startswith(CONTINUATION_PREFIX) else text

    def _token_classes(self, vocab_size: int) -> TokenClasses:
        # A hidden word opens with a whole-word piece that has a letter or digit and goes on with "##" pieces;
        # specials, [unusedN] and other bracketed placeholders never fill a blank.
        start = torch.zeros(vocab_size, dtype=torch.bool)
        cont = torch.zeros(vocab_size, dtype=torch.bool)
        ordinary = torch.zeros(vocab_size, dtype=torch.bool)
        special = set(self.special_tokens.values())
        for i in range(min(vocab_size, self.vocab_size)):
            token = self._tokens[i]
            if i in special or token.startswith("[unused") or (token.startswith("[") and token.endswith("]")):
                continue
            ordinary[i] = True
            if token.startswith(CONTINUATION_PREFIX):
                cont[i] = True
            elif any(c.isalnum() for c in token):
                start[i] = True
        # Spaces are not part of WordPiece tokens: a [MASK] glued to a word may take a "##" piece that continues
        # it ("play[MASK]" -> "##ing"), one after a space only a piece that starts a word.
        return TokenClasses(word_start_spaced=start, word_start_bare=start, word_continue=cont, ordinary=ordinary,
                            spaced=ordinary & ~cont, token_start_spaced=ordinary & ~cont, token_start_bare=ordinary)

    # ------------------------------------------------------------------ saving

    def save(self, out_dir) -> Path:
        """Write ``vocab.txt`` and the configs transformers' ``BertTokenizer`` reads."""
        directory = Path(out_dir)
        special_map = {f"{role}_token": token for role, token in SPECIAL_ROLES.items() if token in self.special_tokens}
        config = {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": self.lowercase,
            "strip_accents": self.strip_accents,
            "tokenize_chinese_chars": self.tokenize_chinese_chars,
            "do_basic_tokenize": True,
            "clean_up_tokenization_spaces": False,
            **special_map,
        }
        files = {
            "vocab.txt": "".join(token + "\n" for token in self._tokens),
            "tokenizer_config.json": json.dumps(config, indent=2),
            "special_tokens_map.json": json.dumps(special_map, indent=2),
        }
        try:
            directory.mkdir(parents=True, exist_ok=True)
            for file_name, content in files.items():
                atomic_write_text(directory / file_name, content)
        except OSError as error:
            raise ClozelmError(f"cannot write tokenizer to {directory}: {error.strerror}") from None
        return directory

    def save_pretrained(self, out_dir) -> None:
        """vocab.txt and the configs transformers' BertTokenizer reads."""
        self.save(out_dir)


# ---------------------------------------------------------------------------------------
# Where the tokenizers library (0.23) and Python 3.11's unicodedata (Unicode 14) disagree.
# Measured over every code point; tests/test_wordpiece.py checks them all again.

# Format characters (Cf) added after tokenizers' category table: kept, not removed.
_TOKENIZERS_KEEPS_FORMAT_CHARS = "0890-0891 08E2 110CD 13430-13438"

# Nonspacing marks (Mn) unknown to tokenizers' table: kept when accents are stripped.
_TOKENIZERS_KEEPS_MARKS = """
07FD 0898-089F 08CA-08E1 09FE 0AFA-0AFF 0B55 0C04 0C3C 0D00 0D3B-0D3C 0D81 0EBA 180F
1885-1886 1ABF-1ACE 1DF6-1DFB A82C A8C5 A8FF A9BD 10D24-10D27 10EAB-10EAC 10F46-10F50
10F82-10F85 11070 11073-11074 110C2 111C9 111CF 1123E 1133B 11438-1143F 11442-11444 11446
1145E 1182F-11837 11839-1183A 1193B-1193C 1193E 11943 119D4-119D7 119DA-119DB 119E0
11A01-11A0A 11A33-11A38 11A3B-11A3E 11A47 11A51-11A56 11A59-11A5B 11A8A-11A96 11A98-11A99
11C30-11C36 11C38-11C3D 11C3F 11C92-11CA7 11CAA-11CB0 11CB2-11CB3 11CB5-11CB6 11D31-11D36
11D3A 11D3C-11D3D 11D3F-11D45 11D47 11D90-11D91 11D95 11D97 11EF3-11EF4 16F4F 16FE4
1CF00-1CF2D 1CF30-1CF46 1E000-1E006 1E008-1E018 1E01B-1E021 1E023-1E024 1E026-1E02A
1E130-1E136 1E2AE 1E2EC-1E2EF 1E944-1E94A
"""

# HANUNOO SIGN PAMUDPOD was a nonspacing mark before Unicode 14 made it Mc.
_TOKENIZERS_EXTRA_MARKS = "1734"

# DIVES AKURU VOWEL SIGN O: no decomposition in tokenizers' NFD table.
_TOKENIZERS_NO_DECOMPOSITION = "\U00011938"

# Punctuation (P*) unknown to tokenizers' table: not split off as words.
_TOKENIZERS_NOT_PUNCTUATION = """
061D 09FD 0A76 0C77 0C84 1B7D-1B7E 2E43-2E4F 2E52-2E5D 10EAD 10F55-10F59 10F86-10F89
1144B-1144F 1145A-1145B 1145D 11660-1166C 116B9 1183B 11944-11946 119E2 11A3F-11A46
11A9A-11A9C 11A9E-11AA2 11C41-11C45 11C70-11C71 11EF7-11EF8 11FFF 12FF1-12FF2 16E97-16E9A
16FE2 1E95E-1E95F
"""

# Characters that were punctuation in tokenizers' older table (now So and Mn).
_TOKENIZERS_EXTRA_PUNCTUATION = "166D 111C9"

# Capital letters newer than Unicode 14 that tokenizers lowercases and Python 3.11 cannot.
_TOKENIZERS_NEWER_LOWERCASE = {
    0x1C89: 0x1C8A, 0xA7CB: 0x0264, 0xA7CC: 0xA7CD, 0xA7CE: 0xA7CF, 0xA7D2: 0xA7D3,
    0xA7D4: 0xA7D5, 0xA7DA: 0xA7DB, 0xA7DC: 0x019B,
    **{capital: capital + 0x20 for capital in range(0x10D50, 0x10D66)},
    **{capital: capital + 0x1B for capital in range(0x16EA0, 0x16EB9)},
}  # fmt: skip
