"""Give back the hidden parts of a text: `clozelm.fill("The ___ sat on the mat.")`.

The model decides the method (`Model.fill_method`): a causal model searches with the text after each blank
in view (`causal.py`), a model trained with fill-in-the-middle uses its prefix/suffix/middle format, and a
masked LM unmasks jointly (`bidirectional.py`). Answers are distinct texts, best first, each with the
string of every blank and a log-probability score comparable within one model. Options: `FillOptions`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import torch

from ..errors import ClozelmError
from ..model.device import has_bf16_units
from .bidirectional import BidirectionalFiller
from .blanks import Blank, Template, parse
from .causal import CausalFiller
from .options import FillOptions

__all__ = ["fill", "Answer", "FillOptions", "parse", "method_for", "Blank", "Template"]

# Tokens a method adds around the text: the start token (causal), or the start/end or FIM sentinel tokens.
_OVERHEAD = {"causal": 1, "fim": 4, "masked": 4}
# Room a `___` word keeps when a long text is cut to a window, unless max_word_tokens is given: the same for
# every method, so one text keeps one window under each method's defaults.
_WORD_ROOM = 4


@dataclass
class Answer:
    text: str  # the whole reconstructed text
    blanks: list[str]  # what each blank hides, in order
    score: float  # log-probability (causal: of the whole text; fim_judge='both'/'fim': see cloze/causal.py; MLM: word-l2r PLL)
    notes: list[str] = field(default_factory=list)  # what the caller should know (say, the text was cut to fit)

    def to_dict(self) -> dict:
        return asdict(self)


def _fill_method(model) -> str:
    method = getattr(model, "fill_method", None)
    if method is None:
        raise ClozelmError(f"fill takes a loaded model (clozelm.load(...) or clozelm.Model(network, tokenizer)), "
                           f"not {type(model).__name__}")
    return method


def method_for(model) -> str:
    """How `fill` reads this model: "causal", "fim" or "bidirectional" (a masked LM)."""
    method = _fill_method(model)
    return "bidirectional" if method == "masked" else method


def fill(text: str, model, top: int = 5, options: FillOptions | None = None, **kw) -> list[Answer]:
    """Top `top` distinct reconstructions of `text`, best first, from a loaded `model` (clozelm.Model).

    Options come as `options=FillOptions(...)`, as keywords (`width=16`), or both (keywords win).
    """
    opts = FillOptions.of(options, **kw)
    method = _fill_method(model)
    tok = model.tokenizer
    if tok is None:
        raise ClozelmError("this model has no tokenizer; load it from a directory with tokenizer files")
    if top < 1:
        raise ClozelmError("--top must be at least 1")
    if model.config.head is None:
        raise ClozelmError("this model has no language-model head (an encoder such as BertModel): "
                           "fill needs GPT-2 LM or BERT masked-LM weights")
    template = parse(text)
    if method == "masked" and tok.mask_id is None:
        raise ClozelmError("this masked LM's tokenizer has no mask token")
    segments = [tok.encode(s) for s in template.segments]
    segments, notes = _fit_context(model, template, segments, _OVERHEAD[method], opts.max_word_tokens or _WORD_ROOM)
    opts = opts.for_method(method)
    opts = replace(opts, beam=max(top, opts.beam))
    filler = BidirectionalFiller(model, tok, opts) if method == "masked" else CausalFiller(model, tok, opts)
    # bf16 matrix products (AMX on recent Xeons, tensor cores on GPUs) make the search several times faster;
    # LayerNorm and softmax stay in fp32 under autocast, and scores stay comparable within one setting. Where bf16
    # is emulated (GPUs older than Ampere, CPUs with AVX2 alone) it would be slower than fp32.
    bf16 = opts.precision == "bf16" and has_bf16_units(model.device)
    with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16):
        results = filler.fill(segments, list(template.blanks))
    answers, seen = [], set()
    for score, fills in results:
        strings = [tok.blank_text(ids) for ids in fills]
        full = _render(template, strings)
        if full in seen:
            continue
        seen.add(full)
        answers.append(Answer(full, strings, round(score, 4), list(notes)))
        if len(answers) == top:
            break
    return answers


def _render(template: Template, strings: list[str]) -> str:
    parts = [template.segments[0]]
    for blank, s, seg in zip(template.blanks, strings, template.segments[1:]):
        parts += [" " if blank.lead_space else "", s, seg]
    return "".join(parts)


def _fit_context(model, template: Template, segments: list[list[int]], overhead: int, word_room: int):
    """Keep a window around the blanks when the text is longer than the model's context; say so in a note."""
    n_ctx = model.config.n_positions
    blank_tokens = sum(word_room if b.kind == "word" else b.n_tokens for b in template.blanks)
    if blank_tokens + overhead > n_ctx:
        raise ClozelmError(f"the blanks need {blank_tokens} tokens but the model's context holds {n_ctx}")
    total = sum(map(len, segments)) + blank_tokens + overhead
    if total <= n_ctx:
        return segments, []
    inner = sum(map(len, segments[1:-1])) if len(segments) > 2 else 0
    room = n_ctx - blank_tokens - overhead - inner
    if room < 0:
        raise ClozelmError(f"the text between the first and last blank is longer than the model's {n_ctx}-token context")
    left_keep = min(len(segments[0]), room // 2 + max(0, room // 2 - len(segments[-1])))
    right_keep = min(len(segments[-1]), room - left_keep)
    before, after = len(segments[0]) - left_keep, len(segments[-1]) - right_keep
    segments = [segments[0][before:], *segments[1:-1], segments[-1][:right_keep]] if len(segments) > 1 else segments
    kept = sum(map(len, segments))
    left_out = " or ".join(f"the {side} {n}" for side, n in (("first", before), ("last", after)) if n)
    note = (f"text longer than the model's {n_ctx}-token context: the model read the {kept} tokens of text nearest "
            f"the blanks, not {left_out}")
    return segments, [note]
