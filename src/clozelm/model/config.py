"""One configuration for every family: GPT-2 (causal, pre-LN), BERT (bidirectional, post-LN) and the Llama
family (GPT-2's causal pre-norm block with RMSNorm, rotary positions, SwiGLU and grouped-query attention).

The switches, not subclasses, decide the architecture:

    causal     True: each token sees only itself and the tokens to its left (GPT-2).
    pre_ln     True: x + f(LN(x)) with a final LayerNorm (GPT-2);
               False: LN(x + f(x)) with a LayerNorm on the embeddings (BERT).
    head       "tied": logits = h @ wte^T, no bias (GPT-2);
               "mlm":  dense + act + LN, then @ wte^T + bias (BERT's MLM head);
               "untied": logits = lm_head(h), its own matrix, no bias (Llama 2/3 7B+, Mistral);
               None:   no head, `logits` is None (BertModel, e.g. all-MiniLM-L6-v2).

The Llama family (Llama, SmolLM, Qwen2, Mistral) is GPT-2's block with these switches:

    norm       "rmsnorm": x / rms(x) * weight, no mean, no bias (default "layernorm").
    positions  "rope": rotary q/k embeddings in HF's rotate-half layout, base `rope_theta`, optional
               `rope_scaling` ({"rope_type": "linear"|"llama3", ...} as in HF configs); no wpe table
               (default "learned": GPT-2's wpe).
    mlp        "gated": c_proj(act(c_gate(x)) * c_fc(x)), SwiGLU with activation "silu" (default "plain").
    n_kv_head  grouped-query attention: n_kv_head key/value heads, each shared by n_head / n_kv_head query
               heads (None = n_head: plain multi-head attention).
    bias       False: no bias in any linear layer or norm; `qkv_bias` True gives q, k, v theirs back (Qwen2).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
import types
import typing
from dataclasses import dataclass, field

from ..errors import ClozelmError

ACTIVATIONS = ("gelu_tanh", "gelu", "relu", "silu")
HEADS = ("tied", "untied", "mlm", None)
NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rope")
MLPS = ("plain", "gated")
ROPE_SCALINGS = ("default", "linear", "llama3")


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
    # The Llama-family switches (see the module docstring); the defaults are GPT-2/BERT's.
    norm: str = "layernorm"
    positions: str = "learned"
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    mlp: str = "plain"
    n_kv_head: int | None = None
    bias: bool = True
    qkv_bias: bool | None = None  # None: same as `bias`
    # Free-form provenance kept in config.json (e.g. the special tokens a default model was trained with).
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_fields(self)  # each field's type and range first: the checks below combine fields
        problems = []
        if self.n_embd % self.n_head != 0:
            problems.append(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation {self.activation!r} is not one of {ACTIVATIONS}")
        if self.head not in HEADS:
            problems.append(f"head {self.head!r} is not one of {HEADS}")
        if self.head == "mlm" and self.causal:
            problems.append("an MLM head needs a bidirectional model (causal=False)")
        for name, allowed in (("norm", NORMS), ("positions", POSITIONS), ("mlp", MLPS)):
            if getattr(self, name) not in allowed:
                problems.append(f"{name} {getattr(self, name)!r} is not one of {allowed}")
        if self.n_kv_head is not None and (self.n_kv_head <= 0 or self.n_head % self.n_kv_head != 0):
            problems.append(f"n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}")
        if self.positions == "rope":
            if self.head_dim % 2:
                problems.append(f"rotary positions need an even head_dim, got {self.head_dim}")
            if not self.rope_theta > 0:
                problems.append(f"rope_theta must be positive, got {self.rope_theta}")
            problems += _rope_scaling_problems(self.rope_scaling)
        elif self.rope_scaling is not None:
            problems.append("rope_scaling needs positions='rope'")
        if problems:
            raise ClozelmError("invalid model config: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_width(self) -> int:
        return self.n_inner or 4 * self.n_embd

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def attn_qkv_bias(self) -> bool:
        return self.bias if self.qkv_bias is None else self.qkv_bias

    @property
    def family(self) -> str:
        if self.positions == "rope" or self.norm == "rmsnorm":
            return "llama"
        return "gpt2" if self.causal else "bert"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        if not isinstance(d, dict):
            raise ClozelmError(f"a model config must be an object of settings, got {_shown(d)}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(map(str, set(d) - known))
        if unknown:
            raise ClozelmError(f"unknown model config keys: {', '.join(k[:40] for k in unknown)}")
        return cls(**d)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def preset(cls, name: str, **overrides) -> "ModelConfig":
        if name not in PRESETS:
            raise ClozelmError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


class InvalidConfig(ClozelmError):
    """Fields of a model config with a wrong type or out of range: `problems` holds (field, what is wrong), so
    a reader of another file format can name the fields as that file spells them."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("invalid model config: " + self.describe())

    def describe(self, names: dict[str, str] | None = None) -> str:
        names = names or {}
        return "; ".join(f"{names.get(field, field)} {text}" for field, text in self.problems)


# Upper limits on sizes, far above any real model: a config asking for more (a typo, a corrupt file) would
# have torch try to allocate it, or overflow its 64-bit sizes, instead of failing in one line.
SIZE_LIMITS = {"vocab_size": 2**24, "n_positions": 2**24, "n_embd": 2**17, "n_layer": 2**12, "n_head": 2**12,
               "n_inner": 2**20, "type_vocab_size": 2**16}
_MINIMA = {"vocab_size": 1, "n_positions": 1, "n_embd": 1, "n_layer": 1, "n_head": 1, "n_inner": 1, "type_vocab_size": 0}
_KIND = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string", dict: "an object",
         list: "a list", type(None): "null"}


def _check_fields(cfg: "ModelConfig") -> None:
    """Each field has its declared type (an int is not a bool or 6.5; a float is finite) and range, or one
    ClozelmError lists every field that does not: whatever file a config came from, a wrong value stops here."""
    problems = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        declared = _field_types()[f.name]
        allowed = typing.get_args(declared) if typing.get_origin(declared) in (types.UnionType, typing.Union) \
            else (declared,)
        ok, value = _coerce(value, allowed)
        if not ok:
            kinds = " or ".join(_KIND.get(typing.get_origin(t) or t, getattr(t, "__name__", str(t))) for t in allowed)
            problems.append((f.name, f"must be {kinds}, got {_shown(value)}"))
            continue
        setattr(cfg, f.name, value)
        if f.name in _MINIMA and value is not None and not _MINIMA[f.name] <= value <= SIZE_LIMITS[f.name]:
            problems.append((f.name, f"must be from {_MINIMA[f.name]} to {SIZE_LIMITS[f.name]}, got {_shown(value)}"))
    if not problems:
        if not cfg.layer_norm_eps > 0:
            problems.append(("layer_norm_eps", f"must be positive, got {_shown(cfg.layer_norm_eps)}"))
        if not 0.0 <= cfg.dropout < 1.0:
            problems.append(("dropout", f"must be in [0, 1), got {_shown(cfg.dropout)}"))
    if problems:
        raise InvalidConfig(problems)


@functools.cache
def _field_types() -> dict[str, object]:
    return typing.get_type_hints(ModelConfig)


def _coerce(value, allowed: tuple) -> tuple[bool, object]:
    """(True, value as the first allowed type that takes it) or (False, value)."""
    for t in allowed:
        t = typing.get_origin(t) or t  # dict[str, int] -> dict
        if t is type(None):
            if value is None:
                return True, None
        elif t is bool:
            if isinstance(value, bool):
                return True, value
        elif t is int:
            if isinstance(value, numbers.Integral) and not isinstance(value, bool):
                return True, int(value)
        elif t is float:
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                try:
                    number = float(value)
                except OverflowError:
                    continue
                if math.isfinite(number):
                    return True, number
        elif isinstance(t, type):
            if isinstance(value, t):
                return True, value
        else:
            return True, value  # a Literal or the like: checked by the field's own rule
    return False, value


def _shown(value) -> str:
    """A value as a config file spells it, short enough for one line."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):  # not JSON, or an int too long to print
        text = f"an integer of {value.bit_length()} bits" if isinstance(value, int) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def rope_kind(scaling: dict | None) -> str:
    """Which of HF's rotary formulas `rope_scaling` asks for ("default": none), under either of its key names."""
    return "default" if not scaling else scaling.get("rope_type", scaling.get("type", "default"))


def _rope_scaling_problems(scaling) -> list[str]:
    if scaling is None:
        return []
    if not isinstance(scaling, dict):
        return [f"rope_scaling must be a dict or None, got {scaling!r}"]
    if scaling and "rope_type" not in scaling and "type" not in scaling:  # which formula its numbers are for
        return [f"rope_scaling {scaling} names no rope_type"]
    kind = rope_kind(scaling)
    if kind not in ROPE_SCALINGS:
        return [f"rope_scaling type {kind!r} is not supported (supported: {', '.join(ROPE_SCALINGS)})"]
    need = {"linear": ("factor",), "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                                               "original_max_position_embeddings")}.get(kind, ())
    missing = [k for k in need if not _coerce(scaling.get(k), (float,))[0]]  # a finite number, as a float field
    if missing:
        return [f"rope_scaling {kind!r} needs finite numbers for {', '.join(missing)}"]
    # The formulas divide by each of these (model/transformer.py, rope_inv_freq): out of range, the logits would be
    # inf or NaN with no word of why.
    if "factor" in need and scaling["factor"] <= 0:
        return [f"rope_scaling factor must be > 0, got {scaling['factor']}"]
    if kind == "llama3":
        low, high, old_len = scaling["low_freq_factor"], scaling["high_freq_factor"], scaling["original_max_position_embeddings"]
        if not 0 < low < high:
            return [f"rope_scaling 'llama3' needs 0 < low_freq_factor < high_freq_factor, got {low} and {high}"]
        if old_len <= 0:
            return [f"rope_scaling original_max_position_embeddings must be > 0, got {old_len}"]
    return []



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
PRESET_SHAPE = ("n_layer", "n_embd", "n_head")  # what a preset fixes; training and the study refuse them beside one
