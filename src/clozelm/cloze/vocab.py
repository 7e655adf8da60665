"""Which tokens may open or continue a hidden word, per tokenizer family, as boolean masks over the vocab."""

from __future__ import annotations

import functools

import torch


WORD_PUNCTUATION = "'’-"  # may sit inside a word: don't, twenty-one


def _wordish(text: str) -> bool:
    """Letters, digits and in-word punctuation only, with at least one letter or digit."""
    return bool(text) and all(c.isalnum() or c in WORD_PUNCTUATION for c in text) and any(c.isalnum() for c in text)


@functools.lru_cache(maxsize=8)
def _bpe_masks(tokenizer, vocab_size: int):
    start_space = torch.zeros(vocab_size, dtype=torch.bool)  # " word": opens a word after a space
    start_bare = torch.zeros(vocab_size, dtype=torch.bool)  # "word": opens a word glued to the text before
    cont = torch.zeros(vocab_size, dtype=torch.bool)  # continues a word
    any_token = torch.zeros(vocab_size, dtype=torch.bool)
    special = set(tokenizer.special_tokens.values())
    for i in range(min(vocab_size, tokenizer.vocab_size)):
        if i in special:
            continue
        try:
            raw = tokenizer.token_bytes(i)
        except Exception:
            continue  # an id the vocabulary does not use
        any_token[i] = True
        # A token may end inside a multi-byte character; judge the characters it does complete.
        text = raw.decode("utf-8", errors="ignore")
        if raw.startswith(b" "):
            start_space[i] = _wordish(text[1:])
        else:
            start_bare[i] = _wordish(text)
            cont[i] = _wordish(text) or (not text and bool(raw))  # pure partial-character bytes continue
    return start_space, start_bare, cont, any_token


@functools.lru_cache(maxsize=8)
def _wordpiece_masks(tokenizer, vocab_size: int):
    start = torch.zeros(vocab_size, dtype=torch.bool)
    cont = torch.zeros(vocab_size, dtype=torch.bool)
    any_token = torch.zeros(vocab_size, dtype=torch.bool)
    special = set(tokenizer.special_tokens.values())
    for i in range(min(vocab_size, tokenizer.vocab_size)):
        tok = tokenizer.id_to_token(i)
        if i in special or tok.startswith("[unused") or (tok.startswith("[") and tok.endswith("]")):
            continue
        any_token[i] = True
        if tok.startswith("##"):
            cont[i] = True
        elif any(c.isalnum() for c in tok):
            start[i] = True
    return start, start, cont, any_token


def word_masks(tokenizer, vocab_size: int, lead_space: bool):
    """(first-token mask, continuation mask, any-ordinary-token mask) for a blank."""
    if tokenizer.name == "bpe":
        start_space, start_bare, cont, any_token = _bpe_masks(tokenizer, vocab_size)
        return (start_space if lead_space else start_bare), cont, any_token
    start, _, cont, any_token = _wordpiece_masks(tokenizer, vocab_size)
    return start, cont, any_token


def token_masks(tokenizer, vocab_size: int, lead_space: bool):
    """For `[MASK]` blanks: any ordinary token, but with BPE the first one carries the space the user
    wrote before the blank (" cat"), or none if there was no space."""
    _, _, any_token = word_masks(tokenizer, vocab_size, lead_space)
    if tokenizer.name != "bpe":
        return any_token, any_token
    spaced = _spaced(tokenizer, vocab_size)
    return any_token & (spaced if lead_space else ~spaced), any_token


@functools.lru_cache(maxsize=8)
def _spaced(tokenizer, vocab_size: int):
    out = torch.zeros(vocab_size, dtype=torch.bool)
    special = set(tokenizer.special_tokens.values())
    for i in range(min(vocab_size, tokenizer.vocab_size)):
        if i not in special:
            try:
                out[i] = tokenizer.token_bytes(i).startswith(b" ")
            except Exception:
                pass
    return out
