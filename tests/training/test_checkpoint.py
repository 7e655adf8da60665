"""Checkpoints never lose work (real processes: SIGKILL mid-run, then resume; Ctrl-C), and a checkpoint that
loads but does not fit, or is missing, is refused in one line."""

from __future__ import annotations

import signal

import pytest
import torch
from safetensors.torch import load_file

from .helpers import TINY, child, cli, losses, metrics, one_line_error, paused_child, wait_for_line


def test_sigkill_then_resume_gives_the_same_run(tmp_path, corpus, bpe_dir):
    # Dropout on and bf16 autocast (the default): the resumed run must restore RNG state and everything else.
    common = ["train", corpus, "--tokenizer", bpe_dir, *TINY, "--steps", "24", "--checkpoint-every", "5",
              "--eval-every", "8", "--dropout", "0.1", "--seed", "11"]
    straight = child([*common, "--out", tmp_path / "straight"])
    killed = paused_child(13, [*common, "--out", tmp_path / "killed"])
    wait_for_line(killed, "paused at step 13")
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(30) == -signal.SIGKILL
    assert straight.wait(90) == 0, straight.stderr.read()
    assert max(losses(tmp_path / "killed")) == 13  # steps 11-13 were done, then lost with the process

    resumed = child(["train", "--resume", "--out", tmp_path / "killed", "--no-progress"])
    out, err = resumed.communicate(timeout=90)
    assert resumed.returncode == 0, err
    a, b = losses(tmp_path / "straight"), losses(tmp_path / "killed")
    assert sorted(a) == sorted(b) == list(range(1, 25))
    for s in a:
        assert abs(a[s] - b[s]) <= 1e-6, (s, a[s], b[s])
    val_a = [(r["step"], r["val_loss"]) for r in metrics(tmp_path / "straight") if "val_loss" in r]
    val_b = [(r["step"], r["val_loss"]) for r in metrics(tmp_path / "killed") if "val_loss" in r]
    assert [s for s, _ in val_a] == [s for s, _ in val_b] == [8, 16, 24]
    assert all(abs(x[1] - y[1]) <= 1e-6 for x, y in zip(val_a, val_b))
    wa = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    wb = load_file(tmp_path / "killed" / "model" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_sigint_saves_a_checkpoint_and_exits_130(tmp_path, corpus, bpe_dir):
    run = tmp_path / "run"
    proc = paused_child(7, ["train", corpus, "--tokenizer", bpe_dir, "--out", run, *TINY, "--steps", "50",
                            "--precision", "fp32", "--checkpoint-every", "100"])
    wait_for_line(proc, "paused at step 7")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "checkpoint saved" in err and "--resume" in err
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["step"] == 7


# ---------------------------------------------------------------- refused in one line, nothing changed


def _damaged(state: dict, how: str) -> dict:
    if how == "wrong-shaped tensor":
        state["model"]["wte.weight"] = torch.zeros(7, 32)
    elif how == "missing optimizer":
        del state["optimizer"]
    elif how == "wrong-shaped optimizer moment":
        moments = next(iter(state["optimizer"]["state"].values()))
        moments["exp_avg"] = torch.zeros(3)
    elif how == "optimizer of another model":
        state["optimizer"]["param_groups"][0]["params"] = [0]
    elif how == "missing tensor":
        state["model"].pop(next(iter(state["model"])))
    elif how == "step as text":
        state["step"] = "2"
    elif how == "rng state of the wrong kind":
        state["rng_cpu"] = [torch.zeros(3)]
    elif how == "rng state of the wrong size":
        state["rng_cpu"] = [torch.zeros(3, dtype=torch.uint8)]
    return state


@pytest.mark.parametrize("how, words", [
    ("wrong-shaped tensor", ["wte.weight", "(7, 32)", "does not fit"]),
    ("missing optimizer", ["'optimizer'", "missing"]),
    ("wrong-shaped optimizer moment", ["exp_avg", "(3,)"]),
    ("optimizer of another model", ["optimizer state does not fit"]),
    ("missing tensor", ["missing"]),
    ("step as text", ["'step'"]),
    ("rng state of the wrong kind", ["rng_cpu"]),
    ("rng state of the wrong size", ["RNG state"]),
])
def test_a_checkpoint_that_loads_but_does_not_fit_is_one_line(tmp_path, corpus, bpe_dir, capsys, how, words):
    run = tmp_path / "run"
    rc, err = cli([corpus, "--tokenizer", bpe_dir, "--out", run, *TINY, "--steps", "4", "--stop-after", "2"], capsys)
    assert rc == 0, err
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    torch.save(_damaged(state, how), run / "checkpoint.pt")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != "train.lock"}
    rc, err = cli(["--resume", "--out", run], capsys)
    one_line_error(rc, err, "checkpoint.pt", *words)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != "train.lock"} == before


def test_resume_without_a_checkpoint_is_refused(tmp_path, corpus, bpe_dir, capsys):
    run = tmp_path / "run"
    rc, err = cli([corpus, "--tokenizer", bpe_dir, "--out", run, *TINY, "--steps", "4", "--stop-after", "2"], capsys)
    assert rc == 0, err
    (run / "checkpoint.pt").unlink()
    rc, err = cli(["--resume", "--out", run], capsys)
    one_line_error(rc, err, "no checkpoint.pt", "--overwrite")
    assert max(losses(run)) == 2  # nothing was redone or rewritten
    rc, err = cli([corpus, "--tokenizer", bpe_dir, "--out", run, *TINY, "--steps", "4", "--overwrite"], capsys)
    assert rc == 0 and "tokenizing" not in err, err  # starting again keeps the token cache


def test_a_resume_with_changed_input_files_is_refused_before_tokenizing(tmp_path, corpus, bpe_dir, capsys):
    """The changed text is found by its digest before any tokenizing (a large corpus would take hours for
    nothing), and the run and its token cache stay as they were."""
    import shutil
    mine = tmp_path / "corpus"
    shutil.copytree(corpus, mine)
    run = tmp_path / "run"
    rc, err = cli([mine, "--tokenizer", bpe_dir, "--out", run, *TINY, "--steps", "4", "--stop-after", "2"], capsys)
    assert rc == 0, err
    caches = sorted(p.name for p in (run / "tokens").iterdir())
    first = sorted(mine.glob("*.txt"))[0]
    first.write_text(first.read_text() + "\nOne more line.\n")
    rc, err = cli(["--resume", "--out", run], capsys)
    one_line_error(rc, err, "changed since the run started")
    assert "tokenizing" not in err and sorted(p.name for p in (run / "tokens").iterdir()) == caches
    assert max(losses(run)) == 2


def test_a_resume_removes_what_killed_writes_left(tmp_path, corpus, bpe_dir, capsys):
    """A kill during a checkpoint's or the model's write leaves a temporary file or folder (each can be as large
    as a checkpoint): the next resume removes them, and nothing else."""
    run = tmp_path / "run"
    rc, err = cli([corpus, "--tokenizer", bpe_dir, "--out", run, *TINY, "--steps", "4", "--stop-after", "2"], capsys)
    assert rc == 0, err
    (run / ".checkpoint.pt.k2j4.tmp").write_bytes(b"half a checkpoint")
    (run / "model").mkdir(exist_ok=True)
    (run / "model" / ".clozelm-save-x1").mkdir()
    (run / "model" / ".clozelm-save-x1" / "model.safetensors").write_bytes(b"half a model")
    (run / ".notes.tmp").write_text("not the run's")
    rc, err = cli(["--resume", "--out", run], capsys)
    assert rc == 0, err
    assert "removed what an interrupted write left: .checkpoint.pt.k2j4.tmp, model/.clozelm-save-x1" in err
    assert not (run / ".checkpoint.pt.k2j4.tmp").exists() and not (run / "model" / ".clozelm-save-x1").exists()
    assert (run / ".notes.tmp").read_text() == "not the run's" and max(losses(run)) == 4


def test_resume_of_nothing_creates_nothing(tmp_path, capsys):
    rc, err = cli(["--resume", "--out", tmp_path / "nothing"], capsys)
    one_line_error(rc, err, "no run to resume")
    assert not (tmp_path / "nothing").exists()
