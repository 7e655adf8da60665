"""Hugging Face format in and out: config.json <-> ModelConfig, HF tensor names <-> ours.

GPT-2 names map one to one (ours follow OpenAI's checkpoint) except that HF's Conv1D stores the four
projection matrices as (in, out), so they are transposed for nn.Linear. BERT's separate q, k, v
projections are concatenated into our fused c_attn.

A config HF has no class for (a bidirectional pre-LN model, a causal post-LN one, ...) is saved in the same
layout with `"model_type": "clozelm"`: the full ModelConfig in config.json and our own tensor names.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..errors import ClozelmError
from ..model.config import ModelConfig
from ..model.transformer import Transformer
from . import tensors as tensor_io

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Buffers some GPT-2/BERT files carry that hold no learned weights.
IGNORED = re.compile(r"(^|\.)(attn\.bias|attn\.masked_bias|embeddings\.position_ids)$")
# BERT's next-sentence head: not part of the MLM model, dropped with a note rather than an error.
NSP_HEAD = re.compile(r"^cls\.seq_relationship\.")

_HF_ACT = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
_ACT_HF = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}


# ---------------------------------------------------------------- configs

NATIVE = "clozelm"


def config_from_hf(d: dict, has_head: bool | None = None, has_pooler: bool = False) -> ModelConfig:
    """has_head/has_pooler come from the tensors actually present (config.json's `architectures` may lie)."""
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
            activation=act, layer_norm_eps=d.get("layer_norm_epsilon", 1e-5), head="tied",
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
    if name not in _HF_ACT:
        raise ClozelmError(f"unsupported activation {name!r} (supported: {', '.join(_HF_ACT)})")
    return _HF_ACT[name]


def _is_gpt2(cfg: ModelConfig) -> bool:
    return cfg.causal and cfg.pre_ln and cfg.head == "tied" and not cfg.type_vocab_size and not cfg.pooler


def _is_bert(cfg: ModelConfig) -> bool:
    return not cfg.causal and not cfg.pre_ln and cfg.head in ("mlm", None)


def config_to_hf(cfg: ModelConfig) -> dict:
    if _is_gpt2(cfg):
        return {
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": cfg.vocab_size, "n_positions": cfg.n_positions, "n_ctx": cfg.n_positions,
            "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": cfg.n_inner,
            "activation_function": _ACT_HF[cfg.activation], "layer_norm_epsilon": cfg.layer_norm_eps,
            "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
            "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id,
            "scale_attn_weights": True, "tie_word_embeddings": True, "clozelm_extra": cfg.extra,
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
    # torch.compile and DDP wrap modules; their prefixes carry no meaning for the weights.
    for prefix in ("_orig_mod.", "module."):
        while name.startswith(prefix):
            name = name[len(prefix):]
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


def gpt2_from_hf(sd: dict[str, torch.Tensor]) -> tuple[dict, list[str]]:
    """HF GPT-2 tensors -> ours. Returns (state dict, names we could not place)."""
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
    if lm_head is not None and "wte.weight" in out and not torch.equal(lm_head, out["wte.weight"]):
        raise ClozelmError("lm_head.weight differs from the token embeddings: GPT-2's head is tied, untied heads are not supported")
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
        out[f"h.{layer}.attn.c_attn.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], 0)
    if "cls.predictions.decoder.weight" in decoder and "wte.weight" in out:
        if not torch.equal(decoder["cls.predictions.decoder.weight"], out["wte.weight"]):
            raise ClozelmError("cls.predictions.decoder.weight differs from the word embeddings: untied MLM decoders are not supported")
    if "cls.predictions.decoder.bias" in decoder and "mlm.bias" not in out:
        out["mlm.bias"] = decoder["cls.predictions.decoder.bias"]
    return out, unexpected, dropped


def to_hf(model: Transformer) -> dict[str, torch.Tensor]:
    """Our tensors -> HF names, contiguous and unshared (safetensors refuses shared storage)."""
    cfg, out = model.config, {}
    sd = model.state_dict()
    if not (_is_gpt2(cfg) or _is_bert(cfg)):  # saved as model_type "clozelm": our names as they are
        return {name: t.contiguous().clone() for name, t in sd.items()}
    if cfg.causal:
        for name, t in sd.items():
            out["transformer." + name] = (t.t() if name.endswith(CONV1D) else t).contiguous().clone()
        return out
    if model.wtt is None:  # HF BERT always has segment embeddings: a single all-zero row adds nothing
        sd = {**sd, "wtt.weight": torch.zeros(1, cfg.n_embd, dtype=model.wte.weight.dtype)}
    inverse_layer = {ours: hf for hf, ours in _BERT_LAYER}
    inverse_top = {ours: hf for hf, ours in _BERT_TOP}
    prefix = "bert." if cfg.head == "mlm" else ""
    for name, t in sd.items():
        t = t.contiguous().clone()
        m = re.fullmatch(r"h\.(\d+)\.(.+)\.(weight|bias)", name)
        if m and m[2] == "attn.c_attn":
            for part, chunk in zip(("query", "key", "value"), t.chunk(3, 0)):
                out[f"{prefix}encoder.layer.{m[1]}.attention.self.{part}.{m[3]}"] = chunk.contiguous().clone()
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
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ClozelmError(f"{path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ClozelmError(f"{path} is not valid JSON: {e}") from None


def load_hf_dir(path: Path) -> Transformer:
    hf_config = read_config_json(path / "config.json")
    sd = tensor_io.read_weights(path)
    if hf_config.get("model_type") == "gpt2":
        ours, unexpected = gpt2_from_hf(sd)
        cfg = config_from_hf(hf_config)
    elif hf_config.get("model_type") == "bert":
        ours, unexpected, _nsp = bert_from_hf(sd)
        cfg = config_from_hf(hf_config, has_head="mlm.dense.weight" in ours, has_pooler="pooler.weight" in ours)
    elif hf_config.get("model_type") == NATIVE:
        if not isinstance(hf_config.get("clozelm_config"), dict):
            raise ClozelmError(f"{path / 'config.json'}: model_type 'clozelm' needs a 'clozelm_config' object")
        try:
            cfg = ModelConfig.from_dict(hf_config["clozelm_config"])
        except (TypeError, ValueError) as e:
            raise ClozelmError(f"{path / 'config.json'}: invalid clozelm_config ({e})") from None
        ours, unexpected = sd, []
    else:
        cfg = config_from_hf(hf_config)  # raises the unsupported-model_type error
        raise AssertionError("unreachable")
    return build_model(cfg, ours, unexpected, source=str(path))


def build_model(cfg: ModelConfig, sd: dict[str, torch.Tensor], unexpected: list[str] = (), source: str = "") -> Transformer:
    """Instantiate without random init (meta device) and fill every tensor, or fail listing what is wrong."""
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
    dtype = next(iter(sd.values())).dtype
    if not dtype.is_floating_point:
        raise ClozelmError(f"weights in {source} are not floating point ({dtype})")
    model.load_state_dict({k: v.to(torch.float32) for k, v in sd.items()}, strict=True, assign=True)
    return model.eval()


def _short_list(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def save_pretrained(model: Transformer, out_dir, overwrite: bool = False) -> None:
    """config.json + model.safetensors (+ tokenizer files) that `transformers` opens as GPT2LMHeadModel/Bert*."""
    out = Path(out_dir)
    hf_config = config_to_hf(model.config)
    targets = [out / "config.json", out / "model.safetensors"]
    if out.exists() and not out.is_dir():
        raise ClozelmError(f"{out} exists and is not a directory")
    clobbered = [str(p) for p in targets if p.exists()]
    if clobbered and not overwrite:
        raise ClozelmError(f"refusing to overwrite {', '.join(clobbered)} (pass overwrite=True / --overwrite)")
    out.mkdir(parents=True, exist_ok=True)
    tensor_io.write_safetensors(to_hf(model), out / "model.safetensors", metadata={"format": "pt"})
    tensor_io.atomic_write_text(out / "config.json", json.dumps(hf_config, indent=2) + "\n")
    if model.tokenizer is not None:
        save_tokenizer(model.tokenizer, out)


def save_tokenizer(tokenizer, out: Path) -> None:
    if getattr(tokenizer, "name", None) == "bpe":
        tokenizer.save(out, format="both")
    else:
        tokenizer.save(out)


def is_hf_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and any(
        (path / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"))

