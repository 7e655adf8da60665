"""Which tokens may open or continue a hidden word, as boolean masks over the vocabulary.

The tokenizer knows (`Tokenizer.token_classes`); these two functions keep the older tuple form.
"""

from __future__ import annotations

from ..tokenizers.base import WORD_PUNCTUATION  # noqa: F401  (its old home)


def word_masks(tokenizer, vocab_size: int, lead_space: bool):
    """(first-token mask, continuation mask, any-ordinary-token mask) for a `___` blank."""
    classes = tokenizer.token_classes(vocab_size)
    return classes.word_start(lead_space), classes.word_continue, classes.ordinary


def token_masks(tokenizer, vocab_size: int, lead_space: bool):
    """(first-token mask, later-token mask) for `[MASK]` blanks: any ordinary token, the first one carrying
    the space the user wrote before the blank where tokens carry spaces (BPE " cat")."""
    classes = tokenizer.token_classes(vocab_size)
    return classes.token_start(lead_space), classes.ordinary
