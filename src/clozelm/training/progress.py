"""What a run reports: the progress line on stderr, the metrics files (metrics.jsonl, metrics.csv) and the
loss curve (loss_curve.png, drawn by plot.py)."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

from ..files import atomic_write_text
from .plot import write_loss_curve


class Progress:
    """One stderr line, rewritten in place on a terminal; plain lines every `every` steps otherwise.

    `bar` switches the per-step line off (--no-progress); messages (resume, stop, done) are still printed
    by rank 0 (`main`), since they say where the work went.
    """

    def __init__(self, total: int, every: int, bar: bool, main: bool = True, stream=None):
        self.total, self.every, self.enabled, self.main = total, max(1, every), bar and main, main
        self.stream = stream or sys.stderr
        self.tty = self.enabled and _isatty(self.stream)
        self.rate = None  # smoothed seconds per step
        self.updates = 0
        self.width = 0

    def update(self, step: int, loss: float, tokens_per_s: float, step_seconds: float, val: float | None) -> None:
        if not self.enabled:
            return
        self.updates += 1
        # The first step pays one-off costs (allocation, compilation): the estimate restarts at the second.
        self.rate = step_seconds if self.updates <= 2 else 0.9 * self.rate + 0.1 * step_seconds
        eta = _duration(self.rate * (self.total - step))
        val_part = f" | val {val:.4f}" if val is not None else ""
        line = (f"step {step}/{self.total} | loss {loss:.4f}{val_part} | {tokens_per_s / 1000:.1f}k tok/s | ETA {eta}")
        if self.tty:
            self.stream.write("\r" + line.ljust(self.width))
            self.width = len(line)
            self.stream.flush()
        elif step % self.every == 0 or step == self.total:
            self.stream.write(line + "\n")
            self.stream.flush()

    def message(self, text: str) -> None:
        if not self.main:
            return
        if self.tty and self.width:
            self.stream.write("\n")
            self.width = 0
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self.width:
            self.stream.write("\n")
            self.stream.flush()
            self.width = 0


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, OSError, ValueError):  # no stream, or a closed one
        return False


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Metrics:
    """metrics.jsonl (one record per step, plus eval records), metrics.csv and loss_curve.png."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.dir, self.enabled = run_dir, enabled
        self.records: list[dict] = []
        self.path = run_dir / "metrics.jsonl"

    def resume(self, step: int) -> None:
        """Keep the records up to the checkpoint's step; later ones were lost work and are redone."""
        if not self.enabled:
            return
        if self.path.is_file():
            for line in self.path.read_bytes().decode("utf-8", "replace").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line cut by the kill
                    continue
                if isinstance(rec, dict) and isinstance(rec.get("step", 0), int) and rec.get("step", 0) <= step:
                    self.records.append(rec)
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))

    def add(self, rec: dict) -> None:
        if not self.enabled:
            return
        self.records.append(rec)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")

    def last_val(self) -> float | None:
        return next((r["val_loss"] for r in reversed(self.records) if "val_loss" in r), None)

    def write_summaries(self) -> None:
        if not self.enabled:
            return
        train = [(r["step"], r["loss"]) for r in self.records if "loss" in r]
        valid = [(r["step"], r["val_loss"]) for r in self.records if "val_loss" in r]
        columns = ["step", "loss", "val_loss", "lr", "grad_norm", "tokens", "tokens_per_s", "elapsed_s"]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.records)
        atomic_write_text(self.dir / "metrics.csv", buf.getvalue())
        write_loss_curve(self.dir / "loss_curve.png", train, valid)
