"""Training a byte-level BPE vocabulary the GPT-2 way.

The corpus is cut into pieces with GPT-2's pre-tokenizer, identical pieces are counted once
with their frequency, and merges are learned greedily: join the most frequent adjacent pair,
update the counts of only the pieces that contained it, repeat.

Two rules keep the result exact under both encoders (see ``bpe.py``'s module docstring):
merges are applied to each piece left to right without overlap, exactly as the encoder will
apply them, so every learned token is rebuilt from its own bytes by the original algorithm;
and the trained table is checked for that property before it is returned.
"""

from __future__ import annotations

import heapq
import os
from collections import Counter, defaultdict
from pathlib import Path

import regex

from clozelm.errors import ClozelmError
from clozelm.files import read_text_file
from clozelm.tokenizers.bpe import _GPT2_SPLITTER, GPT2_BYTE_ORDER, ByteBPE, symbols_to_bytes


def _read_training_file(path: Path) -> str:
    text = read_text_file(path, "training file")
    if not text:
        raise ClozelmError(f"training file is empty: {path}")
    return text


def _check_special_tokens(special_tokens) -> list[str]:
    if isinstance(special_tokens, str):
        special_tokens = [special_tokens]
    specials = list(special_tokens)
    for token in specials:
        if not isinstance(token, str) or not token:
            raise ClozelmError(f"special tokens must be non-empty strings, got {token!r}")
    duplicates = sorted({token for token in specials if specials.count(token) > 1})
    if duplicates:
        raise ClozelmError(f"special token listed twice: {duplicates[0]}")
    for token in specials:
        if _spells_a_possible_token(token):
            raise ClozelmError(f"special token {token!r} is spelled like an ordinary token (the vocabulary files "
                               "could not tell them apart); pick a name merges cannot produce, such as <|name|>")
    return specials


def _spells_a_possible_token(special: str) -> bool:
    """Whether the vocabulary files' spelling of an ordinary token could be `special`: a single byte's symbol, the
    symbols of part of a character, or of other text ("Ġhe" spells " he") that the pre-tokenizer keeps in one
    piece, which merges may join into one token. (Text spelled as itself, "hello", is cut out of the training text with the special
    tokens: it is never learned.) Checked before training, so that a long run does not end in the clash; the
    tokenizer checks the trained table too."""
    raw = symbols_to_bytes(special)
    if raw is None:
        return False
    if len(raw) == 1:
        return True
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return True  # part of a character ("ĠâĢ" spells " " and the first two bytes of "’"): merges learn those
    return text != special and _GPT2_SPLITTER.findall(text) == [text]


def count_pieces(texts, special_tokens: list[str]) -> Counter:
    """How often each pre-tokenized piece occurs; special-token text is left out.

    Cutting at special tokens first keeps, for instance, ``<|endoftext|>`` separators from
    teaching merges like ``|>`` that only exist because of the markup.
    """
    pieces: Counter = Counter()
    separator = None
    if special_tokens:
        separator = regex.compile("|".join(regex.escape(s) for s in sorted(special_tokens, key=len, reverse=True)))
    for text in texts:
        segments = separator.split(text) if separator else [text]
        for segment in segments:
            pieces.update(_GPT2_SPLITTER.findall(segment))
    return pieces


def _join_pair(symbols: list[int], left: int, right: int, joined: int) -> list[int]:
    """Replace each (left, right) by ``joined``, scanning left to right without overlap.

    This is the encoder's own rule, which is what makes trained tokens self-consistent.
    """
    out = []
    i = 0
    last = len(symbols) - 1
    while i <= last:
        if i < last and symbols[i] == left and symbols[i + 1] == right:
            out.append(joined)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def learn_merges(pieces: Counter, n_merges: int, min_frequency: int = 2) -> list[tuple[bytes, bytes]]:
    """Up to ``n_merges`` merges learned from piece counts, in rank order.

    Ties between equally frequent pairs go to the pair whose (left bytes, right bytes) sorts
    first, so the result depends only on the counts, never on dict or file order.
    """
    rank_of_byte = {byte: rank for rank, byte in enumerate(GPT2_BYTE_ORDER)}
    token_bytes = [bytes([byte]) for byte in GPT2_BYTE_ORDER]  # indexed by token rank

    # Words are pieces as lists of token ranks; one-byte pieces can never merge.
    words: list[list[int]] = []
    word_counts: list[int] = []
    for piece, count in pieces.items():
        encoded = piece.encode("utf-8")
        if len(encoded) > 1:
            words.append([rank_of_byte[b] for b in encoded])
            word_counts.append(count)

    pair_counts: defaultdict[tuple[int, int], int] = defaultdict(int)
    words_with_pair: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
    for word_index, symbols in enumerate(words):
        count = word_counts[word_index]
        for pair in zip(symbols, symbols[1:]):
            pair_counts[pair] += count
            words_with_pair[pair].add(word_index)

    # Max-heap by count, with stale entries skipped on pop: pushing a fresh entry whenever a
    # count changes is far cheaper than re-sorting all pairs after every merge.
    def heap_entry(pair, count):
        return (-count, token_bytes[pair[0]], token_bytes[pair[1]], pair)

    heap = [heap_entry(pair, count) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[bytes, bytes]] = []
    known_tokens = set(token_bytes)
    while len(merges) < n_merges and heap:
        negative_count, left_bytes, right_bytes, pair = heapq.heappop(heap)
        if pair_counts.get(pair) != -negative_count:
            continue  # stale entry: the count changed after it was pushed
        if -negative_count < min_frequency:
            break
        product = left_bytes + right_bytes
        if product in known_tokens:
            # Impossible when merges are applied the encoder's way (a piece segmented as
            # left, right would already have been joined into the existing token).
            raise RuntimeError(f"BPE training produced {product!r} twice")
        known_tokens.add(product)
        new_token = len(token_bytes)
        token_bytes.append(product)
        merges.append((left_bytes, right_bytes))

        changed: set[tuple[int, int]] = set()
        left, right = pair
        for word_index in words_with_pair.pop(pair):
            symbols = words[word_index]
            joined = _join_pair(symbols, left, right, new_token)
            if len(joined) == len(symbols):
                continue  # the index is lazy: this word lost the pair to an earlier merge
            count = word_counts[word_index]
            for old_pair in zip(symbols, symbols[1:]):
                pair_counts[old_pair] -= count
                changed.add(old_pair)
            for new_pair in zip(joined, joined[1:]):
                pair_counts[new_pair] += count
                words_with_pair[new_pair].add(word_index)
                changed.add(new_pair)
            words[word_index] = joined
        for changed_pair in changed:
            count = pair_counts[changed_pair]
            if count > 0:
                heapq.heappush(heap, heap_entry(changed_pair, count))
            else:
                del pair_counts[changed_pair]
                words_with_pair.pop(changed_pair, None)
    return merges


def train_bpe(
    files,
    vocab_size: int,
    special_tokens=("<|endoftext|>",),
    min_frequency: int = 2,
) -> ByteBPE:
    """Learn a byte-level BPE vocabulary of ``vocab_size`` tokens from UTF-8 text files.

    Ids are ranks: 256 single bytes in GPT-2's byte order, the merges, then the special
    tokens in the order given. Training stops early (a smaller vocabulary) once no pair
    occurs ``min_frequency`` times. Save the result with ``save`` or ``save_pretrained``.
    """
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    paths = [Path(f) for f in files]
    if not paths:
        raise ClozelmError("no training files given")
    specials = _check_special_tokens(special_tokens)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise ClozelmError(f"vocab_size must be an integer, got {vocab_size!r}")
    minimum = 256 + len(specials)
    if vocab_size < minimum:
        raise ClozelmError(
            f"vocab_size {vocab_size} is too small: 256 byte tokens + {len(specials)} special tokens need {minimum}"
        )
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
        raise ClozelmError(f"min_frequency must be an integer >= 1, got {min_frequency!r}")

    texts = (_read_training_file(path) for path in paths)
    pieces = count_pieces(texts, specials)
    merges = learn_merges(pieces, vocab_size - minimum, min_frequency)
    first_special_id = 256 + len(merges)
    tokenizer = ByteBPE(
        merges,
        {token: first_special_id + k for k, token in enumerate(specials)},
        source=f"trained on {', '.join(str(p) for p in paths[:3])}{' ...' if len(paths) > 3 else ''}",
    )
    inconsistent = tokenizer.inconsistent_tokens()
    if inconsistent:
        raise RuntimeError(f"BPE training produced tokens the original algorithm cannot rebuild: {inconsistent[:5]}")
    return tokenizer
