"""The machine settings that change a run's float results, recorded so a resume computes what the
uninterrupted run would have.

The same seed and data give the same losses only when the arithmetic is the same: the device, torch's CPU
thread count (it decides how reductions are split, so sums round differently), torch.compile (fused
kernels), deterministic algorithms, the float32 matmul precision (TF32 on GPUs) and oneDNN. A new run
records them in RUN/run.json ("numerics"); a resume sets them again for its duration and puts the
process's own settings back afterwards. A setting the caller gave explicitly (device, threads, compile)
that differs from the run's is refused in one line: it would silently break the exact continuation.
Autocast precision is part of the recipe (TrainConfig.precision). The torch version is recorded too; a
different one is only noted, since it cannot be restored.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import asdict, dataclass, fields

import torch

from ..errors import ClozelmError
from ..model import packed
from ..model.device import resolve_device as place
from .config import InvalidTrainConfig, TrainConfig


@dataclass(frozen=True)
class Numerics:
    device: str  # "cpu" | "cuda"
    threads: int  # torch.get_num_threads()
    compile: bool
    deterministic: bool  # torch.use_deterministic_algorithms
    matmul_precision: str  # torch.get_float32_matmul_precision(): highest | high | medium
    mkldnn: bool  # torch.backends.mkldnn.enabled (oneDNN CPU kernels, bf16 matmuls among them)
    torch: str  # the version: noted when it differs, never restored

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "Numerics":
        names = {f.name for f in fields(cls)}
        if not isinstance(d, dict) or set(d) != names:
            raise ClozelmError(f"{where}: its \"numerics\" entry is damaged (expected {', '.join(sorted(names))})")
        try:
            return cls(device=str(d["device"]), threads=int(d["threads"]), compile=bool(d["compile"]),
                       deterministic=bool(d["deterministic"]), matmul_precision=str(d["matmul_precision"]),
                       mkldnn=bool(d["mkldnn"]), torch=str(d["torch"]))
        except (TypeError, ValueError):
            raise ClozelmError(f"{where}: its \"numerics\" entry is damaged") from None


def resolve_device(device: str | None) -> str:
    """"auto" (or None) is CUDA when a GPU is available, else the CPU."""
    return place(device or "auto").type


# The shortest run compiled by default: the compile time (tens of seconds on 2 cores, less once inductor has
# cached its kernels) must be repaid by the faster steps; `clozelm train`'s default length is compiled.
COMPILE_FROM_STEPS = 1000


def compile_by_default(device: str, steps: int, world: int) -> bool:
    """Whether a new run that does not say is trained through torch.compile: on CPUs without AMX, where
    inductor's fused kernels shorten the step (benchmarks/train_speed.py --compile), for runs long enough to repay
    the compile time, in one process, and only where the C++ compiler inductor needs is installed. Not on a Xeon
    with AMX, whose eager step already fuses each product with its bias and GELU in oneDNN (model/fused.py) and
    attends through model/native_attention.py: the compiled step was measured no faster there; nor on a GPU, where
    it is not yet measured."""
    return (device == "cpu" and world == 1 and steps >= COMPILE_FROM_STEPS and not packed.has_amx()
            and any(shutil.which(name) for name in ("g++", "c++", "clang++")))


def for_new_run(config: TrainConfig, steps: int = 0, world: int = 1) -> Numerics:
    """The settings a new run of `steps` optimizer steps in `world` processes will train with: what `config` asks
    for, the process's own for the rest."""
    device = resolve_device(config.device)
    compile = config.compile if config.compile is not None else compile_by_default(device, steps, world)
    return Numerics(device=device, threads=config.threads or torch.get_num_threads(),
                    compile=compile, deterministic=torch.are_deterministic_algorithms_enabled(),
                    matmul_precision=torch.get_float32_matmul_precision(), mkldnn=torch.backends.mkldnn.enabled,
                    torch=torch.__version__)


def for_resume(config: TrainConfig, recorded: Numerics, note) -> Numerics:
    """The run's settings, after refusing any that `config` gives differently."""
    problems = []
    asked = {"device": None if config.device in (None, "auto") else config.device, "threads": config.threads,
             "compile": config.compile}
    for name, value in asked.items():
        if value is not None and value != getattr(recorded, name):
            problems.append((name, f"{_spelled(value)} differs from the run's {_spelled(getattr(recorded, name))}: "
                                   f"it changes the arithmetic, so the resumed run would not continue the run "
                                   f"exactly; leave it out to use the run's"))
    if problems:
        raise InvalidTrainConfig(problems)
    if recorded.device == "cuda" and not torch.cuda.is_available():
        raise ClozelmError("the run trained on a CUDA GPU and none is available here")
    if recorded.torch != torch.__version__:
        note(f"note: the run started with torch {recorded.torch} and this is torch {torch.__version__}; the "
             "losses may differ slightly from an uninterrupted run")
    return recorded


def _spelled(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


@contextlib.contextmanager
def applied(numerics: Numerics):
    """Set the process's torch settings to `numerics` for the block, then put the previous ones back."""
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled(), torch.get_float32_matmul_precision(),
              torch.backends.mkldnn.enabled)
    try:
        if torch.get_num_threads() != numerics.threads:
            torch.set_num_threads(numerics.threads)
        torch.use_deterministic_algorithms(numerics.deterministic, warn_only=before[2])
        torch.set_float32_matmul_precision(numerics.matmul_precision)
        torch.backends.mkldnn.enabled = numerics.mkldnn
        yield numerics
    finally:
        threads, deterministic, warn_only, matmul, mkldnn = before
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.set_float32_matmul_precision(matmul)
        torch.backends.mkldnn.enabled = mkldnn


def describe(numerics: Numerics) -> str:
    parts = [numerics.device, f"{numerics.threads} thread{'s' if numerics.threads != 1 else ''}"]
    if numerics.compile:
        parts.append("compiled")
    if numerics.deterministic:
        parts.append("deterministic algorithms")
    return ", ".join(parts)
