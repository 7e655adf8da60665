"""The training loop: AdamW + warm-up/cosine schedule, accumulation, clipping, bf16 autocast, DDP,
atomic checkpoints with exact resume, held-out evaluation, metrics and a progress line.

Choices, and why:
- AdamW with decoupled weight decay on the 2-D weight matrices of Linear layers only; biases,
  LayerNorm parameters, embeddings (wte, which is also the tied output matrix, wpe, wtt) and the MLM
  output bias are not decayed (decaying embeddings shrinks rare tokens' vectors for no gain).
  `fused=True` (one kernel per step over all parameters) is used where torch supports it.
- Learning rate: linear warm-up from lr/warmup to lr over `warmup` steps, then cosine to
  lr * min_lr_ratio at the last step. A pure function of the step, so resuming needs only the step.
- Loss: summed cross-entropy divided by the number of labelled tokens in the whole *global* batch
  (all micro-batches, all ranks). Splitting a batch by accumulation or over DDP ranks therefore gives
  the same gradient as one big batch (up to float rounding), which is what the DDP test checks.
- Data order: example number c of the run uses window perm_epoch[c mod N] of the training split and
  its own RNG seeded by (seed, c) (see objectives.py). Optimizer step s covers examples
  [s*G, (s+1)*G) with G the global batch; rank r, micro-batch m takes the slice starting at
  (m*world + r)*B. The data position in a checkpoint is therefore just the step.
- Mixed precision: weights and optimizer state stay fp32; forward runs under autocast (bf16 by
  default: on this CPU's AMX units bf16 matmuls are several times faster than fp32).
- Checkpoints (RUN/checkpoint.pt): model, optimizer, step, every rank's RNG state, configs. Written to
  a temporary file, fsynced, then os.replace'd over the old one: a kill at any moment leaves either
  the old or the new checkpoint, never half of one. Read back with torch.load(weights_only=True).
- Ctrl-C / SIGTERM: finish the current step, write a checkpoint, exit with status 130 (the shell's
  "interrupted" status; the CLI's convention), so scripts can tell an interrupted run from a finished
  one. A second Ctrl-C aborts at once.
- NaN/inf loss or gradient norm: stop before the optimizer step, write nothing, exit with an error;
  the last checkpoint on disk is the last good one.
- Locality warm-up (--locality-warmup N, off by default): for the first N steps every head's attention
  scores get a distance penalty -slope_h * f * |i - j| (slope_h = 2^-h, f falling linearly from 1 to 0),
  ALiBi's bias (Press et al. 2022) made symmetric and faded out. Why: a bidirectional MLM from scratch
  sits for thousands of steps on a plateau where every head is uniform, because nothing in it says where
  a token is until the learned position table has structure, and the table gets no gradient until some
  head is local. While the penalty supplies locality, the rest of the network learns to use local
  context; once it fades, the one missing piece (locality from the position table and query/key weights)
  has a strong gradient. On a copy task the held-out loss without the penalty rises during the fade and
  falls below the plateau within ~10% of N after it. From step N on the model is a plain BERT/GPT-2
  (nothing of the penalty is saved), and held-out evaluation never uses it, so its figures are the model's own.
- Best weights: each evaluation that lowers the held-out loss writes the weights to RUN/best.pt (atomically,
  like the checkpoint). The run's model (RUN/model) is those weights, so a run that trained past the point
  where held-out loss stopped improving still gives its best model; checkpoint.pt keeps the last weights.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..errors import ClozelmError
from ..model.transformer import Transformer
from ..weights.tensors import atomic_write_text
from .data import TokenData, Windows
from .objectives import IGNORE, Objective, loss_sum
from .plot import write_loss_curve

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
CHECKPOINT_FORMAT = 1
EVAL_SEED = 1234  # held-out masks/FIM choices are fixed, so evaluations are comparable across runs


@dataclass
class TrainConfig:
    objective: str = "clm"
    seq_len: int = 256
    batch_size: int = 16  # sequences per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step
    steps: int = 1000  # optimizer steps
    lr: float = 6e-4
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip: float = 1.0  # 0 = no clipping
    precision: str = "bf16"  # bf16 | fp32
    seed: int = 0
    eval_every: int = 200  # 0 = only at the end
    eval_examples: int = 256  # held-out sequences per evaluation
    checkpoint_every: int = 200  # 0 = only at the end (and on Ctrl-C)
    log_every: int = 10  # progress lines when stderr is not a terminal
    fim_rate: float = 0.5
    spm_rate: float = 0.5
    mask_rate: float = 0.15
    locality_warmup: int = 0  # steps of the fading attention distance penalty (module docstring); 0 = off
    world_size: int = 1  # recorded so a resume with another world size (other global batch) is refused

    @property
    def examples_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.world_size

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# ---------------------------------------------------------------- distributed


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            t = t.to(self.device)
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed(device: str = "auto") -> Dist:
    """Join the process group torchrun describes in the environment (gloo on CPU, NCCL on GPU)."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise ClozelmError("--device cuda: no CUDA GPU is available")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=torch.device("cuda") if use_cuda else torch.device("cpu"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), torch.device("cuda", local) if use_cuda else torch.device("cpu"))


# ---------------------------------------------------------------- pieces


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    low = cfg.lr * cfg.min_lr_ratio
    return low + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - low)


def param_groups(model: Transformer, weight_decay: float) -> list[dict]:
    """Decay only Linear weight matrices: not biases, LayerNorms, embeddings or the MLM bias."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and id(p) not in embeddings else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def locality_bias(cfg: TrainConfig, step: int, n_head: int, T: int, device: torch.device) -> torch.Tensor | None:
    """The locality warm-up's additive attention bias [n_head, T, T] at optimizer step `step`, or None."""
    fade = 1.0 - step / cfg.locality_warmup if cfg.locality_warmup else 0.0
    if fade <= 0.0:
        return None
    slopes = 2.0 ** -torch.arange(n_head, dtype=torch.float32, device=device)  # head 0 sharpest
    distance = torch.arange(T, device=device)
    distance = (distance[:, None] - distance[None, :]).abs().float()
    return -fade * slopes[:, None, None] * distance  # [H, T, T]


def make_optimizer(model: Transformer, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    kwargs = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps)
    try:
        return torch.optim.AdamW(param_groups(model, cfg.weight_decay), fused=True, **kwargs)
    except (RuntimeError, TypeError):  # a device or dtype without a fused kernel
        return torch.optim.AdamW(param_groups(model, cfg.weight_decay), **kwargs)


class Batcher:
    """Micro-batches as a pure function of (step, micro-batch, rank): see the module docstring."""

    def __init__(self, windows: Windows, objective: Objective, cfg: TrainConfig, rank: int):
        if len(windows) == 0:
            raise ClozelmError(f"the training split has {windows.split.n_tokens} tokens, fewer than one sequence "
                               f"of {windows.length}; use more text or a smaller --seq-len")
        self.windows, self.objective, self.cfg, self.rank = windows, objective, cfg, rank
        self._perm_epoch, self._perm = -1, None

    def _window(self, example: int) -> np.ndarray:
        epoch, j = divmod(example, len(self.windows))
        if epoch != self._perm_epoch:  # a fresh shuffle per pass over the data
            self._perm = np.random.default_rng([self.cfg.seed, epoch, 7]).permutation(len(self.windows))
            self._perm_epoch = epoch
        return self.windows[int(self._perm[j])]

    def micro(self, step: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        first = step * cfg.examples_per_step + (m * cfg.world_size + self.rank) * cfg.batch_size
        examples = range(first, first + cfg.batch_size)
        return self.objective.batch([self._window(c) for c in examples],
                                    [np.random.default_rng([cfg.seed, c]) for c in examples])


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


class Progress:
    """One stderr line, rewritten in place on a terminal; plain lines every `every` steps otherwise.

    `bar` switches the per-step line off (--no-progress); messages (resume, stop, done) are still printed
    by rank 0 (`main`), since they say where the work went.
    """

    def __init__(self, total: int, every: int, bar: bool, main: bool = True, stream=None):
        self.total, self.every, self.enabled, self.main = total, max(1, every), bar and main, main
        self.stream = stream or sys.stderr
        self.tty = self.enabled and self.stream.isatty()
        self.rate = None  # smoothed seconds per step
        self.updates = 0
        self.width = 0

    def update(self, step: int, loss: float, tokens_per_s: float, step_seconds: float, val: float | None) -> None:
        if not self.enabled:
            return
        self.updates += 1
        # The first step pays one-off costs (allocation, compilation): the estimate restarts at the second.
        self.rate = step_seconds if self.updates <= 2 else 0.9 * self.rate + 0.1 * step_seconds
        eta = _duration(self.rate * (self.total - step))
        val_part = f" | val {val:.4f}" if val is not None else ""
        line = (f"step {step}/{self.total} | loss {loss:.4f}{val_part} | {tokens_per_s / 1000:.1f}k tok/s | ETA {eta}")
        if self.tty:
            self.stream.write("\r" + line.ljust(self.width))
            self.width = len(line)
            self.stream.flush()
        elif step % self.every == 0 or step == self.total:
            self.stream.write(line + "\n")
            self.stream.flush()

    def message(self, text: str) -> None:
        if not self.main:
            return
        if self.tty and self.width:
            self.stream.write("\n")
            self.width = 0
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self.width:
            self.stream.write("\n")
            self.stream.flush()
            self.width = 0


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Metrics:
    """metrics.jsonl (one record per step, plus eval records), metrics.csv and loss_curve.png."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.dir, self.enabled = run_dir, enabled
        self.records: list[dict] = []
        self.path = run_dir / "metrics.jsonl"

    def resume(self, step: int) -> None:
        """Keep the records up to the checkpoint's step; later ones were lost work and are redone."""
        if not self.enabled:
            return
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line cut by the kill
                    continue
                if rec.get("step", 0) <= step:
                    self.records.append(rec)
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))

    def add(self, rec: dict) -> None:
        if not self.enabled:
            return
        self.records.append(rec)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")

    def last_val(self) -> float | None:
        return next((r["val_loss"] for r in reversed(self.records) if "val_loss" in r), None)

    def write_summaries(self) -> None:
        if not self.enabled:
            return
        train = [(r["step"], r["loss"]) for r in self.records if "loss" in r]
        valid = [(r["step"], r["val_loss"]) for r in self.records if "val_loss" in r]
        columns = ["step", "loss", "val_loss", "lr", "grad_norm", "tokens", "tokens_per_s", "elapsed_s"]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.records)
        atomic_write_text(self.dir / "metrics.csv", buf.getvalue())
        write_loss_curve(self.dir / "loss_curve.png", train, valid)


def logits_and_labels(forward, objective: Objective, x: torch.Tensor, y: torch.Tensor,
                      attention_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits where there are labels. Masked LM labels ~15% of positions: the head runs only there."""
    if objective.sparse_labels:
        keep = y != IGNORE
        return forward(x, logits_at=keep, attention_bias=attention_bias).logits, y[keep]
    return forward(x, attention_bias=attention_bias).logits, y


@torch.no_grad()
def held_out_sums(model: Transformer, objective: Objective, windows: Windows, indices, batch_size: int,
                  precision: str, device: torch.device) -> torch.Tensor:
    """[summed loss, labelled tokens] (float64) over held-out windows `indices`. Each window's masks / FIM
    choices come from its own RNG seeded by (EVAL_SEED, index), so every evaluation sees the same task."""
    was_training = model.training
    model.eval()
    indices = list(indices)
    total = torch.zeros(2, dtype=torch.float64)
    for i in range(0, len(indices), batch_size):
        chunk = indices[i:i + batch_size]
        x, y = objective.batch([windows[c] for c in chunk], [np.random.default_rng([EVAL_SEED, c]) for c in chunk])
        with autocast(precision, device):
            logits, y = logits_and_labels(model, objective, x.to(device), y.to(device))
        s, k = loss_sum(logits, y)
        total += torch.tensor([float(s), float(k)], dtype=torch.float64)
    model.train(was_training)
    return total


class NonFiniteLoss(ClozelmError):
    pass


# ---------------------------------------------------------------- the trainer


class Trainer:
    def __init__(self, model: Transformer, objective: Objective, data: TokenData, cfg: TrainConfig,
                 run_dir: Path, dist_info: Dist | None = None, compile: bool = False, progress: bool = True,
                 extra_state: dict | None = None):
        self.cfg, self.run_dir, self.objective, self.data = cfg, Path(run_dir), objective, data
        self.dist = dist_info or Dist()
        if cfg.world_size != self.dist.world:
            raise ClozelmError(f"the run was set up for {cfg.world_size} process(es) but {self.dist.world} are running")
        self.device = self.dist.device
        self.model = model.to(self.device)  # the plain module: state_dict, eval and saving use it
        if self.model.pooler is not None:
            self.model.pooler.requires_grad_(False)  # unused by the LM losses; DDP insists every trained param gets a grad
        self.model.train()
        forward = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel
            forward = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.ddp = forward if self.dist.enabled else None
        self.forward = torch.compile(forward) if compile else forward
        self.optimizer = make_optimizer(self.model, cfg, self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        window = cfg.seq_len + objective.extra_tokens
        self.batcher = Batcher(data.train.windows(window, cfg.seq_len), objective, cfg, self.dist.rank)
        self.valid_windows = data.valid.windows(window, cfg.seq_len)
        self.metrics = Metrics(self.run_dir, self.dist.main)
        self.progress = Progress(cfg.steps, cfg.log_every, progress, self.dist.main)
        self.extra_state = extra_state or {}
        self.step = 0  # optimizer steps completed
        self.tokens_seen = 0
        self.elapsed = 0.0
        self.best_val, self.best_step = math.inf, 0  # lowest held-out loss so far, and its step
        self._stop_signal: str | None = None

    # ------------------------------------------------------------ checkpoints

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT

    def _rng_states(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Every rank's torch RNG state (dropout), gathered so rank 0 can write them all."""
        cpu = torch.get_rng_state()
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        if not self.dist.enabled:
            return [cpu], [cuda] if cuda is not None else []

        def gather(t):
            t = t.to(self.device)
            out = [torch.empty_like(t) for _ in range(self.dist.world)]
            dist.all_gather(out, t)
            return [o.cpu() for o in out]

        return gather(cpu), gather(cuda) if cuda is not None else []

    def save_checkpoint(self) -> None:
        rng_cpu, rng_cuda = self._rng_states()  # a collective: every rank takes part
        if self.dist.main:
            state = {
                "format": CHECKPOINT_FORMAT, "step": self.step, "tokens_seen": self.tokens_seen, "elapsed": self.elapsed,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "rng_cpu": rng_cpu, "rng_cuda": rng_cuda, "train_config": asdict(self.cfg),
                "model_config": self.model.config.to_dict(), "data_key": self.data.key,
                "best_val": self.best_val, "best_step": self.best_step, **self.extra_state,
            }
            atomic_torch_save(state, self.checkpoint_path)
        self.dist.barrier()

    def load_checkpoint(self, state: dict) -> None:
        if state.get("data_key") != self.data.key:
            raise ClozelmError(f"the input files or tokenizer changed since {self.checkpoint_path} was written; "
                               "resume needs the same data (or start a new run)")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.tokens_seen, self.elapsed = int(state["step"]), int(state["tokens_seen"]), float(state["elapsed"])
        self.best_val, self.best_step = float(state.get("best_val", math.inf)), int(state.get("best_step", 0))
        rank = self.dist.rank
        if len(state["rng_cpu"]) > rank:
            torch.set_rng_state(state["rng_cpu"][rank])
        if self.device.type == "cuda" and len(state["rng_cuda"]) > rank:
            torch.cuda.set_rng_state(state["rng_cuda"][rank], self.device)
        self.metrics.resume(self.step)

    # ------------------------------------------------------------ steps

    def train_step(self) -> dict:
        cfg, step = self.cfg, self.step
        lr = lr_at(cfg, step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        micro = [self.batcher.micro(step, m) for m in range(cfg.grad_accum)]
        # Normalise by the labelled tokens of the whole global batch (see the module docstring).
        count = self.dist.all_sum(torch.tensor(float(sum(int((y != IGNORE).sum()) for _, y in micro)), dtype=torch.float64))
        scale = self.dist.world / max(float(count), 1.0)  # DDP averages gradients over ranks
        total = torch.zeros((), device=self.device)
        for m, (x, y) in enumerate(micro):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            bias = locality_bias(cfg, step, self.model.config.n_head, x.shape[1], self.device)
            sync = self.ddp.no_sync() if self.ddp is not None and m < len(micro) - 1 else contextlib.nullcontext()
            with sync:
                with autocast(cfg.precision, self.device):
                    logits, y = logits_and_labels(self.forward, self.objective, x, y, bias)
                s, _ = loss_sum(logits, y)
                (s * scale).backward()
            total += s.detach()
        clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip)
        flag = 1.0 if self._stop_signal else 0.0
        reduced = self.dist.all_sum(torch.stack([total.float(), torch.tensor(flag, device=total.device)]))
        loss = float(reduced[0]) / max(float(count), 1.0)
        if reduced[1] > 0 and self._stop_signal is None:
            self._stop_signal = "a signal on another rank"
        if not (math.isfinite(loss) and math.isfinite(float(grad_norm))):
            self.optimizer.zero_grad(set_to_none=True)
            where = (f"{self.checkpoint_path} (step {self._checkpoint_step()}) is the last good checkpoint"
                     if self.checkpoint_path.is_file() else "no checkpoint had been written yet")
            raise NonFiniteLoss(f"loss is {loss} (gradient norm {float(grad_norm):.3g}) at step {step + 1}; stopped "
                                f"before updating the weights; {where}; try a lower --lr or --grad-clip")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {"step": self.step, "loss": loss, "lr": lr, "grad_norm": float(grad_norm)}

    def _checkpoint_step(self) -> int | str:
        try:
            return int(torch.load(self.checkpoint_path, map_location="cpu", weights_only=True, mmap=True)["step"])
        except Exception:
            return "?"

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean loss per labelled token over the first `eval_examples` held-out windows (split over ranks)."""
        n = min(len(self.valid_windows), self.cfg.eval_examples)
        if n == 0:
            return None
        mine = range(self.dist.rank, n, self.dist.world)
        total = held_out_sums(self.model, self.objective, self.valid_windows, mine, self.cfg.batch_size,
                              self.cfg.precision, self.device)
        total = self.dist.all_sum(total).cpu()
        return float(total[0] / total[1]) if total[1] > 0 else None

    # ------------------------------------------------------------ best weights

    def _keep_if_best(self, val: float) -> None:
        if not val < self.best_val:
            return
        self.best_val, self.best_step = val, self.step
        if self.dist.main:
            atomic_torch_save({"step": self.step, "val_loss": val, "model": self.model.state_dict()},
                              self.run_dir / BEST)

    def load_best_weights(self) -> int | None:
        """Put the weights with the lowest held-out loss into the model; returns their step, or None when
        the model keeps its last weights (no evaluation ran, the last one was the best, or best.pt is gone
        or from another trajectory, e.g. after resuming with other settings)."""
        if self.best_step in (0, self.step):
            return None
        try:
            state = torch.load(self.run_dir / BEST, map_location=self.device, weights_only=True)
        except FileNotFoundError:
            return None
        if int(state["step"]) != self.best_step:
            return None
        self.model.load_state_dict(state["model"])
        return self.best_step

    # ------------------------------------------------------------ the loop

    def fit(self) -> None:
        cfg = self.cfg
        if self.step == 0 and self.dist.main:
            self.metrics.resume(0)  # a fresh metrics file
        if self.step >= cfg.steps:
            self.progress.message(f"run already complete ({self.step}/{cfg.steps} steps)")
            return
        if len(self.valid_windows) == 0:
            self.progress.message(f"note: the held-out split has {self.data.valid.n_tokens} tokens, fewer than one "
                                  f"sequence; no evaluation")
        pause_at = int(os.environ.get("CLOZELM_TEST_PAUSE_AT_STEP", "0"))  # lets a test SIGKILL at a known step
        tokens_per_step = cfg.examples_per_step * cfg.seq_len
        restore = self._install_signal_handlers()
        val = self.metrics.last_val()
        try:
            while self.step < cfg.steps:
                t0 = time.perf_counter()
                rec = self.train_step()
                dt = time.perf_counter() - t0
                self.elapsed += dt
                self.tokens_seen += tokens_per_step
                rec.update(tokens=self.tokens_seen, tokens_per_s=tokens_per_step / dt, elapsed_s=round(self.elapsed, 3))
                self.metrics.add(rec)
                last = self.step == cfg.steps
                if (cfg.eval_every and self.step % cfg.eval_every == 0) or last:
                    val = self.evaluate()
                    if val is not None:
                        self.metrics.add({"step": self.step, "val_loss": val, "val_ppl": math.exp(min(val, 50.0))})
                        self._keep_if_best(val)
                self.progress.update(self.step, rec["loss"], rec["tokens_per_s"], dt, val)
                if pause_at and self.step == pause_at:
                    # Test hook: hold still at a known step until killed or signalled.
                    print(f"paused at step {self.step}", file=sys.stderr, flush=True)
                    deadline = time.monotonic() + 600
                    while self._stop_signal is None and time.monotonic() < deadline:
                        time.sleep(0.02)
                stopping = self._stop_signal is not None
                if (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or last or stopping:
                    self.save_checkpoint()
                    self.metrics.write_summaries()
                if stopping:
                    self.progress.message(f"clozelm: stopped by {self._stop_signal} after step {self.step}; checkpoint "
                                          f"saved to {self.checkpoint_path}; continue with: clozelm train --resume --out {self.run_dir}")
                    raise KeyboardInterrupt
        finally:
            restore()
            self.progress.close()

    def _install_signal_handlers(self):
        import threading
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum, frame):
            if self._stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # second Ctrl-C: give up at once
            self._stop_signal = signal.Signals(signum).name
            self.progress.message(f"clozelm: {self._stop_signal} received: saving a checkpoint after this step "
                                  "(Ctrl-C again to abort without saving)")

        for s in old:
            signal.signal(s, handler)

        def restore():
            for s, h in old.items():
                signal.signal(s, h)

        return restore


def load_checkpoint_file(path: Path) -> dict:
    """A checkpoint written by `Trainer.save_checkpoint`; weights_only=True never unpickles arbitrary objects."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ClozelmError(f"{path} is not a readable clozelm checkpoint: {first}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ClozelmError(f"{path} is not a clozelm checkpoint (format {CHECKPOINT_FORMAT})")
    return state


def atomic_torch_save(obj, path: Path) -> None:
    """torch.save to a temporary file, fsync, rename: a kill leaves the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable (matters after a power cut, harmless otherwise).
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
