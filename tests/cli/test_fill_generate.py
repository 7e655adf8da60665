"""The fill/generate/tokenize/models commands end to end on a small saved model: output, --json, -f, stdin,
and bad input (one line, non-zero exit)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from clozelm.loaded import Model
from clozelm.model import ModelConfig, Transformer
from handbuilt import word_tokenizer


def run_cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "clozelm", *map(str, args)], capture_output=True, text=True,
                          input=stdin, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)


def one_line_error(r, fragment):
    assert r.returncode == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in r.stderr, r.stderr


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("m")
    tok = word_tokenizer(d, ["the cat sat on the mat", "a dog ran in the park"])
    torch.manual_seed(0)
    network = Transformer(ModelConfig(vocab_size=tok.vocab_size, n_positions=32, n_embd=32, n_layer=2, n_head=2))
    Model(network.eval(), tok).save_pretrained(d / "model")
    return d / "model"


def test_fill_prints_ranked_answers(model_dir):
    r = run_cli("fill", "the ___ sat on the mat", "--model", model_dir, "--top", "3")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("1. [") and lines[2].startswith("2. [") and lines[4].startswith("3. [")


def test_fill_json_from_file_and_stdin(model_dir, tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("a [MASK] ran in the park")
    from_file = json.loads(run_cli("fill", "-f", f, "--model", model_dir, "--json", "--top", "2").stdout)
    from_stdin = json.loads(run_cli("fill", "--model", model_dir, "--json", "--top", "2", stdin="a [MASK] ran in the park").stdout)
    assert from_file == from_stdin
    assert from_file["method"] == "causal" and len(from_file["answers"]) == 2
    a = from_file["answers"][0]
    assert a["text"] == f"a {a['blanks'][0]} ran in the park"
    assert from_file["answers"][0]["score"] >= from_file["answers"][1]["score"]


def test_fill_bad_input(model_dir):
    one_line_error(run_cli("fill", "nothing hidden", "--model", model_dir), "clozelm generate")
    one_line_error(run_cli("fill", "  ", "--model", model_dir), "empty text")
    one_line_error(run_cli("fill", "the ___", "--model", "no-such-model-anywhere/x/y"), "no such file or directory")
    one_line_error(run_cli("fill", "the " + "[MASK]" * 40, "--model", model_dir), "context holds 32")


def test_fill_long_text_keeps_a_window(model_dir):
    text = "the cat sat on the mat " * 10 + "the ___ sat" + " on the mat" * 10
    r = run_cli("fill", text, "--model", model_dir, "--top", "1", "--json")
    assert r.returncode == 0, r.stderr
    assert "the model read the" in r.stderr
    answer = json.loads(r.stdout)["answers"][0]
    assert answer["text"].startswith("the cat sat on the mat " * 10) and answer["text"].endswith(" on the mat" * 10)


def test_generate_streams_and_is_deterministic(model_dir):
    a = run_cli("generate", "the cat", "--model", model_dir, "--max-tokens", "8")
    b = run_cli("generate", "the cat", "--model", model_dir, "--max-tokens", "8", "--json")
    assert a.returncode == 0 and a.stdout.startswith("the cat")
    assert a.stdout.rstrip("\n") == "the cat" + json.loads(b.stdout)["completion"]
    sampled = [run_cli("generate", "the cat", "--model", model_dir, "--temperature", "1", "--seed", "4", "--json").stdout
               for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_generate_bad_input(model_dir):
    for max_tokens in ("100", "32"):
        r = run_cli("generate", "the cat", "--model", model_dir, "--max-tokens", max_tokens)
        one_line_error(r, "32-token context (at most 31")
        assert r.stdout == ""  # refused before the prompt is written
    one_line_error(run_cli("generate", "the cat", "--model", model_dir, "--top-p", "0"), "top-p")
    r = run_cli("generate", "the cat", "--model", model_dir, "--max-tokens", "31")
    assert r.returncode == 0 and r.stdout.startswith("the cat"), r.stderr


def test_tokenize_shows_pieces(model_dir):
    r = run_cli("tokenize", "the cat", "--model", model_dir, "--json")
    out = json.loads(r.stdout)
    assert len(out["ids"]) == len(out["pieces"]) >= 2


def test_models_lists_local_directories(model_dir):
    r = subprocess.run([sys.executable, "-m", "clozelm", "models"], capture_output=True, text=True, cwd=model_dir.parent)
    assert r.returncode == 0 and "model" in r.stdout and "local" in r.stdout


def test_generate_refuses_what_means_nothing(model_dir):
    """Issue 18: NaN passed every `<` check and failed in sampling; --beams 0 ran greedy without a word."""
    one_line_error(run_cli("generate", "the cat", "--model", model_dir, "--temperature", "nan"), "--temperature")
    one_line_error(run_cli("generate", "the cat", "--model", model_dir, "--beams", "0"), "--beams")


def test_generate_says_when_it_cuts_a_long_prompt(model_dir, tmp_path):
    prompt = tmp_path / "long.txt"
    prompt.write_text("the cat sat on the mat " * 50)
    r = run_cli("generate", "-f", prompt, "--model", model_dir, "--max-tokens", "4", "--json")
    assert r.returncode == 0, r.stderr
    notes = r.stderr.strip().splitlines()
    assert len(notes) == 1 and notes[0].startswith("clozelm: note: ") and "kept its last 28 tokens" in notes[0], r.stderr


def test_generate_refuses_two_precisions_at_once():
    one_line_error(run_cli("generate", "Once upon a time", "--bf16", "--dtype", "int4"), "two precisions")
