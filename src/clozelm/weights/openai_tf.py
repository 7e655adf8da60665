"""OpenAI's original GPT-2 checkpoints (hparams.json + model.ckpt.*), read without TensorFlow.

A TensorFlow V2 checkpoint is two files: `model.ckpt.index`, a LevelDB-format sorted table mapping each
variable name to a small protobuf (dtype, shape, offset, size), and `model.ckpt.data-00000-of-00001`,
the raw little-endian tensor bytes. Both formats are simple and stable, so a ~100-line reader here
spares users a 500 MB TensorFlow install just to convert four files.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch

from ..errors import ClozelmError
from ..model.config import InvalidConfig, ModelConfig
from .hf import read_config_json

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48  # two block handles padded to 40 bytes + 8-byte magic
# TensorFlow DataType enum -> numpy dtype (little-endian)
TF_DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 4: "u1", 5: "<i2", 6: "i1", 9: "<i8", 10: "?", 19: "<f2"}
TF_BFLOAT16 = 14


def is_openai_dir(path: Path) -> bool:
    return (path / "hparams.json").is_file() and (path / "model.ckpt.index").is_file()


# ---------------------------------------------------------------- wire formats

def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _protobuf_fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """Decode one protobuf message into (field number, value) pairs; enough for BundleEntryProto."""
    fields, pos = [], 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        fields.append((number, value))
    return fields


def _read_block(data: bytes, offset: int, size: int) -> list[tuple[bytes, bytes]]:
    """Entries of one table block: prefix-compressed keys, then a restart array we can ignore."""
    block = data[offset:offset + size]
    if len(block) != size or offset + size + 5 > len(data):
        raise ValueError("block past the end of the file")
    if data[offset + size] != 0:
        raise ValueError("compressed table blocks are not supported")
    num_restarts = int.from_bytes(block[-4:], "little")
    limit = size - 4 - 4 * num_restarts
    entries, key, pos = [], b"", 0
    while pos < limit:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        value_len, pos = _varint(block, pos)
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        entries.append((key, block[pos:pos + value_len]))
        pos += value_len
    return entries


def read_table(path: Path) -> dict[str, bytes]:
    data = path.read_bytes()
    if len(data) < FOOTER_SIZE or int.from_bytes(data[-8:], "little") != TABLE_MAGIC:
        raise ValueError("not a TensorFlow checkpoint index (bad magic number)")
    footer = data[-FOOTER_SIZE:]
    _meta_offset, pos = _varint(footer, 0)
    _meta_size, pos = _varint(footer, pos)
    index_offset, pos = _varint(footer, pos)
    index_size, pos = _varint(footer, pos)
    table = {}
    for _, handle in _read_block(data, index_offset, index_size):
        block_offset, p = _varint(handle, 0)
        block_size, _ = _varint(handle, p)
        for key, value in _read_block(data, block_offset, block_size):
            table[key.decode("utf-8")] = value
    return table


def read_tf_checkpoint(prefix: Path) -> dict[str, np.ndarray]:
    """All tensors of a V2 checkpoint given its prefix (e.g. dir/model.ckpt)."""
    index = Path(str(prefix) + ".index")
    try:
        table = read_table(index)
        header = dict(_protobuf_fields(table.pop("", b"")))
        num_shards = header.get(1, 1)
        if header.get(2, 0) != 0:
            raise ValueError("big-endian checkpoints are not supported")
        shards = {}
        tensors = {}
        for name, entry in table.items():
            fields = _protobuf_fields(entry)
            f = dict(fields)
            if 7 in f:
                raise ValueError(f"{name} is a partitioned (sliced) variable, which is not supported")
            dtype_code = f.get(1, 0)
            shape = [dict(_protobuf_fields(d)).get(1, 0) for n, d in _protobuf_fields(f.get(2, b"")) if n == 2]
            shard = f.get(3, 0)
            if shard not in shards:
                data_path = Path(f"{prefix}.data-{shard:05d}-of-{num_shards:05d}")
                shards[shard] = np.memmap(data_path, dtype=np.uint8, mode="r")
            raw = shards[shard][f.get(4, 0):f.get(4, 0) + f.get(5, 0)]
            tensors[name] = _decode_tensor(name, dtype_code, shape, raw)
        return tensors
    except FileNotFoundError as e:
        raise ClozelmError(f"TensorFlow checkpoint file missing: {e.filename}") from None
    except (ValueError, IndexError, UnicodeDecodeError) as e:
        raise ClozelmError(f"{index} is not a readable TensorFlow checkpoint (corrupt or truncated?): {e}") from None


def _decode_tensor(name: str, dtype_code: int, shape: list[int], raw: np.ndarray) -> np.ndarray:
    count = int(np.prod(shape)) if shape else 1
    if dtype_code == TF_BFLOAT16:
        if raw.size != 2 * count:
            raise ValueError(f"{name}: {raw.size} bytes for {count} bfloat16 values")
        as_f32 = raw.view("<u2").astype(np.uint32) << 16  # bfloat16 is the top half of a float32
        return as_f32.view("<f4").reshape(shape)
    if dtype_code not in TF_DTYPES:
        raise ValueError(f"{name}: unsupported TensorFlow dtype code {dtype_code}")
    dtype = np.dtype(TF_DTYPES[dtype_code])
    if raw.size != dtype.itemsize * count:
        raise ValueError(f"{name}: {raw.size} bytes, expected {dtype.itemsize * count} for shape {shape}")
    return np.array(raw).view(dtype).reshape(shape)


# ---------------------------------------------------------------- GPT-2 names

def gpt2_from_openai(tensors: dict[str, np.ndarray]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """model/h3/attn/c_attn/w [1, in, out] -> h.3.attn.c_attn.weight [out, in]; g/b -> weight/bias."""
    out, unexpected = {}, []
    for name, value in tensors.items():
        m = re.fullmatch(r"model/(wte|wpe|ln_f/[gb]|h(\d+)/(ln_1|ln_2|attn/c_attn|attn/c_proj|mlp/c_fc|mlp/c_proj)/([gbw]))", name)
        if not m:
            unexpected.append(name)
            continue
        t = torch.from_numpy(np.ascontiguousarray(value)).float()
        if m[1] in ("wte", "wpe"):
            out[f"{m[1]}.weight"] = t
        elif m[1].startswith("ln_f"):
            out["ln_f." + ("weight" if m[1].endswith("g") else "bias")] = t
        else:
            module = m[3].replace("/", ".")
            if m[4] == "w":  # a 1 x 1 convolution: [1, in, out]
                if t.dim() < 2 or math.prod(t.shape[:-2]) != 1:
                    raise ClozelmError(f"{name} has shape {list(t.shape)}: expected [1, in, out]")
                out[f"h.{m[2]}.{module}.weight"] = t.reshape(t.shape[-2], t.shape[-1]).t().contiguous()
            else:
                out[f"h.{m[2]}.{module}.{'weight' if m[4] == 'g' else 'bias'}"] = t
    return out, unexpected


HPARAMS = {"n_vocab": "vocab_size", "n_ctx": "n_positions", "n_embd": "n_embd", "n_head": "n_head", "n_layer": "n_layer"}


def config_from_hparams(path: Path) -> ModelConfig:
    h = read_config_json(path)
    missing = [key for key in HPARAMS if key not in h]
    if missing:
        raise ClozelmError(f"{path} is not a GPT-2 hparams.json: it lacks {', '.join(missing)} "
                           f"(needs {', '.join(HPARAMS)})")
    try:
        cfg = ModelConfig(**{ours: h[key] for key, ours in HPARAMS.items()})
    except InvalidConfig as e:
        raise ClozelmError(f"invalid {path}: {e.describe({ours: key for key, ours in HPARAMS.items()})}") from None
    if cfg.vocab_size > 50256:  # GPT-2's <|endoftext|> opens and ends every document
        cfg = cfg.replace(bos_token_id=50256, eos_token_id=50256)
    return cfg


def load_openai_dir(path: Path):
    from .hf import build_model
    cfg = config_from_hparams(path / "hparams.json")
    sd, unexpected = gpt2_from_openai(read_tf_checkpoint(path / "model.ckpt"))
    return build_model(cfg, sd, unexpected, source=str(path))
