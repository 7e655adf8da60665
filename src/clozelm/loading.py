"""`clozelm.load(name_or_path)`: embedded defaults, HF-format directories, OpenAI GPT-2 checkpoints, hub ids."""

from __future__ import annotations

import re
from pathlib import Path

from .errors import ClozelmError
from .model.transformer import Transformer
from .weights import hf, openai_tf

DEFAULTS_DIR = Path(__file__).parent / "defaults"
EMBEDDED_NAMES = ("default", "default-bert", "default-fim")
# Only the files clozelm reads, so a hub download never pulls TF/Flax/ONNX copies of the weights.
HUB_FILES = ["config.json", "model.safetensors", "model.safetensors.index.json", "model-*.safetensors",
             "vocab.json", "merges.txt", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def embedded_models() -> list[str]:
    if not DEFAULTS_DIR.is_dir():
        return []
    return sorted(p.name for p in DEFAULTS_DIR.iterdir() if hf.is_hf_dir(p))


def local_models(root: Path | None = None) -> list[Path]:
    """HF-format or OpenAI model directories under the current directory (two levels) and in the hub cache."""
    found = []
    root = Path.cwd() if root is None else root
    for candidate in [root, *root.glob("*"), *root.glob("*/*")]:
        if candidate.is_dir() and (hf.is_hf_dir(candidate) or openai_tf.is_openai_dir(candidate)):
            found.append(candidate)
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
        found += sorted(p for p in Path(HF_HUB_CACHE).glob("models--*/snapshots/*") if hf.is_hf_dir(p))
    except ImportError:
        pass
    return found


def load(name_or_path: str | Path, tokenizer: bool = True) -> Transformer:
    """Load a model in eval mode with its tokenizer attached as `model.tokenizer`."""
    name = str(name_or_path)
    path = Path(name).expanduser()
    if not path.exists() and (DEFAULTS_DIR / name).is_dir():
        path = DEFAULTS_DIR / name
    if path.exists():
        model = load_dir(path)
    elif name in EMBEDDED_NAMES:
        raise ClozelmError(f"embedded model {name!r} is missing from this install ({DEFAULTS_DIR}); "
                           "rebuild it with scripts/train_defaults.py or reinstall clozelm")
    elif _looks_like_path(name):
        raise ClozelmError(f"{name}: no such file or directory")
    elif _HUB_ID.match(name):
        model = load_dir(download_from_hub(name))
    else:
        raise ClozelmError(f"{name!r} is neither a directory nor a model name")
    if tokenizer:
        model.tokenizer = _tokenizer_or_none(path if path.exists() else None, model)
    return model


def load_dir(path: Path) -> Transformer:
    if not path.is_dir():
        raise ClozelmError(f"{path} is a file; clozelm.load expects a model directory (config.json + weights)")
    if hf.is_hf_dir(path):
        model = hf.load_hf_dir(path)
    elif openai_tf.is_openai_dir(path):
        model = openai_tf.load_openai_dir(path)
    elif (path / "config.json").is_file():
        hf.read_config_json(path / "config.json")  # a corrupt config gets its own error first
        raise ClozelmError(f"no weights in {path} (looked for model.safetensors, model.safetensors.index.json, pytorch_model.bin)")
    else:
        raise ClozelmError(f"{path} is not a model directory: expected config.json + model.safetensors (Hugging Face) "
                           "or hparams.json + model.ckpt.* (OpenAI GPT-2)")
    model._source_dir = path
    return model


def _tokenizer_or_none(path: Path | None, model: Transformer):
    from .tokenizers import load_tokenizer
    source = path if path is not None else getattr(model, "_source_dir", None)
    if source is None:
        return None
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
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except Exception as e:
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ClozelmError(f"could not fetch {repo_id!r} from the Hugging Face hub (offline? {reason}); "
                           f"download it elsewhere and pass its local directory, e.g. clozelm.load('/path/to/{repo_id.split('/')[-1]}')") from None


_LOADED: dict[str, Transformer] = {}


def cached_load(name_or_path: str) -> Transformer:
    """`load`, remembered per name within the process (fill/generate called in a loop, the web server)."""
    key = str(name_or_path)
    if key not in _LOADED:
        _LOADED[key] = load(key)
    return _LOADED[key]
