"""Reuse freed memory from one training step to the next instead of handing it back to the kernel.

A training step frees and allocates the same large buffers every step (activations, logit chunks,
gradients). With glibc's default settings, malloc serves large requests with fresh mappings and returns the
top of its heap to the kernel once enough of it is free, so every step touches new pages and the kernel
zero-fills each one on its first touch. With mappings off, a high trim threshold and a generous top pad,
the memory of one step serves the next. Only where memory comes from changes, never what is computed; the
cost is that the process keeps its peak memory until it exits.

The setting is the process's: `clozelm train` makes it when a run starts (TrainConfig.reuse_memory, on by
default; `--no-reuse-memory` turns it off), and it stays for the rest of the process. On a C library that is
not glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import sys

# mallopt's parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
SETTINGS = (
    (M_MMAP_MAX, 0),  # no request gets a mapping of its own: every block comes from the heap and goes back to it
    (M_TRIM_THRESHOLD, 1 << 30),  # keep up to 1 GiB of free heap top instead of returning it after each step
    (M_TOP_PAD, 256 << 20),  # grow the heap in large steps, so growing it is rare
)


def _glibc():
    """The process's C library when it is glibc, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc has it; musl and others do not
        return libc
    except (OSError, AttributeError):
        return None


def reuse_freed_memory() -> bool:
    """Set glibc's malloc to keep and reuse freed memory (see the module's text). True if it took effect."""
    libc = _glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in SETTINGS)


__all__ = ["reuse_freed_memory"]
