"""Training as a library: `train(TrainConfig(...)) -> Run` (the public `clozelm.train` loads `init` by name
and calls it), and the pieces it is made of.

    config.py       TrainConfig: every option, checked where it is made
    runner.py       train() and Run: set-up, resume, the trained model
    rundir.py       the run directory: layout, lock, run.json
    numerics.py     the settings that change the arithmetic, recorded and restored on resume
    loop.py         the optimisation loop (Trainer), schedule, batches, evaluation, callbacks
    checkpoint.py   checkpoint and best-weights files, checked on reading; stopping on a signal
    distributed.py  DDP process group and rank-0 set-up
    progress.py     the progress line and the metrics files; plot.py draws the loss curve
    data.py         token shards; objectives.py: clm, mlm, fim, hybrid (GPT-BERT), mdlm (masked diffusion)
    (the command, `clozelm train`, is clozelm/cli/train.py)
"""

from ..files import expand_inputs
from .config import InvalidTrainConfig, TrainConfig
from .data import CorpusFiles, TokenData, build_token_cache
from .loop import Callback, Stopped, Trainer, lr_at
from .objectives import OBJECTIVES, make_objective
from .runner import Run, train

__all__ = ["train", "TrainConfig", "Run", "InvalidTrainConfig", "Callback", "Stopped", "Trainer", "lr_at",
           "CorpusFiles", "TokenData", "build_token_cache", "expand_inputs", "OBJECTIVES", "make_objective"]
