from .config import PRESETS, ModelConfig
from .transformer import KVCache, Output, Transformer

__all__ = ["ModelConfig", "PRESETS", "Transformer", "Output", "KVCache"]
