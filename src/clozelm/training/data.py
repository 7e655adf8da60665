"""Tokenize a text corpus once into memory-mapped token shards, then serve fixed-length windows.

Layout of a token cache (one directory per corpus + tokenizer, under RUN_DIR/tokens/KEY/):

    train-00000.bin, train-00001.bin, ...   raw little-endian uint16 (vocab <= 65536) or uint32 ids
    valid-00000.bin, ...                    the held-out split
    meta.json                               written last: its presence means the cache is complete

Documents are separated by blank lines in the input files; each document's tokens are followed by
the tokenizer's separator (`<|endoftext|>`, or `[SEP]` for WordPiece). The held-out split takes
every `valid_every`-th document (document 0, valid_every, 2*valid_every, ...), counted over all
input files in order, so it is deterministic, spread over every source, and never empty for a
non-empty corpus. KEY hashes the files' bytes, the tokenizer's vocabulary and these settings, so
`--resume` (or a second run in the same directory) reuses the shards instead of re-tokenizing.

Files are streamed (a batch of documents at a time) and shards are appended to on disk, so
corpora larger than RAM work; reading uses np.memmap and touches only the windows asked for.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..errors import ClozelmError
from ..files import atomic_write_text

FORMAT_VERSION = 1
SHARD_TOKENS = 1 << 27  # 128M tokens (256 MB as uint16) per shard file
ENCODE_BATCH_CHARS = 1 << 20  # documents are tokenized in ~1 MB batches (tiktoken threads over a batch)
READ_CHUNK = 1 << 20


# ---------------------------------------------------------------- inputs


def check_text_file(path: Path) -> tuple[str, str | None]:
    """(sha256 of the bytes, None) for a UTF-8 text file, or (digest, reason) when it is not one.

    One streaming pass: hashing for the cache key and validating the encoding cost one read. A NUL
    byte marks a binary file even when it happens to decode.
    """
    digest = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = 0
    reason = None
    try:
        with open(path, "rb") as f:
            while chunk := f.read(READ_CHUNK):
                digest.update(chunk)
                if reason is None:
                    nul = chunk.find(b"\0")
                    if nul >= 0:
                        reason = f"binary data (NUL byte at offset {offset + nul})"
                    else:
                        try:
                            decoder.decode(chunk)
                        except UnicodeDecodeError as e:
                            reason = f"not UTF-8 (invalid byte at offset {offset + e.start})"
                offset += len(chunk)
        if reason is None:
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                reason = "not UTF-8 (truncated character at the end)"
    except OSError as e:
        raise ClozelmError(f"cannot read {path}: {e.strerror}") from None
    return digest.hexdigest(), reason


def iter_documents(path: Path) -> Iterator[str]:
    """The blank-line separated documents of a UTF-8 file, streamed line by line."""
    lines: list[str] = []
    with open(path, encoding="utf-8", newline=None) as f:
        for line in f:
            if line.strip():
                lines.append(line)
            elif lines:
                yield "".join(lines).rstrip("\n")
                lines = []
    if lines:
        yield "".join(lines).rstrip("\n")


# ---------------------------------------------------------------- tokenizer facts


def separator_id(tok) -> int | None:
    """The token written between documents: the tokenizer's end-of-text (<|endoftext|>; [SEP] for WordPiece)."""
    return tok.eos_id


def encode_plain(tok, texts: list[str]) -> list[list[int]]:
    """Ordinary text, where a literal "<|endoftext|>" in a book is just characters, not a special token."""
    return tok.encode_batch(texts, specials=False)


def tokenizer_fingerprint(tok) -> str:
    """A hash of everything that decides the ids a tokenizer produces.

    The bytes hashed are those earlier versions hashed, so the token caches (and runs) made by them stay
    valid: a merge table and each id's bytes where the tokenizer has merges (byte-level BPE), each id's
    vocabulary entry otherwise, plus the normalisation flags a tokenizer has.
    """
    h = hashlib.sha256()
    h.update(f"{tok.kind}|{tok.vocab_size}".encode())
    h.update(json.dumps(sorted(tok.special_tokens.items())).encode())
    for flag in ("lowercase", "strip_accents", "tokenize_chinese_chars"):
        if hasattr(tok, flag):
            h.update(f"{flag}={getattr(tok, flag)}".encode())
    merges = getattr(tok, "merges", None)
    if merges is not None:  # the merge order decides the ids as much as the vocabulary does
        for left, right in merges:
            h.update(len(left).to_bytes(2, "little") + left + len(right).to_bytes(2, "little") + right)
        spell = tok.token_bytes
    else:
        spell = lambda i: tok.piece(i).encode()  # noqa: E731
    for i in range(tok.vocab_size):
        try:
            piece = spell(i)
        except Exception:  # ids may have holes (HF vocabularies)
            piece = b"\xff<hole>"
        h.update(len(piece).to_bytes(4, "little") + piece)
    return h.hexdigest()


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


# ---------------------------------------------------------------- writing


class ShardWriter:
    """Appends token ids to NAME-00000.bin, NAME-00001.bin, ... rolling over every `shard_tokens`."""

    def __init__(self, directory: Path, name: str, dtype: np.dtype, shard_tokens: int = SHARD_TOKENS):
        self.directory, self.name, self.dtype, self.shard_tokens = directory, name, dtype, shard_tokens
        self.sizes: list[int] = []
        self._file = None

    def _open_next(self):
        if self._file is not None:  # on disk before meta.json says the cache is complete
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        self._file = open(self.directory / f"{self.name}-{len(self.sizes):05d}.bin", "wb")
        self.sizes.append(0)

    def write(self, ids: np.ndarray) -> None:
        ids = ids.astype(self.dtype, copy=False)
        while len(ids):
            if self._file is None or self.sizes[-1] >= self.shard_tokens:
                self._open_next()
            room = self.shard_tokens - self.sizes[-1]
            part, ids = ids[:room], ids[room:]
            self._file.write(part.tobytes())
            self.sizes[-1] += len(part)

    def close(self) -> list[dict]:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
        return [{"file": f"{self.name}-{i:05d}.bin", "tokens": n} for i, n in enumerate(self.sizes)]


@dataclass
class CorpusFiles:
    train: list[Path]
    valid: list[Path] | None  # None: hold out every valid_every-th document of `train`
    valid_every: int = 50  # 0 = no held-out split


@dataclass
class CheckedCorpus:
    """The usable files of a corpus with the sha256 of each: reading them once both checks and hashes them."""
    train: list[tuple[Path, str]]
    valid: list[tuple[Path, str]] | None
    valid_every: int


def _usable(paths: list[Path], skip_bad_files: bool, warn: Callable[[str], None]) -> list[tuple[Path, str]]:
    good = []
    for path in paths:
        digest, problem = check_text_file(path)
        if problem is None:
            good.append((path, digest))
        elif skip_bad_files:
            warn(f"clozelm: warning: skipping {path}: {problem}")
        else:
            raise ClozelmError(f"{path} is {problem}; remove it or pass --skip-bad-files")
    return good


def check_corpus(corpus: CorpusFiles, skip_bad_files: bool = False,
                 log: Callable[[str], None] | None = None) -> CheckedCorpus:
    """Every file read once: a one-line error for one that is not UTF-8 text (or a warning and skip)."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    train = _usable(corpus.train, skip_bad_files, log)
    valid = _usable(corpus.valid, skip_bad_files, log) if corpus.valid is not None else None
    if not train:
        raise ClozelmError("no usable training files (all were skipped)")
    if corpus.valid is not None and not valid:
        raise ClozelmError("no usable --valid files (all were skipped)")
    return CheckedCorpus(train, valid, corpus.valid_every)


def token_cache_key(corpus: CheckedCorpus, tok) -> str:
    """The token cache's key: what the tokens depend on (the files' contents, the tokenizer, the split), so that
    a resume can tell changed inputs before it tokenizes anything."""
    sep = separator_id(tok)
    if sep is None:
        raise ClozelmError("the tokenizer has no document separator token (<|endoftext|> or [SEP])")
    train, valid = corpus.train, corpus.valid
    key_source = {
        "format": FORMAT_VERSION, "tokenizer": tokenizer_fingerprint(tok), "separator": sep,
        "train": [d for _, d in train], "valid": None if valid is None else [d for _, d in valid],
        "valid_every": 0 if valid is not None else corpus.valid_every,
    }
    return hashlib.sha256(json.dumps(key_source, sort_keys=True).encode()).hexdigest()[:20]


def build_token_cache(cache_root: Path, corpus: CorpusFiles | CheckedCorpus, tok, skip_bad_files: bool = False,
                      log: Callable[[str], None] | None = None) -> "TokenData":
    """Tokenize `corpus` into shards under cache_root/KEY/, or reuse them if that KEY is complete."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if not isinstance(corpus, CheckedCorpus):
        corpus = check_corpus(corpus, skip_bad_files, log)
    key = token_cache_key(corpus, tok)
    sep = separator_id(tok)
    train, valid = corpus.train, corpus.valid
    directory = cache_root / key
    if (directory / "meta.json").is_file():
        return TokenData.open(directory)
    if directory.exists():  # a tokenization that was interrupted: start it again
        shutil.rmtree(directory)
    directory.mkdir(parents=True)

    dtype = token_dtype(tok.vocab_size)
    writers = {"train": ShardWriter(directory, "train", dtype), "valid": ShardWriter(directory, "valid", dtype)}
    n_docs = {"train": 0, "valid": 0}
    total_bytes = sum(p.stat().st_size for p, _ in train + (valid or []))
    log(f"tokenizing {len(train) + len(valid or [])} file(s), {total_bytes / 1e6:.1f} MB -> {directory}")

    def flush(batch: list[tuple[str, str]]) -> None:
        if not batch:
            return
        for (split, _), ids in zip(batch, encode_plain(tok, [text for _, text in batch])):
            writers[split].write(np.array(ids + [sep], dtype=np.int64))
            n_docs[split] += 1
        batch.clear()

    def feed(files, choose_split) -> None:
        batch, chars = [], 0
        for path, _ in files:
            for text in iter_documents(path):
                batch.append((choose_split(), text))
                chars += len(text)
                if chars >= ENCODE_BATCH_CHARS:
                    flush(batch)
                    chars = 0
        flush(batch)

    counter = iter(range(1 << 62))
    if valid is not None:
        feed(train, lambda: "train")
        feed(valid, lambda: "valid")
    elif corpus.valid_every > 0:
        feed(train, lambda: "valid" if next(counter) % corpus.valid_every == 0 else "train")
    else:
        feed(train, lambda: "train")
    meta = {
        "format": FORMAT_VERSION, "key": key, "dtype": dtype.str, "vocab_size": tok.vocab_size, "separator": sep,
        "documents": n_docs, "train": writers["train"].close(), "valid": writers["valid"].close(),
        "sources": {"train": [str(p) for p, _ in train], "valid": None if valid is None else [str(p) for p, _ in valid]},
    }
    atomic_write_text(directory / "meta.json", json.dumps(meta, indent=1) + "\n")
    data = TokenData.open(directory)
    log(f"tokenized: {data.train.n_tokens:,} training tokens ({n_docs['train']} documents), "
        f"{data.valid.n_tokens:,} held-out tokens ({n_docs['valid']} documents)")
    return data


# ---------------------------------------------------------------- reading


class TokenSplit:
    """One split as a list of memory-mapped shards, cut into windows.

    Window i of length L starts `stride` tokens after window i-1 (stride = sequence length, so a
    causal window of T+1 tokens overlaps the next by one token and every token is a target once).
    Windows never cross shard boundaries.
    """

    def __init__(self, shards: list[np.ndarray]):
        self.shards = [s for s in shards if len(s)]
        self.n_tokens = sum(len(s) for s in self.shards)

    def windows(self, length: int, stride: int) -> "Windows":
        return Windows(self, length, stride)


class Windows:
    def __init__(self, split: TokenSplit, length: int, stride: int):
        self.split, self.length, self.stride = split, length, stride
        counts = [max(0, (len(s) - length) // stride + 1) for s in split.shards]
        self.starts = np.cumsum([0] + counts)  # window index where each shard begins

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(i)
        shard = int(np.searchsorted(self.starts, i, side="right")) - 1
        start = (i - int(self.starts[shard])) * self.stride
        return np.asarray(self.split.shards[shard][start:start + self.length], dtype=np.int64)


@dataclass
class TokenData:
    directory: Path
    meta: dict
    train: TokenSplit
    valid: TokenSplit

    @property
    def key(self) -> str:
        return self.meta["key"]

    @classmethod
    def open(cls, directory: Path) -> "TokenData":
        try:
            meta = json.loads((directory / "meta.json").read_text())
            dtype = np.dtype(meta["dtype"])

            def split(name):
                shards = []
                for s in meta[name]:
                    n = s["tokens"]
                    shards.append(np.memmap(directory / s["file"], dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype))
                return TokenSplit(shards)

            return cls(directory, meta, split("train"), split("valid"))
        except (OSError, ValueError, KeyError) as e:
            raise ClozelmError(f"token cache {directory} is damaged ({e}); delete it to re-tokenize") from None
