"""Tokenizers behind one interface (`Tokenizer`, in base.py): GPT-2 byte-level BPE (fast engine: tiktoken),
BPE training, BERT WordPiece."""

from __future__ import annotations

import json
from pathlib import Path

from clozelm.errors import ClozelmError
from clozelm.tokenizers.base import FIM_TOKENS, FimIds, TokenClasses, Tokenizer
from clozelm.tokenizers.bpe import ByteBPE
from clozelm.tokenizers.bpe_train import train_bpe
from clozelm.tokenizers.pretrained_bpe import PretrainedBPE
from clozelm.tokenizers.wordpiece import WordPiece

__all__ = ["Tokenizer", "FimIds", "TokenClasses", "FIM_TOKENS", "ByteBPE", "PretrainedBPE", "WordPiece", "train_bpe",
           "load_tokenizer", "TOKENIZER_FILES"]

# Every file a tokenizer directory's reader (ours or transformers') may take a tokenizer from: a directory that
# gets a new tokenizer must not keep another one's (it would be read instead, or beside it).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "encoder.json", "vocab.bpe", "vocab.txt", "added_tokens.json", "tokenizer.model")

_BPE_FILE_PAIRS = (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt"))
_WORDPIECE_FILE = "vocab.txt"


def load_tokenizer(path) -> Tokenizer:
    """Open the tokenizer saved in directory ``path``, whichever kind it is."""
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise ClozelmError(f"{directory} is a file; a tokenizer is a directory (vocab.json + merges.txt, "
                           "encoder.json + vocab.bpe, vocab.txt or tokenizer.json)")
    if not directory.is_dir():
        raise ClozelmError(f"tokenizer directory not found: {directory}")
    if PretrainedBPE.reads_dir(directory):  # a model's own tokenizer.json (SmolLM2, Qwen2, Llama 3)
        return PretrainedBPE.from_dir(directory)
    has_bpe = any((directory / v).is_file() and (directory / m).is_file() for v, m in _BPE_FILE_PAIRS)
    has_wordpiece = (directory / _WORDPIECE_FILE).is_file()
    if has_bpe and has_wordpiece:
        # Both kinds of files side by side: let the HF config decide, else prefer BPE.
        has_wordpiece = _configured_class(directory).lower().startswith(("bert", "distilbert"))  # not RoBERTa's
        has_bpe = not has_wordpiece
    if has_bpe:
        return ByteBPE.from_dir(directory)
    if has_wordpiece:
        return WordPiece.from_dir(directory)
    kind = _tokenizer_json_model(directory)
    if kind == "WordPiece":  # a BERT tokenizer saved as tokenizer.json alone
        return WordPiece.from_tokenizer_json(directory)
    if kind is not None:
        raise ClozelmError(f"{directory / 'tokenizer.json'} holds a {kind} tokenizer, which clozelm does not read "
                           "(it reads byte-level BPE and WordPiece)")
    for vocab_name, merges_name in _BPE_FILE_PAIRS:  # half a byte-level BPE: an incomplete copy, not no tokenizer
        present = [name for name in (vocab_name, merges_name) if (directory / name).is_file()]
        if len(present) == 1:
            missing = merges_name if present[0] == vocab_name else vocab_name
            raise ClozelmError(f"{directory} has {present[0]} but not {missing}: a byte-level BPE tokenizer needs both "
                               "(an incomplete copy?)")
    raise ClozelmError(
        f"no tokenizer in {directory}: looked for encoder.json + vocab.bpe, "
        "vocab.json + merges.txt (byte-level BPE), vocab.txt (WordPiece) or tokenizer.json"
    )


def _tokenizer_json_model(directory: Path) -> str | None:
    """The model type a tokenizer.json names ("Unigram", "WordLevel", ...), if the directory has a readable one."""
    try:
        data = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    model = data.get("model") if isinstance(data, dict) else None
    kind = model.get("type") if isinstance(model, dict) else None
    return kind if isinstance(kind, str) and kind else None


def _configured_class(directory: Path) -> str:
    config = directory / "tokenizer_config.json"
    try:
        return str(json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class") or "")
    except (OSError, ValueError, AttributeError):
        return ""
