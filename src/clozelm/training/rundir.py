"""The run directory: its layout, its lock, and its settings file.

    run.json          the settings (training config, model config, inputs, numerics), written before step 1
    train.lock        held (fcntl.flock) by the process training in the directory; it holds that PID
    tokenizer/        the tokenizer the run uses (so resuming does not depend on the original folder)
    tokens/KEY/       the token shards (see data.py); reused by any run over the same files + tokenizer
    checkpoint.pt     the latest checkpoint (atomic), read with torch.load(weights_only=True)
    best.pt           the weights with the lowest held-out loss so far (atomic)
    metrics.jsonl     one record per step (+ held-out evaluations); metrics.csv; loss_curve.png
    model/            the trained model in Hugging Face format, tokenizer included: the weights with the
                      lowest held-out loss (the last ones when there is no held-out split)

A directory holding only what a run's set-up writes before run.json (tokenizer/, tokens/, the lock) is a
set-up that failed or was stopped: a new run may use it, keeping its token cache.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from pathlib import Path

from ..errors import ClozelmError
from ..files import atomic_write_text

RUN_FILE = "run.json"
LOCK_FILE = "train.lock"
TOKENIZER_DIR = "tokenizer"
TOKENS_DIR = "tokens"
MODEL_DIR = "model"
SET_UP_BEFORE_RUN_FILE = {TOKENIZER_DIR, TOKENS_DIR, LOCK_FILE}
# Everything a run writes into its directory: --overwrite removes these and nothing else.
RUN_ENTRIES = SET_UP_BEFORE_RUN_FILE | {RUN_FILE, MODEL_DIR, "checkpoint.pt", "best.pt", "metrics.jsonl", "metrics.csv",
                                        "loss_curve.png"}


def _is_run_entry(name: str) -> bool:
    """A run's file, or the temporary file of an atomic write of one that was interrupted (.NAME.XXXX.tmp)."""
    return name in RUN_ENTRIES or (name.startswith(".") and name.endswith(".tmp")
                                   and name[1:-len(".tmp")].rsplit(".", 1)[0] in RUN_ENTRIES)


def remove_interrupted_writes(run_dir: Path) -> list[str]:
    """Remove what writes cut short by a kill left (a checkpoint's .checkpoint.pt.XXXX.tmp, a model's staging
    folder model/.clozelm-save-XXXX): each can be as large as a checkpoint, and every kill would add one. Call
    with the run's lock held. Returns the names removed."""
    removed = []
    candidates = [p for p in run_dir.iterdir() if p.name.startswith(".") and _is_run_entry(p.name)]
    if (run_dir / MODEL_DIR).is_dir():
        candidates += [p for p in (run_dir / MODEL_DIR).iterdir() if p.name.startswith(".clozelm-save-")]
    for path in candidates:
        try:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        except FileNotFoundError:
            continue
        removed.append(str(path.relative_to(run_dir)))
    return removed


class RunLock:
    """An exclusive lock on a run directory for as long as a process trains in it. The kernel releases it
    when the process ends, however it ends, so a killed run never leaves a stale lock."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise ClozelmError(f"cannot create {self.path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_pid(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ClozelmError(f"{self.path.parent} is in use by another training (PID {holder}); wait for it to "
                                   "finish or stop it first") from None
            raise ClozelmError(f"cannot lock {self.path}: {e.strerror}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"


def check_new_run_dir(run_dir: Path, overwrite: bool) -> None:
    """May a new run be set up in `run_dir`? Nothing is created or changed here."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ClozelmError(f"{run_dir} exists and is not a directory")
    if not run_dir.is_dir():
        return
    entries = {p.name for p in run_dir.iterdir()}
    foreign = sorted(name for name in entries if not _is_run_entry(name))
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ClozelmError(f"{run_dir} holds files that are not a training run's ({shown}); choose a new or empty "
                           "directory for --out" + (" (--overwrite only replaces a run)" if overwrite else ""))
    if entries and not entries <= SET_UP_BEFORE_RUN_FILE and not overwrite:
        raise ClozelmError(f"{run_dir} already exists; pass --resume to continue that run or --overwrite to start over")


def clear_for_new_run(run_dir: Path) -> None:
    """Remove what a previous run left, except the token cache (keyed by content: still valid, and expensive
    to rebuild) and the lock this process holds. Only a run's own entries: check_new_run_dir refused any other."""
    for entry in run_dir.iterdir():
        if entry.name in (TOKENS_DIR, LOCK_FILE) or not _is_run_entry(entry.name):
            continue
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def read_settings(run_dir: Path) -> dict:
    path = run_dir / RUN_FILE
    try:
        settings = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ClozelmError(f"no run to resume in {run_dir} ({RUN_FILE} is missing)") from None
    except IsADirectoryError:
        raise ClozelmError(f"{path} is a directory, expected the run's settings") from None
    except OSError as e:
        raise ClozelmError(f"cannot read {path}: {e.strerror}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ClozelmError(f"{path} is damaged: {str(e).splitlines()[0][:200]}") from None
    problems = _settings_problems(settings)
    if problems:
        raise ClozelmError(f"{path} is damaged: {problems}")
    return settings


def _settings_problems(settings) -> str:
    if not isinstance(settings, dict):
        return "not an object of settings"
    for key, kind in (("train", dict), ("model", dict), ("inputs", dict), ("data_key", str)):
        if not isinstance(settings.get(key), kind):
            return f"its {key!r} entry is missing or not a {kind.__name__}"
    inputs = settings["inputs"]
    if not isinstance(inputs.get("train"), list) or not all(isinstance(p, str) for p in inputs["train"]):
        return "its inputs.train entry is not a list of paths"
    valid = inputs.get("valid")
    if valid is not None and (not isinstance(valid, list) or not all(isinstance(p, str) for p in valid)):
        return "its inputs.valid entry is not a list of paths"
    if not isinstance(inputs.get("valid_every"), int) or not isinstance(inputs.get("skip_bad_files"), bool):
        return "its inputs entry is damaged"
    if not isinstance(settings.get("setup", {}), dict):
        return "its 'setup' entry is not an object"
    return ""


def write_settings(run_dir: Path, settings: dict) -> None:
    atomic_write_text(run_dir / RUN_FILE, json.dumps(settings, indent=2) + "\n")
