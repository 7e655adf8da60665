"""Reuse freed memory from one training step to the next instead of handing it back to the kernel.

A training step frees and allocates the same large buffers every step (activations, logit chunks,
gradients). With glibc's default settings, malloc serves large requests with fresh mappings and returns the
top of its heap to the kernel once enough of it is free, so every step touches new pages and the kernel
zero-fills each one on its first touch. With mappings off, a high trim threshold and a generous top pad,
the memory of one step serves the next. Only where memory comes from changes, never what is computed.

The costs: the process keeps the memory it has used until it exits, and since free blocks inside the heap
are not returned either, a run whose buffer sizes keep changing can hold more than its peak. The setting is
the whole process's and stays after training returns. So `clozelm train` and `clozelm study` (processes
of their own) make it for CPU runs, while `clozelm.train()` from Python makes it only when asked
(TrainConfig.reuse_memory). It is left alone where it could not help or would override a choice: a C
library other than glibc, malloc replaced by a preloaded allocator (jemalloc, tcmalloc), or malloc settings
given in the environment.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt's parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
SETTINGS = (
    (M_MMAP_MAX, 0),  # no request gets a mapping of its own: every block comes from the heap and goes back to it
    (M_TRIM_THRESHOLD, 1 << 30),  # keep up to 1 GiB of free heap top instead of returning it after each step
    (M_TOP_PAD, 256 << 20),  # grow the heap in large steps, so growing it is rare
)
# Environment variables through which a user sets glibc's malloc: their settings win.
USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def _glibc_malloc():
    """The process's C library when it is glibc and its malloc is the one in use, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        process, libc = ctypes.CDLL(None), ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # glibc has it; musl and others do not
    except (OSError, AttributeError):
        return None
    in_use, glibcs = (ctypes.cast(lib.malloc, ctypes.c_void_p).value for lib in (process, libc))
    return libc if in_use == glibcs else None  # else a preloaded allocator answers malloc


def reuse_freed_memory() -> bool:
    """Set glibc's malloc to keep and reuse freed memory (see the module's text). True if it took effect."""
    libc = _glibc_malloc()
    if libc is None or any(name in os.environ for name in USER_SETTINGS) or \
            "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    libc.malloc_trim(0)  # what set-up freed goes back first: only what training uses from here is kept
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in SETTINGS)


__all__ = ["reuse_freed_memory"]
