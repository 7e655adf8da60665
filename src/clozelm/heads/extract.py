"""Attention maps of one text: per-layer [H, T, T] probabilities, readable tokens, words, sinks.

Shapes: L layers, H heads, T tokens, W words. A "word" groups the pieces of one word of the text so
that word-level views can sum attention *to* a word over its pieces and average attention *from* it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import regex
import torch

from ..errors import ClozelmError
from ..loaded import Model

# A word for grouping pieces: letters/digits with inner apostrophes ("don't", "o'clock"), or one
# symbol. Only used to decide which pieces belong together; the pieces themselves come from the model.
_WORD = regex.compile(r"[\p{L}\p{N}\p{M}_]+(?:['’][\p{L}\p{N}\p{M}_]+)*|[^\s\p{L}\p{N}\p{M}_]")


@dataclass
class HeadMaps:
    """Attention of every head of a model on one text.

    attentions[l][h, i, j] is how much token i attends to token j in layer l, head h (rows sum to 1;
    for a causal model everything right of the diagonal is 0).
    """

    attentions: list[np.ndarray]  # per layer [H, T, T] float32
    tokens: list[str]  # readable pieces: bytes decoded, a leading space is a real space
    token_ids: list[int]
    spans: list[tuple[int, int] | None]  # character span of each token in `text`; None for added specials
    word_of_token: list[int]  # index into `words` for each token
    words: list[str]
    special: list[bool]  # [CLS], [SEP], <|endoftext|>, ...: tokens that are not text
    causal: bool
    text: str  # the text the tokens cover (the start of the input when it was truncated)
    model_name: str = "model"
    notes: list[str] = field(default_factory=list)  # e.g. what was kept of a too long text

    @property
    def n_layers(self) -> int:
        return len(self.attentions)

    @property
    def n_heads(self) -> int:
        return self.attentions[0].shape[0] if self.attentions else 0

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def sinks(self) -> list[bool]:
        """Tokens a "sink-aware" view hides: the first token and every special token ([CLS]/[SEP]/eos)."""
        return [i == 0 or s for i, s in enumerate(self.special)]

    def head(self, layer: int, head: int, words: bool = False, hide_sinks: bool = False):
        """(matrix [n, n], row labels) for one head, optionally word-level and/or with sinks removed.

        With hide_sinks the attention to sink tokens is dropped and each row renormalised; the matrix
        then sums to less than n rows only where a row attended to nothing but sinks.
        """
        self._check_head(layer, head)
        matrix = self.attentions[layer][head]
        if hide_sinks:
            matrix = hide_sink_columns(matrix, np.asarray(self.sinks))[0]
        if words:
            return word_level(matrix, np.asarray(self.word_of_token), len(self.words)), list(self.words)
        return matrix, list(self.tokens)

    def _check_head(self, layer: int, head: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise ClozelmError(f"layer {layer} does not exist: this model has layers 0..{self.n_layers - 1}")
        if not 0 <= head < self.n_heads:
            raise ClozelmError(f"head {head} does not exist: this model has heads 0..{self.n_heads - 1}")

    def to_html(self, path=None, compare: "HeadMaps | None" = None) -> str:
        """The interactive page (head view, model view) as a string; also written to `path` if given."""
        from .render import write_file
        from .views import render_page
        page = render_page([self] if compare is None else [self, compare])
        if path is not None:
            write_file(path, page)
        return page

    def _repr_html_(self) -> str:
        from .views import notebook_html
        return notebook_html([self])


def hide_sink_columns(matrix: np.ndarray, sinks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero the columns of sink tokens and renormalise rows. Returns (matrix, mass removed per row)."""
    removed = matrix[..., sinks].sum(-1)
    kept = matrix.copy()
    kept[..., sinks] = 0.0
    remaining = 1.0 - removed
    # A row that attended only to sinks has nothing left to show: leave it at zero, not NaN.
    scale = np.where(remaining > 1e-9, 1.0 / np.maximum(remaining, 1e-9), 0.0)
    return (kept * scale[..., None]).astype(np.float32), removed.astype(np.float32)


def word_level(matrix: np.ndarray, word_of_token: np.ndarray, n_words: int) -> np.ndarray:
    """[..., T, T] -> [..., W, W]: attention TO a word is the sum over its pieces, FROM a word the mean.

    A token whose word is -1 belongs to no word ([CLS]/[SEP] against a parser's words): it is left out both
    ways. Extra leading dimensions ([L, H, ...]) are kept.
    """
    word_of_token = np.asarray(word_of_token, dtype=np.int64)
    membership = np.zeros((len(word_of_token), n_words), dtype=np.float32)
    tokens = np.flatnonzero(word_of_token >= 0)
    membership[tokens, word_of_token[tokens]] = 1.0
    pieces_per_word = membership.sum(0)
    to_words = matrix @ membership  # [..., T, W]
    return ((membership / np.maximum(pieces_per_word, 1.0)).T @ to_words).astype(np.float32)


# ---------------------------------------------------------------------------------------------- encoding

@dataclass
class Encoded:
    ids: list[int]
    tokens: list[str]
    spans: list[tuple[int, int] | None]
    special: list[bool]
    text: str  # what the ids cover
    notes: list[str]


def check_model(model) -> Model:
    """`model` if it is a loaded Model with a tokenizer; otherwise say what to pass instead."""
    if isinstance(model, (str, os.PathLike)):
        raise ClozelmError(f"clozelm.heads takes a loaded model, not the name {str(model)!r}: pass "
                           f"clozelm.load({str(model)!r}), or use clozelm.attention_map, which loads by name")
    if not isinstance(model, Model):
        raise ClozelmError("clozelm.heads takes a loaded model (clozelm.load(...) or clozelm.Model(network, "
                           f"tokenizer)), not {type(model).__name__}")
    if model.tokenizer is None:
        raise ClozelmError("this model has no tokenizer attached; load it with clozelm.load(directory) "
                           "from a directory that has tokenizer files")
    return model


def frame_tokens(model: Model, add_special_tokens: bool = True) -> tuple[list[int], list[int]]:
    """The special tokens the model reads around a text, as its tokenizer frames it for this kind of model."""
    if not add_special_tokens:
        return [], []
    start, end = model.tokenizer.frame_tokens(causal=bool(model.config.causal))
    return list(start), list(end)


def structural_ids(tok) -> set[int]:
    """The special tokens that are structure, not text: [CLS], [SEP], <|endoftext|>, ... A [MASK], [UNK] or [PAD]
    in a text stands for a word (a blank, a character the vocabulary lacks): it is no sink and no delimiter,
    unless it is also what starts or ends a text (GPT-2's configuration names <|endoftext|> its BOS, EOS and UNK;
    many name the EOS their PAD)."""
    framing = {tok.bos_id, tok.eos_id, tok.cls_id, tok.sep_id}
    return set(tok.special_tokens.values()) - ({tok.mask_id, tok.unk_id, tok.pad_id} - framing)


def encode_for_model(model: Model, text: str, add_special_tokens: bool = True,
                     max_tokens: int | None = None) -> Encoded:
    """Token ids of `text` framed the way the model was trained ([CLS] ... [SEP]; <|endoftext|> first for
    clozelm BPE models), with readable pieces and their character spans; too long text keeps its start."""
    tok = check_model(model).tokenizer
    if not isinstance(text, str) or not text.strip():
        raise ClozelmError("the text is empty: give at least one word")
    limit = model.config.n_positions if max_tokens is None else min(max_tokens, model.config.n_positions)
    reads = f"a limit of {limit} tokens" if limit < model.config.n_positions else f"the model's {limit} positions"
    start, end = frame_tokens(model, add_special_tokens)
    if len(start) + len(end) >= limit:
        raise ClozelmError(f"no room for text beside the {len(start) + len(end)} framing token(s) within {reads}")
    ids, spans, readable = tok.encode_with_spans(text, specials=True)
    ids, spans, readable = list(ids), list(spans), list(readable)
    special_ids = structural_ids(tok)
    if not ids:
        raise ClozelmError("the text is empty after tokenization (only characters the tokenizer drops)")
    notes = []
    room = limit - len(start) - len(end)
    kept_text = text
    if len(ids) > room:
        cut = max((s[1] for s in spans[:room] if s is not None), default=0)
        kept_text = text[:cut]
        tail = " ".join(kept_text.split()[-4:])
        notes.append(f"the text is {len(ids)} tokens, and {room} fit within {reads}: kept the first {room} tokens "
                     f"(characters 0-{cut} of {len(text)}, ending '...{tail}')")
        ids, spans, readable = ids[:room], spans[:room], readable[:room]
    return Encoded(
        ids=start + ids + end,
        tokens=list(tok.pieces(start)) + readable + list(tok.pieces(end)),
        spans=[None] * len(start) + spans + [None] * len(end),
        special=[True] * len(start) + [i in special_ids for i in ids] + [True] * len(end),
        text=kept_text,
        notes=notes,
    )


def group_words(text: str, spans: list[tuple[int, int] | None], tokens: list[str]) -> tuple[list[int], list[str]]:
    """Assign each token to a word: consecutive tokens whose first visible character lies in the same
    word of the text form one word. A lone space token joins the word after it (GPT-2 splits " 🙂" so);
    added specials and line breaks are words of their own."""
    word_at_char = np.full(len(text) + 1, -1, dtype=np.int64)
    for number, match in enumerate(_WORD.finditer(text)):
        word_at_char[match.start():match.end()] = number
    keys: list[int | None] = []
    for span in spans:
        key = None
        if span is not None:
            # an empty span is a byte fragment of the character at span[0]: it joins that character's word
            chars = range(span[0], span[1]) if span[1] > span[0] else range(span[0], min(span[0] + 1, len(text)))
            visible = [c for c in chars if not text[c].isspace()]
            if visible and word_at_char[visible[0]] >= 0:
                key = int(word_at_char[visible[0]])
        keys.append(key)
    for index in range(len(spans) - 2, -1, -1):
        span = spans[index]
        if keys[index] is None and span is not None and span[1] > span[0] and text[span[0]:span[1]].strip(" ") == "":
            keys[index] = keys[index + 1]

    word_of_token, words, word_spans = [], [], []
    for index, (key, span) in enumerate(zip(keys, spans)):
        if key is None or index == 0 or key != keys[index - 1]:
            words.append(tokens[index])
            word_spans.append(span if span is not None and span[1] > span[0] else None)
        elif span is not None and span[1] > span[0]:
            first = word_spans[-1]
            word_spans[-1] = span if first is None else (first[0], max(first[1], span[1]))
        word_of_token.append(len(words) - 1)
    # A word's text is the text it covers (pieces of a multi-byte character are not readable alone).
    words = [text[s[0]:s[1]].strip() or text[s[0]:s[1]] if s is not None else w for w, s in zip(words, word_spans)]
    return word_of_token, words


# ---------------------------------------------------------------------------------------------- running

def run_attention(model: Model, ids: list[int] | list[list[int]]) -> list[np.ndarray]:
    """Per-layer attention probabilities for token ids: [H, T, T] (one sequence) or [B, H, T, T]."""
    batch = torch.as_tensor(ids, dtype=torch.long)
    single = batch.dim() == 1
    if single:
        batch = batch[None]
    network = model.network
    was_training = network.training
    if was_training:
        network.eval()  # attention dropout would make the maps random
    try:
        with torch.inference_mode():
            try:
                # Through the Model, not the network: a caller's checked_forwards hook can stop long work.
                out = model(batch.to(_device_of(network)), attentions=True)
            except TypeError as error:
                if "attentions" not in str(error):
                    raise
                raise ClozelmError("this model does not return attention probabilities "
                                   "(its forward takes no attentions=True)") from None
    finally:
        if was_training:
            network.train()
    attentions = getattr(out, "attentions", None)
    if not attentions or any(a is None for a in attentions):
        raise ClozelmError("this model does not return attention probabilities (its output has no attentions)")
    layers = [a.float().cpu().numpy() for a in attentions]
    return [a[0] for a in layers] if single else layers


def _device_of(network: torch.nn.Module) -> torch.device:
    try:
        return next(network.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def attention_map(model: Model, text: str, *, add_special_tokens: bool = True, max_tokens: int | None = None,
                  model_name: str | None = None) -> HeadMaps:
    """Attention of every layer and head of a loaded `model` on `text`.

    The text is framed as the model expects ([CLS] ... [SEP] for BERT, <|endoftext|> first for clozelm's
    BPE models; add_special_tokens=False feeds the bare text). Text longer than the context keeps its
    start; HeadMaps.notes says what was kept. `model_name` labels the maps (default: where the model came
    from, or its shape).
    """
    enc = encode_for_model(model, text, add_special_tokens=add_special_tokens, max_tokens=max_tokens)
    layers = run_attention(model, enc.ids)
    word_of_token, words = group_words(enc.text, enc.spans, enc.tokens)
    return HeadMaps(
        attentions=[np.ascontiguousarray(a, dtype=np.float32) for a in layers],
        tokens=enc.tokens, token_ids=enc.ids, spans=enc.spans, word_of_token=word_of_token, words=words,
        special=enc.special, causal=bool(model.config.causal), text=enc.text,
        model_name=model_name or model.label, notes=enc.notes,
    )
