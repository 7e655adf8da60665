"""Reading and writing tensor files safely: safetensors first, pickles only with weights_only=True.

clozelm never runs pickled code: torch.load(weights_only=True) rebuilds tensors and plain containers and refuses
every other object a pickle names (a class to build, a function to call), so an untrusted pytorch_model.bin
cannot run anything; such a file gets one line saying how to turn it into safetensors where it is trusted.
"""

from __future__ import annotations

import json
import re
import sys
import warnings
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import ClozelmError
from ..files import atomic_write, atomic_write_bytes, atomic_write_text  # noqa: F401 (callers import them here)


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ClozelmError(f"{path} is not a readable safetensors file (corrupt or truncated?): {_first_line(e)}") from None


CONVERT_HINT = ("convert it to safetensors in an environment where you trust the file, e.g. with transformers "
                "(AutoModelForMaskedLM for a BERT, whose head AutoModel would drop): "
                "AutoModelForCausalLM.from_pretrained({dir!r}).save_pretrained({dir!r}, safe_serialization=True)")


def read_pickle(path: Path) -> dict[str, torch.Tensor]:
    # weights_only=True refuses arbitrary Python objects: an untrusted file cannot run code.
    try:
        with warnings.catch_warnings():  # torch's own advice (load with weights_only=False) is the unsafe thing
            warnings.simplefilter("ignore")
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt zips and refused pickles
        refused = re.search(r"GLOBAL ([\w.]+)", str(e))
        if refused:
            raise ClozelmError(f"{path} could not be read as a PyTorch weights file: it is a pickle that asks to run "
                               f"Python code ({refused[1]}), which clozelm never does; "
                               + CONVERT_HINT.format(dir=str(Path(path).parent))) from None
        raise ClozelmError(f"{path} could not be read as a PyTorch weights file (corrupt or truncated?): "
                           f"{_torch_reason(e)}") from None
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise ClozelmError(f"{path} does not hold a flat dict of named tensors")
    return sd


def read_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """The tensors of an HF-format directory: model.safetensors, a sharded index, or pytorch_model.bin."""
    single = model_dir / "model.safetensors"
    index = model_dir / "model.safetensors.index.json"
    if single.is_file():
        return read_safetensors(single)
    if index.is_file():
        sd, shards = {}, _index_shards(index)
        home = {name: shard for shard, names in shards.items() for name in names}
        for shard, names in shards.items():
            shard_path = model_dir / shard
            if not shard_path.is_file():
                raise ClozelmError(f"{index} names {shard}, which is missing")
            tensors = read_safetensors(shard_path)
            # A shard from another download would otherwise swap tensors without a word: each holds exactly what
            # the index puts in it.
            lacking, stray = sorted(names - set(tensors)), sorted(set(tensors) - names)
            if lacking or stray:
                what = (f"lacks {lacking[0]}, which {index.name} puts there" if lacking else
                        f"holds {stray[0]}, which {index.name} puts " + (f"in {home[stray[0]]}" if stray[0] in home else "nowhere"))
                raise ClozelmError(f"{shard_path} {what} (a shard of another version of the model?)")
            sd.update(tensors)
        return sd
    if (model_dir / "pytorch_model.bin").is_file():
        return read_pickle(model_dir / "pytorch_model.bin")
    raise ClozelmError(no_weights(model_dir))


def no_weights(model_dir: Path) -> str:
    """Why a directory with a config.json gives no weights, in one line."""
    if (model_dir / "pytorch_model.bin.index.json").is_file():
        return (f"{model_dir} holds its weights as sharded pickles (pytorch_model.bin.index.json), which clozelm does "
                f"not read: {CONVERT_HINT.format(dir=str(model_dir))}")
    return f"no weights in {model_dir} (looked for model.safetensors, model.safetensors.index.json, pytorch_model.bin)"


def _index_shards(index: Path) -> dict[str, set[str]]:
    """{shard file name: the tensor names a model.safetensors.index.json puts in it}: plain names in the same
    directory only."""
    from .hf import read_config_json  # the one reader of JSON settings files
    weight_map = read_config_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ClozelmError(f"{index} is not a valid safetensors index: it needs a \"weight_map\" of tensor names "
                           "to shard file names")
    shards: dict[str, set[str]] = {}
    for name, shard in sorted(weight_map.items(), key=lambda item: item[1]):
        shards.setdefault(shard, set()).add(name)
    outside = [s for s in shards if Path(s).name != s or s.startswith(".")]
    if outside:
        raise ClozelmError(f"{index} names a shard outside its directory: {outside[0][:80]!r}")
    return shards


def fused_qkv(where: str, parts: dict[str, torch.Tensor], names: tuple[str, str, str]) -> torch.Tensor:
    """The query, key and value tensors (named `names` in `parts`) stacked as one [q; k; v] along dim 0, after
    checking that they can be: same rank, and weights of the same width (a malformed file gets one line)."""
    tensors = [parts[n] for n in names]
    if len({t.dim() for t in tensors}) != 1 or len({tuple(t.shape[1:]) for t in tensors}) != 1:
        shapes = ", ".join(f"{n} {list(t.shape)}" for n, t in zip(names, tensors))
        raise ClozelmError(f"{where}: the attention's query, key and value tensors do not fit together ({shapes})")
    return torch.cat(tensors, 0)


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    """Write a safetensors file atomically (clozelm.files.atomic_write: the old file or the new one, never half of
    one, with the permissions the user's umask gives), one tensor at a time so no second copy of the model is
    held in memory."""
    atomic_write(path, lambda f: _stream_safetensors(tensors, f, metadata))


_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL"}


def _stream_safetensors(tensors: dict[str, torch.Tensor], f: BinaryIO, metadata: dict | None) -> None:
    """The safetensors layout: an 8-byte little-endian header length, a JSON header of names, dtypes, shapes and
    byte ranges (padded with spaces to 8 bytes), then the tensors' bytes in that order."""
    if sys.byteorder != "little":
        raise ClozelmError("writing safetensors needs a little-endian machine")
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, t in tensors.items():
        if t.dtype not in _DTYPES:
            raise ClozelmError(f"cannot save tensor {name} of type {t.dtype} as safetensors")
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    f.write(len(encoded).to_bytes(8, "little"))
    f.write(encoded)
    for t in tensors.values():
        if t.numel():
            data = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
            f.write(memoryview(data.numpy()))


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:200]


def _torch_reason(e: BaseException) -> str:
    # torch's message opens with advice to load with weights_only=False: the one line worth keeping is its cause.
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    causes = [line for line in lines if "weights_only" not in line and "torch.load" not in line]
    return (causes[0] if causes else lines[0] if lines else type(e).__name__)[:200]
