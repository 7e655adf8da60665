"""Hugging Face format in and out: config.json <-> ModelConfig, HF tensor names <-> ours.

GPT-2 names map one to one (ours follow OpenAI's checkpoint) except that HF's Conv1D stores the four
projection matrices as (in, out), so they are transposed for nn.Linear. BERT's separate q, k, v
projections are concatenated into our fused c_attn.

A config HF has no class for (a bidirectional pre-LN model, a causal post-LN one, ...) is saved in the same
layout with `"model_type": "clozelm"`: the full ModelConfig in config.json and our own tensor names.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from ..errors import ClozelmError
from ..files import fsync_dir, make_dirs, read_text_file, remove_empty
from ..model.config import InvalidConfig, ModelConfig, rope_kind
from ..model.transformer import Transformer
from ..tokenizers import TOKENIZER_FILES
from . import tensors as tensor_io

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Buffers some GPT-2/BERT files carry that hold no learned weights.
IGNORED = re.compile(r"(^|\.)(attn\.bias|attn\.masked_bias|embeddings\.position_ids)$")
# BERT's next-sentence head: not part of the MLM model, dropped without a word rather than refused (a
# BertForPreTraining checkpoint is the usual way BERT weights come).
NSP_HEAD = re.compile(r"^cls\.seq_relationship\.")

_HF_ACT = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu": "gelu",
           "relu": "relu", "silu": "silu", "swish": "silu"}
_ACT_HF = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}


# ---------------------------------------------------------------- configs

NATIVE = "clozelm"


# How config.json spells a ModelConfig field, where it differs, so an error names the key the user sees.
HF_NAMES = {
    "gpt2": {"layer_norm_eps": "layer_norm_epsilon", "dropout": "resid_pdrop", "extra": "clozelm_extra"},
    "bert": {"n_positions": "max_position_embeddings", "n_embd": "hidden_size", "n_layer": "num_hidden_layers",
             "n_head": "num_attention_heads", "n_inner": "intermediate_size", "dropout": "hidden_dropout_prob",
             "extra": "clozelm_extra"},
}
HF_NAMES["llama"] = HF_NAMES["qwen2"] = HF_NAMES["mistral"] = {
    "n_positions": "max_position_embeddings", "n_embd": "hidden_size", "n_layer": "num_hidden_layers",
    "n_head": "num_attention_heads", "n_kv_head": "num_key_value_heads", "n_inner": "intermediate_size",
    "layer_norm_eps": "rms_norm_eps", "rope_scaling": "rope_scaling (or rope_parameters)", "extra": "clozelm_extra"}


def config_from_hf(d: dict, has_head: bool | None = None, has_pooler: bool = False) -> ModelConfig:
    """has_head/has_pooler come from the tensors actually present (config.json's `architectures` may lie).

    A missing key or a value of the wrong type or range is one ClozelmError naming the key as config.json spells it."""
    try:
        return _config_from_hf(d, has_head, has_pooler)
    except KeyError as e:
        raise ClozelmError(f"config.json has no {str(e.args[0])!r}, which a {d.get('model_type')} config needs") from None
    except InvalidConfig as e:
        raise ClozelmError(f"invalid config.json: {e.describe(HF_NAMES.get(d.get('model_type'), {}))}") from None


def _config_from_hf(d: dict, has_head: bool | None, has_pooler: bool) -> ModelConfig:
    model_type = d.get("model_type")
    if model_type == "gpt2":
        unsupported = {k: d[k] for k in ("add_cross_attention", "scale_attn_by_inverse_layer_idx") if d.get(k)}
        if d.get("scale_attn_weights") is False:
            unsupported["scale_attn_weights"] = False
        if unsupported:
            raise ClozelmError(f"unsupported GPT-2 config options: {unsupported}")
        act = _activation_from_hf(d.get("activation_function", "gelu_new"))
        return ModelConfig(
            vocab_size=d["vocab_size"], n_positions=d.get("n_positions", 1024), n_embd=d["n_embd"],
            n_layer=d["n_layer"], n_head=d["n_head"], n_inner=d.get("n_inner"), causal=True, pre_ln=True,
            activation=act, layer_norm_eps=d.get("layer_norm_epsilon", 1e-5),
            head="tied" if d.get("tie_word_embeddings", True) else "untied",  # GPT-2's default: tied
            dropout=d.get("resid_pdrop", 0.0), bos_token_id=d.get("bos_token_id"), eos_token_id=d.get("eos_token_id"),
            pad_token_id=d.get("pad_token_id"), extra=d.get("clozelm_extra", {}),
        )
    if model_type == "bert":
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise ClozelmError(f"unsupported BERT position_embedding_type {d['position_embedding_type']!r}")
        if d.get("is_decoder") or d.get("add_cross_attention"):
            raise ClozelmError("BERT decoder configs (is_decoder / add_cross_attention) are not supported")
        return ModelConfig(
            vocab_size=d["vocab_size"], n_positions=d.get("max_position_embeddings", 512), n_embd=d["hidden_size"],
            n_layer=d["num_hidden_layers"], n_head=d["num_attention_heads"], n_inner=d.get("intermediate_size"),
            causal=False, pre_ln=False, activation=_activation_from_hf(d.get("hidden_act", "gelu")),
            layer_norm_eps=d.get("layer_norm_eps", 1e-12), type_vocab_size=d.get("type_vocab_size", 2),
            head="mlm" if has_head else None, pooler=has_pooler, dropout=d.get("hidden_dropout_prob", 0.0),
            pad_token_id=d.get("pad_token_id", 0), extra=d.get("clozelm_extra", {}),
        )
    raise ClozelmError(f"unsupported model_type {model_type!r} in config.json (clozelm reads 'gpt2', 'bert' and its own 'clozelm')")


def _activation_from_hf(name: str) -> str:
    if not isinstance(name, str) or name not in _HF_ACT:
        raise ClozelmError(f"unsupported activation {name!r} (supported: {', '.join(_HF_ACT)})")
    return _HF_ACT[name]


def _is_gpt2(cfg: ModelConfig) -> bool:
    return (cfg.causal and cfg.pre_ln and cfg.head in ("tied", "untied") and not cfg.type_vocab_size and not cfg.pooler
            and _plain_block(cfg))


def _plain_block(cfg: ModelConfig) -> bool:
    """GPT-2's and BERT's block: none of the Llama-family switches set."""
    return (cfg.norm == "layernorm" and cfg.positions == "learned" and cfg.mlp == "plain" and cfg.bias
            and cfg.attn_qkv_bias and cfg.kv_heads == cfg.n_head)


def _is_bert(cfg: ModelConfig) -> bool:
    return not cfg.causal and not cfg.pre_ln and cfg.head in ("mlm", None) and _plain_block(cfg)


def config_to_hf(cfg: ModelConfig) -> dict:
    if is_llama(cfg):
        return llama_config_to_hf(cfg)
    if _is_gpt2(cfg):
        return {
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": cfg.vocab_size, "n_positions": cfg.n_positions, "n_ctx": cfg.n_positions,
            "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": cfg.n_inner,
            "activation_function": _ACT_HF[cfg.activation], "layer_norm_epsilon": cfg.layer_norm_eps,
            "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
            "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id,
            "scale_attn_weights": True, "tie_word_embeddings": cfg.head == "tied", "clozelm_extra": cfg.extra,
        }
    if _is_bert(cfg):
        return {
            "architectures": ["BertForMaskedLM" if cfg.head == "mlm" else "BertModel"], "model_type": "bert",
            "vocab_size": cfg.vocab_size, "max_position_embeddings": cfg.n_positions, "hidden_size": cfg.n_embd,
            "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head, "intermediate_size": cfg.mlp_width,
            "hidden_act": _ACT_HF[cfg.activation], "layer_norm_eps": cfg.layer_norm_eps,
            "type_vocab_size": max(cfg.type_vocab_size, 1), "hidden_dropout_prob": cfg.dropout,
            "attention_probs_dropout_prob": cfg.dropout, "pad_token_id": cfg.pad_token_id if cfg.pad_token_id is not None else 0,
            "position_embedding_type": "absolute", "tie_word_embeddings": True, "clozelm_extra": cfg.extra,
        }
    # No HF class: transformers cannot open it, clozelm.load can.
    return {"architectures": ["Transformer"], "model_type": NATIVE, "clozelm_config": cfg.to_dict()}


# ---------------------------------------------------------------- tensor names

def _strip_wrappers(name: str) -> str:
    # torch.compile and DDP wrap modules, in either order; their prefixes carry no meaning for the weights.
    prefixes = ("_orig_mod.", "module.")
    while name.startswith(prefixes):
        name = name[len(next(p for p in prefixes if name.startswith(p))):]
    return name


_BERT_LAYER = [  # (HF suffix inside encoder.layer.{i}., ours inside h.{i}.)
    ("attention.output.dense", "attn.c_proj"),
    ("attention.output.LayerNorm", "ln_1"),
    ("intermediate.dense", "mlp.c_fc"),
    ("output.dense", "mlp.c_proj"),
    ("output.LayerNorm", "ln_2"),
]
_BERT_TOP = [
    ("embeddings.word_embeddings", "wte"), ("embeddings.position_embeddings", "wpe"),
    ("embeddings.token_type_embeddings", "wtt"), ("embeddings.LayerNorm", "ln_emb"), ("pooler.dense", "pooler"),
    ("cls.predictions.transform.dense", "mlm.dense"), ("cls.predictions.transform.LayerNorm", "mlm.ln"),
]


def gpt2_from_hf(sd: dict[str, torch.Tensor], tied: bool = True) -> tuple[dict, list[str]]:
    """HF GPT-2 tensors -> ours. Returns (state dict, names we could not place). An untied model
    (tie_word_embeddings false) keeps its lm_head.weight as its own matrix."""
    out, unexpected = {}, []
    lm_head = None
    for name, t in sd.items():
        name = _strip_wrappers(name)
        if IGNORED.search(name):
            continue
        if name == "lm_head.weight":
            lm_head = t
            continue
        if name.startswith("transformer."):
            name = name[len("transformer."):]
        if not re.fullmatch(r"(wte|wpe|ln_f)\.(weight|bias)|h\.\d+\.(ln_1|ln_2|attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.(weight|bias)", name):
            unexpected.append(name)
            continue
        out[name] = t.t() if name.endswith(CONV1D) and t.dim() == 2 else t
    if not tied:
        if lm_head is not None:
            out["lm_head.weight"] = lm_head
        return out, unexpected
    if lm_head is not None:
        _tied_head(out, lm_head, "tie_word_embeddings is true or absent")
    return out, unexpected


def bert_from_hf(sd: dict[str, torch.Tensor]) -> tuple[dict, list[str], list[str]]:
    """HF BERT tensors -> ours. Returns (state dict, unexpected names, dropped NSP-head names)."""
    out, unexpected, dropped = {}, [], []
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    decoder = {}
    for name, t in sd.items():
        name = _strip_wrappers(name)
        if IGNORED.search(name):
            continue
        if NSP_HEAD.search(name):
            dropped.append(name)
            continue
        if name.startswith("bert."):
            name = name[len("bert."):]
        name = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", name))  # TF-era LayerNorm names
        m = re.fullmatch(r"encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.(weight|bias)", name)
        if m:
            qkv.setdefault((int(m[1]), m[3]), {})[m[2]] = t
            continue
        if name == "cls.predictions.bias":
            out["mlm.bias"] = t
            continue
        if name in ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias"):
            decoder[name] = t
            continue
        m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)", name)
        if m:
            ours = dict(_BERT_LAYER).get(m[2])
            if ours is None:
                unexpected.append(name)
            else:
                out[f"h.{m[1]}.{ours}.{m[3]}"] = t
            continue
        m = re.fullmatch(r"(.+)\.(weight|bias)", name)
        ours = dict(_BERT_TOP).get(m[1]) if m else None
        if ours is None:
            unexpected.append(name)
        else:
            out[f"{ours}.{m[2]}"] = t
    for (layer, kind), parts in sorted(qkv.items()):
        if set(parts) != {"query", "key", "value"}:
            missing = sorted({"query", "key", "value"} - set(parts))
            raise ClozelmError(f"layer {layer} lacks attention {kind} tensors for: {', '.join(missing)}")
        out[f"h.{layer}.attn.c_attn.{kind}"] = tensor_io.fused_qkv(f"layer {layer}", parts, ("query", "key", "value"))
    if "cls.predictions.decoder.weight" in decoder and "wte.weight" in out:
        if not torch.equal(decoder["cls.predictions.decoder.weight"], out["wte.weight"]):
            raise ClozelmError("cls.predictions.decoder.weight differs from the word embeddings: untied MLM decoders are not supported")
    if "cls.predictions.decoder.bias" in decoder and "mlm.bias" not in out:
        out["mlm.bias"] = decoder["cls.predictions.decoder.bias"]
    return out, unexpected, dropped


# ---------------------------------------------------------------- the Llama family (Llama, SmolLM, Qwen2, Mistral)

LLAMA_TYPES = ("llama", "qwen2", "mistral")
# Rotary frequency tables some older files store; recomputed from the config.
LLAMA_IGNORED = re.compile(r"(^|\.)rotary_emb\.inv_freq$")
_LLAMA_LAYER = [  # (HF name inside model.layers.{i}., ours inside h.{i}.); q/k/v are fused into attn.c_attn
    ("input_layernorm", "ln_1"), ("post_attention_layernorm", "ln_2"), ("self_attn.o_proj", "attn.c_proj"),
    ("mlp.gate_proj", "mlp.c_gate"), ("mlp.up_proj", "mlp.c_fc"), ("mlp.down_proj", "mlp.c_proj"),
]
_LLAMA_TOP = [("model.embed_tokens", "wte"), ("model.norm", "ln_f"), ("lm_head", "lm_head")]


def llama_config_from_hf(d: dict) -> ModelConfig:
    """config.json of LlamaForCausalLM / Qwen2ForCausalLM / MistralForCausalLM -> ModelConfig.

    Sliding-window attention (Mistral, some Qwen2) equals full attention while a text fits the window, so the
    context is capped at the window instead of implementing a second attention pattern."""
    model_type = d.get("model_type")
    try:
        n_embd, n_head = d["hidden_size"], d["num_attention_heads"]
        unsupported = {k: d[k] for k in ("attention_bias", "mlp_bias") if d.get(k)}
        head_dim = d.get("head_dim")
        if head_dim is not None and n_head and head_dim * n_head != n_embd:
            unsupported["head_dim"] = head_dim
        if unsupported:
            raise ClozelmError(f"unsupported {model_type} config options: {unsupported}")
        rope = d.get("rope_parameters") if isinstance(d.get("rope_parameters"), dict) else None  # transformers 5
        theta = (rope or {}).get("rope_theta", d.get("rope_theta", 10000.0))
        scaling = d.get("rope_scaling") if rope is None else rope
        if isinstance(scaling, dict):
            scaling = {k: v for k, v in scaling.items() if k != "rope_theta"}
            named = "rope_type" in scaling or "type" in scaling
            if not scaling or (named and rope_kind(scaling) == "default"):
                scaling = None  # plain rotary positions (numbers with no type stay, for ModelConfig to refuse)
        n_positions = d.get("max_position_embeddings", 2048)
        window = d.get("sliding_window")
        # Qwen2 slides the window only in the layers from max_window_layers on (none, when that is all of them;
        # transformers' default is 28)
        full_layers = 28 if d.get("max_window_layers") is None else d["max_window_layers"]
        slides = model_type == "mistral" or (d.get("use_sliding_window") and full_layers < d.get("num_hidden_layers", 0))
        if window and slides:
            n_positions = min(n_positions, window)
        return ModelConfig(
            vocab_size=d["vocab_size"], n_positions=n_positions, n_embd=n_embd,
            n_layer=d["num_hidden_layers"], n_head=n_head,
            n_kv_head=d.get("num_key_value_heads") or n_head, n_inner=d["intermediate_size"],
            causal=True, pre_ln=True, norm="rmsnorm", positions="rope", mlp="gated",
            activation=_activation_from_hf(d.get("hidden_act", "silu")),
            layer_norm_eps=d.get("rms_norm_eps", 1e-6), rope_theta=_number(theta), rope_scaling=scaling,
            bias=False, qkv_bias=model_type == "qwen2",
            head="tied" if d.get("tie_word_embeddings", False) else "untied",  # transformers' default: untied
            bos_token_id=_single_id(d, "bos_token_id"), eos_token_id=_single_id(d, "eos_token_id"),
            pad_token_id=_single_id(d, "pad_token_id"), extra=d.get("clozelm_extra", {}),
        )
    except InvalidConfig as e:
        raise ClozelmError(f"invalid config.json: {e.describe(HF_NAMES.get(model_type, {}))}") from None
    except (KeyError, TypeError, ValueError) as e:
        what = f"missing key {e}" if isinstance(e, KeyError) else str(e).splitlines()[0]
        raise ClozelmError(f"invalid {model_type} config.json: {what}") from None


def _number(value):
    # JSON writes a whole-number theta as an int; the config's check still refuses text, booleans and NaN.
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _single_id(d: dict, key: str):
    # Llama 3 lists several end-of-text ids; the first is the document end the tokenizer uses.
    value = d.get(key)
    if isinstance(value, list):
        value = value[0] if value else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):  # 1.5 is no token id; int() would make it 1
        raise ValueError(f"{key} must be a whole number, not {value!r}")
    return value


def is_llama(cfg: ModelConfig) -> bool:
    return (cfg.causal and cfg.pre_ln and cfg.norm == "rmsnorm" and cfg.positions == "rope" and cfg.mlp == "gated"
            and not cfg.bias and cfg.head in ("tied", "untied") and not cfg.type_vocab_size and not cfg.pooler
            and cfg.activation in _ACT_HF)


def llama_config_to_hf(cfg: ModelConfig) -> dict:
    """Qwen2ForCausalLM when q/k/v carry biases, LlamaForCausalLM otherwise (a Mistral file comes back as Llama:
    the same network once its context is capped at the sliding window)."""
    qwen2 = cfg.attn_qkv_bias
    d = {
        "architectures": ["Qwen2ForCausalLM" if qwen2 else "LlamaForCausalLM"], "model_type": "qwen2" if qwen2 else "llama",
        "vocab_size": cfg.vocab_size, "max_position_embeddings": cfg.n_positions, "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.mlp_width, "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_dim, "hidden_act": _ACT_HF[cfg.activation],
        "rms_norm_eps": cfg.layer_norm_eps, "rope_theta": cfg.rope_theta, "rope_scaling": cfg.rope_scaling,
        "tie_word_embeddings": cfg.head == "tied", "attention_dropout": cfg.dropout,
        "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id,
        "clozelm_extra": cfg.extra,
    }
    if qwen2:
        d.update(use_sliding_window=False, sliding_window=None)
    else:
        d.update(attention_bias=False, mlp_bias=False)
    return d


def llama_from_hf(sd: dict[str, torch.Tensor], tied: bool) -> tuple[dict, list[str]]:
    """HF Llama/Qwen2/Mistral tensors -> ours (q, k, v concatenated into c_attn). Returns (state dict, unplaced names).
    A tied model's lm_head.weight, when a file carries one, must equal the embeddings (or stand for them where they
    are missing: a tied pair saved once keeps the name that sorts first); transformers would drop a different one."""
    out, unexpected = {}, []
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    layer_map, top_map = dict(_LLAMA_LAYER), dict(_LLAMA_TOP)
    lm_head = None
    for name, t in sd.items():
        name = _strip_wrappers(name)
        if LLAMA_IGNORED.search(name):
            continue
        if name == "lm_head.weight":
            lm_head = t
            continue
        m = re.fullmatch(r"model\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", name)
        if m:
            qkv.setdefault((int(m[1]), m[3]), {})[m[2]] = t
            continue
        m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", name)
        if m and m[2] in layer_map:
            out[f"h.{m[1]}.{layer_map[m[2]]}.{m[3]}"] = t
            continue
        m = re.fullmatch(r"(.+)\.(weight|bias)", name)
        if m and m[1] in top_map:
            out[f"{top_map[m[1]]}.{m[2]}"] = t
        else:
            unexpected.append(name)
    for (layer, kind), parts in sorted(qkv.items()):
        if set(parts) != {"q", "k", "v"}:
            missing = sorted({"q", "k", "v"} - set(parts))
            raise ClozelmError(f"layer {layer} lacks attention {kind} tensors for: {', '.join(p + '_proj' for p in missing)}")
        out[f"h.{layer}.attn.c_attn.{kind}"] = tensor_io.fused_qkv(f"layer {layer}", parts, ("q", "k", "v"))
    if not tied and lm_head is not None:
        out["lm_head.weight"] = lm_head
    elif tied and lm_head is not None:
        _tied_head(out, lm_head, "tie_word_embeddings is true")
    return out, unexpected


def _tied_head(out: dict[str, torch.Tensor], lm_head: torch.Tensor, tie_reason: str) -> None:
    """A tied model's file that also holds lm_head.weight: the same matrix as the embeddings (or their only copy),
    never a head of its own that config.json would have clozelm drop."""
    if "wte.weight" not in out:
        out["wte.weight"] = lm_head  # a tied pair saved once, under the head's name (safetensors' save_model)
    elif not torch.equal(lm_head, out["wte.weight"]):
        raise ClozelmError("lm_head.weight differs from the token embeddings, but config.json ties them "
                           f"({tie_reason})")


def llama_to_hf(model: Transformer) -> dict[str, torch.Tensor]:
    cfg, out = model.config, {}
    inverse_layer, inverse_top = {o: h for h, o in _LLAMA_LAYER}, {o: h for h, o in _LLAMA_TOP}
    split = [cfg.n_embd, cfg.kv_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim]
    for name, t in model.state_dict().items():
        m = re.fullmatch(r"h\.(\d+)\.(.+)\.(weight|bias)", name)
        if m and m[2] == "attn.c_attn":
            for part, chunk in zip("qkv", t.split(split, 0)):
                out[f"model.layers.{m[1]}.self_attn.{part}_proj.{m[3]}"] = chunk
        elif m:
            out[f"model.layers.{m[1]}.{inverse_layer[m[2]]}.{m[3]}"] = t
        else:
            module, kind = name.rsplit(".", 1)
            out[f"{inverse_top[module]}.{kind}"] = t
    return out


def to_hf(model: Transformer) -> dict[str, torch.Tensor]:
    """Our tensors -> HF names: views of the model's own tensors (transposed or split where HF's layout differs),
    no copies; tensors.write_safetensors copies one at a time as it writes, so saving never holds a second copy
    of the model."""
    cfg, out = model.config, {}
    if is_llama(cfg):
        return llama_to_hf(model)
    sd = model.state_dict()
    if not (_is_gpt2(cfg) or _is_bert(cfg)):  # saved as model_type "clozelm": our names as they are
        return dict(sd)
    if cfg.causal:
        for name, t in sd.items():
            out[name if name == "lm_head.weight" else "transformer." + name] = t.t() if name.endswith(CONV1D) else t
        return out
    if model.wtt is None:  # HF BERT always has segment embeddings: a single all-zero row adds nothing
        sd = {**sd, "wtt.weight": torch.zeros(1, cfg.n_embd, dtype=model.wte.weight.dtype)}
    inverse_layer = {ours: hf for hf, ours in _BERT_LAYER}
    inverse_top = {ours: hf for hf, ours in _BERT_TOP}
    prefix = "bert." if cfg.head == "mlm" else ""
    for name, t in sd.items():
        m = re.fullmatch(r"h\.(\d+)\.(.+)\.(weight|bias)", name)
        if m and m[2] == "attn.c_attn":
            for part, chunk in zip(("query", "key", "value"), t.chunk(3, 0)):
                out[f"{prefix}encoder.layer.{m[1]}.attention.self.{part}.{m[3]}"] = chunk
        elif m:
            out[f"{prefix}encoder.layer.{m[1]}.{inverse_layer[m[2]]}.{m[3]}"] = t
        elif name == "mlm.bias":
            out["cls.predictions.bias"] = t
        else:
            module, kind = name.rsplit(".", 1)
            hf = inverse_top[module]
            out[(hf if hf.startswith("cls.") else prefix + hf) + "." + kind] = t
    return out


# ---------------------------------------------------------------- directories

def read_config_json(path: Path) -> dict:
    """The settings object in a config.json, or one line saying why there is none."""
    text = read_text_file(path, "config file")
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ClozelmError(f"{path} is not valid JSON: {e}") from None
    except (ValueError, RecursionError) as e:  # an integer too long for Python to read, nesting too deep
        raise ClozelmError(f"{path} is not valid JSON: {str(e).split(';')[0][:120] or type(e).__name__}") from None
    if not isinstance(d, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(d), "a number")
        raise ClozelmError(f"{path} holds {kind}, expected a JSON object of settings")
    return d


def load_hf_dir(path: Path, dtype: torch.dtype = torch.float32) -> Transformer:
    """The network (eval mode) of a Hugging Face model directory, its weights in `dtype`."""
    hf_config = read_config_json(path / "config.json")
    kind = hf_config.get("model_type")
    # The config first: a setting clozelm refuses is said before gigabytes of weights are read.
    quantized = hf_config.get("quantization_config")
    if quantized:
        method = quantized.get("quant_method", "?") if isinstance(quantized, dict) else "?"
        raise ClozelmError(f"{path} holds quantized weights ({method}): clozelm reads fp32, bf16 and fp16 checkpoints, "
                           "and GGUF files (`--dtype int8` or `int4` quantizes after loading)")
    if kind in LLAMA_TYPES:
        cfg = llama_config_from_hf(hf_config)
    elif kind == NATIVE:
        if not isinstance(hf_config.get("clozelm_config"), dict):
            raise ClozelmError(f"{path / 'config.json'}: model_type 'clozelm' needs a 'clozelm_config' object")
        try:
            cfg = ModelConfig.from_dict(hf_config["clozelm_config"])
        except ClozelmError as e:
            detail = e.describe() if isinstance(e, InvalidConfig) else str(e)
            raise ClozelmError(f"{path / 'config.json'}: invalid clozelm_config: {detail}") from None
    else:
        cfg = config_from_hf(hf_config)  # GPT-2, BERT (its heads as its tensors say, below), or the model_type error
    sd = tensor_io.read_weights(path)
    if kind == "gpt2":
        ours, unexpected = gpt2_from_hf(sd, tied=cfg.head == "tied")
    elif kind == "bert":
        ours, unexpected, _nsp = bert_from_hf(sd)
        cfg = config_from_hf(hf_config, has_head="mlm.dense.weight" in ours, has_pooler="pooler.weight" in ours)
    elif kind in LLAMA_TYPES:
        ours, unexpected = llama_from_hf(sd, tied=cfg.head == "tied")
    else:  # clozelm's own layout: its names are the network's (any other model_type was refused above)
        ours, unexpected = sd, []
    # The file's own dict goes: then each tensor read is freed as soon as build_model has converted it (a bf16
    # checkpoint loaded as fp32 would otherwise be held twice over, and Llama's q/k/v beside their fused copy).
    del sd
    return build_model(cfg, ours, unexpected, source=str(path), dtype=dtype)


def build_model(cfg: ModelConfig, sd: dict[str, torch.Tensor], unexpected: list[str] = (), source: str = "",
                dtype: torch.dtype = torch.float32) -> Transformer:
    """Instantiate without random init (meta device) and fill every tensor, converted to `dtype`, or fail listing
    what is wrong (`sd`'s values are replaced by their converted tensors). Converted here and not after: a bf16 file
    read as bf16 keeps its tensors as they are, where an fp32 model first would take twice their memory."""
    with torch.device("meta"):
        model = Transformer(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(unexpected) | (set(sd) - set(expected)))
    misshaped = sorted(f"{k} {tuple(sd[k].shape)} != {expected[k]}" for k in set(sd) & set(expected)
                       if tuple(sd[k].shape) != expected[k])
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensors: {_short_list(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensors: {_short_list(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped tensors (file != config): {_short_list(misshaped)}")
    if problems:
        raise ClozelmError(f"weights in {source} do not match the config: " + "; ".join(problems))
    stored = next(iter(sd.values())).dtype
    if not stored.is_floating_point:
        raise ClozelmError(f"weights in {source} are not floating point ({stored})")
    for name in list(sd):  # one tensor at a time, each original dropped once converted (when nothing else holds it)
        sd[name] = sd[name].to(dtype).contiguous()  # GPT-2's Conv1D weights arrive transposed: views, until here
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval()


def _short_list(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def save_pretrained(model: Transformer, out_dir, tokenizer=None, overwrite: bool = False) -> None:
    """config.json + model.safetensors (+ the tokenizer's files) that `transformers` opens as GPT2LMHeadModel/Bert*.

    All or nothing: every file is first written into a hidden staging folder inside `out_dir`; only when all are
    written, and none would replace a file already there (unless `overwrite`), are they renamed into place. A
    refusal, a full disk or a bad tokenizer leaves `out_dir` as it was. The staging folder also tells which files
    the tokenizer writes, whatever its kind (vocab.json, merges.txt, vocab.txt, tokenizer_config.json, ...).
    """
    out = Path(out_dir)
    hf_config = json.dumps(config_to_hf(model.config), indent=2) + "\n"
    created = make_dirs(out)
    staging = None
    done = False
    try:
        staging = Path(tempfile.mkdtemp(prefix=".clozelm-save-", dir=out))
        if tokenizer is not None:  # first: it is quick, and its file names are needed before anything is replaced
            tokenizer.save_pretrained(staging)
        names = sorted({"config.json", "model.safetensors", *(p.name for p in staging.iterdir())})
        _check_targets(out, names, overwrite)
        # Files a loader would read beside the new ones (another model's tokenizer.json, a weight index): left
        # there, they would make the directory a mixture that does not load. Without a tokenizer to save, the
        # directory's own tokenizer files stay (they are what the weights are saved beside).
        kinds = MODEL_DIR_FILES if tokenizer is not None else WEIGHT_FILES
        stale = [name for name in kinds if name not in names and os.path.lexists(out / name)]
        in_the_way = [name for name in stale if (out / name).is_dir() and not (out / name).is_symlink()]
        if in_the_way:
            raise ClozelmError(f"{out / in_the_way[0]} is a directory where another model's file would be; move it")
        if stale and not overwrite:
            raise ClozelmError(f"{out} holds another model's {', '.join(stale)}; choose a new directory or pass "
                               "--overwrite (overwrite=True in Python), which removes them")
        tensor_io.write_safetensors(to_hf(model), staging / "model.safetensors", metadata={"format": "pt"})
        tensor_io.atomic_write_text(staging / "config.json", hf_config)
        for name in names:
            target = out / name
            if target.is_file() and not target.is_symlink():  # a replaced file keeps the permissions it had
                os.chmod(staging / name, target.stat().st_mode & 0o7777)
            os.replace(staging / name, target)
        for name in stale:
            os.remove(out / name)
        fsync_dir(out)
        done = True
    except OSError as e:
        where = e.filename if e.filename and ".clozelm-save-" not in str(e.filename) else out
        raise ClozelmError(f"cannot write {where}: {e.strerror or type(e).__name__}") from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if not done:
            remove_empty(created)


# Every file a model directory's loader reads: the weights (and their index), any kind of tokenizer's files.
WEIGHT_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# (and what transformers reads beside them: another model's generation settings, added tokens or SentencePiece
# model would change how the saved one generates or tokenizes there)
MODEL_DIR_FILES = WEIGHT_FILES + TOKENIZER_FILES + ("generation_config.json", "pytorch_model.bin.index.json")


def _check_targets(out: Path, names: list[str], overwrite: bool) -> None:
    in_the_way = [name for name in names if (out / name).is_dir()]
    if in_the_way:
        raise ClozelmError(f"{out / in_the_way[0]} is a directory; it is in the way of the file clozelm would write")
    clobbered = [name for name in names if os.path.lexists(out / name)]
    if clobbered and not overwrite:
        raise ClozelmError(f"refusing to overwrite {', '.join(clobbered)} in {out}; choose a new directory or pass "
                           "--overwrite (overwrite=True in Python)")


def is_hf_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and any(
        (path / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"))

