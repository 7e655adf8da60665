"""clozelm: GPT-2 and BERT from scratch, built around giving back the hidden tokens of a text."""

from .errors import ClozelmError
from .loading import embedded_models, load
from .model import KVCache, ModelConfig, Output, Transformer


def fill(text: str, model="default", top: int = 5, **options):
    """Top `top` reconstructions of `text` whose blanks are `___` (a word) or `[MASK]` (a token)."""
    from .cloze import fill as _fill
    return _fill(text, model=model, top=top, **options)


def generate(prompt: str, model="default", **options) -> str:
    """The continuation of `prompt` (options: max_new_tokens, temperature, top_k, top_p, repetition_penalty,
    seed, stop, beams)."""
    from .generation import generate as _generate
    from .loading import cached_load
    return _generate(cached_load(model) if isinstance(model, str) else model, prompt, **options)


__all__ = ["load", "fill", "generate", "embedded_models", "ClozelmError", "ModelConfig", "Transformer", "Output",
           "KVCache"]
__version__ = "0.1.0"
