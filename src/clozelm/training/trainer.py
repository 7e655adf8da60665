"""Deprecated: trainer.py was split by concern. The loop, schedule and evaluation are in loop.py, the
checkpoint files in checkpoint.py, DDP in distributed.py, the progress line and metrics in progress.py,
TrainConfig in config.py; `train()` (runner.py) runs a whole training. This module keeps the old names
importable for a release."""

from __future__ import annotations

import warnings

from .checkpoint import BEST, CHECKPOINT, CHECKPOINT_FORMAT, load_checkpoint_file
from .config import TrainConfig
from .distributed import Dist, init_distributed
from .loop import (EVAL_SEED, Batcher, NonFiniteLoss, Trainer, autocast, held_out_sums, locality_bias,
                   logits_and_labels, lr_at, make_optimizer, param_groups)
from .progress import Metrics, Progress

warnings.warn("clozelm.training.trainer is deprecated: import from clozelm.training (train, TrainConfig) or its "
              "modules loop, checkpoint, distributed, progress", DeprecationWarning, stacklevel=2)

__all__ = ["BEST", "CHECKPOINT", "CHECKPOINT_FORMAT", "load_checkpoint_file", "TrainConfig", "Dist",
           "init_distributed", "EVAL_SEED", "Batcher", "NonFiniteLoss", "Trainer", "autocast", "held_out_sums",
           "locality_bias", "logits_and_labels", "lr_at", "make_optimizer", "param_groups", "Metrics", "Progress"]
