"""Attention maps of one text: per-layer [H, T, T] probabilities, readable tokens, words, sinks.

Shapes: L layers, H heads, T tokens, W words. A "word" groups the pieces of one word of the text so
that word-level views can sum attention *to* a word over its pieces and average attention *from* it.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

import numpy as np
import regex
import torch

from ..errors import ClozelmError

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
    """[..., T, T] -> [..., W, W]: attention TO a word is the sum over its pieces, FROM a word the mean."""
    membership = np.zeros((len(word_of_token), n_words), dtype=np.float32)
    membership[np.arange(len(word_of_token)), word_of_token] = 1.0
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


def encode_for_model(model, text: str, add_special_tokens: bool = True, max_tokens: int | None = None) -> Encoded:
    """Token ids of `text` framed the way the model was trained ([CLS] ... [SEP]; <|endoftext|> first for
    clozelm BPE models), with readable pieces and their character spans; too long text keeps its start."""
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise ClozelmError("this model has no tokenizer attached; load it with clozelm.load(directory) "
                           "from a directory that has tokenizer files")
    if not isinstance(text, str) or not text.strip():
        raise ClozelmError("the text is empty: give at least one word")
    limit = model.config.n_positions if max_tokens is None else min(max_tokens, model.config.n_positions)
    start, end = _frame(model, tok) if add_special_tokens else ([], [])
    if len(start) + len(end) >= limit:
        raise ClozelmError(f"a context of {limit} positions leaves no room for text")
    if tok.name == "wordpiece":
        ids = tok.encode(text)
        pieces = [tok.id_to_token(i) for i in ids]
        spans = _wordpiece_spans(text, pieces, set(tok.special_tokens))
        special_ids = set(tok.special_tokens.values())
        readable = pieces
    else:
        ids = tok.encode(text, allowed_special="all")
        spans, readable = _bpe_spans(text, ids, tok)
        special_ids = set(tok.special_tokens.values())
    if not ids:
        raise ClozelmError("the text is empty after tokenization (only characters the tokenizer drops)")
    notes = []
    room = limit - len(start) - len(end)
    kept_text = text
    if len(ids) > room:
        cut = max((s[1] for s in spans[:room] if s is not None), default=0)
        kept_text = text[:cut]
        tail = " ".join(kept_text.split()[-4:])
        notes.append(f"the text is {len(ids)} tokens but the model reads at most {limit} positions: kept the first "
                     f"{room} tokens (characters 0-{cut} of {len(text)}, ending '...{tail}')")
        ids, spans, readable = ids[:room], spans[:room], readable[:room]
    frame_tokens = [_special_name(tok, i) for i in start], [_special_name(tok, i) for i in end]
    return Encoded(
        ids=start + ids + end,
        tokens=frame_tokens[0] + readable + frame_tokens[1],
        spans=[None] * len(start) + spans + [None] * len(end),
        special=[True] * len(start) + [i in special_ids for i in ids] + [True] * len(end),
        text=kept_text,
        notes=notes,
    )


def _frame(model, tok) -> tuple[list[int], list[int]]:
    """Special tokens around the text, as clozelm's fill code frames inputs for each kind of model."""
    if tok.name == "wordpiece":
        return [tok.cls_id] if tok.cls_id is not None else [], [tok.sep_id] if tok.sep_id is not None else []
    first = tok.bos_id if tok.bos_id is not None else tok.eos_id
    if first is None:
        return [], []
    if model.config.causal:
        return [first], []
    return [first], [tok.eos_id] if tok.eos_id is not None else []


def _special_name(tok, token_id: int) -> str:
    return tok.id_to_token(token_id)


def _bpe_spans(text: str, ids: list[int], tok) -> tuple[list[tuple[int, int]], list[str]]:
    """Exact character spans from token bytes. A character belongs to the token holding its first byte,
    so a token that is only the tail of a multi-byte character gets an empty span (shown as its bytes)."""
    data = text.encode("utf-8")
    char_at_byte = np.zeros(len(data) + 1, dtype=np.int64)
    position = 0
    for index, char in enumerate(text):
        width = len(char.encode("utf-8"))
        char_at_byte[position:position + width] = index
        position += width
    char_at_byte[len(data)] = len(text)
    starts_char = np.zeros(len(data) + 1, dtype=bool)  # byte opens a character
    position = 0
    for char in text:
        starts_char[position] = True
        position += len(char.encode("utf-8"))
    starts_char[len(data)] = True

    spans, readable = [], []
    offset = 0
    for token_id in ids:
        piece = tok.token_bytes(token_id)
        if data[offset:offset + len(piece)] != piece:
            raise ClozelmError("internal error: token bytes do not spell the text")  # encode/decode disagree
        end = offset + len(piece)
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
        readable.append(shown if shown else "".join(f"\\x{b:02x}" for b in piece))
        offset = end
    return spans, readable


def _fold(text: str) -> str:
    """Case- and accent-insensitive spelling used to find WordPiece pieces in the original text."""
    decomposed = unicodedata.normalize("NFD", text.lower())
    return "".join(c for c in decomposed if unicodedata.category(c) != "Mn")


def _wordpiece_spans(text: str, pieces: list[str], specials: set[str]) -> list[tuple[int, int] | None]:
    """Character spans of WordPiece pieces, found by matching folded pieces against the folded text.

    WordPiece lowercases, strips accents and drops control characters, so pieces are not substrings
    of the text; folding both sides the same way makes them so, character by character.
    """
    folded_chars, origin = [], []
    for index, char in enumerate(text):
        for folded in _fold(char):
            folded_chars.append(folded)
            origin.append(index)
    folded = "".join(folded_chars)
    spans: list[tuple[int, int] | None] = []
    cursor = 0
    for piece in pieces:
        if piece == "[UNK]":  # the unknown word: the next run of non-space characters
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

def run_attention(model, ids: list[int] | list[list[int]]) -> list[np.ndarray]:
    """Per-layer attention probabilities for token ids: [H, T, T] (one sequence) or [B, H, T, T]."""
    batch = torch.as_tensor(ids, dtype=torch.long)
    single = batch.dim() == 1
    if single:
        batch = batch[None]
    was_training = getattr(model, "training", False)
    if was_training:
        model.eval()  # attention dropout would make the maps random
    try:
        with torch.inference_mode():
            try:
                out = model(batch.to(_device_of(model)), attentions=True)
            except TypeError as error:
                if "attentions" not in str(error):
                    raise
                raise ClozelmError("this model does not return attention probabilities "
                                   "(its forward takes no attentions=True)") from None
    finally:
        if was_training:
            model.train()
    attentions = getattr(out, "attentions", None)
    if not attentions or any(a is None for a in attentions):
        raise ClozelmError("this model does not return attention probabilities (its output has no attentions)")
    layers = [a.float().cpu().numpy() for a in attentions]
    return [a[0] for a in layers] if single else layers


def _device_of(model):
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def attention_map(model, text: str, *, add_special_tokens: bool = True, max_tokens: int | None = None,
                  model_name: str | None = None) -> HeadMaps:
    """Attention of every layer and head of `model` (a Transformer or a name for clozelm.load) on `text`.

    The text is framed as the model expects ([CLS] ... [SEP] for BERT, <|endoftext|> first for clozelm's
    BPE models; add_special_tokens=False feeds the bare text). Text longer than the context keeps its
    start; HeadMaps.notes says what was kept.
    """
    if isinstance(model, (str,)) or hasattr(model, "__fspath__"):
        from ..loading import cached_load
        model_name = model_name or str(model)
        model = cached_load(str(model))
    enc = encode_for_model(model, text, add_special_tokens=add_special_tokens, max_tokens=max_tokens)
    layers = run_attention(model, enc.ids)
    word_of_token, words = group_words(enc.text, enc.spans, enc.tokens)
    return HeadMaps(
        attentions=[np.ascontiguousarray(a, dtype=np.float32) for a in layers],
        tokens=enc.tokens, token_ids=enc.ids, spans=enc.spans, word_of_token=word_of_token, words=words,
        special=enc.special, causal=bool(model.config.causal), text=enc.text,
        model_name=model_name or _name_of(model), notes=enc.notes,
    )


def _name_of(model) -> str:
    source = getattr(model, "_source_dir", None)
    if source is not None:
        # Hub snapshots and packaged weights often live in a folder called just "model".
        return f"{source.parent.name}/{source.name}" if source.name in ("model", "weights") else source.name
    cfg = model.config
    return f"{cfg.family} {cfg.n_layer}x{cfg.n_head}"
