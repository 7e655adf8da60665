"""clozelm: GPT-2 and BERT from scratch, built around giving back the hidden tokens of a text.

Names are imported on first use, so `import clozelm.model` or `import clozelm.tokenizers` loads only
what it needs (the network does not pull in the tasks, the CLI or the server).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "load": "api", "fill": "api", "generate": "api", "attention_map": "api", "train": "api", "evaluate": "api", "study": "api", "embedded_models": "api",
    "ClozelmError": "errors",
    "Model": "loaded", "ModelInfo": "loaded",
    "ModelConfig": "model", "Transformer": "model", "Output": "model", "KVCache": "model",
    "TrainConfig": "training", "StudyConfig": "study",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'clozelm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
