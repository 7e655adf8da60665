"""The one tokenizer interface. Code outside tokenizers/ uses only these names and never asks which kind of
tokenizer it holds; a new kind (say a Llama-family BPE read from a GGUF file) subclasses `Tokenizer` and
touches tokenizers/ and loading only.

What a subclass provides: `kind`, `lossless`, `vocab_size`, `special_tokens`, `_encode`, `encode_with_spans`,
`decode`, `token_bytes`, `piece`, `_role_id`, `blank_text`, `_token_classes` and `save_pretrained`. Everything
else here (the `specials` keyword, role ids, FIM ids, framing, the cache of token classes) is shared.
"""

from __future__ import annotations

import unicodedata
import warnings
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, fields

import torch

from clozelm.errors import ClozelmError

# Fill-in-the-middle sentinels (Bavarian et al. 2022), as clozelm's `fim` objective and the FIM fill spell them.
FIM_PREFIX = "<|fim_prefix|>"
FIM_SUFFIX = "<|fim_suffix|>"
FIM_MIDDLE = "<|fim_middle|>"
FIM_TOKENS = (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE)

ROLES = ("bos", "eos", "pad", "mask", "unk", "cls", "sep")

# Characters that may sit inside a word: don't, twenty-one.
WORD_PUNCTUATION = "'’-"

# Marks a keyword the caller did not pass (None and () are meaningful values of the old keywords).
UNSET = object()


def is_wordish(text: str) -> bool:
    """Letters, digits, combining marks (the vowel signs of Hindi, Tamil or Thai words) and in-word punctuation
    only, with at least one letter or digit."""
    return (bool(text) and all(c.isalnum() or c in WORD_PUNCTUATION or unicodedata.category(c)[0] == "M" for c in text)
            and any(c.isalnum() for c in text))


@dataclass(frozen=True)
class FimIds:
    """Ids of the fill-in-the-middle sentinels."""

    prefix: int
    suffix: int
    middle: int


@dataclass(frozen=True, eq=False)
class TokenClasses:
    """Boolean masks over a model's vocabulary (ids the tokenizer does not use are False everywhere).

    A hidden word `___` opens with a `word_start_*` token and goes on with `word_continue` tokens; a hidden
    token `[MASK]` is any `ordinary` token, opening with a space where the text had one (`token_start_*`).
    """

    word_start_spaced: torch.Tensor  # opens a word after a space (BPE " cat"; WordPiece "cat")
    word_start_bare: torch.Tensor  # opens a word glued to the text before it (BPE "cat"; WordPiece "cat")
    word_continue: torch.Tensor  # continues a word (BPE "ting", partial UTF-8 bytes; WordPiece "##ting")
    ordinary: torch.Tensor  # any token but the special ones
    spaced: torch.Tensor  # ordinary tokens whose text starts with a space (see `Tokenizer.token_bytes`)
    token_start_spaced: torch.Tensor  # what may fill a [MASK] written after a space
    token_start_bare: torch.Tensor  # what may fill a [MASK] glued to the text before it

    def word_start(self, lead_space: bool) -> torch.Tensor:
        return self.word_start_spaced if lead_space else self.word_start_bare

    def to(self, device: torch.device | str) -> "TokenClasses":
        """The same masks on `device` (where the model's logits are)."""
        return TokenClasses(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def token_start(self, lead_space: bool) -> torch.Tensor:
        return self.token_start_spaced if lead_space else self.token_start_bare


def deprecated_keyword(old: str, new: str) -> None:
    """Warn about an old keyword of encode/encode_batch (called from inside the method the user called)."""
    warnings.warn(f"{old} is deprecated: use {new}", DeprecationWarning, stacklevel=3)


class Tokenizer(ABC):
    """A tokenizer as the rest of clozelm sees it.

    Special tokens by role are `bos_id`, `eos_id`, `pad_id`, `mask_id`, `unk_id`, `cls_id`, `sep_id` (None when
    the vocabulary has none) and `fim_ids`. `kind` ("bpe", "wordpiece") is for display only: no code outside
    tokenizers/ branches on it.
    """

    kind: str = ""
    lossless: bool = False  # decode(encode(t)) == t for every text t
    special_tokens: dict[str, int]  # special token string -> id

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids (one more than the largest id), special tokens included."""

    @property
    def name(self) -> str:
        """The old name of `kind`."""
        return self.kind

    # ------------------------------------------------------------------ encoding

    def encode(self, text: str, *, specials: bool | Collection[str] = False) -> list[int]:
        """Token ids of `text`.

        specials=True: special-token strings written in the text ("<|endoftext|>", "[MASK]") become their ids;
        specials=False: they are encoded as ordinary text; a collection of special-token strings: only those.
        """
        return self._encode(text, self._allowed_specials(specials))

    def encode_batch(self, texts: Iterable[str], *, specials: bool | Collection[str] = False) -> list[list[int]]:
        allowed = self._allowed_specials(specials)
        return [self._encode(text, allowed) for text in texts]

    @abstractmethod
    def _encode(self, text: str, allowed: frozenset[str]) -> list[int]:
        """Token ids of `text`, where only the special tokens in `allowed` are matched."""

    @abstractmethod
    def encode_with_spans(self, text: str, *, specials: bool | Collection[str] = True):
        """(ids, spans, pieces): spans[i] = (start, end) character offsets of token i in `text` (None where a
        token has none); pieces[i] = a readable string for token i (for views and tables)."""

    def _allowed_specials(self, specials: bool | Collection[str]) -> frozenset[str]:
        if isinstance(specials, bool):
            return frozenset(self.special_tokens) if specials else frozenset()
        if specials is None:
            return frozenset()
        if isinstance(specials, str):  # a lone string is one token name, not a set of characters
            specials = (specials,)
        allowed = frozenset(specials)
        unknown = allowed.difference(self.special_tokens)
        if unknown:
            raise ClozelmError(f"not special tokens of this vocabulary: {', '.join(sorted(unknown))}")
        return allowed

    # ------------------------------------------------------------------ decoding and display

    @abstractmethod
    def decode(self, ids) -> str:
        """The text of a token sequence."""

    @abstractmethod
    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a token adds to a text; a streaming decoder joins these."""

    @abstractmethod
    def piece(self, token_id: int) -> str:
        """The token as its vocabulary writes it ("Ġcat", "##ing", "[MASK]")."""

    def pieces(self, ids) -> list[str]:
        if hasattr(ids, "tolist"):  # numpy arrays and torch tensors
            ids = ids.tolist()
        return [self.piece(i) for i in ids]

    def id_to_token(self, token_id: int) -> str:
        """The old name of `piece`."""
        return self.piece(token_id)

    # ------------------------------------------------------------------ special tokens by role

    @abstractmethod
    def _role_id(self, role: str) -> int | None:
        """The id of the special token playing `role` (one of ROLES), or None."""

    bos_id = property(lambda self: self._role_id("bos"), doc="opens a text (None: the vocabulary has none)")
    eos_id = property(lambda self: self._role_id("eos"), doc="ends a text or document")
    pad_id = property(lambda self: self._role_id("pad"), doc="fills unused positions of a batch")
    mask_id = property(lambda self: self._role_id("mask"), doc="a hidden token (masked LMs)")
    unk_id = property(lambda self: self._role_id("unk"), doc="stands for what the vocabulary cannot spell")
    cls_id = property(lambda self: self._role_id("cls"), doc="opens a text read both ways (BERT's [CLS])")
    sep_id = property(lambda self: self._role_id("sep"), doc="closes a text read both ways (BERT's [SEP])")

    @property
    def fim_ids(self) -> FimIds | None:
        """The FIM sentinels, or None unless the vocabulary has all three."""
        ids = [self.special_tokens.get(token) for token in FIM_TOKENS]
        return None if None in ids else FimIds(*ids)

    # ------------------------------------------------------------------ framing

    def frame_tokens(self, *, causal: bool) -> tuple[list[int], list[int]]:
        """(start, end): the special tokens a model of this vocabulary reads around a text.

        Causal: [bos], or failing that [eos] (GPT-2's <|endoftext|> opens a document), before the text and
        nothing after. Bidirectional: [cls] ... [sep] (BERT); a vocabulary without them (clozelm's BPE masked
        LMs, trained on documents delimited by <|endoftext|>) uses [eos] on both sides.
        """
        if causal:
            start = self.bos_id if self.bos_id is not None else self.eos_id
            return ([] if start is None else [start]), []
        start = self.cls_id if self.cls_id is not None else self.eos_id
        end = self.sep_id if self.sep_id is not None else self.eos_id
        return ([] if start is None else [start]), ([] if end is None else [end])

    def prompt_prefix(self) -> list[int]:
        """The tokens this vocabulary's own tokenizer puts before any text it encodes, as Hugging Face's
        `tokenizer(text)` does (Llama 3's BOS); none for GPT-2's and clozelm's BPE or BERT's WordPiece."""
        return []

    def frame(self, ids: Sequence[int], *, causal: bool) -> list[int]:
        """start + ids + end (see `frame_tokens`)."""
        start, end = self.frame_tokens(causal=causal)
        return [*start, *ids, *end]

    # ------------------------------------------------------------------ blanks

    @abstractmethod
    def blank_text(self, ids: Sequence[int]) -> str:
        """What a run of hidden tokens spells as the text of a blank (no leading space)."""

    def token_classes(self, vocab_size: int) -> TokenClasses:
        """Which tokens may open or continue a hidden word or token, as masks over `vocab_size` ids (the
        model's vocabulary, which may be larger than the tokenizer's). Computed once per size."""
        cache = self.__dict__.setdefault("_token_classes_cache", {})
        if vocab_size not in cache:
            cache[vocab_size] = self._token_classes(vocab_size)
        return cache[vocab_size]

    @abstractmethod
    def _token_classes(self, vocab_size: int) -> TokenClasses:
        """The masks `token_classes` caches."""

    # ------------------------------------------------------------------ saving

    @abstractmethod
    def save_pretrained(self, out_dir) -> None:
        """Write the tokenizer's files, atomically, in the layout transformers opens."""


__all__ = ["Tokenizer", "FimIds", "TokenClasses", "FIM_TOKENS", "FIM_PREFIX", "FIM_SUFFIX", "FIM_MIDDLE", "ROLES",
           "WORD_PUNCTUATION", "is_wordish"]
