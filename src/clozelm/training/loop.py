"""The training loop: AdamW + warm-up/cosine schedule, accumulation, clipping, bf16 autocast, DDP, held-out
evaluation, checkpoints at step boundaries, callbacks.

Choices, and why:
- AdamW with decoupled weight decay on the 2-D weight matrices of Linear layers only; biases,
  LayerNorm parameters, embeddings (wte, which is also the tied output matrix, wpe, wtt) and the MLM
  output bias are not decayed (decaying embeddings shrinks rare tokens' vectors for no gain).
  `fused=True` (one kernel per step over all parameters) is used where torch supports it.
- Learning rate: linear warm-up from lr/warmup to lr over `warmup` steps, then cosine towards
  lr * min_lr_ratio, which it reaches where the last step ends (the last step itself runs a hair above
  it). A pure function of the step, so resuming needs only the step.
- Loss: summed cross-entropy divided by the number of labelled tokens in the whole *global* batch
  (all micro-batches, all ranks). Splitting a batch by accumulation or over DDP ranks therefore gives
  the same gradient as one big batch (up to float rounding), which is what the DDP test checks.
- Data order: example number c of the run uses window perm_epoch[c mod N] of the training split and
  its own RNG seeded by (seed, c) (see objectives.py). Optimizer step s covers examples
  [s*G, (s+1)*G) with G the global batch; rank r, micro-batch m takes the slice starting at
  (m*world + r)*B. The data position in a checkpoint is therefore just the step.
- Mixed precision (`precision`): "bf16-master" (default) keeps the network's weights in bf16 and fp32
  master copies for the optimizer (training/precision.py): no per-use casts of the weights, which under
  autocast cost a large share of a CPU step. "bf16" is autocast over fp32 weights, "fp32" plain fp32.
- Loss (`fused_loss`, default on): the vocabulary projection and the cross-entropy run as one chunked
  function whose backward is computed during its forward (training/fused_loss.py), so full [N, V] logits
  in fp32 and their two extra backward passes never exist.
- Stopping: Ctrl-C / SIGTERM, a callback (`trainer.request_stop`) or `stop_after` end the run after the
  current step with a checkpoint; all ranks agree on it at the step boundary.
- NaN/inf loss or gradient norm: stop before the optimizer step, write nothing, exit with an error;
  the last checkpoint on disk is the last good one.
- Locality warm-up (locality_warmup N, off by default): for the first N steps every head's attention
  scores get a distance penalty -slope_h * f * |i - j| (slope_h = 2^-h, f falling linearly from 1 to 0),
  ALiBi's bias (Press et al. 2022) made symmetric and faded out. Why: a bidirectional MLM from scratch
  sits for thousands of steps on a plateau where every head is uniform, because nothing in it says where
  a token is until the learned position table has structure, and the table gets no gradient until some
  head is local. While the penalty supplies locality, the rest of the network learns to use local
  context; once it fades, the one missing piece (locality from the position table and query/key weights)
  has a strong gradient: on a copy task the model without the penalty stays near chance, the one with it
  solves the task and keeps the solution after the fade. From step N on the model is a plain BERT/GPT-2
  (nothing of the penalty is saved), and held-out evaluation never uses it, so its figures are the model's own.
- Best weights: each evaluation that lowers the held-out loss writes the weights to RUN/best.pt (atomically,
  like the checkpoint). The run's model (RUN/model) is those weights, so a run that trained past the point
  where held-out loss stopped improving still gives its best model; checkpoint.pt keeps the last weights.
  `keep_best=False` keeps the last step's weights as the model and writes no best.pt: for held-out text that is
  a test set (the study's), where choosing weights on it would be tuning on the test.

Callbacks: callables `callback(trainer, record)` called on every rank after each optimizer step (and its
evaluation, if one ran), with the step's metrics record (step, loss, lr, grad_norm, tokens, tokens_per_s,
elapsed_s; val_loss and val_ppl after an evaluation). A callback may call `trainer.request_stop(reason)`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.autograd.graph import increment_version

from ..errors import ClozelmError
from ..loaded import Model
from ..model.transformer import Transformer
from . import checkpoint as ckpt
from .config import TrainConfig
from .data import TokenData, Windows
from .distributed import Dist, fp32_mean_hook
from .fused_loss import linear_cross_entropy
from .objectives import IGNORE, Batch, Objective, loss_sum
from .precision import MasterWeights
from .progress import Metrics, Progress

EVAL_SEED = 1234  # held-out masks/FIM choices are fixed, so evaluations are comparable across runs

Callback = Callable[["Trainer", dict], None]


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


def make_optimizer(model: Transformer, cfg: TrainConfig, device: torch.device | None = None,
                   masters: MasterWeights | None = None) -> torch.optim.AdamW:
    """AdamW over `param_groups`, or over their fp32 master copies (`device` is unused: the parameters say
    where they are)."""
    kwargs = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps)
    groups = param_groups(model, cfg.weight_decay)
    if masters is not None:
        groups = masters.master_groups(groups)
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # a device or dtype without a fused kernel
        return torch.optim.AdamW(groups, **kwargs)


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

    def micro(self, step: int, m: int) -> Batch:
        cfg = self.cfg
        first = step * cfg.examples_per_step + (m * cfg.world_size + self.rank) * cfg.batch_size
        examples = range(first, first + cfg.batch_size)
        return self.objective.batch([self._window(c) for c in examples],
                                    [np.random.default_rng([cfg.seed, c]) for c in examples])


def autocast(precision: str, device: torch.device):
    """Autocast for precision "bf16"; "bf16-master" runs a bf16 network as it is, "fp32" an fp32 one."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def compute_dtype(precision: str) -> torch.dtype:
    return torch.float32 if precision == "fp32" else torch.bfloat16


def _attention(attention_bias: torch.Tensor | None, causal: bool | None) -> dict:
    # `causal` is passed only when a batch sets it, so the other objectives call the network exactly as before.
    return {"attention_bias": attention_bias} if causal is None else {"attention_bias": attention_bias, "causal": causal}


def row_attention(causal_rows: torch.Tensor | None, attention_bias: torch.Tensor | None,
                  T: int) -> tuple[bool | None, torch.Tensor | None]:
    """(the network's `causal` switch, the attention bias) for a batch whose rows attend each their own way
    (hybrid: `Batch.causal`). All rows alike: the switch alone. A mix: bidirectional attention, with -inf on
    the causal rows' future keys added to the bias ([B, 1, T, T], plus the locality bias if any): one forward
    pass, the same arithmetic for every row as a pass of its own kind would do."""
    if causal_rows is None:
        return None, attention_bias
    if bool(causal_rows.all()):
        return True, attention_bias
    if not bool(causal_rows.any()):
        return False, attention_bias
    future = torch.ones(T, T, dtype=torch.bool, device=causal_rows.device).triu(1)
    rows = torch.zeros(len(causal_rows), 1, T, T, device=causal_rows.device).masked_fill(
        causal_rows[:, None, None, None] & future, float("-inf"))
    return False, rows if attention_bias is None else rows + attention_bias.to(rows.device)


def fused_loss_sum(forward, network: Transformer, objective: Objective, x: torch.Tensor, y: torch.Tensor,
                   precision: str, attention_bias: torch.Tensor | None = None, *, weights: torch.Tensor | None = None,
                   causal: bool | None = None) -> torch.Tensor:
    """Summed (weighted) cross-entropy over the labelled positions with the vocabulary projection fused into
    the loss (training/fused_loss.py): the network runs without its head, the loss applies it chunk by chunk."""
    with autocast(precision, x.device):
        hidden = forward(x, head=False, **_attention(attention_bias, causal)).hidden
        keep = y != IGNORE
        features = network.head_features(hidden[keep] if objective.sparse_labels else hidden)
    labels = y[keep] if objective.sparse_labels else y
    if weights is not None and objective.sparse_labels:
        weights = weights[keep]
    weight, bias = network.vocab_projection()
    return linear_cross_entropy(features, weight, bias, labels, compute_dtype=compute_dtype(precision),
                                row_weights=weights)[0]


def logits_and_labels(forward, objective: Objective, x: torch.Tensor, y: torch.Tensor,
                      attention_bias: torch.Tensor | None = None, *,
                      causal: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits where there are labels. Masked LM labels ~15% of positions: the head runs only there."""
    if objective.sparse_labels:
        keep = y != IGNORE
        return forward(x, logits_at=keep, **_attention(attention_bias, causal)).logits, y[keep]
    return forward(x, **_attention(attention_bias, causal)).logits, y


def batch_loss_sum(forward, network: Transformer, objective: Objective, batch: Batch, precision: str,
                   fused: bool, locality: torch.Tensor | None = None) -> torch.Tensor:
    """The summed (weighted) loss of one micro-batch already on the network's device; divide by `batch.count`
    (summed over the global batch) for the mean."""
    x, y, weights = batch.inputs, batch.labels, batch.weights
    causal, bias = row_attention(batch.causal, locality, x.shape[1])
    if fused:
        return fused_loss_sum(forward, network, objective, x, y, precision, bias, weights=weights, causal=causal)
    with autocast(precision, x.device):
        logits, labels = logits_and_labels(forward, objective, x, y, bias, causal=causal)
    if weights is not None and objective.sparse_labels:
        weights = weights[y != IGNORE]
    return loss_sum(logits, labels, weights)[0]


def eval_windows(available: int, wanted: int, spread: bool) -> list[int]:
    """Which held-out windows an evaluation reads: `wanted` of them spread evenly over the split (its sources
    come one after another, so the first windows would measure the first source only), or the first ones."""
    if wanted >= available or not spread:
        return list(range(min(wanted, available)))
    return [i * available // wanted for i in range(wanted)]


@torch.no_grad()
def held_out_sums(model: Transformer | Model, objective: Objective, windows: Windows, indices, batch_size: int,
                  precision: str, device: torch.device) -> torch.Tensor:
    """[summed loss, tokens it is over] (float64) over held-out windows `indices` of a network or a loaded Model
    (tokens: the labelled ones, or every maskable one for mdlm, whose loss is a bound per token).
    Each window's masks / FIM choices come from its own RNG seeded by (EVAL_SEED, index), so every evaluation
    sees the same task."""
    model = model.network if isinstance(model, Model) else model
    was_training = model.training
    model.eval()
    indices = list(indices)
    total = torch.zeros(2, dtype=torch.float64)
    for i in range(0, len(indices), batch_size):
        chunk = indices[i:i + batch_size]
        batch = objective.batch([windows[c] for c in chunk], [np.random.default_rng([EVAL_SEED, c]) for c in chunk])
        s = batch_loss_sum(model, model, objective, batch.to(device), precision, fused=False)
        total += torch.tensor([float(s), float(batch.count)], dtype=torch.float64)
    model.train(was_training)
    return total


class NonFiniteLoss(ClozelmError):
    pass


class Stopped(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the run after a step; its checkpoint is saved (the CLI exits with 130)."""


# ---------------------------------------------------------------- the trainer


class Trainer:
    """One run's loop over a built model. `cfg` is a complete TrainConfig (no field left to decide)."""

    def __init__(self, model: Transformer, objective: Objective, data: TokenData, cfg: TrainConfig,
                 run_dir: Path, dist_info: Dist | None = None, compile: bool = False, progress: bool = True,
                 extra_state: dict | None = None, callbacks: Iterable[Callback] = (), resume_command: str | None = None):
        self.cfg, self.run_dir, self.objective, self.data = cfg, Path(run_dir), objective, data
        self.resume_command = resume_command or f"clozelm train --resume --out {self.run_dir}"
        self.dist = dist_info or Dist()
        if cfg.world_size != self.dist.world:
            raise ClozelmError(f"the run was set up for {cfg.world_size} process(es) but {self.dist.world} are running")
        self.device = self.dist.device
        self.model = model.to(self.device)  # the plain module: state_dict, eval and saving use it
        if self.model.pooler is not None:
            self.model.pooler.requires_grad_(False)  # unused by the LM losses; DDP insists every trained param gets a grad
        self.model.train()
        # bf16-master: the network computes in bf16, the optimizer updates fp32 copies (training/precision.py).
        self.masters = MasterWeights(self.model) if cfg.precision == "bf16-master" else None
        forward = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel
            forward = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if self.masters is not None:  # bf16 gradients: averaged across ranks in fp32, rounded to bf16 once
                forward.register_comm_hook(None, fp32_mean_hook)
        self.ddp = forward if self.dist.enabled else None
        self.forward = torch.compile(forward) if compile else forward
        self.optimizer = make_optimizer(self.model, cfg, masters=self.masters)
        self.params = ([m for m in self.masters.masters if m.requires_grad] if self.masters is not None
                       else [p for p in self.model.parameters() if p.requires_grad])
        window = cfg.seq_len + objective.extra_tokens
        self.batcher = Batcher(data.train.windows(window, cfg.seq_len), objective, cfg, self.dist.rank)
        self.valid_windows = data.valid.windows(window, cfg.seq_len)
        self.metrics = Metrics(self.run_dir, self.dist.main)
        self.progress = Progress(cfg.steps, cfg.log_every, progress, self.dist.main)
        self.extra_state = extra_state or {}
        self.callbacks = list(callbacks)
        self.step = 0  # optimizer steps completed
        self.tokens_seen = 0
        self.elapsed = 0.0
        self.last_loss: float | None = None
        self.best_val, self.best_step = math.inf, 0  # lowest held-out loss so far, and its step
        self._stop: str | None = None

    # ------------------------------------------------------------ stopping

    def request_stop(self, reason: str = "a request") -> None:
        """End the run after the current step, with a checkpoint (safe from a callback or a signal handler)."""
        if self._stop is None:
            self._stop = reason

    @property
    def stop_requested(self) -> str | None:
        return self._stop

    # ------------------------------------------------------------ checkpoints

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / ckpt.CHECKPOINT

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
                "format": ckpt.CHECKPOINT_FORMAT, "step": self.step, "tokens_seen": self.tokens_seen,
                "elapsed": self.elapsed, "model": self.full_state_dict(), "optimizer": self.optimizer.state_dict(),
                "rng_cpu": rng_cpu, "rng_cuda": rng_cuda, "train_config": self.cfg.recipe(),
                "model_config": self.model.config.to_dict(), "data_key": self.data.key,
                "best_val": self.best_val, "best_step": self.best_step, **self.extra_state,
            }
            ckpt.save(state, self.checkpoint_path)
        self.dist.barrier()

    def load_checkpoint(self, state: dict) -> None:
        """Continue from `state` (ckpt.load_checkpoint_file), every entry checked against this run."""
        path = self.checkpoint_path
        if state["data_key"] != self.data.key:
            raise ClozelmError(f"the input files or tokenizer changed since {path} was written; "
                               "resume needs the same data (or start a new run)")
        ckpt.check_model_state(state["model"], self.model, path)
        self.load_full_state_dict(state["model"])
        ckpt.load_optimizer_state(self.optimizer, state["optimizer"], path)
        self.step, self.tokens_seen, self.elapsed = state["step"], state["tokens_seen"], float(state["elapsed"])
        self.best_val, self.best_step = float(state.get("best_val", math.inf)), int(state.get("best_step", 0))
        best = ckpt.read_best(self.run_dir / ckpt.BEST) if self.cfg.keep_best else None
        if best is not None and self.step < best[0] <= self.cfg.steps and best[1] < self.best_val:
            # Found after this checkpoint, before the run was stopped: this run's weights, measured on the same
            # held-out windows. They stay the best until an evaluation beats them (one resumed with another
            # --eval-every may never evaluate their step again).
            self.best_step, self.best_val = best
        rank = self.dist.rank
        if len(state["rng_cpu"]) > rank:
            cuda = state["rng_cuda"][rank] if self.device.type == "cuda" and len(state["rng_cuda"]) > rank else None
            ckpt.set_rng_state(state["rng_cpu"][rank], cuda, self.device, path)
        self.metrics.resume(self.step)

    # ------------------------------------------------------------ steps

    def train_step(self) -> dict:
        cfg, step = self.cfg, self.step
        lr = lr_at(cfg, step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        micro = [self.batcher.micro(step, m) for m in range(cfg.grad_accum)]
        # Normalise by the labelled tokens of the whole global batch (see the module docstring).
        count = self.dist.all_sum(torch.tensor(float(sum(b.count for b in micro)), dtype=torch.float64))
        scale = self.dist.world / max(float(count), 1.0)  # DDP averages gradients over ranks
        total = torch.zeros((), device=self.device)
        for m, batch in enumerate(micro):
            batch = batch.to(self.device, non_blocking=True)
            bias = locality_bias(cfg, step, self.model.config.n_head, batch.inputs.shape[1], self.device)
            # With fp32 masters each micro-batch's gradients move into them (summed in fp32), so DDP reduces each
            # micro-batch's; otherwise they sum in the parameters' .grad and DDP reduces the sum once, at the last.
            defer = self.ddp is not None and self.masters is None and m < len(micro) - 1
            with self.ddp.no_sync() if defer else contextlib.nullcontext():
                s = batch_loss_sum(self.forward, self.model, self.objective, batch, cfg.precision, cfg.fused_loss, bias)
                (s * scale).backward()
            if self.masters is not None and m < len(micro) - 1:
                self.masters.grads_to_masters()  # the last micro-batch's stay in the network for the step to read
            total += s.detach()
        clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        if self.masters is not None:
            grad_norm = self.masters.clip_grad_norm(clip)
        else:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip)
        loss = float(self.dist.all_sum(total.float().reshape(1))[0]) / max(float(count), 1.0)
        if not (math.isfinite(loss) and math.isfinite(float(grad_norm))):
            self.optimizer.zero_grad(set_to_none=True)
            if self.masters is not None:
                self.masters.zero_grad()
            where = (f"{self.checkpoint_path} (step {ckpt.read_step(self.checkpoint_path)}) is the last good checkpoint"
                     if self.checkpoint_path.is_file() else "no checkpoint had been written yet")
            raise NonFiniteLoss(f"loss is {loss} (gradient norm {float(grad_norm):.3g}) at step {step + 1}; stopped "
                                f"before updating the weights; {where}; start again with a lower --lr or --grad-clip (a resume "
                                "keeps the run's recipe and would meet the same batch)")
        if self.masters is not None:
            self.masters.step(self.optimizer)  # the weights' version counters move
        else:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            # torch's fused CPU AdamW changes the weights in place without moving their version counters, by
            # which inference copies of them (model/packed.py: validation, fill) know they are stale
            increment_version(self.params)
        self.step += 1
        return {"step": self.step, "loss": loss, "lr": lr, "grad_norm": float(grad_norm)}

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean loss per labelled token over `eval_examples` held-out windows (split over ranks)."""
        chosen = eval_windows(len(self.valid_windows), self.cfg.eval_examples, self.cfg.eval_spread)
        if not chosen:
            return None
        mine = chosen[self.dist.rank::self.dist.world]
        total = held_out_sums(self.model, self.objective, self.valid_windows, mine, self.cfg.batch_size,
                              self.cfg.precision, self.device)
        total = self.dist.all_sum(total).cpu()
        return float(total[0] / total[1]) if total[1] > 0 else None

    # ------------------------------------------------------------ best weights

    def _keep_if_best(self, val: float) -> None:
        if not val < self.best_val:
            return
        self.best_val, self.best_step = val, self.step
        if self.dist.main and self.cfg.keep_best:
            ckpt.save(ckpt.best_state(self.step, val, self.full_state_dict()), self.run_dir / ckpt.BEST)

    def load_best_weights(self) -> int | None:
        """Put the weights with the lowest held-out loss into the model; returns their step, or None when
        the model keeps its last weights (no evaluation ran, the last one was the best, or best.pt is gone
        or from another trajectory, e.g. after resuming with other settings)."""
        if not self.cfg.keep_best or self.best_step in (0, self.step):
            return None
        weights = ckpt.load_best(self.run_dir / ckpt.BEST, self.best_step, self.device)
        if weights is None:
            return None
        try:
            ckpt.check_model_state(weights, self.model, self.run_dir / ckpt.BEST)
        except ClozelmError:
            return None
        self.load_full_state_dict(weights)
        return self.best_step

    # ------------------------------------------------------------ weights at full precision

    def full_state_dict(self) -> dict:
        """The network's weights at full precision (the fp32 masters under bf16-master)."""
        return self.masters.state_dict() if self.masters is not None else self.model.state_dict()

    def load_full_state_dict(self, weights: dict) -> None:
        if self.masters is not None:
            self.masters.load_state_dict(weights)
        else:
            self.model.load_state_dict(weights)

    def full_precision_model(self) -> Transformer:
        """The network with its full-precision weights, for saving (the run's loop is over)."""
        if self.masters is not None:
            weights = self.masters.state_dict()
            self.model.to(torch.float32)
            self.model.load_state_dict(weights)
            self.masters = None
        return self.model

    # ------------------------------------------------------------ the loop

    def fit(self, stop_after: int | None = None) -> str | None:
        """Train to cfg.steps, or until a stop: returns None when the run is complete, else why it stopped
        (a checkpoint was saved). Ctrl-C/SIGTERM raise `Stopped` after saving."""
        cfg = self.cfg
        if self.step == 0 and self.dist.main:
            self.metrics.resume(0)  # a fresh metrics file
        if self.step >= cfg.steps:
            self.progress.message(f"run already complete ({self.step}/{cfg.steps} steps)")
            return None
        if len(self.valid_windows) == 0:
            self.progress.message(f"note: the held-out split has {self.data.valid.n_tokens} tokens, fewer than one "
                                  f"sequence; no evaluation")
        limit = self.step + stop_after if stop_after else None
        tokens_per_step = cfg.examples_per_step * cfg.seq_len
        val = self.metrics.last_val()
        signals = ckpt.StopSignals(self.request_stop, self.progress.message)
        try:
            with signals:
                while self.step < cfg.steps:
                    t0 = time.perf_counter()
                    rec = self.train_step()
                    if self.device.type == "cuda":  # the optimizer's kernels may still run: count them in this step
                        torch.cuda.synchronize(self.device)
                    dt = time.perf_counter() - t0
                    self.elapsed += dt
                    self.tokens_seen += tokens_per_step
                    self.last_loss = rec["loss"]
                    rec.update(tokens=self.tokens_seen, tokens_per_s=tokens_per_step / dt,
                               elapsed_s=round(self.elapsed, 3))
                    self.metrics.add(rec)
                    last = self.step == cfg.steps
                    if (cfg.eval_every and self.step % cfg.eval_every == 0) or last:
                        val = self.evaluate()
                        if val is not None:
                            evaluation = {"step": self.step, "val_loss": val, "val_ppl": math.exp(min(val, 50.0))}
                            self.metrics.add(evaluation)
                            self._keep_if_best(val)
                            rec = {**rec, **evaluation}
                    self.progress.update(self.step, rec["loss"], rec["tokens_per_s"], dt, val)
                    for callback in self.callbacks:
                        callback(self, rec)
                    if limit is not None and self.step >= limit and not last:
                        self.request_stop(f"stop_after={stop_after}")
                    # Every rank stops at the same step, and the same way (a signal on one rank stops all as one).
                    flags = self.dist.all_sum(torch.tensor([float(self._stop is not None),
                                                            float(signals.received is not None)]))
                    stopping, by_signal = bool(flags[0] > 0), bool(flags[1] > 0)
                    if stopping and self._stop is None:
                        self._stop = "a stop on another rank"
                    if (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or last or stopping:
                        self.save_checkpoint()
                        self.metrics.write_summaries()
                    if stopping and not last:
                        self.progress.message(f"clozelm: stopped by {self._stop} after step {self.step}; checkpoint "
                                              f"saved to {self.checkpoint_path}; continue with: {self.resume_command}")
                        if by_signal:
                            raise Stopped(self._stop)
                        return self._stop
        finally:
            self.progress.close()
        return None
