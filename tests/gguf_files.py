"""GGUF files written the way llama.cpp's converter (convert_hf_to_gguf.py) writes them, from random
transformers models, with PyPI `gguf`'s writer: the test inputs for clozelm's GGUF reader.

What the converter does and these helpers copy: HF tensor names -> GGUF names; the rows of a "llama" file's
Q and K projections permuted (its RoPE kernel pairs adjacent dimensions), Qwen2's left alone; GPT-2's Conv1D
matrices transposed to [out, in] and its tied matrix written twice (token_embd and output); 1-D tensors kept
in F32 whatever the file type; the tokenizer as `tokenizer.ggml.*` metadata.
"""

from __future__ import annotations

import numpy as np
import torch

import gguf
from gguf import GGMLQuantizationType as Q

from clozelm.tokenizers.bpe import GPT2_BYTE_ORDER, bytes_to_symbols

# A small byte-level vocabulary: <|endoftext|>, the 256 bytes, a few merges, then unused slots up to the
# model's vocabulary size (llama.cpp pads vocabularies the same way).
MERGES = ["Ġ t", "h e", "Ġ a", "i n", "Ġt he", "e r", "o n", "Ġ s", "e d", "Ġ w"]


def tokenizer_metadata(vocab_size: int, pre: str = "smollm", add_bos: bool = False) -> dict:
    tokens = ["<|endoftext|>"] + [bytes_to_symbols(bytes([b])) for b in GPT2_BYTE_ORDER]
    tokens += ["".join(m.split(" ")) for m in MERGES]
    types = [3] + [1] * (len(tokens) - 1)
    while len(tokens) < vocab_size:
        tokens.append(f"[UNUSED_{len(tokens)}]")
        types.append(5)
    assert len(tokens) == vocab_size, "the test vocabulary needs at least 267 ids"
    return {"model": "gpt2", "pre": pre, "tokens": tokens, "token_type": types, "merges": MERGES,
            "bos_token_id": 0, "eos_token_id": 0, "add_bos_token": add_bos}


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's LlamaModel.permute: rows (i, i + Dh/2) of each head become (2i, 2i + 1)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _encode(array: np.ndarray, qtype: Q):
    """(data, raw_dtype) for GGUFWriter.add_tensor; K-quants, which the package cannot quantize, get random
    blocks with small finite scales (their values then come from the package's dequantizer)."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    if qtype == Q.F32 or array.ndim == 1:
        return array, None
    if qtype == Q.F16:
        return array.astype(np.float16), None
    if qtype in _K_SCALES:
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        rng = np.random.default_rng(array.size)
        blocks = rng.integers(0, 256, size=(array.size // block, size), dtype=np.uint8)
        for offset in _K_SCALES[qtype]:
            blocks[:, offset:offset + 2] = np.frombuffer(np.float16(0.002).tobytes(), dtype=np.uint8)
        return blocks.reshape(array.shape[0], -1), qtype
    return gguf.quants.quantize(array, qtype), qtype


# Byte offsets of the fp16 scales (d, dmin) inside one block of each K-quant (ggml-common.h).
_K_SCALES = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}


def write_llama_family(path, hf_model, qtype: Q = Q.F32, arch: str = "llama", tokenizer: dict | None = None,
                       extra: dict | None = None) -> None:
    """A LlamaForCausalLM (arch "llama") or Qwen2ForCausalLM (arch "qwen2") as llama.cpp would convert it."""
    c = hf_model.config
    n_head, n_kv = c.num_attention_heads, c.num_key_value_heads
    w = gguf.GGUFWriter(str(path), arch)
    w.add_uint32(f"{arch}.context_length", c.max_position_embeddings)
    w.add_uint32(f"{arch}.embedding_length", c.hidden_size)
    w.add_uint32(f"{arch}.block_count", c.num_hidden_layers)
    w.add_uint32(f"{arch}.feed_forward_length", c.intermediate_size)
    w.add_uint32(f"{arch}.attention.head_count", n_head)
    w.add_uint32(f"{arch}.attention.head_count_kv", n_kv)
    w.add_float32(f"{arch}.rope.freq_base", float(c.rope_parameters["rope_theta"]))
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", c.rms_norm_eps)
    w.add_uint32(f"{arch}.rope.dimension_count", c.hidden_size // n_head)
    _add_tokenizer(w, tokenizer if tokenizer is not None else tokenizer_metadata(c.vocab_size))
    for key, value in (extra or {}).items():
        w.add_string(key, value) if isinstance(value, str) else w.add_uint32(key, value)
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    rope = c.rope_parameters
    if rope.get("rope_type") == "llama3":  # the converter stores llama3 scaling as per-frequency divisors
        w.add_tensor("rope_freqs.weight", _llama3_rope_factors(rope, c.hidden_size // n_head))
    sd = hf_model.state_dict()
    for name, t in sd.items():
        a = t.detach().float().numpy()
        if name == "lm_head.weight":
            if c.tie_word_embeddings:
                continue
            gguf_name = "output.weight"
        elif name == "model.embed_tokens.weight":
            gguf_name = "token_embd.weight"
        elif name == "model.norm.weight":
            gguf_name = "output_norm.weight"
        else:
            parts = name.split(".")  # model.layers.{i}.{module...}.{weight|bias}
            layer, module, kind = parts[2], ".".join(parts[3:-1]), parts[-1]
            gguf_name = f"blk.{layer}.{names[module]}.{kind}"
            if arch == "llama" and module in ("self_attn.q_proj", "self_attn.k_proj"):
                a = permute(a, n_head if module == "self_attn.q_proj" else n_kv)
        data, raw = _encode(a, Q.Q8_0 if gguf_name == "token_embd.weight" and qtype not in (Q.F32, Q.F16, Q.BF16) else qtype)
        w.add_tensor(gguf_name, data, raw_dtype=raw)
    _finish(w)


def write_gpt2(path, hf_model, qtype: Q = Q.F32, tokenizer: dict | None = None) -> None:
    """A GPT2LMHeadModel as llama.cpp's GPT2Model converter writes it."""
    c = hf_model.config
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_uint32("gpt2.context_length", c.n_positions)
    w.add_uint32("gpt2.embedding_length", c.n_embd)
    w.add_uint32("gpt2.block_count", c.n_layer)
    w.add_uint32("gpt2.feed_forward_length", 4 * c.n_embd)
    w.add_uint32("gpt2.attention.head_count", c.n_head)
    w.add_float32("gpt2.attention.layer_norm_epsilon", c.layer_norm_epsilon)
    _add_tokenizer(w, tokenizer if tokenizer is not None else tokenizer_metadata(c.vocab_size, pre="gpt-2"))
    names = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "ln_2": "ffn_norm",
             "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
    for name, t in hf_model.state_dict().items():
        if name.endswith((".attn.bias", ".attn.masked_bias")) or name == "lm_head.weight":
            continue
        a = t.detach().float().numpy()
        name = name.removeprefix("transformer.")
        if name.endswith((".c_attn.weight", ".c_proj.weight", ".c_fc.weight")):
            a = a.T
        if name.startswith("h."):
            _, layer, *module, kind = name.split(".")
            gguf_name = f"blk.{layer}.{names['.'.join(module)]}.{kind}"
        else:
            gguf_name = {"wte.weight": "token_embd.weight", "wpe.weight": "position_embd.weight",
                         "ln_f.weight": "output_norm.weight", "ln_f.bias": "output_norm.bias"}[name]
        data, raw = _encode(a, qtype if gguf_name != "position_embd.weight" else Q.F32)
        w.add_tensor(gguf_name, data, raw_dtype=raw)
        if gguf_name == "token_embd.weight":  # the converter writes GPT-2's tied matrix twice
            w.add_tensor("output.weight", data, raw_dtype=raw)
    _finish(w)


def _llama3_rope_factors(rope: dict, head_dim: int) -> np.ndarray:
    """As convert_hf_to_gguf.py's LlamaModel computes them."""
    import math

    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old = rope["original_max_position_embeddings"]
    freqs = 1.0 / (rope["rope_theta"] ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            factors.append(1.0)
        elif wavelen > old / low:
            factors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def _add_tokenizer(w, tok: dict) -> None:
    if not tok:
        return
    w.add_string("tokenizer.ggml.model", tok["model"])
    if tok.get("pre") is not None:
        w.add_string("tokenizer.ggml.pre", tok["pre"])
    w.add_array("tokenizer.ggml.tokens", tok["tokens"])
    w.add_array("tokenizer.ggml.token_type", tok["token_type"])
    w.add_array("tokenizer.ggml.merges", tok["merges"])
    w.add_uint32("tokenizer.ggml.bos_token_id", tok["bos_token_id"])
    w.add_uint32("tokenizer.ggml.eos_token_id", tok["eos_token_id"])
    w.add_bool("tokenizer.ggml.add_bos_token", tok["add_bos_token"])


def _finish(w) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def random_llama(kind: str = "llama", **overrides):
    """A small random transformers model (norms and biases perturbed so a swapped tensor shows)."""
    import transformers

    base = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True, rope_theta=10000.0)
    base.update(overrides)
    cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
           "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}[kind]
    torch.manual_seed(0)
    model = cls[1](cls[0](**base)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model
