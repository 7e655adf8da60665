"""One configuration for both families: GPT-2 (causal, pre-LN) and BERT (bidirectional, post-LN).

The switches, not subclasses, decide the architecture:

    causal     True: each token sees only itself and the tokens to its left (GPT-2).
    pre_ln     True: x + f(LN(x)) with a final LayerNorm (GPT-2);
               False: LN(x + f(x)) with a LayerNorm on the embeddings (BERT).
    head       "tied": logits = h @ wte^T, no bias (GPT-2);
               "mlm":  dense + act + LN, then @ wte^T + bias (BERT's MLM head);
               None:   no head, `logits` is None (BertModel, e.g. all-MiniLM-L6-v2).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import ClozelmError

ACTIVATIONS = ("gelu_tanh", "gelu", "relu")
HEADS = ("tied", "mlm", None)


@dataclass
class ModelConfig:
    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None  # MLP width; None means 4 * n_embd
    causal: bool = True
    pre_ln: bool = True
    activation: str = "gelu_tanh"  # GPT-2's tanh approximation; HF BERT checkpoints use exact "gelu"
    layer_norm_eps: float = 1e-5
    type_vocab_size: int = 0  # BERT's segment embeddings (2); 0 = none
    head: str | None = "tied"
    pooler: bool = False  # BERT's tanh(dense(h[CLS]))
    dropout: float = 0.0  # one rate for embeddings, attention probabilities and residual branches
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    # Free-form provenance kept in config.json (e.g. the special tokens a default model was trained with).
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if self.n_embd % max(self.n_head, 1) != 0:
            problems.append(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation {self.activation!r} is not one of {ACTIVATIONS}")
        if self.head not in HEADS:
            problems.append(f"head {self.head!r} is not one of {HEADS}")
        if self.head == "mlm" and self.causal:
            problems.append("an MLM head needs a bidirectional model (causal=False)")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if problems:
            raise ClozelmError("invalid model config: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_width(self) -> int:
        return self.n_inner or 4 * self.n_embd

    @property
    def family(self) -> str:
        return "gpt2" if self.causal else "bert"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ClozelmError(f"unknown model config keys: {', '.join(unknown)}")
        return cls(**d)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def preset(cls, name: str, **overrides) -> "ModelConfig":
        if name not in PRESETS:
            raise ClozelmError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


_GPT2 = dict(vocab_size=50257, n_positions=1024, causal=True, pre_ln=True, activation="gelu_tanh",
             layer_norm_eps=1e-5, head="tied", bos_token_id=50256, eos_token_id=50256)
_BERT = dict(vocab_size=30522, n_positions=512, causal=False, pre_ln=False, activation="gelu",
             layer_norm_eps=1e-12, type_vocab_size=2, head="mlm", pooler=True, pad_token_id=0)

PRESETS: dict[str, dict] = {
    "gpt2": dict(_GPT2, n_layer=12, n_embd=768, n_head=12),
    "gpt2-medium": dict(_GPT2, n_layer=24, n_embd=1024, n_head=16),
    "gpt2-large": dict(_GPT2, n_layer=36, n_embd=1280, n_head=20),
    "gpt2-xl": dict(_GPT2, n_layer=48, n_embd=1600, n_head=25),
    "bert-base": dict(_BERT, n_layer=12, n_embd=768, n_head=12),
    "bert-large": dict(_BERT, n_layer=24, n_embd=1024, n_head=16),
}
