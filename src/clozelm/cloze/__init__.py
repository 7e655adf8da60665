"""Give back the hidden parts of a text: `clozelm.fill("The ___ sat on the mat.")`.

The model decides the method: a causal model searches with the text after each blank in view
(`causal.py`), a model trained with fill-in-the-middle uses its prefix/suffix/middle format, and a
masked LM unmasks jointly (`bidirectional.py`). Answers are distinct texts, best first, each with the
string of every blank and a log-probability score comparable within one model.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field

import torch

from ..errors import ClozelmError
from .bidirectional import BidirectionalFiller
from .blanks import Blank, Template, parse
from .causal import CausalFiller

__all__ = ["fill", "Answer", "parse", "method_for"]


@dataclass
class Answer:
    text: str  # the whole reconstructed text
    blanks: list[str]  # what each blank hides, in order
    score: float  # log-probability (causal: of the whole text; fim_judge='both'/'fim': see cloze/causal.py; MLM: word-l2r PLL)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def method_for(model) -> str:
    if not model.config.causal:
        return "bidirectional"
    tok = model.tokenizer
    fim_tokens = {"<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"}
    if model.config.extra.get("objective") == "fim" and fim_tokens <= set(getattr(tok, "special_tokens", {})):
        return "fim"
    return "causal"


def fill(text: str, model="default", top: int = 5, **options) -> list[Answer]:
    """Top `top` distinct reconstructions of `text`, best first. `model`: a name, path or loaded model."""
    from ..loading import cached_load
    model = cached_load(model) if isinstance(model, str) else model
    if model.tokenizer is None:
        raise ClozelmError("this model has no tokenizer; load it from a directory with tokenizer files")
    if top < 1:
        raise ClozelmError("--top must be at least 1")
    if model.config.head is None:
        raise ClozelmError("this model has no language-model head (an encoder such as BertModel): "
                           "fill needs GPT-2 LM or BERT masked-LM weights")
    template = parse(text)
    method = method_for(model)
    tok = model.tokenizer
    if method == "bidirectional" and tok.mask_id is None:
        raise ClozelmError("this masked LM's tokenizer has no mask token")
    segments = [tok.encode(s) for s in template.segments]
    segments, notes = _fit_context(model, template, segments, method, options)
    fim_judge = options.get("fim_judge", "both" if method == "fim" else "causal")
    if fim_judge not in ("causal", "both", "fim"):
        raise ClozelmError(f"fim_judge must be 'causal', 'both' or 'fim', not {fim_judge!r}")
    if fim_judge != "causal" and method != "fim":
        raise ClozelmError(f"fim_judge={fim_judge!r} needs a causal model trained with the fim objective")
    if method == "bidirectional":
        filler = BidirectionalFiller(model, tok, beam=max(top, options.get("beam", 8)),
                                     max_word_pieces=options.get("max_word_pieces", 3))
    else:
        filler = CausalFiller(model, tok, width=options.get("width", 32), max_word_tokens=options.get("max_word_tokens", 4),
                              states=max(top, options.get("states", 8)),
                              lookahead=options.get("lookahead", 256), lookahead_keep=options.get("lookahead_keep", 32),
                              fim_judge=fim_judge)
    # bf16 matrix products (AMX on recent Xeons, tensor cores on GPUs) make the search several times faster;
    # LayerNorm and softmax stay in fp32 under autocast, and scores stay comparable within one setting.
    precision = options.get("precision", "bf16")
    device_type = getattr(model, "device", torch.device("cpu")).type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        results = filler.fill(segments, list(template.blanks))
    answers, seen = [], set()
    for score, fills in results:
        strings = [_blank_string(tok, ids) for ids in fills]
        full = _render(template, strings)
        if full in seen:
            continue
        seen.add(full)
        answers.append(Answer(full, strings, round(score, 4), notes))
        if len(answers) == top:
            break
    return answers


def _blank_string(tok, ids: list[int]) -> str:
    if tok.name == "wordpiece":
        return tok.decode(ids).replace(" ##", "").strip()
    return tok.decode(ids).lstrip(" ")


def _render(template: Template, strings: list[str]) -> str:
    parts = [template.segments[0]]
    for blank, s, seg in zip(template.blanks, strings, template.segments[1:]):
        parts += [" " if blank.lead_space else "", s, seg]
    return "".join(parts)


def _fit_context(model, template, segments, method, options):
    """Keep a window around the blanks when the text is longer than the model's context."""
    n_ctx = model.config.n_positions
    blank_tokens = sum(options.get("max_word_tokens", 4) if b.kind == "word" else b.n_tokens for b in template.blanks)
    overhead = 4 if method != "causal" else 1  # start/end or FIM sentinel tokens
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
    dropped = len(segments[0]) - left_keep + len(segments[-1]) - right_keep
    segments = [segments[0][len(segments[0]) - left_keep:], *segments[1:-1], segments[-1][:right_keep]] if len(segments) > 1 else segments
    note = f"text longer than the model's {n_ctx}-token context: kept a window of {n_ctx} tokens around the blanks ({dropped} tokens dropped)"
    print(f"clozelm: note: {note}", file=sys.stderr)
    return segments, [note]
