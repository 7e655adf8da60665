"""clozelm: GPT-2 and BERT from scratch, built around giving back the hidden tokens of a text."""

from .errors import ClozelmError
from .loading import embedded_models, load
from .model import KVCache, ModelConfig, Output, Transformer

__all__ = ["load", "embedded_models", "ClozelmError", "ModelConfig", "Transformer", "Output", "KVCache"]
__version__ = "0.1.0"
