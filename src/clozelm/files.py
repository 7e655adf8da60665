"""Reading and writing the user's files: one place for atomic writes and for clear errors on bad paths.

Writes go to a temporary file beside the target, are fsynced, then renamed over it: a reader, a kill or a
crash sees the old file or the new one, never half of one. New files get the permissions the user's umask
gives (a bare temporary file would be 0600).
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from .errors import ClozelmError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call `write(f)` on a temporary file beside `path`, then fsync and rename it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        mode = path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask()
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    import torch
    atomic_write(path, lambda f: torch.save(obj, f))


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside `path` durable (matters after a power cut, harmless otherwise)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


STREAM_LIMIT = 256 * 2**20  # bytes read from a pipe, which could be endless (`yes |`)


def read_text_file(path: str | os.PathLike, what: str = "file") -> str:
    """The UTF-8 text of `path`, or a one-line ClozelmError saying why it cannot be read."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):  # /dev/zero would never end
            raise ClozelmError(f"{what} {path} is a device, expected a file")
        if stat.S_ISREG(mode):
            data = path.read_bytes()
        else:  # a pipe (-f /dev/stdin, <(command)) has no size to check first: read it up to the limit
            with open(path, "rb") as stream:
                data = stream.read(STREAM_LIMIT + 1)
            if len(data) > STREAM_LIMIT:
                raise ClozelmError(f"{what} {path} holds more than {STREAM_LIMIT >> 20} MiB; a text to read is smaller")
    except ValueError:  # a NUL character in the name
        raise ClozelmError(f"{what} {str(path)[:80]!r} is not a valid file name") from None
    except FileNotFoundError:
        raise ClozelmError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise ClozelmError(f"{what} {path} is a directory, expected a file") from None
    except PermissionError:
        raise ClozelmError(f"cannot read {what} {path}: permission denied") from None
    except OSError as e:
        raise ClozelmError(f"cannot read {what} {path}: {e.strerror or type(e).__name__}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ClozelmError(f"{what} {path} is not UTF-8 text (byte offset {e.start})") from None


METADATA_SUFFIXES = (".json", ".jsonl")  # manifests and records beside a corpus: data about the text, not text


# A folder holding one of these is a model, a tokenizer, a training run or a study, not text: a corpus folder
# that holds one (say a run trained on the corpus, written inside it) is read without it. Their .txt files
# (merges.txt, vocab.txt) and logs (metrics.csv, train.lock) would otherwise be taken for documents.
NOT_TEXT_MARKERS = ("config.json", "vocab.json", "encoder.json", "tokenizer.json", "tokenizer_config.json",
                    "run.json", "study.json")


def expand_inputs(items: Iterable[str | os.PathLike], exclude: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """Files named, and every file under the folders named whose path below the folder has no hidden part, that
    is not JSON (METADATA_SUFFIXES: a corpus folder's MANIFEST.json is not one of its documents; a JSON file
    named on its own is read), that is not the report.md of an eval or a study (it sits beside their
    results.json), that is not in a folder holding a model, a tokenizer, a run or a study (NOT_TEXT_MARKERS) and
    that is not under a folder of `exclude` (the command's own output, say a run directory inside its corpus
    folder). Each file once, however often it is named (a folder and a file in it, the same folder twice): where
    it is first named counts; a folder's files are sorted, so the order is stable."""
    items = list(items)
    excluded = [Path(e).resolve() for e in exclude]
    marked: dict[Path, bool] = {}

    def in_marked_folder(f: Path, root: Path) -> Path | None:
        for folder in [f.parent, *f.parent.parents]:
            if folder not in marked:
                marked[folder] = any((folder / name).is_file() for name in NOT_TEXT_MARKERS)
            if marked[folder]:
                return folder
            if folder == root:
                return None
        return None

    files: list[Path] = []
    seen: set[Path] = set()
    skipped: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = []
            for f in sorted(p.rglob("*")):
                if (not f.is_file() or f.suffix.lower() in METADATA_SUFFIXES
                        or (f.name == "report.md" and (f.parent / "results.json").is_file())
                        or any(part.startswith(".") for part in f.relative_to(p).parts)
                        or any(f.resolve().is_relative_to(e) for e in excluded)):
                    continue
                folder = in_marked_folder(f, p)
                if folder is None:
                    found.append(f)
                elif folder not in skipped:
                    skipped.append(folder)
        elif p.is_file():
            found = [p]
        elif p.exists():
            raise ClozelmError(f"{item}: not a regular file or directory")
        else:
            raise ClozelmError(f"{item}: no such file or directory")
        for f in found:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                files.append(f)
    if not files:
        why = f" ({skipped[0]} holds a model, a tokenizer, a run or a study, not text)" if skipped else ""
        raise ClozelmError(f"no input files found in {', '.join(map(str, items)) or 'nothing'}{why}")
    return files


def check_output_file(path: str | os.PathLike, overwrite: bool, flag: str = "--overwrite") -> Path:
    """May `path` be written? A one-line error, before any work is done, for a folder standing there, a file that
    exists (unless `overwrite`: the user's files are replaced only when asked) or a folder to write in that is
    missing. Nothing is created."""
    path = Path(path)
    if path.is_dir():
        raise ClozelmError(f"{path} is a directory; name a file to write")
    if path.exists() and not overwrite:
        raise ClozelmError(f"{path} exists; choose another name or pass {flag} to replace it")
    parent = path.parent
    if not parent.is_dir():
        raise ClozelmError(f"cannot write {path}: {parent} is not a directory" if parent.exists()
                           else f"cannot write {path}: the folder {parent} does not exist")
    return path


def check_writable_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """`path` as a directory that exists or can be created: a one-line error when a file stands there."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ClozelmError(f"{what} {path} is a file, expected a directory")
    return path


def check_can_write_into(folder: Path, what: str = "output directory") -> None:
    """A one-line error now, before the work, when files cannot be created in `folder` (read-only, /proc)."""
    import tempfile
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".clozelm-write-test-"):
            pass
    except OSError as e:
        why = "files cannot be created there" if isinstance(e, FileNotFoundError) and Path(folder).is_dir() \
            else e.strerror or type(e).__name__  # /proc/sys answers ENOENT for a folder that exists
        raise ClozelmError(f"cannot write into {what} {folder}: {why}") from None


def make_dirs(out: Path) -> list[Path]:
    """Create `out` and its missing parents; return those created, outermost first."""
    missing = []
    folder = out
    while not folder.exists() and not folder.is_symlink() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    if folder.exists() and not folder.is_dir():
        raise ClozelmError(f"{folder} is a file, so {out} cannot be a directory" if folder != out
                           else f"{out} exists and is not a directory")
    created = []
    try:
        for folder in reversed(missing):
            folder.mkdir()
            created.append(folder)
    except OSError as e:
        for folder in reversed(created):
            folder.rmdir()
        raise ClozelmError(f"cannot create {out}: {e.strerror or type(e).__name__}") from None
    return created


def remove_empty(created: list[Path]) -> None:
    """Remove the folders `make_dirs` created, innermost first, as long as they are empty (a failed command
    leaves no empty folder of its own behind)."""
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            break
