"""Checkpoints: what RUN/checkpoint.pt and RUN/best.pt hold, writing them atomically, reading them back with
every entry checked, and stopping on Ctrl-C/SIGTERM at a step boundary.

- checkpoint.pt: model, optimizer, step, every rank's RNG state, configs. Written to a temporary file,
  fsynced, then renamed over the old one (clozelm.files.atomic_torch_save): a kill at any moment leaves the
  old or the new checkpoint, never half of one. Read with torch.load(weights_only=True), which never
  unpickles code; then every entry is checked against the run's model and optimizer, so a file that loads
  but does not fit (a tensor of the wrong shape, an entry missing) is one line, not a traceback mid-run.
- best.pt: the weights with the lowest held-out loss so far (atomic too).
- Ctrl-C / SIGTERM: finish the current step, write a checkpoint, stop. A second Ctrl-C aborts at once.
"""

from __future__ import annotations

import math
import signal
import threading
from pathlib import Path

import torch

from ..errors import ClozelmError
from ..files import atomic_torch_save

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
CHECKPOINT_FORMAT = 1

# Entries every checkpoint has, and their types.
_ENTRIES = {"step": int, "tokens_seen": int, "elapsed": (int, float), "model": dict, "optimizer": dict,
            "rng_cpu": list, "rng_cuda": list, "data_key": str}


def save(state: dict, path: Path) -> None:
    atomic_torch_save(state, path)


def load_checkpoint_file(path: Path) -> dict:
    """A checkpoint written by the trainer, its entries checked for presence and type."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ClozelmError(f"{path} is missing") from None
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ClozelmError(f"{path} is not a readable clozelm checkpoint: {first}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ClozelmError(f"{path} is not a clozelm checkpoint (format {CHECKPOINT_FORMAT})")
    for key, kind in _ENTRIES.items():
        if key not in state:
            raise ClozelmError(f"{path} is damaged: its {key!r} entry is missing")
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            raise ClozelmError(f"{path} is damaged: its {key!r} entry is a {type(state[key]).__name__}")
    if state["step"] < 0 or state["tokens_seen"] < 0:
        raise ClozelmError(f"{path} is damaged: step {state['step']}, tokens {state['tokens_seen']}")
    for key in ("best_val", "best_step"):
        if key in state and (not isinstance(state[key], (int, float)) or isinstance(state[key], bool)):
            raise ClozelmError(f"{path} is damaged: its {key!r} entry is a {type(state[key]).__name__}")
    for key in ("rng_cpu", "rng_cuda"):
        if not all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in state[key]):
            raise ClozelmError(f"{path} is damaged: its {key!r} entry is not a list of RNG states")
    return state


def check_model_state(weights: dict, model: torch.nn.Module, path: Path) -> None:
    """The tensors of `weights` are exactly the model's, by name, shape and floating-point kind."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    if missing or unexpected:
        what = (f"{len(missing)} of the model's tensors missing (first {missing[0]})" if missing
                else f"{len(unexpected)} tensors the model does not have (first {unexpected[0]})")
        raise ClozelmError(f"{path} does not fit the run's model: {what}")
    for name, tensor in expected.items():
        got = weights[name]
        if not isinstance(got, torch.Tensor) or got.shape != tensor.shape or got.is_floating_point() != tensor.is_floating_point():
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise ClozelmError(f"{path} does not fit the run's model: {name} is {shape}, the model's is "
                               f"{tuple(tensor.shape)}")


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict, path: Path) -> None:
    """Optimizer state whose groups, parameters and moment tensors match the optimizer's parameters."""
    try:
        optimizer.load_state_dict(saved)
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ClozelmError(f"{path} is damaged: its optimizer state does not fit the model ({first})") from None
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if key == "step":
                    continue
                if not isinstance(value, torch.Tensor) or value.shape != p.shape:
                    shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                    raise ClozelmError(f"{path} is damaged: an optimizer {key} is {shape} for a parameter of "
                                       f"{tuple(p.shape)}")


def set_rng_state(cpu: torch.Tensor, cuda: torch.Tensor | None, device: torch.device, path: Path) -> None:
    try:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)
    except (RuntimeError, ValueError, TypeError):
        raise ClozelmError(f"{path} is damaged: its RNG state cannot be restored") from None


def read_step(path: Path) -> int | str:
    """The step of the checkpoint at `path`, or "?" when it cannot be read (for messages)."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"])
    except Exception:
        return "?"


def read_best(path: Path) -> tuple[int, float] | None:
    """(step, held-out loss) of the weights in best.pt, or None when it is gone or cannot be read."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        step, val = state["step"], state["val_loss"]
    except Exception:
        return None
    if not isinstance(step, int) or isinstance(step, bool) or not isinstance(val, float) or not math.isfinite(val):
        return None
    return step, val


def load_best(path: Path, step: int, device: torch.device) -> dict | None:
    """The weights saved at `step` in best.pt, or None when it is gone or from another step."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        return None
    except Exception:
        return None  # a best.pt that cannot be read is as good as none: the run keeps its last weights
    if not isinstance(state, dict) or state.get("step") != step or not isinstance(state.get("model"), dict):
        return None
    return state["model"]


def best_state(step: int, val: float, weights: dict) -> dict:
    return {"step": step, "val_loss": val, "model": weights}


class StopSignals:
    """While installed (main thread only): Ctrl-C / SIGTERM call `request(name)`; a second Ctrl-C raises
    KeyboardInterrupt at once, abandoning the step without a checkpoint."""

    def __init__(self, request, said):
        self.request, self.said = request, said
        self.old: dict = {}
        self.received: str | None = None

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread():
            return self
        self.old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in self.old:
            signal.signal(s, self._handler)
        return self

    def _handler(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: give up at once
        self.received = signal.Signals(signum).name
        self.request(self.received)
        self.said(f"clozelm: {self.received} received: saving a checkpoint after this step "
                  "(Ctrl-C again to abort without saving)")

    def __exit__(self, *exc) -> None:
        for s, h in self.old.items():
            signal.signal(s, h)
