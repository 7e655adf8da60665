"""Training: token shards (data), objectives (clm, mlm, fim), the trainer loop and `clozelm train`."""

from .data import CorpusFiles, TokenData, build_token_cache, expand_inputs
from .objectives import OBJECTIVES, make_objective
from .trainer import TrainConfig, Trainer, lr_at

__all__ = ["CorpusFiles", "TokenData", "build_token_cache", "expand_inputs", "OBJECTIVES", "make_objective",
           "TrainConfig", "Trainer", "lr_at"]
