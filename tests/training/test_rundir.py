"""The run directory: one process trains in it at a time (real processes), bad input creates nothing, and a set-up
that failed leaves a directory its retry can use."""

from __future__ import annotations

import signal

from clozelm.training.rundir import RunLock

from .helpers import TINY, child, cli, losses, one_line_error, paused_child, wait_for_line


def test_a_second_concurrent_resume_is_refused_naming_the_first(tmp_path, corpus, bpe_dir, capsys):
    run = tmp_path / "run"
    rc, err = cli([corpus, "--tokenizer", bpe_dir, "--out", run, *TINY, "--steps", "20", "--stop-after", "2",
                   "--precision", "fp32"], capsys)
    assert rc == 0, err
    first = paused_child(4, ["train", "--resume", "--out", run, "--no-progress"])
    try:
        wait_for_line(first, "paused at step 4")
        second = child(["train", "--resume", "--out", run, "--no-progress"])
        _, err = second.communicate(timeout=60)
        one_line_error(second.returncode, err, str(run), "in use", f"PID {first.pid}")
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=60)
        assert first.returncode == 130, err
    finally:
        first.kill()
    assert sorted(losses(run)) == [1, 2, 3, 4]  # one writer: every step once
    rc, err = cli(["--resume", "--out", run], capsys)  # the lock went with the process
    assert rc == 0, err
    assert sorted(losses(run)) == list(range(1, 21))


def test_the_lock_is_exclusive_and_released(tmp_path):
    with RunLock(tmp_path):
        assert (tmp_path / "train.lock").read_text().strip().isdigit()
        try:
            RunLock(tmp_path).acquire()
        except Exception as e:  # noqa: BLE001 - the one expected
            assert "in use by another training" in str(e)
        else:
            raise AssertionError("a second lock was granted")
    with RunLock(tmp_path):
        pass


def test_bad_input_creates_no_run_dir(tmp_path, corpus, bpe_dir, capsys):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1"))
    for argv, words in [
        ([corpus, bad], ["latin1.txt", "not UTF-8"]),
        ([corpus, tmp_path / "missing.txt"], ["missing.txt", "no such file"]),
        ([corpus, "--valid", tmp_path / "nope"], ["nope"]),
        ([corpus, "--steps", "0"], ["--steps"]),
        ([corpus, "--seq-len", "64"], ["--seq-len", "64"]),
        ([corpus, "--n-embd", "30", "--n-head", "4"], ["n_embd=30"]),
        ([corpus, "--lr", "nan"], ["--lr"]),
        ([corpus, "--threads", "0"], ["--threads"]),
    ]:
        rc, err = cli(["--tokenizer", bpe_dir, "--out", tmp_path / "run", *TINY, "--steps", "2", *argv], capsys)
        one_line_error(rc, err, *words)
        assert not (tmp_path / "run").exists(), argv


def test_a_failed_set_up_leaves_a_dir_its_retry_uses(tmp_path, corpus, bpe_dir, capsys):
    run = tmp_path / "run"
    rc, err = cli([corpus, "--tokenizer", bpe_dir, "--out", run, *TINY, "--steps", "2"], capsys)
    assert rc == 0, err
    for name in ("run.json", "checkpoint.pt", "best.pt", "metrics.jsonl", "metrics.csv", "loss_curve.png"):
        (run / name).unlink(missing_ok=True)
    for sub in ("model",):
        for f in (run / sub).iterdir():
            f.unlink()
        (run / sub).rmdir()
    assert sorted(p.name for p in run.iterdir()) == ["tokenizer", "tokens", "train.lock"]  # as a stopped set-up leaves it
    rc, err = cli([corpus, "--tokenizer", bpe_dir, "--out", run, *TINY, "--steps", "2"], capsys)
    assert rc == 0 and "tokenizing" not in err, err  # no "already exists", and the token cache is reused
    (run / "notes.txt").write_text("mine")
    (run / "run.json").unlink()
    rc, err = cli([corpus, "--tokenizer", bpe_dir, "--out", run, *TINY, "--steps", "2"], capsys)
    one_line_error(rc, err, "notes.txt", "not a training run's")  # a file of the user's: not a set-up of ours
    assert (run / "notes.txt").read_text() == "mine"


def test_too_little_text_is_said_before_the_run_exists(tmp_path, corpus, bpe_dir, capsys):
    (tmp_path / "tiny.txt").write_text("Tiny text.\n\nAnother one.\n")
    run = tmp_path / "run"
    rc, err = cli([tmp_path / "tiny.txt", "--tokenizer", bpe_dir, "--out", run, *TINY, "--steps", "2"], capsys)
    one_line_error(rc, err, "fewer than one sequence")
    assert sorted(p.name for p in run.iterdir()) == ["tokens", "train.lock"]  # a set-up (its token cache), not a run
    rc, err = cli([corpus, "--tokenizer", bpe_dir, "--out", run, *TINY, "--steps", "2"], capsys)  # the fixed command
    assert rc == 0, err
