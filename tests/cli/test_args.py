"""Option values and input text, checked in one place (clozelm.cli.args), and the command line's own failures
(issue 18): each is one line `clozelm: error: ...` and exit status 2, never a traceback."""

import argparse
import io
import json
import os
import subprocess
import sys

import pytest

from clozelm.cli import main
from clozelm.cli.args import float_in, int_in, nonnegative_int, positive_int, read_text_arg
from clozelm.errors import ClozelmError


@pytest.mark.parametrize("parse,text", [
    (float_in(0.0), "nan"), (float_in(0.0), "inf"), (float_in(0.0), "-inf"), (float_in(0.0), "1e309"),
    (float_in(0.0), "-0.5"), (float_in(0.0), ""), (float_in(0.0), "abc"), (float_in(0.0, 1.0, lo_open=True), "0"),
    (float_in(0.0, 1.0, lo_open=True), "1.0001"), (float_in(), "infinity"), (positive_int, "0"),
    (positive_int, "-3"), (positive_int, "1.5"), (positive_int, "9" * 5000), (positive_int, "9" * 30),
    (nonnegative_int, "-1"), (int_in(1, 64), "65"), (int_in(1, 64), "nan"),
])
def test_refused_values(parse, text):
    with pytest.raises(argparse.ArgumentTypeError, match="expected"):
        parse(text)


def test_accepted_values():
    assert float_in(0.0)("0") == 0.0 and float_in(0.0)("1e-300") == 1e-300
    assert float_in(0.0, 1.0, lo_open=True)("1") == 1.0
    assert positive_int("1_000") == 1000 and nonnegative_int(" 0 ") == 0 and int_in(1, 64)("64") == 64


def test_a_refused_value_names_the_range_and_the_value():
    with pytest.raises(argparse.ArgumentTypeError) as e:
        float_in(0.0, 1.0, lo_open=True)("nan")
    assert str(e.value) == "expected a number in (0, 1], got 'nan'"


class Args:
    def __init__(self, text=None, file=None):
        self.text, self.file = text, file


def test_read_text_arg(tmp_path, monkeypatch):
    (tmp_path / "t.txt").write_text("the ___ sat")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9")
    (tmp_path / "d").mkdir()
    assert read_text_arg(Args(file=tmp_path / "t.txt")) == "the ___ sat"
    assert read_text_arg(Args("given")) == "given"
    for args, fragment in [(Args(file=tmp_path / "d"), "is a directory"), (Args(file=tmp_path / "no"), "not found"),
                           (Args(file=tmp_path / "latin1.txt"), "not UTF-8"), (Args(file="/dev/zero"), "a device"),
                           (Args(os.fsdecode(b"caf\xe9")), "the text argument is not UTF-8")]:
        with pytest.raises(ClozelmError, match=fragment):
            read_text_arg(args)
    monkeypatch.setattr(sys, "stdin", None)  # `clozelm fill <&-`
    with pytest.raises(ClozelmError, match="standard input is closed"):
        read_text_arg(Args())
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"caf\xe9 ___"), encoding="utf-8"))
    with pytest.raises(ClozelmError, match="standard input is not UTF-8"):
        read_text_arg(Args("-"))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("caf\u00e9 ___".encode()), encoding="utf-8"))
    assert read_text_arg(Args()) == "caf\u00e9 ___"


# ------------------------------------------------------------------------------------- the command line

def run(argv, capsys, stdin="") -> tuple[int, str, str]:
    sys.stdin = io.StringIO(stdin) if stdin is not None else None
    try:
        code = main([str(a) for a in argv])
    finally:
        sys.stdin = sys.__stdin__
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(code, err, fragment):
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("clozelm: error: ") and fragment in lines[0], err


@pytest.mark.parametrize("argv,fragment", [
    (["generate", "Hello", "--temperature", "nan", "--max-tokens", "5"], "--temperature: expected a finite number"),
    (["generate", "Hello", "--temperature", "inf"], "--temperature"),
    (["generate", "Hello", "--top-p", "nan"], "--top-p: expected a number in (0, 1]"),
    (["generate", "Hello", "--repetition-penalty", "-inf"], "--repetition-penalty"),
    (["generate", "Hello", "--beams", "0"], "--beams: expected an integer from 1 to 64, got '0'"),
    (["generate", "Hello", "--beams", "1000000"], "--beams"),
    (["generate", "Hello", "--seed", "-1"], "--seed"),
    (["fill", "the ___", "--top", "0"], "--top"),
    (["fill", "the ___", "--top", "9" * 5000], "--top"),
    (["tokenizer", "train", "c.txt", "--vocab-size", "nan", "--out", "x"], "--vocab-size"),
    (["heads", "the cat", "--min-arcs", "-1"], "--min-arcs"),
    (["fill", "--bogus"], "unrecognized arguments: --bogus (see clozelm fill --help)"),
    (["tokenizer", "train", "c.txt", "--vocab-size", "300", "--out", "x", "--zz"],
     "unrecognized arguments: --zz (see clozelm tokenizer train"),
    (["eval"], "the following arguments are required: model (see clozelm eval --help)"),
    (["fill", "the \ud800 ___"], "lone surrogate"),
    (["generate", "Hello", "--beams", "2", "--temperature", "0.8", "--seed", "1"],
     "leave out --temperature, --seed"),
    (["generate", "Hello", "--stop", ""], "--stop needs a non-empty string"),
    # options that would be ignored without a word
    (["generate", "Hello", "--bf16", "--dtype", "fp32"], "ask for two precisions"),
    (["generate", "Hello", "--top-k", "40"], "--top-k shapes sampling"),
    (["generate", "Hello", "--top-p", "0.5", "--seed", "1"], "--top-p, --seed shape sampling"),
    (["tokenize", "x", "--model", "default-bert", "--tokenizer", "default"], "give one"),
    (["generate", "Hello", "--seed", "9" * 30], "at most 9,223,372,036,854,775,807"),
    # an empty path would be the current directory to pathlib: `convert default ""` wrote a model into it
    (["convert", "default", ""], "the output path is empty"),
    (["eval", "default", "--tasks", "ppl", "x.txt", "--out", ""], "the output path is empty"),
    (["tokenize", "x", "--tokenizer", ""], "the --tokenizer path is empty"),
    (["fill", "the ___", "--model", " "], "the model name or path is empty"),
    (["info", ""], "the model name or path is empty"),
    (["heads", "the cat", "--png", "0.0", ""], "the --png file is empty"),
    (["train", "", "--out", "run"], "the input path is empty"),
    (["generate", "Hello", "--stop", os.fsdecode(b"\xff")], "--stop '\\udcff' is not UTF-8 text"),  # a byte 0xff
    (["eval", "default", "--tasks", "pairs", "--lambada", "x.jsonl"], "--lambada is read by the lastword task"),
    (["fill", "the ___", "-f", "x.txt"], "not both"),
    (["heads", "the cat", "--json"], "--json changes --report/--syntax output, and none is asked for"),
    (["heads", "the cat", "--word-level"], "--word-level changes --png/--svg maps"),
])
def test_bad_options_are_one_line_before_any_work(argv, fragment, capsys):
    code, _, err = run(argv, capsys)
    one_line(code, err, fragment)


def test_files_may_follow_the_options(tmp_path, capsys):
    # `clozelm eval default --tasks ppl held-out.txt`: files after options, as most command lines take them
    (tmp_path / "a.txt").write_text("The cat sat on the mat. The dog ran home.\n" * 20)
    (tmp_path / "b.txt").write_text("A bird flew away over the hill.\n" * 20)
    code, out, err = run(["eval", "default", "--tasks", "ppl", "--json", tmp_path / "a.txt", tmp_path / "b.txt"], capsys)
    assert code == 0, err
    assert json.loads(out)["tasks"]["ppl"]["documents"] == 2
    code, out, err = run(["tokenizer", "train", "--vocab-size", "280", "--out", tmp_path / "tok", tmp_path / "a.txt"],
                         capsys)
    assert code == 0 and (tmp_path / "tok" / "vocab.bpe").is_file(), err


def test_dash_file_reads_standard_input(capsys):
    code, out, err = run(["tokenize", "-f", "-", "--json"], capsys, stdin="the cat")
    assert code == 0, err
    assert json.loads(out) == json.loads(run(["tokenize", "the cat", "--json"], capsys)[1])


def test_input_text_errors(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    for command in ("fill", "generate", "tokenize", "heads"):
        one_line(*run([command, "-f", tmp_path / "d"], capsys)[::2], "is a directory")
        one_line(*run([command], capsys, stdin=None)[::2], "standard input is closed")


def test_tokenizer_train_out_must_be_a_directory(tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text("the cat sat on the mat\n" * 50)
    (tmp_path / "f").write_text("x")
    for out, fragment in [(tmp_path / "f", "is a file, expected a directory"), (tmp_path / "f" / "sub", "is a file")]:
        one_line(*run(["tokenizer", "train", tmp_path / "corpus.txt", "--vocab-size", "280", "--out", out],
                      capsys)[::2], fragment)
    assert (tmp_path / "f").read_text() == "x"
    code, out, err = run(["tokenizer", "train", tmp_path / "corpus.txt", "--vocab-size", "280", "--out",
                          tmp_path / "new" / "tok"], capsys)
    assert code == 0 and (tmp_path / "new" / "tok" / "vocab.bpe").is_file(), err
    code, out, err = run(["tokenizer", "train", tmp_path / "corpus.txt", "--vocab-size", "100000", "--out",
                          tmp_path / "big"], capsys)  # more than the text can give: said, not silent
    assert code == 0 and "no more pairs to merge" in err and "not 100,000" in err, err


def test_an_output_folder_that_cannot_be_written_is_said_before_the_work(tmp_path, capsys, monkeypatch):
    """/proc/sys, a read-only mount, a folder without write permission: said before training or evaluating, and
    a folder the command created for the purpose is removed again."""
    from clozelm import files

    def refuse(folder, what="output directory"):
        raise files.ClozelmError(f"cannot write into {what} {folder}: Read-only file system")
    monkeypatch.setattr(files, "check_can_write_into", refuse)
    monkeypatch.setattr("clozelm.cli.check_can_write_into", refuse)
    trained = []
    monkeypatch.setattr("clozelm.tokenizers.train_bpe", lambda *a, **k: trained.append(1))
    (tmp_path / "corpus.txt").write_text("the cat sat on the mat\n" * 50)
    one_line(*run(["tokenizer", "train", tmp_path / "corpus.txt", "--vocab-size", "280", "--out", tmp_path / "a" / "tok"],
                  capsys)[::2], "cannot write into --out")
    assert not trained and not (tmp_path / "a").exists()
    loaded = []
    monkeypatch.setattr("clozelm.api.load", lambda *a, **k: loaded.append(1))
    one_line(*run(["eval", "default", tmp_path / "corpus.txt", "--tasks", "ppl", "--out", tmp_path / "b"], capsys)[::2],
             "cannot write into --out")
    assert not loaded and not (tmp_path / "b").exists()


def test_tokenizer_train_specials_add_to_the_document_separator(tmp_path, capsys):
    # `clozelm train` needs <|endoftext|>: a vocabulary trained with --special '[MASK]' (the help's example) lacked it
    from clozelm.tokenizers import load_tokenizer

    (tmp_path / "corpus.txt").write_text("the cat sat on the mat\n" * 50)
    for specials, want in ([["[MASK]"], ["<|endoftext|>", "[MASK]"]],
                           [["<|mask|>", "<|endoftext|>", "<|mask|>"], ["<|endoftext|>", "<|mask|>"]], [[], ["<|endoftext|>"]]):
        out = tmp_path / f"tok{len(want)}{len(specials)}"
        flags = [part for token in specials for part in ("--special", token)]
        code, _, err = run(["tokenizer", "train", tmp_path / "corpus.txt", "--vocab-size", "280", "--out", out, *flags],
                           capsys)
        assert code == 0, err
        tok = load_tokenizer(out)
        assert sorted(tok.special_tokens, key=tok.special_tokens.get) == want and tok.eos_id is not None


def test_output_errors_are_one_line_in_process(capsys, monkeypatch):
    with open("/dev/full", "w") as full:
        monkeypatch.setattr(sys, "stdout", full)
        code = main(["models", "--json"])
        monkeypatch.undo()
    one_line(code, capsys.readouterr().err, "cannot write to standard output: No space left on device")


def test_a_closed_pipe_is_not_an_error(tmp_path):
    """`clozelm models | head -c 1`: the reader goes away; no error, no 'Exception ignored' at exit."""
    r = subprocess.run(["bash", "-c", f'"$0" -m clozelm generate "the cat" --max-tokens 40 | head -c 1', sys.executable],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.stdout == "t" and r.stderr == "", r.stderr


def test_the_dtype_choices_are_the_ones_load_takes():
    from clozelm.cli.args import DTYPES
    from clozelm.loading import DTYPES as LOAD_DTYPES
    assert DTYPES == tuple(LOAD_DTYPES)


def test_the_device_choices_are_the_ones_load_takes():
    from clozelm.cli.args import DEVICES
    from clozelm.loading import DEVICES as LOAD_DEVICES
    assert DEVICES == tuple(LOAD_DEVICES)


@pytest.mark.parametrize("argv", [["fill", "the ___"], ["generate", "Hello"], ["eval", "default", "--tasks", "ppl"],
                                  ["heads", "the cat"], ["serve"]])
def test_every_command_that_runs_a_model_takes_a_device(argv, tmp_path, capsys, monkeypatch):
    """--device cuda without a GPU, and int8 weights on a GPU (their kernels are the CPU's), are one line each,
    said before the model is read."""
    import torch

    if argv[0] == "eval":
        (tmp_path / "a.txt").write_text("Some held-out text.\n", encoding="utf-8")
        argv = argv + [tmp_path / "a.txt"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run(argv + ["--device", "cuda"], capsys)
    one_line(code, err, "--device cuda: no CUDA GPU is available")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    if argv[0] in ("fill", "generate", "eval"):
        code, _, err = run(argv + ["--device", "cuda", "--dtype", "int8"], capsys)
        one_line(code, err, "--dtype int8 multiplies with CPU kernels; on a GPU use fp32 or bf16")


def test_tokenizer_train_overwrite_leaves_no_other_tokenizer_behind(tmp_path, capsys):
    """--overwrite on a directory holding another tokenizer (a BERT WordPiece, a model's tokenizer.json): its
    files would be read instead of the new ones, so they go, and the note says which."""
    from clozelm.tokenizers import ByteBPE, load_tokenizer

    (tmp_path / "corpus.txt").write_text("the cat sat on the mat\n" * 50)
    out = tmp_path / "tok"
    out.mkdir()
    (out / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\ncat\n")
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer"}))
    (out / "notes.md").write_text("mine")
    code, _, err = run(["tokenizer", "train", tmp_path / "corpus.txt", "--vocab-size", "280", "--out", out,
                        "--overwrite"], capsys)
    assert code == 0, err
    assert "removed the previous tokenizer's tokenizer_config.json, vocab.txt" in err
    assert isinstance(load_tokenizer(out), ByteBPE)
    assert sorted(p.name for p in out.iterdir()) == ["encoder.json", "notes.md", "vocab.bpe"]
