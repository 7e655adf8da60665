"""Every option of `fill`, with its default, in one place: `FillOptions` checks itself when made.

    fill(text, model, options=FillOptions(width=16))     or     fill(text, model, width=16)

A misspelt or out-of-range option is a one-line ClozelmError naming it. Two options used to have a second
name; the old names (`states`, `max_word_pieces`) still work for a release, with a DeprecationWarning.
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass, fields, replace

from ..errors import ClozelmError

METHODS = ("causal", "fim", "masked")
FIM_JUDGES = ("causal", "both", "fim")
PRECISIONS = ("bf16", "fp32")

# Old name -> the one name it now has.
OLD_NAMES = {"states": "beam", "max_word_pieces": "max_word_tokens"}

# Defaults that depend on how the model fills (`Model.fill_method`); None in FillOptions means "this".
_METHOD_DEFAULTS = {
    "causal": {"max_word_tokens": 4, "fim_judge": "causal"},
    "fim": {"max_word_tokens": 4, "fim_judge": "both"},
    "masked": {"max_word_tokens": 3, "fim_judge": "causal"},
}


@dataclass(frozen=True)
class FillOptions:
    """How hard `fill` searches, and how it judges candidates.

    beam             partial answers kept from one blank to the next (causal, FIM) and hypotheses kept while
                     unmasking (masked LM); at least `top`
    width            causal, FIM: candidate tokens kept at each step of a blank's beam
    max_word_tokens  most tokens a `___` word may take (None: 4 for causal and FIM models, 3 for masked LMs,
                     whose word pieces are each predicted with all the others hidden)
    follow_window    causal, FIM: known tokens after a blank that judge its candidates
    screen_window    causal, FIM: known tokens after a blank that first screen its candidates (0: no screen);
                     the `screen_keep` best are then judged on `follow_window` (FIM: with the FIM reading)
    screen_keep      causal, FIM: candidates the screen passes on
    lookahead        causal, FIM: first tokens (best by the left context) also scored with the next known token
    lookahead_keep   causal, FIM: how many of those the look-ahead adds to the `width` best
    fim_judge        FIM models: "both" (default: the FIM and left-to-right readings, averaged), "fim" or
                     "causal" (left-to-right alone, as for any causal model); None: the model's default
    precision        "bf16" (default: autocast matrix products, several times faster; fp32 where bf16 has no
                     units: GPUs older than Ampere, CPUs without AMX or AVX-512 BF16) or "fp32"
    """

    beam: int = 8
    width: int = 32
    max_word_tokens: int | None = None
    follow_window: int = 12
    screen_window: int = 4
    screen_keep: int = 16
    lookahead: int = 256
    lookahead_keep: int = 32
    fim_judge: str | None = None
    precision: str = "bf16"

    def __post_init__(self) -> None:
        for name, low in (("beam", 1), ("width", 1), ("max_word_tokens", 1), ("follow_window", 0),
                          ("screen_window", 0), ("screen_keep", 1), ("lookahead", 0), ("lookahead_keep", 0)):
            value = getattr(self, name)
            if value is None and name == "max_word_tokens":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ClozelmError(f"fill option {name} must be an integer >= {low}, not {value!r}")
        if self.fim_judge is not None and self.fim_judge not in FIM_JUDGES:
            raise ClozelmError(f"fim_judge must be 'causal', 'both' or 'fim', not {self.fim_judge!r}")
        if self.precision not in PRECISIONS:
            raise ClozelmError(f"fill option precision must be 'bf16' or 'fp32', not {self.precision!r}")

    @classmethod
    def of(cls, options: "FillOptions | None" = None, **changes) -> "FillOptions":
        """`options` (or the defaults) with `changes` applied: keyword options as `fill` takes them, old names
        included. An unknown name is a one-line ClozelmError."""
        if options is not None and not isinstance(options, FillOptions):
            raise ClozelmError(f"options must be a FillOptions, not {type(options).__name__}")
        known = [f.name for f in fields(cls)]
        for old, new in OLD_NAMES.items():
            if old in changes:
                warnings.warn(f"fill option {old} is deprecated: use {new}", DeprecationWarning, stacklevel=3)
                if new in changes:
                    raise ClozelmError(f"fill options {old} and {new} are one option: give only {new}")
                changes[new] = changes.pop(old)
        for name in changes:
            if name not in known:
                close = difflib.get_close_matches(name, known + list(OLD_NAMES), n=1)
                hint = f"; did you mean {close[0]}?" if close else f" (options: {', '.join(known)})"
                raise ClozelmError(f"unknown fill option {name!r}{hint}")
        return replace(options or cls(), **changes)

    def for_method(self, method: str) -> "FillOptions":
        """These options with the defaults of `method` ("causal", "fim", "masked") filled in, checked against it."""
        if method not in METHODS:
            raise ClozelmError(f"fill method must be one of {', '.join(METHODS)}, not {method!r}")
        defaults = {name: value for name, value in _METHOD_DEFAULTS[method].items() if getattr(self, name) is None}
        resolved = replace(self, **defaults)
        if resolved.fim_judge != "causal" and method != "fim":
            raise ClozelmError(f"fim_judge={resolved.fim_judge!r} needs a causal model trained with the fim objective")
        return resolved


__all__ = ["FillOptions", "FIM_JUDGES", "PRECISIONS", "OLD_NAMES"]
