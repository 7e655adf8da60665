"""A loaded model: the network, its tokenizer, and what clozelm knows about it, in one explicit object.

The network (`clozelm.model.Transformer`) knows nothing of tokenizers, files or tasks. What a task needs
besides the network travels here: the tokenizer, where the model came from, and what it was trained to do,
which decides how it fills blanks (`fill_method`).
"""

from __future__ import annotations

import difflib

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ClozelmError
from .model import KVCache, ModelConfig, Output, Transformer
from .tokenizers import Tokenizer

OBJECTIVES = ("clm", "mlm", "fim", "hybrid", "mdlm")
_FORWARD_CHECK: ContextVar[Callable[[], None] | None] = ContextVar("clozelm_forward_check", default=None)


@contextmanager
def checked_forwards(check: Callable[[], None]) -> Iterator[None]:
    """Within this block (in this thread), every forward pass of every Model first calls `check()`.

    The hook by which a caller stops long work (a fill search, a generation, a head report) between forward
    passes: `check` raises, the exception leaves the task, and the model is untouched. The server uses it for
    deadlines and cancelled requests.
    """
    token = _FORWARD_CHECK.set(check)
    try:
        yield
    finally:
        _FORWARD_CHECK.reset(token)
FILL_METHODS = ("causal", "fim", "masked")


def model_label(name: str) -> str:
    """How pages and reports show a model named `name`: as named ("default", a hub id), a directory by its
    last part(s) rather than its full path."""
    path = Path(name).expanduser()
    return _folder_label(path.resolve()) if path.exists() else name


def _folder_label(path: Path) -> str:
    # Hub snapshots and packaged weights often sit in a folder called just "model".
    return f"{path.parent.name}/{path.name}" if path.name in ("model", "weights") else path.name


@dataclass(frozen=True)
class ModelInfo:
    name: str = ""  # as the user named it: "default", a path, a hub id
    source: Path | None = None  # the directory or file it was read from; None when built in memory
    # what it was trained for: clm (next token), mlm (masked tokens), fim (clm + middles), hybrid (GPT-BERT:
    # causal and shifted masked rows, causal by config), mdlm (masked diffusion, bidirectional)
    objective: str = "clm"

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ClozelmError(f"objective must be one of {', '.join(OBJECTIVES)}, not {self.objective!r}")


class Model:
    """A network with its tokenizer and provenance. Call it like the network: `m([ids]).logits`."""

    def __init__(self, network: Transformer, tokenizer: Tokenizer | None = None, info: ModelInfo | None = None):
        if not isinstance(network, Transformer):
            raise TypeError(f"Model wraps a clozelm Transformer, not {type(network).__name__}")
        self.network = network
        self.tokenizer = tokenizer
        if info is None:
            info = ModelInfo(objective="clm" if network.config.causal else "mlm")
        self.info = info

    # ---- what tasks read
    @property
    def config(self) -> ModelConfig:
        return self.network.config

    @property
    def device(self) -> torch.device:
        return self.network.device

    @property
    def dtype(self) -> torch.dtype:
        return self.network.wte.weight.dtype

    @property
    def name(self) -> str:
        return self.info.name or (str(self.info.source) if self.info.source else "model")

    @property
    def label(self) -> str:
        """How pages and reports show the model (see `model_label`); one built in memory by its shape."""
        if self.info.name:
            return model_label(self.info.name)
        if self.info.source is not None:
            return _folder_label(Path(self.info.source))
        return f"{self.config.family} {self.config.n_layer}x{self.config.n_head}"

    @property
    def fill_method(self) -> str:
        """How blanks are filled: "masked" (a bidirectional masked LM or masked diffusion model: iterative
        unmasking), "fim" (a causal model trained with fill-in-the-middle whose tokenizer has the FIM
        sentinels) or "causal" (left-to-right search; also a hybrid, whose every output predicts the next
        token)."""
        if not self.config.causal:
            return "masked"
        if self.info.objective == "fim" and self.tokenizer is not None and self.tokenizer.fim_ids is not None:
            return "fim"
        return "causal"

    def __call__(self, *args, **kwargs) -> Output:
        check = _FORWARD_CHECK.get()
        if check is not None:
            check()
        return self.network(*args, **kwargs)

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        return self.network.new_cache(batch_size, max_len)

    def num_parameters(self) -> int:
        return self.network.num_parameters()

    # ---- nn.Module conveniences that return the Model, so calls chain as they do on a module
    def eval(self) -> "Model":
        self.network.eval()
        return self

    def to(self, *args, **kwargs) -> "Model":
        self.network.to(*args, **kwargs)
        return self

    def state_dict(self, *args, **kwargs):
        return self.network.state_dict(*args, **kwargs)

    def parameters(self, recurse: bool = True):
        return self.network.parameters(recurse)

    def named_parameters(self, *args, **kwargs):
        return self.network.named_parameters(*args, **kwargs)

    def save_pretrained(self, out_dir, overwrite: bool = False) -> None:
        """config.json + model.safetensors (+ the tokenizer's files), in the layout transformers opens."""
        from .weights.hf import save_pretrained
        save_pretrained(self.network, out_dir, tokenizer=self.tokenizer, overwrite=overwrite)

    def __getattr__(self, name: str):
        # Before Model existed, clozelm.load returned the network itself; its submodules (m.h, m.wte) keep
        # working for a release.
        if name.startswith("_") or name in ("network", "tokenizer", "info"):
            raise AttributeError(name)
        try:
            value = getattr(self.network, name)
        except AttributeError:  # say it of the Model the user holds, not of the network behind it
            public = [n for n in dir(type(self)) if not n.startswith("_")]
            close = [n for n in public if n.startswith(name)][:1] or difflib.get_close_matches(name, public, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise AttributeError(f"'Model' object has no attribute {name!r}{hint}") from None
        warnings.warn(f"Model.{name} reaches into the network: use model.network.{name}", DeprecationWarning,
                      stacklevel=2)
        return value

    def __repr__(self) -> str:
        cfg = self.config
        return (f"Model({self.name!r}, {cfg.n_layer}x{cfg.n_embd}, {'causal' if cfg.causal else 'bidirectional'}, "
                f"fill={self.fill_method}, tokenizer={self.tokenizer!r})")
