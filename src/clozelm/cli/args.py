"""What every subcommand reads from the user, checked in one place: numeric option values and the input text.

Numbers: the argparse `type=` functions below refuse, where argparse reads the value, anything outside the
option's range, NaN everywhere, and infinity wherever a range is given (an infinite temperature, timeout or
learning rate means nothing, and NaN slips through every `<` comparison made later). A refused value becomes
one line, `clozelm: error: argument --top-p: expected a number in (0, 1], got 'nan'`, and exit status 2.

Text: `read_text_arg` takes TEXT, `-f FILE` or standard input, with a one-line error for a missing file, a
directory, a file not UTF-8, and a closed or unreadable standard input.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable

from ..errors import ClozelmError
from ..files import read_text_file

# Integers past this are refused: torch keeps sizes, seeds and counts in 64 bits.
INT_LIMIT = 2**63 - 1
DTYPES = ("fp32", "bf16", "int8", "int4")  # --dtype: clozelm.loading.DTYPES, named here so --help needs no torch
DEVICES = ("auto", "cpu", "cuda")  # --device: clozelm.loading.DEVICES


def add_dtype_option(parser: argparse.ArgumentParser, default: str | None = "fp32", scope: str = "") -> None:
    """--dtype for a command that runs a model; `default` None where another option may set it (generate's --bf16)."""
    parser.add_argument("--dtype", choices=DTYPES, default=default,
                        help=f"weights in this precision{scope} (bf16: half the memory; int8/int4: fp32 weights, int8 "
                             "or int4 copies for single rows, a dense copy of them for many (bf16, fp32 on CPUs without bf16 units); "
                             "int8/int4 decode fastest "
                             "on CPU; default: fp32)")


def add_device_option(parser: argparse.ArgumentParser, with_dtype: bool = False) -> None:
    """--device; `with_dtype`: the command also has --dtype, whose int8/int4 keep the model on the CPU."""
    quantized = " (with --dtype int8/int4: the CPU, whose kernels they use)" if with_dtype else ""
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help=f"where the model runs: auto (default) is a CUDA GPU when there is one{quantized}")


def _shown(text: str) -> str:
    text = str(text)
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _bound(value: float, open_: bool, side: str) -> str:
    if value is None:
        return "(-inf" if side == "lo" else "inf)"
    number = f"{value:g}"
    if side == "lo":
        return ("(" if open_ else "[") + number
    return number + (")" if open_ else "]")


def int_in(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [lo, hi] (either end may be open-ended: None)."""
    if lo is not None and hi is None:
        wanted = f"an integer >= {lo}"
    elif lo is None and hi is not None:
        wanted = f"an integer <= {hi}"
    elif lo is None:
        wanted = "an integer"
    else:
        wanted = f"an integer from {lo} to {hi}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except (ValueError, TypeError):  # also Python's limit on the digits of an int
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {_shown(text)}") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {_shown(text)}")
        if abs(value) > INT_LIMIT:  # what a 64-bit integer holds, which torch and numpy take
            raise argparse.ArgumentTypeError(f"expected {wanted} of at most {INT_LIMIT:,}, got {_shown(text)}")
        return value

    parse.__name__ = "int"
    return parse


def float_in(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
             hi_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in the range lo..hi, each end closed unless *_open (None: no limit)."""
    if lo is None and hi is None:
        wanted = "a finite number"
    elif hi is None:
        wanted = f"a finite number {'>' if lo_open else '>='} {lo:g}"
    elif lo is None:
        wanted = f"a finite number {'<' if hi_open else '<='} {hi:g}"
    else:
        wanted = f"a number in {_bound(lo, lo_open, 'lo')}, {_bound(hi, hi_open, 'hi')}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except (ValueError, TypeError, OverflowError):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {_shown(text)}") from None
        if not math.isfinite(value) or (lo is not None and (value <= lo if lo_open else value < lo)) or \
                (hi is not None and (value >= hi if hi_open else value > hi)):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {_shown(text)}")
        return value

    parse.__name__ = "float"
    return parse


# The shapes most options take.
any_int = int_in()
positive_int = int_in(1)
nonnegative_int = int_in(0)
finite_float = float_in()
positive_float = float_in(0.0, lo_open=True)
nonnegative_float = float_in(0.0)
probability = float_in(0.0, 1.0)  # [0, 1]
rate = float_in(0.0, 1.0, hi_open=True)  # [0, 1): dropout and the like
port = int_in(0, 65535)


# ---------------------------------------------------------------- the input text

def read_text_arg(args) -> str:
    """TEXT from the argument, -f FILE, or standard input (when TEXT is '-' or absent and stdin is not a terminal)."""
    path = getattr(args, "file", None)
    text = getattr(args, "text", None)
    if path is not None and text not in (None, "-"):
        raise ClozelmError("give the text as TEXT or as -f FILE, not both")
    if path == "-":  # -f -, as TEXT -: standard input
        return read_stdin()
    if path is not None:
        return read_text_file(path, "input file")
    if text not in (None, "-"):
        return _checked(text, "the text argument")
    return read_stdin()


def read_stdin() -> str:
    """All of standard input as UTF-8 text, or a one-line error (closed, a terminal, unreadable, not UTF-8)."""
    stream = sys.stdin
    hint = "pass TEXT, -f FILE, or pipe text on stdin"
    if stream is None or getattr(stream, "closed", False):  # `clozelm fill <&-`: Python sets sys.stdin to None
        raise ClozelmError(f"no text given and standard input is closed: {hint}")
    try:
        interactive = stream.isatty()
    except (OSError, ValueError):
        interactive = False
    if interactive:
        raise ClozelmError(f"no text given: {hint}")
    try:
        data = _read_limited(stream.buffer if hasattr(stream, "buffer") else stream)
    except OSError as error:
        raise ClozelmError(f"cannot read standard input: {error.strerror or type(error).__name__}") from None
    except ValueError:  # read on a closed file
        raise ClozelmError(f"no text given and standard input is closed: {hint}") from None
    if isinstance(data, bytes):
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ClozelmError(f"standard input is not UTF-8 text (byte offset {error.start})") from None
    return _checked(data, "standard input")


# More than any text a model reads; standard input from /dev/zero would otherwise fill the memory.
STDIN_LIMIT = 256 * 2**20


def _read_limited(stream):
    chunks, size = [], 0
    while True:
        chunk = stream.read(2**20)
        if not chunk:
            return chunks[0][:0].join(chunks) if chunks else chunk
        chunks.append(chunk)
        size += len(chunk)
        if size > STDIN_LIMIT:
            raise ClozelmError(f"standard input holds more than {STDIN_LIMIT >> 20} MiB; a text to read is smaller")


def _checked(text: str, what: str) -> str:
    # A command line that is not UTF-8 reaches Python as lone surrogates (os.fsdecode's surrogateescape).
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ClozelmError(f"{what} is not UTF-8 text (character offset {error.start})") from None
    return text
