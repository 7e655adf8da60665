"""Token shards: the held-out split, reuse of the cache, windows."""

from __future__ import annotations

import numpy as np

from clozelm.training.data import CorpusFiles, build_token_cache, token_dtype

from .helpers import documents


def test_token_cache_shards_split_and_reuse(tmp_path, corpus, tok):
    logs = []
    corpus_files = CorpusFiles(sorted(corpus.glob("*.txt")), None, valid_every=10)
    data = build_token_cache(tmp_path / "tokens", corpus_files, tok, log=logs.append)
    assert data.meta["dtype"] == token_dtype(tok.vocab_size).str == "<u2"
    assert isinstance(data.train.shards[0], np.memmap)
    assert data.meta["documents"] == {"train": 360, "valid": 40}  # every 10th of 400 documents
    eot = tok.special_tokens["<|endoftext|>"]
    train = np.concatenate(data.train.shards)
    assert int((train == eot).sum()) == 360 and train[-1] == eot
    docs = documents(200, seed=1) + documents(200, seed=2)
    first_train_doc = tok.decode(train[:int(np.argmax(train == eot))].tolist())
    assert first_train_doc == docs[1]  # document 0 went to the held-out split
    valid = np.concatenate(data.valid.shards)
    assert tok.decode(valid[:int(np.argmax(valid == eot))].tolist()) == docs[0]

    again = build_token_cache(tmp_path / "tokens", corpus_files, tok, log=logs.append)
    assert again.key == data.key and sum("tokenizing" in m for m in logs) == 1  # reused, not re-tokenized
    other = build_token_cache(tmp_path / "tokens", CorpusFiles(corpus_files.train, None, 20), tok, log=logs.append)
    assert other.key != data.key


def test_windows_cover_every_token_once(tmp_path, corpus, tok):
    data = build_token_cache(tmp_path / "t", CorpusFiles([corpus / "a.txt"], None, 0), tok, log=lambda m: None)
    w = data.train.windows(33, 32)  # causal: T+1 tokens, stride T
    tokens = np.asarray(data.train.shards[0])
    assert len(w) == (len(tokens) - 33) // 32 + 1
    assert np.array_equal(w[1], tokens[32:65]) and w[0][-1] == w[1][0]
