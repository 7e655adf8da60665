from __future__ import annotations

from pathlib import Path

import pytest

from clozelm.tokenizers import load_tokenizer, train_bpe

from .helpers import SPECIALS, documents


@pytest.fixture(autouse=True)
def _tiny_models_on_one_thread(one_thread):
    """Tiny models: one thread is faster."""


@pytest.fixture(scope="package")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    (root / "a.txt").write_text("\n\n".join(documents(200, seed=1)) + "\n", encoding="utf-8")
    (root / "b.txt").write_text("\n\n".join(documents(200, seed=2)) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="package")
def bpe_dir(tmp_path_factory, corpus) -> Path:
    out = tmp_path_factory.mktemp("bpe")
    train_bpe(sorted(corpus.glob("*.txt")), 320, special_tokens=SPECIALS).save(out)
    return out


@pytest.fixture(scope="package")
def tok(bpe_dir):
    return load_tokenizer(bpe_dir)
