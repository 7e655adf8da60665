"""What each head does: scores for known head roles, a best label per head, and a report.

Scores are averages of attention weights (or of normalised entropy), so each lies in [0, 1]:

    previous    weight from token i to token i-1                      (text; specials excluded)
    next        weight from token i to token i+1, bidirectional only  (text; specials excluded)
    first       weight to the first token ([CLS] or <|endoftext|>): the "sink"
    delimiter   weight to [SEP]/[CLS]/eos/punctuation tokens other than the first, from other tokens
    broad       entropy of the row / log(number of keys it can see): 1 = uniform
    duplicate   weight to the earlier copy of the same token        (random tokens, repeated)
    induction   weight to the token *after* the earlier copy        (random tokens, repeated)

Natural-text scores come from the given text (or a built-in sample) in windows of at most 128 tokens, the
first MAX_WINDOWS of them (1,024 tokens: the rest of a longer text is not read);
duplicate and induction from sequences of random tokens repeated twice, where only copying can help.
"""

from __future__ import annotations

import json
import math
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ClozelmError
from ..loaded import Model
from .extract import check_model, frame_tokens, run_attention, structural_ids

ROLES = ("previous", "next", "first", "delimiter", "broad", "duplicate", "induction")
THRESHOLDS = {"previous": 0.5, "next": 0.5, "first": 0.5, "delimiter": 0.5, "broad": 0.8, "duplicate": 0.3,
              "induction": 0.3}
DESCRIPTIONS = {
    "previous": "mean weight from each token to the token before it",
    "next": "mean weight from each token to the token after it (bidirectional models only)",
    "first": "mean weight to the first token ([CLS] / <|endoftext|>), the usual attention sink",
    "delimiter": "mean weight to [SEP]/[CLS]/end-of-text and punctuation tokens other than the first token",
    "broad": "mean entropy of a row divided by log(keys it can see); 1 = uniform attention",
    "duplicate": "on random tokens repeated twice: mean weight from the 2nd copy to the same token in the 1st",
    "induction": "on random tokens repeated twice: mean weight from the 2nd copy to the token after its 1st occurrence",
}
SHORT = {"previous": "PREV", "next": "NEXT", "first": "FIRST", "delimiter": "DELIM", "broad": "BROAD",
         "duplicate": "DUP", "induction": "INDUCT"}

WINDOW = 128
MAX_WINDOWS = 8
RANDOM_SEQUENCES = 4
RANDOM_LENGTH = 40

# Built-in sample text (written for clozelm): plain prose with commas, quotes and full stops.
SAMPLE_TEXT = """\
The old lighthouse stood at the end of the harbour wall, where the wind never quite stopped. Every evening,
just before dark, the keeper climbed the hundred and twelve steps, lit the lamp, and wrote one line in a
blue notebook: the weather, the ships he had seen, and whether the gulls had been loud. Nobody asked him to
keep the notebook. He kept it because his father had, and because a record, he said, is a kind of promise.

One winter the supply boat was late by nine days. The keeper rationed his tea, mended a torn sail that was
not his, and read the notebook from the first page. "Fog," it said, again and again; "rain"; "a red ship,
very fast"; "nothing". When the boat finally came, the young captain apologised twice and asked whether he
had been lonely. The keeper thought about it, then shook his head. "Not lonely," he said. "Busy remembering."
"""


@dataclass
class RoleReport:
    model_name: str
    causal: bool
    scores: dict[str, np.ndarray]  # role -> [L, H]; NaN where a role does not apply
    labels: list[list[str | None]]  # [L][H] best role passing its threshold, or None
    text_tokens: int = 0
    text_windows: int = 0
    random_sequences: int = 0
    random_length: int = 0
    thresholds: dict[str, float] = field(default_factory=lambda: dict(THRESHOLDS))

    @property
    def n_layers(self) -> int:
        return self.scores["previous"].shape[0]

    @property
    def n_heads(self) -> int:
        return self.scores["previous"].shape[1]

    def heads_with(self, role: str) -> list[tuple[int, int, float]]:
        """(layer, head, score) of every head labelled `role`, best first."""
        found = [(layer, head, float(self.scores[role][layer, head])) for layer in range(self.n_layers)
                 for head in range(self.n_heads) if self.labels[layer][head] == role]
        return sorted(found, key=lambda x: -x[2])

    def to_dict(self) -> dict:
        def clean(array):
            return [[None if math.isnan(v) else round(float(v), 4) for v in row] for row in array]
        return {
            "model": self.model_name, "causal": self.causal, "n_layers": self.n_layers, "n_heads": self.n_heads,
            "measured_on": {"text_tokens": self.text_tokens, "text_windows": self.text_windows,
                            "random_sequences": self.random_sequences, "random_length": self.random_length},
            "thresholds": self.thresholds, "descriptions": DESCRIPTIONS,
            "scores": {role: clean(self.scores[role]) for role in ROLES},
            "labels": self.labels,
            "heads": [{"layer": layer, "head": head, "label": self.labels[layer][head],
                       "scores": {role: (None if math.isnan(self.scores[role][layer, head])
                                         else round(float(self.scores[role][layer, head]), 4)) for role in ROLES}}
                      for layer in range(self.n_layers) for head in range(self.n_heads)],
        }

    def to_markdown(self) -> str:
        L, H = self.n_layers, self.n_heads
        kind = "causal" if self.causal else "bidirectional"
        lines = [f"# Attention head roles: {self.model_name}", "",
                 f"{kind}, {L} layers x {H} heads. Text scores from {self.text_tokens} tokens in "
                 f"{self.text_windows} window(s); duplicate/induction from {self.random_sequences} sequences of "
                 f"{self.random_length} random tokens repeated twice.", "",
                 "## Best label per head", "",
                 "A head gets the role whose score passes its threshold by the widest margin (score / threshold); "
                 "`-` means no role passed.", "",
                 "| layer | " + " | ".join(f"H{h}" for h in range(H)) + " |",
                 "|---:|" + "---|" * H]
        for layer in range(L):
            cells = []
            for head in range(H):
                role = self.labels[layer][head]
                cells.append("-" if role is None else f"{role} {self.scores[role][layer, head]:.2f}")
            lines.append(f"| {layer} | " + " | ".join(cells) + " |")
        lines += ["", "## Heads by role", ""]
        for role in ROLES:
            found = self.heads_with(role)
            shown = ", ".join(f"L{layer}H{head} ({score:.2f})" for layer, head, score in found) or "none"
            lines.append(f"- **{role}** (threshold {self.thresholds[role]}): {shown}")
        lines += ["", "## Scores", ""]
        for role in ROLES:
            lines += [f"### {role}", "", DESCRIPTIONS[role] + ".", ""]
            if np.isnan(self.scores[role]).all():
                lines += ["not measured for this model (a causal model cannot look at the next token)", ""]
                continue
            lines.append("| layer | " + " | ".join(f"H{h}" for h in range(H)) + " |")
            lines.append("|---:|" + "---:|" * H)
            for layer in range(L):
                lines.append(f"| {layer} | " + " | ".join(f"{v:.2f}" for v in self.scores[role][layer]) + " |")
            lines.append("")
        return "\n".join(lines)

    def heatmap_png(self) -> bytes:
        from .render import score_grid_png
        panels = [(SHORT[role], self.scores[role]) for role in ROLES]
        best = np.array([[-1 if r is None else ROLES.index(r) for r in row] for row in self.labels])
        return score_grid_png(panels, best=best, best_names=[SHORT[r] for r in ROLES])

    def write(self, out_dir) -> list[Path]:
        """heads.md, heads.json and heads.png in `out_dir` (created if needed)."""
        from .render import write_file
        out = Path(out_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ClozelmError(f"cannot create {out}: {error.strerror}") from None
        return [write_file(out / "heads.md", self.to_markdown()),
                write_file(out / "heads.json", json.dumps(self.to_dict(), indent=1)),
                write_file(out / "heads.png", self.heatmap_png())]


def best_labels(scores: dict[str, np.ndarray], thresholds: dict[str, float] = THRESHOLDS) -> list[list[str | None]]:
    L, H = scores["previous"].shape
    labels = []
    for layer in range(L):
        row = []
        for head in range(H):
            ratios = {role: scores[role][layer, head] / thresholds[role] for role in ROLES
                      if not math.isnan(scores[role][layer, head]) and scores[role][layer, head] >= thresholds[role]}
            row.append(max(ratios, key=ratios.get) if ratios else None)
        labels.append(row)
    return labels


def _token_texts(tok, ids: list[int]) -> list[str]:
    """What each token spells on its own (a piece of a multi-byte character spells U+FFFD)."""
    return [tok.decode([i]) for i in ids]


def _is_punctuation(text: str) -> bool:
    text = text.strip()
    if text.startswith("##"):
        text = text[2:]
    return bool(text) and all(unicodedata.category(c).startswith("P") for c in text)


class _Sums:
    """Running sums and counts of per-head quantities over rows of many windows."""

    def __init__(self, n_layers: int, n_heads: int):
        self.total = {role: np.zeros((n_layers, n_heads)) for role in ROLES}
        self.count = {role: 0 for role in ROLES}

    def add(self, role: str, layer: int, values: np.ndarray) -> None:  # values [H, rows]
        if values.shape[-1]:
            self.total[role][layer] += values.sum(-1)
            if layer == 0:
                self.count[role] += values.shape[-1]

    def means(self) -> dict[str, np.ndarray]:
        return {role: self.total[role] / self.count[role] if self.count[role] else
                np.full_like(self.total[role], np.nan) for role in ROLES}


def _text_scores(sums: _Sums, layers: list[np.ndarray], special: np.ndarray, delimiter: np.ndarray, causal: bool):
    """Add one framed window's previous/next/first/delimiter/broad rows to `sums`. layers: [H, T, T] each."""
    T = len(special)
    rows = np.arange(1, T)
    prev_rows = np.array([i for i in range(2, T) if not special[i] and not special[i - 1]], dtype=int)
    next_rows = np.array([i for i in range(1, T - 1) if not special[i] and not special[i + 1]], dtype=int)
    delimiter_keys = delimiter.copy()
    delimiter_keys[0] = False  # the first token is the sink score's business
    delimiter_rows = np.array([i for i in range(1, T) if not delimiter[i]], dtype=int)
    visible = np.arange(1, T + 1) if causal else np.full(T, T)
    broad_rows = np.array([i for i in range(T) if visible[i] >= 2], dtype=int)
    for layer, att in enumerate(layers):
        sums.add("previous", layer, att[:, prev_rows, prev_rows - 1])
        if not causal:
            sums.add("next", layer, att[:, next_rows, next_rows + 1])
        sums.add("first", layer, att[:, rows, 0])
        sums.add("delimiter", layer, att[:, delimiter_rows][:, :, delimiter_keys].sum(-1))
        p = att[:, broad_rows]
        entropy = -(p * np.log(np.clip(p, 1e-12, None))).sum(-1)
        sums.add("broad", layer, np.clip(entropy / np.log(visible[broad_rows]), 0.0, 1.0))


def _random_pool(tok, vocab_limit: int) -> np.ndarray:
    """Ordinary token ids to draw random sequences from (no specials, no [unusedN], no lone bytes)."""
    ordinary = np.flatnonzero(tok.token_classes(vocab_limit).ordinary.numpy())
    if not tok.lossless:
        return ordinary.astype(np.int64)
    # A vocabulary that spells every text exactly holds each single byte as a token; most of those
    # (control bytes, pieces of UTF-8 characters) never occur in text.
    pool = np.array([i for i in ordinary if len(tok.token_bytes(int(i))) > 1], dtype=np.int64)
    return pool if len(pool) >= 2 * RANDOM_LENGTH else ordinary.astype(np.int64)  # a tiny vocabulary: bytes too


def head_roles(model: Model, text: str | None = None, *, seed: int = 0, model_name: str | None = None) -> RoleReport:
    """Score every head of a loaded `model` for each role and label it; `text` defaults to a built-in sample."""
    tok = check_model(model).tokenizer
    text = SAMPLE_TEXT if text is None else text
    if not text.strip():
        raise ClozelmError("the text is empty: give at least one sentence")
    cfg = model.config
    causal = bool(cfg.causal)
    start, end = frame_tokens(model)
    room = cfg.n_positions - len(start) - len(end)
    if room < 4:
        raise ClozelmError(f"a context of {cfg.n_positions} positions is too short to score heads")

    ids = tok.encode(text, specials=True)
    if not ids:
        raise ClozelmError("the text is empty after tokenization")
    width = min(WINDOW, room)
    windows = [ids[k:k + width] for k in range(0, len(ids), width)][:MAX_WINDOWS]
    windows = [w for w in windows if len(w) >= 4] or windows[:1]
    special_ids = structural_ids(tok)
    sums = None
    for window in windows:
        framed = start + window + end
        layers = run_attention(model, framed)
        if sums is None:
            sums = _Sums(len(layers), layers[0].shape[0])
        texts = _token_texts(tok, framed)
        special = np.array([i < len(start) or i >= len(start) + len(window) or t in special_ids
                            for i, t in enumerate(framed)])
        delimiter = special | np.array([_is_punctuation(t) for t in texts])
        _text_scores(sums, layers, special, delimiter, causal)
    scores = sums.means()

    # Duplicate and induction heads: random tokens repeated, where only copying predicts anything.
    length = max(2, min(RANDOM_LENGTH, room // 2))
    pool = _random_pool(tok, cfg.vocab_size)
    if len(pool) < length:
        raise ClozelmError(f"the vocabulary has only {len(pool)} ordinary tokens; too few for random sequences")
    rng = np.random.default_rng(seed)
    sequences = [rng.choice(pool, size=length, replace=False).tolist() for _ in range(RANDOM_SEQUENCES)]
    batch = [start + s + s + end for s in sequences]
    layers = run_attention(model, batch)  # [B, H, T, T] per layer
    first_copy = len(start)
    queries = first_copy + length + np.arange(length)  # every token of the second copy
    for layer, att in enumerate(layers):
        duplicate = att[:, :, queries, first_copy + np.arange(length)]  # [B, H, length]
        induction = att[:, :, queries, first_copy + np.arange(length) + 1]
        scores["duplicate"][layer] = duplicate.mean(axis=(0, 2))
        scores["induction"][layer] = induction.mean(axis=(0, 2))

    return RoleReport(model_name=model_name or model.label, causal=causal, scores=scores,
                      labels=best_labels(scores), text_tokens=sum(len(w) for w in windows), text_windows=len(windows),
                      random_sequences=RANDOM_SEQUENCES, random_length=length)

