"""Byte-level BPE as GPT-2 defines it, with tiktoken as the fast engine.

Two encoders live here and the tests hold them to each other:

* ``ByteBPE.encode`` runs tiktoken's compiled BPE. tiktoken only knows "bytes -> rank" and
  merges the adjacent pair whose *concatenated bytes* have the lowest rank.
* ``ByteBPE.reference_encode`` is a plain reading of the original GPT-2 encoder: it merges the
  adjacent *pair* that comes first in the merges list.

Why the two agree (checked by ``inconsistent_tokens`` and by the tests): tiktoken can only
go astray on a pair whose bytes spell a token although the pair itself is not that token's
merge (say ``a + bc`` where ``abc`` was learned as ``ab + c``). If every token is
*self-consistent* -- the original algorithm, run on the token's own bytes, returns exactly
that token -- such a pair can never appear while the original algorithm is still merging:
the part of the text it covers would have to be segmented exactly as it is in isolation, and
in isolation it ends as one token through its own merge. With merges listed after their
operands and no two merges spelling the same bytes, both algorithms then make the same merges
in the same order. BPE training that applies each merge to the corpus the way the encoder
does produces self-consistent tokens by construction; GPT-2's 50,000 merges are too.
"""

from __future__ import annotations

import functools
import json
import unicodedata
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import regex
import tiktoken
import torch

from clozelm.errors import ClozelmError
from clozelm.files import atomic_write_text, read_text_file
from clozelm.tokenizers.base import UNSET, TokenClasses, Tokenizer, deprecated_keyword, is_wordish

# GPT-2's pre-tokenizer: contractions, letters, digits, other symbols, whitespace. Each piece
# is encoded on its own, so merges never cross these boundaries.
GPT2_SPLIT_PATTERN = (
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)
_GPT2_SPLITTER = regex.compile(GPT2_SPLIT_PATTERN)

VERSION_HEADER = "#version: 0.2"
ENDOFTEXT = "<|endoftext|>"

# Names conventionally used for the special tokens models ask for by role.
_ROLE_DEFAULTS = {
    "eos": (ENDOFTEXT, "</s>", "<|eos|>", "<eos>"),
    "bos": ("<|startoftext|>", "<s>", "<|bos|>", "<bos>"),
    "pad": ("<|pad|>", "[PAD]", "<pad>"),
    "mask": ("<|mask|>", "[MASK]", "<mask>"),
    "unk": ("<|unk|>", "[UNK]", "<unk>"),
}


def _gpt2_byte_order() -> list[int]:
    """Bytes in the order GPT-2 numbers them: the 188 printable ones, then the other 68."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    return printable + [b for b in range(256) if b not in printable]


def _gpt2_byte_symbols() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (space -> 'Ġ', newline -> 'Ċ').

    Printable bytes stand for themselves; the others borrow characters from U+0100 upwards
    so that vocab files never contain whitespace or control characters.
    """
    symbols = {}
    borrowed = 0
    for byte in range(256):
        if 33 <= byte <= 126 or 161 <= byte <= 172 or 174 <= byte <= 255:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + borrowed)
            borrowed += 1
    return symbols


GPT2_BYTE_ORDER = _gpt2_byte_order()
BYTE_TO_SYMBOL = _gpt2_byte_symbols()
SYMBOL_TO_BYTE = {symbol: byte for byte, symbol in BYTE_TO_SYMBOL.items()}


# str.translate tables: decoding bytes as latin-1 gives one char per byte to translate.
_SYMBOL_OF_LATIN1 = {byte: symbol for byte, symbol in BYTE_TO_SYMBOL.items()}
# Maps each symbol back to the latin-1 char of its byte; the 68 chars below 256 that are not
# symbols map to a char latin-1 cannot encode, so that they are rejected like any other.
_LATIN1_OF_SYMBOL = {ord(symbol): chr(byte) for byte, symbol in BYTE_TO_SYMBOL.items()}
for _char in range(256):
    _LATIN1_OF_SYMBOL.setdefault(_char, "\uffff")


def bytes_to_symbols(data: bytes) -> str:
    """Spell raw bytes the way GPT-2 vocab files do."""
    return data.decode("latin-1").translate(_SYMBOL_OF_LATIN1)


def symbols_to_bytes(symbols: str) -> bytes | None:
    """Inverse of ``bytes_to_symbols``; None if a character is not a byte symbol."""
    try:
        return symbols.translate(_LATIN1_OF_SYMBOL).encode("latin-1")
    except UnicodeEncodeError:
        return None


def merges_as_bytes(merges, source: str) -> tuple[list[tuple[bytes, bytes]], set[str]]:
    """Symbol-spelled merges as byte pairs, and the spelling of every ordinary token (the 256 bytes and every
    merge product: symbol spelling is one character per byte, so a product is spelled left + right)."""
    byte_merges = []
    ordinary = {BYTE_TO_SYMBOL[b] for b in range(256)}
    for number, (left, right) in enumerate(merges, start=1):
        left_bytes, right_bytes = symbols_to_bytes(left), symbols_to_bytes(right)
        if left_bytes is None or right_bytes is None:
            raise ClozelmError(f"{source}: merge {number} ({left!r} {right!r}) has a non-byte symbol")
        byte_merges.append((left_bytes, right_bytes))
        ordinary.add(left + right)
    return byte_merges, ordinary


class LoneSurrogateError(ClozelmError, ValueError):
    """Text holds a lone UTF-16 surrogate, which has no UTF-8 encoding."""


def _marks_only(text: str) -> bool:
    return bool(text) and all(unicodedata.category(c)[0] == "M" for c in text)


@functools.lru_cache(maxsize=4096)
def _opens_a_letter(data: bytes) -> bool:
    """Whether `data` are the first bytes of a UTF-8 character that may be a letter: the bytes fix a range of
    code points ("\xe4\xbd": U+4F40-U+4F7F, CJK ideographs), and a letter lies in it. "\xe2\x80" (U+2000-U+203F:
    dashes, quotes) and "\xf0\x9f" (U+1F000-U+1FFFF: emoji) open no word."""
    if not data or not 0xC2 <= data[0] <= 0xF4 or any(not 0x80 <= b <= 0xBF for b in data[1:]):
        return False
    length = 2 if data[0] < 0xE0 else 3 if data[0] < 0xF0 else 4
    if len(data) >= length:
        return False
    point = data[0] & (0x7F >> length)
    for b in data[1:]:
        point = (point << 6) | (b & 0x3F)
    unknown = 6 * (length - len(data))
    low = max(point << unknown, (0x80, 0x800, 0x10000)[length - 2])
    high = min(((point + 1) << unknown) - 1, 0x10FFFF)
    return any(chr(c).isalpha() for c in range(low, high + 1) if not 0xD800 <= c <= 0xDFFF)


def check_encodable(text: str) -> None:
    """Reject text that cannot be written as UTF-8 (a lone surrogate such as '\\ud800').

    tiktoken would silently replace such characters, breaking ``decode(encode(s)) == s``.
    ``isascii`` reads a flag CPython keeps on every str, so ASCII text costs nothing; other
    text pays one UTF-8 encode, about 1% of the encoding time.
    """
    if not isinstance(text, str):
        raise TypeError(f"expected str, got {type(text).__name__}")
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise LoneSurrogateError(
            f"text has a lone surrogate {text[error.start]!r} at position {error.start}; "
            "it cannot be encoded as UTF-8"
        ) from None


def _read_json_object(path: Path, what: str) -> dict:
    text = read_text_file(path, what)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ClozelmError(f"{what} {path} is not valid JSON (line {error.lineno}: {error.msg})")
    if not isinstance(data, dict):
        raise ClozelmError(f"{what} {path} should hold a JSON object")
    return data


def _read_vocab_json(path: Path, what: str) -> dict[str, int]:
    vocab = _read_json_object(path, what)
    for token, token_id in vocab.items():
        if not isinstance(token_id, int) or isinstance(token_id, bool) or token_id < 0:
            raise ClozelmError(f"{what} {path}: token {token!r} has id {token_id!r}, not an int >= 0")
    return vocab


def _read_merges(path: Path, what: str) -> list[tuple[str, str]]:
    merges = []
    # Lines end in \n, \r\n or \r (no byte symbol is a line break, so none hides inside a merge).
    text = read_text_file(path, what).replace("\r\n", "\n").replace("\r", "\n")
    for line_number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line or (line_number == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise ClozelmError(f"{what} {path} line {line_number}: expected two symbols, got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def _token_content(value) -> str | None:
    """HF configs spell a token either as a string or as {"content": ...}."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _read_hf_special_tokens(directory: Path) -> tuple[dict[str, int], dict[str, str]]:
    """Added tokens (content -> id) and role names (eos -> content) from an HF tokenizer dir."""
    added: dict[str, int] = {}
    roles: dict[str, str] = {}
    added_tokens_file = directory / "added_tokens.json"
    if added_tokens_file.is_file():
        added.update(_read_vocab_json(added_tokens_file, "added tokens file"))
    for config_name in ("special_tokens_map.json", "tokenizer_config.json"):
        config_file = directory / config_name
        if not config_file.is_file():
            continue
        config = _read_json_object(config_file, config_name)
        for token_id, entry in (config.get("added_tokens_decoder") or {}).items():
            content = _token_content(entry)
            if content is not None and str(token_id).isdigit():
                added[content] = int(token_id)
        for role in _ROLE_DEFAULTS:
            content = _token_content(config.get(f"{role}_token"))
            if content is not None:
                roles[role] = content
    return added, roles


class ByteBPE(Tokenizer):
    """GPT-2 style byte-level BPE tokenizer.

    Ordinary tokens are byte strings: the 256 single bytes plus one per merge, ranked in that
    order. Special tokens (``<|endoftext|>``...) are matched as whole strings, and only when
    the caller allows them (``specials``); otherwise their text is encoded like any other.
    """

    kind = "bpe"
    lossless = True
    split_pattern = GPT2_SPLIT_PATTERN  # the pre-tokenizer; a subclass may set another one before __init__

    def __init__(
        self,
        merges: Sequence[tuple[bytes, bytes]],
        special_tokens: Mapping[str, int] | None = None,
        token_ids: Mapping[bytes, int] | None = None,
        roles: Mapping[str, str] | None = None,
        source: str = "<memory>",
    ):
        """Build from raw tables.

        ``merges`` are byte pairs in rank order. ``token_ids`` maps each ordinary token's
        bytes to its id; leave it out when ids equal ranks (GPT-2 and our own files):
        single bytes in GPT-2's byte order, then merges, then ``special_tokens``' own ids.
        ``roles`` names the special token playing each role ("eos" -> "<|endoftext|>").
        """
        self.source = source
        self._merges = [(bytes(left), bytes(right)) for left, right in merges]
        self._rank_of_bytes: dict[bytes, int] = {bytes([b]): rank for rank, b in enumerate(GPT2_BYTE_ORDER)}
        self._pair_rank: dict[tuple[bytes, bytes], int] = {}
        for merge_index, (left, right) in enumerate(self._merges):
            self._check_merge(merge_index, left, right)
            self._pair_rank[(left, right)] = merge_index
            self._rank_of_bytes[left + right] = 256 + merge_index
        self._bytes_of_rank = list(self._rank_of_bytes)  # dicts keep insertion (rank) order

        if token_ids is None:
            id_of_rank = list(range(len(self._bytes_of_rank)))
        else:
            id_of_rank = []
            for token in self._bytes_of_rank:
                if token not in token_ids:
                    raise ClozelmError(f"{source}: vocabulary lacks token {bytes_to_symbols(token)!r}")
                id_of_rank.append(token_ids[token])
        self.special_tokens: dict[str, int] = dict(special_tokens or {})

        self._bytes_of_id: dict[int, bytes] = {}
        for token, token_id in zip(self._bytes_of_rank, id_of_rank):
            if token_id in self._bytes_of_id:
                raise ClozelmError(f"{source}: id {token_id} is given to two tokens")
            self._bytes_of_id[token_id] = token
        self._id_of_bytes = {token: token_id for token_id, token in self._bytes_of_id.items()}
        for special, special_id in self.special_tokens.items():
            if not special:
                raise ClozelmError(f"{source}: a special token is the empty string")
            if special_id in self._bytes_of_id:
                raise ClozelmError(f"{source}: special token {special!r} reuses id {special_id}")
            if symbols_to_bytes(special) in self._rank_of_bytes:
                raise ClozelmError(
                    f"{source}: special token {special!r} is spelled like an ordinary token; "
                    "pick a name merges cannot produce, such as <|name|>"
                )
        if len(set(self.special_tokens.values())) != len(self.special_tokens):
            raise ClozelmError(f"{source}: two special tokens share an id")

        self._special_of_id = {i: s for s, i in self.special_tokens.items()}
        # Ids may have holes (HF files); the embedding table needs max id + 1 rows.
        self._vocab_size = 1 + max([*self._bytes_of_id, *self._special_of_id])
        self._build_engine(id_of_rank)
        self._roles = self._resolve_roles(roles or {})
        self._reference_cache: dict[bytes, list[int]] = {}

    def _check_merge(self, merge_index: int, left: bytes, right: bytes) -> None:
        # The engine keys ranks by bytes, so two merges may not spell the same bytes; and the
        # proof that it matches the original (module docstring) needs each merge listed after
        # the merges that make its operands. Real merge tables satisfy both.
        line = f"{self.source}: merge {merge_index + 1} ({bytes_to_symbols(left)!r} + {bytes_to_symbols(right)!r})"
        for operand in (left, right):
            if operand not in self._rank_of_bytes:
                raise ClozelmError(f"{line} uses a token no earlier merge produces")
        if left + right in self._rank_of_bytes:
            raise ClozelmError(f"{line} spells a token that already exists")

    def _build_engine(self, id_of_rank: list[int]) -> None:
        n_ordinary = len(id_of_rank)
        self._ids_are_ranks = id_of_rank == list(range(n_ordinary)) and all(
            special_id >= n_ordinary for special_id in self.special_tokens.values()
        )
        if self._ids_are_ranks:
            engine_specials = dict(self.special_tokens)
            self._id_of_engine_rank = None
            self._engine_rank_of_id = None
        else:
            # Ranks must follow merge order for the engine; ids are whatever the file says.
            specials_by_id = sorted(self.special_tokens.items(), key=lambda item: item[1])
            engine_specials = {s: n_ordinary + k for k, (s, _) in enumerate(specials_by_id)}
            all_ids = id_of_rank + [special_id for _, special_id in specials_by_id]
            self._id_of_engine_rank = np.array(all_ids, dtype=np.int64)
            self._engine_rank_of_id = np.full(self._vocab_size, -1, dtype=np.int64)
            self._engine_rank_of_id[self._id_of_engine_rank] = np.arange(len(all_ids))
        self._engine = tiktoken.Encoding(
            f"clozelm-bpe-{n_ordinary}",
            pat_str=self.split_pattern,
            mergeable_ranks={token: rank for rank, token in enumerate(self._bytes_of_rank)},
            special_tokens=engine_specials,
        )

    def _resolve_roles(self, given: Mapping[str, str]) -> dict[str, int]:
        ids = {}
        for role, candidates in _ROLE_DEFAULTS.items():
            names = [given[role]] if role in given else list(candidates)
            for name in names:
                if name in self.special_tokens:
                    ids[role] = self.special_tokens[name]
                    break
        return ids

    # ------------------------------------------------------------------ loading

    @classmethod
    def _from_symbol_tables(
        cls,
        vocab: Mapping[str, int],
        merges: Sequence[tuple[str, str]],
        added_tokens: Mapping[str, int] | None,
        roles: Mapping[str, str] | None,
        source: str,
    ) -> "ByteBPE":
        """Build from GPT-2 file contents: symbol-spelled vocab and merges."""
        byte_merges, ordinary = merges_as_bytes(merges, source)
        token_ids: dict[bytes, int] = {}
        special_tokens: dict[str, int] = {}
        for token, token_id in vocab.items():
            if token in ordinary:
                token_ids[symbols_to_bytes(token)] = token_id
            else:
                # Neither a byte nor a merge product: BPE can never produce it, so it is a
                # special token matched as a whole string (GPT-2's <|endoftext|>).
                special_tokens[token] = token_id
        for token, token_id in (added_tokens or {}).items():
            if token in ordinary:
                if token_ids.get(symbols_to_bytes(token)) != token_id:
                    raise ClozelmError(f"{source}: added token {token!r} clashes with the vocabulary")
                continue
            if special_tokens.setdefault(token, token_id) != token_id:
                raise ClozelmError(f"{source}: added token {token!r} has two ids")
        return cls(byte_merges, special_tokens, token_ids, roles=roles, source=source)

    @classmethod
    def from_gpt2_files(cls, encoder_json, vocab_bpe) -> "ByteBPE":
        """OpenAI's release format: ``encoder.json`` (token -> id) and ``vocab.bpe`` (merges)."""
        encoder_json, vocab_bpe = Path(encoder_json), Path(vocab_bpe)
        vocab = _read_vocab_json(encoder_json, "encoder file")
        merges = _read_merges(vocab_bpe, "merges file")
        return cls._from_symbol_tables(vocab, merges, None, None, source=str(vocab_bpe.parent))

    @classmethod
    def from_hf_files(cls, vocab_json, merges_txt, added_tokens: dict[str, int] | None = None) -> "ByteBPE":
        """Hugging Face GPT2Tokenizer format: ``vocab.json`` and ``merges.txt``."""
        vocab_json, merges_txt = Path(vocab_json), Path(merges_txt)
        vocab = _read_vocab_json(vocab_json, "vocab file")
        merges = _read_merges(merges_txt, "merges file")
        return cls._from_symbol_tables(vocab, merges, added_tokens, None, source=str(vocab_json.parent))

    @classmethod
    def from_dir(cls, path) -> "ByteBPE":
        """Load from a directory holding either file pair (plus HF special-token configs)."""
        directory = Path(path)
        if not directory.is_dir():
            raise ClozelmError(f"tokenizer directory not found: {directory}")
        added, roles = _read_hf_special_tokens(directory)
        for vocab_name, merges_name in (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt")):
            vocab_file, merges_file = directory / vocab_name, directory / merges_name
            if vocab_file.is_file() and merges_file.is_file():
                vocab = _read_vocab_json(vocab_file, "vocab file")
                merges = _read_merges(merges_file, "merges file")
                return cls._from_symbol_tables(vocab, merges, added, roles, source=str(directory))
        raise ClozelmError(
            f"no byte-level BPE files in {directory}: looked for encoder.json + vocab.bpe "
            "or vocab.json + merges.txt"
        )

    # ------------------------------------------------------------------ encoding

    def _allowed_set(self, allowed_special, specials) -> frozenset[str]:
        """The special tokens to match, from `specials` or the old keyword `allowed_special` ("all", one
        token name, or a collection of names)."""
        if allowed_special is not UNSET:
            specials = True if allowed_special == "all" else allowed_special
        return self._allowed_specials(specials)

    def _ids_from_engine(self, ranks: list[int]) -> list[int]:
        if self._id_of_engine_rank is None:
            return ranks
        return self._id_of_engine_rank[np.asarray(ranks, dtype=np.int64)].tolist()

    def encode(self, text: str, allowed_special=UNSET, *, specials: bool | Collection[str] = False) -> list[int]:
        """Token ids for ``text``; special tokens count only when ``specials`` allows them (True: all of them;
        a collection: those). ``allowed_special`` is the old keyword ("all" or names)."""
        if allowed_special is not UNSET:
            deprecated_keyword("encode(text, allowed_special=...)", "encode(text, specials=True)")
        return self._encode(text, self._allowed_set(allowed_special, specials))

    def _encode(self, text: str, allowed: frozenset[str]) -> list[int]:
        check_encodable(text)
        if allowed:
            ranks = self._engine.encode(text, allowed_special=allowed, disallowed_special=())
        else:
            ranks = self._engine.encode_ordinary(text)
        return self._ids_from_engine(ranks)

    def encode_batch(self, texts: Iterable[str], allowed_special=UNSET, *,
                     specials: bool | Collection[str] = False) -> list[list[int]]:
        """``encode`` for many texts; tiktoken spreads them over threads."""
        if allowed_special is not UNSET:
            deprecated_keyword("encode_batch(texts, allowed_special=...)", "encode_batch(texts, specials=True)")
        texts = list(texts)
        for text in texts:
            check_encodable(text)
        allowed = self._allowed_set(allowed_special, specials)
        if allowed:
            batches = self._engine.encode_batch(texts, allowed_special=allowed, disallowed_special=())
        else:
            batches = self._engine.encode_ordinary_batch(texts)
        return [self._ids_from_engine(ranks) for ranks in batches]

    # ------------------------------------------------------------------ reference

    def _split_on_specials(self, text: str, allowed: frozenset[str]) -> list[tuple[str, bool]]:
        """Text cut into (segment, is_special); the longest special wins where several match."""
        if not allowed:
            return [(text, False)]
        alternatives = "|".join(regex.escape(s) for s in sorted(allowed, key=len, reverse=True))
        segments = []
        position = 0
        for match in regex.finditer(alternatives, text):
            segments.append((text[position : match.start()], False))
            segments.append((match.group(), True))
            position = match.end()
        segments.append((text[position:], False))
        return [(segment, special) for segment, special in segments if segment]

    def _reference_bpe(self, piece: bytes) -> list[int]:
        """The original GPT-2 merge loop on one pre-tokenized piece.

        Repeatedly take the adjacent pair that comes first in the merges list and join every
        non-overlapping occurrence of it, left to right, until no adjacent pair is a merge.
        """
        cached = self._reference_cache.get(piece)
        if cached is not None:
            return cached
        parts = [piece[i : i + 1] for i in range(len(piece))]
        while len(parts) > 1:
            ranked_pairs = [
                (self._pair_rank[pair], pair)
                for pair in zip(parts, parts[1:])
                if pair in self._pair_rank
            ]
            if not ranked_pairs:
                break
            _, (left, right) = min(ranked_pairs)
            joined = []
            i = 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == left and parts[i + 1] == right:
                    joined.append(left + right)
                    i += 2
                else:
                    joined.append(parts[i])
                    i += 1
            parts = joined
        ids = [self._id_of_bytes[part] for part in parts]
        if len(self._reference_cache) > 200_000:
            self._reference_cache.clear()
        self._reference_cache[piece] = ids
        return ids

    def reference_encode(self, text: str, allowed_special=UNSET, *,
                         specials: bool | Collection[str] = False) -> list[int]:
        """Slow, readable port of the original GPT-2 encoder; the fast engine must match it."""
        if allowed_special is not UNSET:
            deprecated_keyword("reference_encode(text, allowed_special=...)", "reference_encode(text, specials=True)")
        check_encodable(text)
        allowed = self._allowed_set(allowed_special, specials)
        ids: list[int] = []
        for segment, is_special in self._split_on_specials(text, allowed):
            if is_special:
                ids.append(self.special_tokens[segment])
                continue
            for piece in regex.findall(self.split_pattern, segment):
                ids.extend(self._reference_bpe(piece.encode("utf-8")))
        return ids

    def inconsistent_tokens(self) -> list[int]:
        """Ids of merge tokens that the original algorithm does not rebuild from their bytes.

        Empty means tiktoken's bytes-rank rule and the original pair-rank rule agree on every
        input (see the module docstring); ``train_bpe`` guarantees it for its vocabularies.
        """
        bad = []
        for token in self._bytes_of_rank[256:]:
            token_id = self._id_of_bytes[token]
            if self._reference_bpe(token) != [token_id]:
                bad.append(token_id)
        return bad

    # ------------------------------------------------------------------ decoding

    def _engine_ranks(self, ids) -> list[int]:
        if hasattr(ids, "tolist"):  # numpy arrays and torch tensors
            ids = ids.tolist()
        ids = list(ids)
        if not ids:
            return ids
        low, high = min(ids), max(ids)
        if low < 0 or high >= self.vocab_size:
            bad = low if low < 0 else high
            raise ClozelmError(f"token id {bad} is outside this vocabulary (0..{self.vocab_size - 1})")
        if self._engine_rank_of_id is None:
            return ids
        ranks = self._engine_rank_of_id[np.asarray(ids, dtype=np.int64)]
        if (ranks < 0).any():
            raise ClozelmError(f"token id {ids[int(np.argmax(ranks < 0))]} is not used by this vocabulary")
        return ranks.tolist()

    def decode_bytes(self, ids) -> bytes:
        """The raw bytes of a token sequence (may end inside a UTF-8 character)."""
        ranks = self._engine_ranks(ids)
        try:
            return self._engine.decode_bytes(ranks)
        except KeyError as error:
            raise ClozelmError(f"token id {error.args[0]} is not used by this vocabulary") from None

    def decode(self, ids) -> str:
        """Text of a token sequence; broken UTF-8 becomes U+FFFD, as in the original."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # ------------------------------------------------------------------ lookups

    def token_bytes(self, i: int) -> bytes:
        if i in self._bytes_of_id:
            return self._bytes_of_id[i]
        if i in self._special_of_id:
            return self._special_of_id[i].encode("utf-8")
        raise ClozelmError(f"token id {i} is not used by this vocabulary")

    def piece(self, i: int) -> str:
        """Vocab-file spelling: ordinary tokens in GPT-2 byte symbols ('Ġthe'), specials as is."""
        if i in self._special_of_id:
            return self._special_of_id[i]
        return bytes_to_symbols(self.token_bytes(i))

    def token_to_id(self, s: str) -> int | None:
        if s in self.special_tokens:
            return self.special_tokens[s]
        token = symbols_to_bytes(s)
        return None if token is None else self._id_of_bytes.get(token)

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return self._vocab_size

    @property
    def merges(self) -> list[tuple[bytes, bytes]]:
        return list(self._merges)

    def _role_id(self, role: str) -> int | None:
        return self._roles.get(role)

    def __repr__(self) -> str:
        return (
            f"ByteBPE(vocab_size={self.vocab_size}, merges={len(self._merges)}, "
            f"special_tokens={sorted(self.special_tokens)}, source={self.source!r})"
        )

    # ------------------------------------------------------------------ spans and blanks

    def encode_with_spans(self, text: str, *, specials: bool | Collection[str] = True):
        """(ids, spans, pieces), the spans exact from the token bytes. A character belongs to the token
        holding its first byte, so a token that is only the tail of a multi-byte character gets an empty
        span, and its piece shows its bytes (\\xNN)."""
        ids = self.encode(text, specials=specials)
        data = text.encode("utf-8")
        char_at_byte = np.zeros(len(data) + 1, dtype=np.int64)
        starts_char = np.zeros(len(data) + 1, dtype=bool)  # byte opens a character
        position = 0
        for index, char in enumerate(text):
            width = len(char.encode("utf-8"))
            char_at_byte[position:position + width] = index
            starts_char[position] = True
            position += width
        char_at_byte[len(data)] = len(text)
        starts_char[len(data)] = True

        spans, readable = [], []
        offset = 0
        for token_id in ids:
            token = self.token_bytes(token_id)
            if data[offset:offset + len(token)] != token:
                raise ClozelmError("internal error: token bytes do not spell the text")  # encode/decode disagree
            end = offset + len(token)
            # first character starting inside [offset, end), up to the first character starting at/after end
            first = offset
            while not starts_char[first]:
                first += 1
            last = end
            while not starts_char[last]:
                last += 1
            if first < end:
                char_start, char_end = int(char_at_byte[first]), int(char_at_byte[last])
            else:  # only continuation bytes: an empty span at the character they belong to
                char_start = char_end = int(char_at_byte[offset])
            spans.append((char_start, char_end))
            shown = text[char_start:char_end]
            readable.append(shown if shown else "".join(f"\\x{b:02x}" for b in token))
            offset = end
        return ids, spans, readable

    def blank_text(self, ids) -> str:
        """The text of the hidden tokens, without the one space the first may carry (" cat" -> "cat"); the
        space before a blank is the template's, and any further spaces are part of what was hidden."""
        text = self.decode(ids)
        return text[1:] if text.startswith(" ") else text

    def _token_classes(self, vocab_size: int) -> TokenClasses:
        start_space = torch.zeros(vocab_size, dtype=torch.bool)  # " word": opens a word after a space
        start_bare = torch.zeros(vocab_size, dtype=torch.bool)  # "word": opens a word glued to the text before
        cont = torch.zeros(vocab_size, dtype=torch.bool)  # continues a word
        ordinary = torch.zeros(vocab_size, dtype=torch.bool)
        spaced = torch.zeros(vocab_size, dtype=torch.bool)
        special = set(self.special_tokens.values())
        for i in range(min(vocab_size, self.vocab_size)):
            if i in special or i not in self._bytes_of_id:  # a special token, or an id the vocabulary does not use
                continue
            raw = self._bytes_of_id[i]
            ordinary[i] = True
            spaced[i] = raw.startswith(b" ")
            # A token may end inside a multi-byte character; judge the characters it does complete. One that only
            # opens a character (a CJK character is often two byte tokens) may open a word: fill keeps the answers
            # that spell a word once their characters are whole.
            body = raw[1:] if raw.startswith(b" ") else raw
            text = body.decode("utf-8", errors="ignore")
            opens = not text and _opens_a_letter(body)
            if raw.startswith(b" "):
                start_space[i] = is_wordish(text) or opens
            else:
                start_bare[i] = is_wordish(text) or opens
                # Pure partial-character bytes continue a word, and so do combining marks alone: GPT-2's pre-tokenizer
                # cuts the vowel signs of "में" from its letter.
                cont[i] = is_wordish(text) or (not text and bool(raw)) or _marks_only(text)
        # A [MASK] carries the space the user wrote before it (" cat"), or none if there was none.
        return TokenClasses(word_start_spaced=start_space, word_start_bare=start_bare, word_continue=cont,
                            ordinary=ordinary, spaced=spaced, token_start_spaced=ordinary & spaced,
                            token_start_bare=ordinary & ~spaced)

    # ------------------------------------------------------------------ saving

    def _vocab_by_spelling(self) -> dict[str, int]:
        entries = [(i, bytes_to_symbols(token)) for i, token in self._bytes_of_id.items()]
        entries += list(self._special_of_id.items())
        return {spelling: i for i, spelling in sorted(entries)}

    def _merge_lines(self) -> str:
        lines = [VERSION_HEADER] + [f"{bytes_to_symbols(l)} {bytes_to_symbols(r)}" for l, r in self._merges]
        return "\n".join(lines) + "\n"

    def _hf_configs(self) -> tuple[dict, dict]:
        role_tokens = {role: self._special_of_id[i] for role, i in self._roles.items()}
        # GPT2Tokenizer defaults bos/eos/unk to <|endoftext|> and would invent that token in a
        # vocabulary without it, so every role is written out, as null when absent.
        eos = role_tokens.get("eos")
        special_map = {
            "bos_token": role_tokens.get("bos", eos),
            "eos_token": eos,
            "unk_token": role_tokens.get("unk", eos),
        }
        for role in ("pad", "mask"):
            if role in role_tokens:
                special_map[f"{role}_token"] = role_tokens[role]
        extra = sorted(set(self.special_tokens).difference(special_map.values()), key=self.special_tokens.get)
        if extra:
            special_map["additional_special_tokens"] = extra
        tokenizer_config = {
            "tokenizer_class": "GPT2Tokenizer",
            "add_prefix_space": False,
            "add_bos_token": False,
            "errors": "replace",
            "clean_up_tokenization_spaces": False,
            **special_map,
            "added_tokens_decoder": {
                str(i): {
                    "content": s,
                    "lstrip": False,
                    "normalized": False,
                    "rstrip": False,
                    "single_word": False,
                    "special": True,
                }
                for s, i in sorted(self.special_tokens.items(), key=lambda item: item[1])
            },
        }
        return {k: v for k, v in special_map.items() if v is not None}, tokenizer_config

    def save(self, out_dir, format: str = "gpt2") -> Path:
        """Write the vocabulary: "gpt2" (encoder.json + vocab.bpe), "hf" or "both"."""
        if format not in ("gpt2", "hf", "both"):
            raise ClozelmError(f"unknown tokenizer format {format!r}; use gpt2, hf or both")
        directory = Path(out_dir)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ClozelmError(f"cannot create {directory}: {error.strerror}") from None
        vocab_json = json.dumps(self._vocab_by_spelling(), ensure_ascii=False)
        merges = self._merge_lines()
        files = {}
        if format in ("gpt2", "both"):
            files["encoder.json"] = vocab_json
            files["vocab.bpe"] = merges
        if format in ("hf", "both"):
            special_map, tokenizer_config = self._hf_configs()
            files["vocab.json"] = vocab_json
            files["merges.txt"] = merges
            files["special_tokens_map.json"] = json.dumps(special_map, indent=2, ensure_ascii=False)
            files["tokenizer_config.json"] = json.dumps(tokenizer_config, indent=2, ensure_ascii=False)
        for file_name, content in files.items():
            # Each file atomically: a crash mid-write must not leave a truncated vocab next to a good one.
            try:
                atomic_write_text(directory / file_name, content)
            except OSError as error:
                raise ClozelmError(f"cannot write {directory / file_name}: {error.strerror}") from None
        return directory

    def save_pretrained(self, out_dir) -> None:
        """Both the GPT-2 (encoder.json, vocab.bpe) and the Hugging Face file names, with the HF configs."""
        self.save(out_dir, format="both")
