"""Reading and writing tensor files safely: safetensors first, pickles only with weights_only=True."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import ClozelmError


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ClozelmError(f"{path} is not a readable safetensors file (corrupt or truncated?): {_first_line(e)}") from None


def read_pickle(path: Path) -> dict[str, torch.Tensor]:
    # weights_only=True refuses arbitrary Python objects: an untrusted file cannot run code.
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt zips and refused pickles
        raise ClozelmError(f"{path} could not be read as a PyTorch weights file: {_first_line(e)}") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ClozelmError(f"{path} does not hold a flat dict of tensors")
    return sd


def read_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """The tensors of an HF-format directory: model.safetensors, a sharded index, or pytorch_model.bin."""
    single = model_dir / "model.safetensors"
    index = model_dir / "model.safetensors.index.json"
    if single.is_file():
        return read_safetensors(single)
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as e:
            raise ClozelmError(f"{index} is not a valid safetensors index: {_first_line(e)}") from None
        sd = {}
        for shard in shards:
            shard_path = model_dir / shard
            if not shard_path.is_file():
                raise ClozelmError(f"{index} names {shard}, which is missing")
            sd.update(read_safetensors(shard_path))
        return sd
    if (model_dir / "pytorch_model.bin").is_file():
        return read_pickle(model_dir / "pytorch_model.bin")
    raise ClozelmError(f"no weights in {model_dir} (looked for model.safetensors, model.safetensors.index.json, pytorch_model.bin)")


def _temp_beside(path: Path) -> str:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return tmp


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    """Write to a temporary file beside the target, then rename: a crash never leaves half a file."""
    tmp = _temp_beside(path)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Like write_safetensors: readers (and a crash) see the old file or the new one, never half of one."""
    tmp = _temp_beside(path)
    try:
        Path(tmp).write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:200]
