"""`clozelm train` on bad input: one line, exit status 2, nothing created or lost."""

from __future__ import annotations

import json

import pytest

import clozelm
from clozelm.tokenizers import load_tokenizer, train_bpe

from .helpers import TINY, cli, one_line_error


@pytest.mark.parametrize("option, value, changed, bad_values", [
    ("--mask-rate", 0.4, "0.15", ("0", "1", "-0.2")),
    ("--locality-warmup", 2, "0", ("-1",)),
])
def test_mlm_option_is_recorded_refused_on_resume_and_checked(tmp_path, corpus, bpe_dir, capsys, option, value,
                                                                changed, bad_values):
    run = tmp_path / "bert"
    rc, err = cli([corpus, "--tokenizer", bpe_dir, "--out", run, *TINY, "--objective", "mlm", "--steps", "4",
                   option, str(value), "--precision", "fp32"], capsys)
    assert rc == 0, err
    assert json.loads((run / "run.json").read_text())["train"][option[2:].replace("-", "_")] == value
    rc, err = cli(["--resume", "--out", run, option, changed], capsys)  # changes what is computed
    one_line_error(rc, err, option[2:].split("-")[0])
    for bad in bad_values:
        rc, err = cli([corpus, "--tokenizer", bpe_dir, "--out", tmp_path / f"bad{bad}", *TINY, "--objective", "mlm",
                       option, bad], capsys)
        one_line_error(rc, err, option)
        assert not (tmp_path / f"bad{bad}").exists()


@pytest.mark.parametrize("objective, option, value", [("clm", "--mask-rate", "0.3"), ("mlm", "--fim-rate", "0.9"),
                                                      ("fim", "--hybrid-causal-share", "0.5"), ("mdlm", "--mask-rate", "0.2")])
def test_a_setting_of_another_objective_is_refused(tmp_path, corpus, bpe_dir, capsys, objective, option, value):
    rc, err = cli([corpus, "--tokenizer", bpe_dir, "--out", tmp_path / "run", *TINY, "--objective", objective, option,
                   value], capsys)
    one_line_error(rc, err, option, f"not {objective}")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("option, says", [("--warmup", "never reach its peak"), ("--locality-warmup", "never fade out")])
def test_a_warm_up_longer_than_the_run_is_refused(tmp_path, corpus, bpe_dir, capsys, option, says):
    rc, err = cli([corpus, "--tokenizer", bpe_dir, "--out", tmp_path / "run", *TINY, "--steps", "5", option, "6"],
                  capsys)
    one_line_error(rc, err, option, "--steps", says)
    assert not (tmp_path / "run").exists()
    rc, _ = cli([corpus, "--tokenizer", bpe_dir, "--out", tmp_path / "run", *TINY, "--steps", "2", option, "2"], capsys)
    assert rc == 0  # as long as the run: fine


def test_non_utf8_file_is_named_or_skipped(tmp_path, corpus, bpe_dir, capsys):
    bad = tmp_path / "in" / "latin1.txt"
    bad.parent.mkdir()
    bad.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (tmp_path / "in" / "good.txt").write_text((corpus / "a.txt").read_text())
    rc, err = cli([tmp_path / "in", "--tokenizer", bpe_dir, "--out", tmp_path / "run", *TINY, "--steps", "1"], capsys)
    one_line_error(rc, err, "latin1.txt", "not UTF-8", "--skip-bad-files")
    rc, err = cli([tmp_path / "in", "--tokenizer", bpe_dir, "--out", tmp_path / "run2", *TINY, "--steps", "1",
                   "--skip-bad-files"], capsys)
    assert rc == 0 and "warning: skipping" in err and "latin1.txt" in err
    (tmp_path / "bin.dat").write_bytes(b"\x00\x01\x02ELF")
    rc, err = cli([tmp_path / "bin.dat", "--tokenizer", bpe_dir, "--out", tmp_path / "run3", *TINY], capsys)
    one_line_error(rc, err, "bin.dat", "binary")


def test_missing_tokenizer_tokens_cli(tmp_path, corpus, capsys):
    plain = tmp_path / "plain-bpe"
    train_bpe([corpus / "a.txt"], 280, special_tokens=["<|endoftext|>"]).save(plain)
    rc, err = cli([corpus, "--tokenizer", plain, "--out", tmp_path / "run", *TINY, "--objective", "fim"], capsys)
    one_line_error(rc, err, "<|fim_prefix|>", "<|fim_middle|>")
    assert not (tmp_path / "run").exists()  # nothing created before the check
    rc, err = cli([corpus, "--out", tmp_path / "run", *TINY], capsys)
    one_line_error(rc, err, "--tokenizer")


def test_refuses_to_clobber_a_run_dir(tmp_path, corpus, bpe_dir, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("precious")
    args = [corpus, "--tokenizer", bpe_dir, "--out", run, *TINY, "--steps", "2", "--precision", "fp32"]
    rc, err = cli(args, capsys)
    one_line_error(rc, err, str(run), "notes.txt")
    rc, err = cli([*args, "--overwrite"], capsys)  # --overwrite replaces a run, never the user's other files
    one_line_error(rc, err, "notes.txt", "--overwrite only replaces a run")
    assert (run / "notes.txt").read_text() == "precious" and [p.name for p in run.iterdir()] == ["notes.txt"]
    (run / "notes.txt").unlink()
    rc, err = cli(args, capsys)
    assert rc == 0, err
    rc, err = cli(args, capsys)
    one_line_error(rc, err, str(run), "--resume", "--overwrite")
    rc, err = cli([*args, "--overwrite"], capsys)
    assert rc == 0, err
    rc, err = cli(["--out", run, "--resume", "--lr", "0.5"], capsys)
    one_line_error(rc, err, "--lr")
    rc, err = cli(["--out", tmp_path / "nothing", "--resume"], capsys)
    one_line_error(rc, err, "no run to resume")


def test_overwrite_with_text_too_short_for_a_sequence_leaves_the_old_run(tmp_path, corpus, bpe_dir, capsys):
    run = tmp_path / "run"
    args = ["--tokenizer", bpe_dir, "--out", run, *TINY, "--steps", "2", "--precision", "fp32"]
    rc, err = cli([corpus, *args], capsys)
    assert rc == 0, err
    assert err.count("tokenizing") == 1  # the tokens made before the tokenizer's copy is saved are the ones used
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.is_file() and p.name != "train.lock"}
    short = tmp_path / "short.txt"
    short.write_text("Too short.")
    rc, err = cli([short, *args, "--overwrite"], capsys)
    one_line_error(rc, err, "fewer than one sequence")
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.is_file() and p.name != "train.lock"} == before
    assert (run / "model" / "model.safetensors").is_file() and (run / "run.json").is_file()


def test_overwrite_refuses_to_clear_the_model_it_starts_from(tmp_path, corpus, bpe_dir, capsys):
    """`--init RUN/model --out RUN --overwrite` (fine-tuning a run's model in place) would delete the model before
    training: refused in one line, the run left as it was."""
    run = tmp_path / "run"
    args = ["--out", run, *TINY, "--steps", "2", "--precision", "fp32"]
    rc, err = cli([corpus, "--tokenizer", bpe_dir, *args], capsys)
    assert rc == 0, err
    before = (run / "model" / "model.safetensors").read_bytes()
    rc, err = cli([corpus, "--init", run / "model", *args, "--overwrite"], capsys)
    one_line_error(rc, err, "is inside")
    assert (run / "model" / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_a_tokenizer_inside_the_run_folder_is_not_cleared(tmp_path, corpus, bpe_dir, capsys, overwrite):
    """`clozelm tokenizer train ... --out runs/a/tokenizer` then `clozelm train --tokenizer runs/a/tokenizer --out
    runs/a`: a new run writes its own tokenizer folder there, deleting the user's (and what else they kept in it)."""
    import shutil
    run = tmp_path / "run"
    shutil.copytree(bpe_dir, run / "tokenizer")
    (run / "tokenizer" / "NOTES.md").write_text("mine")
    rc, err = cli([corpus, "--tokenizer", run / "tokenizer", "--out", run, *TINY, "--steps", "1", *overwrite], capsys)
    one_line_error(rc, err, "is inside")
    assert (run / "tokenizer" / "NOTES.md").read_text() == "mine"
    assert sorted(p.name for p in (run / "tokenizer").iterdir()) == sorted([*(p.name for p in bpe_dir.iterdir()), "NOTES.md"])


def test_a_run_inside_its_corpus_folder_reads_only_the_corpus(tmp_path, corpus, bpe_dir, capsys):
    # The run writes binary files (checkpoint.pt, best.pt, loss_curve.png) into a folder the next run reads.
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text((corpus / "a.txt").read_text())
    for again in ([], ["--overwrite"]):
        rc, err = cli([data, "--tokenizer", bpe_dir, "--out", data / "run", *TINY, "--steps", "2", *again], capsys)
        assert rc == 0, err
        assert json.loads((data / "run" / "run.json").read_text())["inputs"]["train"] == [str(data / "a.txt")]
    rc, err = cli([data, "--out", data / "run", "--resume", "--no-progress"], capsys)
    assert rc == 0, err


def test_fine_tuning_refuses_another_tokenizer(tmp_path, corpus, bpe_dir, capsys):
    run = tmp_path / "base"
    rc, err = cli([corpus, "--tokenizer", bpe_dir, "--out", run, *TINY, "--steps", "1"], capsys)
    assert rc == 0, err
    other = tmp_path / "other-bpe"
    train_bpe([corpus / "b.txt"], 300, special_tokens=["<|endoftext|>"]).save(other)
    rc, err = cli([corpus, "--init", run / "model", "--tokenizer", other, "--out", tmp_path / "tuned", "--steps", "1",
                   "--no-progress"], capsys)
    one_line_error(rc, err, "not", "own tokenizer", "leave --tokenizer out")
    assert not (tmp_path / "tuned").exists()
    rc, err = cli([corpus, "--init", run / "model", "--tokenizer", bpe_dir, "--out", tmp_path / "tuned", "--steps", "1",
                   "--no-progress"], capsys)  # its own, named: fine
    assert rc == 0, err


def test_held_out_text_that_is_also_training_text_is_refused(tmp_path, corpus, bpe_dir, capsys):
    rc, err = cli([corpus, "--valid", corpus / "b.txt", "--tokenizer", bpe_dir, "--out", tmp_path / "run", *TINY],
                  capsys)
    one_line_error(rc, err, "b.txt is both training and held-out text")
    assert not (tmp_path / "run").exists()


def test_an_embedded_models_tokenizer_by_name(tmp_path, corpus, capsys):
    rc, err = cli([corpus, "--tokenizer", "default", "--out", tmp_path / "run", *TINY, "--steps", "1"], capsys)
    assert rc == 0, err
    default = clozelm.load("default").tokenizer
    assert load_tokenizer(tmp_path / "run" / "tokenizer").encode("Let there be light") == default.encode("Let there be light")
