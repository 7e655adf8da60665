"""Property-based fuzzing of the command line (issue 18): every subcommand, argv drawn from valid and invalid
flags and values (NaN, +-inf, huge, negative, empty, non-UTF-8 bytes as os.fsdecode gives them, lone
surrogates), paths (a directory, a missing file, a file where a directory is expected, /dev/full, a name
that is not UTF-8), closed or non-UTF-8 standard input, standard output on a full disk, and corrupted
config.json, weight, tokenizer and checkpoint files.

Each run must end in exit status 0 or 2 with no traceback, at most one `clozelm: error:` line (exactly one
when it fails), and every file that was there before byte-identical afterwards unless it is the command's
own documented output (convert/tokenizer train OUT with --overwrite, the heads page and maps, the train run
directory).

The CLI runs in-process (clozelm.cli.main with captured streams) for speed, on tiny models built in a temporary
directory; a few real subprocesses cover what only a process has (closed stdin, /dev/full, non-UTF-8 argv).

Every example names a tiny model (--model): the embedded defaults would only make it slower.

Examples per subcommand: CLOZELM_FUZZ_EXAMPLES (default 10, about a minute for the file). Examples are drawn
from a fixed seed so the normal suite is repeatable; for the nightly run draw fresh ones each time:

    CLOZELM_FUZZ_EXAMPLES=400 CLOZELM_FUZZ_RANDOM=1 python -m pytest -q tests/test_cli_fuzz.py

A failure prints the argv, the sandbox contents it ran on and the corruption, enough to repeat it by hand.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clozelm.cli import main
from clozelm.loaded import Model
from clozelm.model import ModelConfig, Transformer
from handbuilt import word_tokenizer

EXAMPLES = int(os.environ.get("CLOZELM_FUZZ_EXAMPLES", "10"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                derandomize=os.environ.get("CLOZELM_FUZZ_RANDOM") != "1",
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])
SENTENCES = ["the cat sat on the mat", "a dog ran in the park", "the dog sat in the sun"]
NON_UTF8_NAME = os.fsdecode(b"caf\xe9")  # a file name in Latin-1, as a command line hands it to Python


# ------------------------------------------------------------------------------------------ the sandbox

@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """Everything a command may be pointed at; each example runs on a fresh copy."""
    root = tmp_path_factory.mktemp("fuzz-base")
    tok = word_tokenizer(tmp_path_factory.mktemp("tok-corpus"), SENTENCES)
    torch.manual_seed(0)
    shape = dict(vocab_size=tok.vocab_size, n_positions=32, n_embd=16, n_layer=2, n_head=2)
    Model(Transformer(ModelConfig(**shape)).eval(), tok).save_pretrained(root / "gpt")
    bert = ModelConfig(**shape, causal=False, pre_ln=False, activation="gelu", head="mlm", layer_norm_eps=1e-12)
    Model(Transformer(bert).eval(), tok).save_pretrained(root / "bert")
    tok.save_pretrained(root / "tok")
    (root / "corpus.txt").write_text("\n\n".join(SENTENCES * 20) + "\n")
    (root / "text.txt").write_text("the ___ sat on the mat")
    (root / "latin1.txt").write_bytes("caf\xe9 ___".encode("latin-1"))
    (root / "file.txt").write_text("x")
    (root / "emptydir").mkdir()
    (root / NON_UTF8_NAME).write_text("the [MASK] ran in the park")
    (root / "outdir").mkdir()  # a directory of the user's that commands may be pointed at
    (root / "outdir" / "keep.txt").write_text("mine")
    (root / "outdir" / "vocab.json").write_text('{"mine": 0}')
    # a finished run, for train --resume / --init
    code, _, err = run_main(["train", "corpus.txt", "--tokenizer", "tok", "--out", "run", *TINY_SHAPE, *TINY_TRAIN],
                            root, "")
    assert code == 0, err
    return root


TINY_SHAPE = ["--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--n-positions", "16"]
TINY_TRAIN = ["--steps", "2", "--seq-len", "8", "--batch-size", "2", "--eval-every", "0", "--checkpoint-every", "0",
              "--no-progress", "--precision", "fp32", "--threads", "1"]


def snapshot(root: Path) -> dict[str, str]:
    files = {}
    for folder, dirs, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            rel = os.path.relpath(path, root)
            files[rel] = "link" if path.is_symlink() else hashlib.sha256(path.read_bytes()).hexdigest()
    return files


@contextlib.contextmanager
def process_state(cwd: Path):
    """main() in-process: restore what a command may change in this process (cwd, streams, threads, signals)."""
    saved = os.getcwd(), sys.stdin, sys.stdout, sys.stderr, torch.get_num_threads()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(saved[0])
        sys.stdin, sys.stdout, sys.stderr = saved[1:4]
        torch.set_num_threads(saved[4])
        for s, handler in handlers.items():
            signal.signal(s, handler)


def forget_loaded_models() -> None:
    # Each example has its own sandbox but the same relative names ("gpt"): a remembered model would hide the
    # corruption of this example's copy.
    import clozelm.api
    import clozelm.loading
    for module in (clozelm.api, clozelm.loading):
        cache = getattr(module, "_LOADED", None)
        if isinstance(cache, dict):
            cache.clear()


def run_main(argv: list[str], cwd: Path, stdin, full_stdout: bool = False) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `clozelm ARGV` run in this process. stdin: None (closed), str or bytes."""
    forget_loaded_models()
    out, err = io.StringIO(), io.StringIO()
    if isinstance(stdin, bytes):
        stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    elif isinstance(stdin, str):
        stdin = io.StringIO(stdin)
    with process_state(cwd), contextlib.ExitStack() as stack:
        sys.stdin = stdin
        sys.stdout = stack.enter_context(open("/dev/full", "w")) if full_stdout else out
        sys.stderr = err
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code
    code = 0 if code is None else code
    return code, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------------------------------ values

BAD_NUMBERS = ["nan", "NaN", "inf", "-inf", "infinity", "1e309", "-1", "0", "", " ", "abc", "1e-320", "-0",
               "9" * 30, "9" * 5000, "1_000", "0x10", "\u0663", os.fsdecode(b"\xff"), "\udcff", "1.5", "-1e308"]
NUMBERS = st.one_of(st.sampled_from(BAD_NUMBERS), st.integers(-3, 40).map(str),
                    st.floats(allow_nan=True, allow_infinity=True).map(repr), st.text(max_size=4))
SMALL = st.one_of(st.sampled_from(["1", "2", "3"]), st.sampled_from(BAD_NUMBERS))
PROBABILITY = st.one_of(st.sampled_from(["0", "0.5", "1", "1.0001", "-0.1", "nan", "inf"]), NUMBERS)
TEXTS = st.one_of(
    st.sampled_from(["the ___ sat on the mat", "a [MASK] ran in the park", "the cat", "___", "[MASK] [MASK]",
                     "", "   ", "-", "nothing hidden", "the " + "[MASK]" * 40, "the cat sat " * 300 + "___",
                     "caf\xe9 \u00fc\u4e2d\U0001F600 ___", os.fsdecode(b"the \xff\xfe ___"), "\ud800 ___",
                     "the\x00___", "--json", "-f"]),
    st.text(max_size=30))
INPUT_FILES = st.sampled_from(["text.txt", "latin1.txt", "emptydir", "missing.txt", "file.txt/sub", "",
                               NON_UTF8_NAME, "gpt/model.safetensors", "/dev/null", "/dev/zero"])
MODELS = st.sampled_from(["gpt", "gpt", "bert", "missing", "emptydir", "file.txt", "tok", "run/model", "run",
                          "", NON_UTF8_NAME, "no/such/model", "someone/x", "/dev/full"])
OUT_FILES = st.sampled_from(["out.html", "outdir/page.html", "file.txt", "emptydir", "missing/x.html",
                             "file.txt/x.html", "/dev/full", "outdir"])
OUT_DIRS = st.sampled_from(["new", "outdir", "emptydir", "file.txt", "file.txt/sub", "gpt", "new/deeper",
                            "/dev/full", NON_UTF8_NAME + "-dir"])
STDIN = st.sampled_from([None, "the ___ sat on the mat", "", b"caf\xe9 ___", "a [MASK] ran"])

# What config.json, the weights, the tokenizer or a checkpoint may be turned into before a run.
BAD_JSON_VALUES = st.sampled_from(["384", 6.5, None, "abc", -1, 0, 10**30, 1e308, [1], {}, True, float("nan"),
                                   2**70, "gpt2", 1e-12])
CONFIG_KEYS = st.sampled_from(["n_embd", "n_layer", "n_head", "vocab_size", "n_positions", "layer_norm_epsilon",
                               "n_inner", "activation_function", "clozelm_extra", "model_type", "bos_token_id",
                               "resid_pdrop", "hidden_size", "num_hidden_layers", "num_attention_heads"])


@st.composite
def corruptions(draw):
    kind = draw(st.sampled_from(["none", "none", "config-key", "config-whole", "config-bytes", "weights",
                                 "tokenizer", "checkpoint", "pickle"]))
    model = draw(st.sampled_from(["gpt", "bert", "run/model"]))
    if kind == "config-key":
        return kind, model, (draw(CONFIG_KEYS), draw(BAD_JSON_VALUES))
    if kind == "config-whole":
        return kind, model, draw(st.sampled_from(["[1,2,3]", '"gpt2"', "null", "5", "[" * 5000, "{}", "NaN",
                                                  '{"model_type": "gpt2", "n_embd": 1' + "0" * 5000 + "}"]))
    if kind in ("config-bytes", "weights", "tokenizer", "checkpoint"):
        return kind, model, draw(st.sampled_from(["truncate", "random", "empty", "delete", "directory"]))
    return kind, model, None


def corrupt(root: Path, corruption) -> None:
    kind, model, how = corruption
    if kind == "none":
        return
    if kind == "config-key":
        key, value = how
        config = json.loads((root / model / "config.json").read_text())
        config[key] = value
        (root / model / "config.json").write_text(json.dumps(config))
    elif kind == "config-whole":
        (root / model / "config.json").write_text(how)
    elif kind == "pickle":  # weights as a pickle that asks to run code
        (root / model / "model.safetensors").unlink()

        class Exploit:
            def __reduce__(self):
                return (os.system, ("touch pwned",))

        torch.save({"wte.weight": Exploit()}, root / model / "pytorch_model.bin")
    else:
        target = {"config-bytes": root / model / "config.json", "weights": root / model / "model.safetensors",
                  "tokenizer": root / model / "vocab.json", "checkpoint": root / "run" / "checkpoint.pt"}[kind]
        data = target.read_bytes()
        if how == "truncate":
            target.write_bytes(data[: len(data) // 2])
        elif how == "random":
            target.write_bytes(os.urandom(max(64, len(data) // 8)))
        elif how == "empty":
            target.write_bytes(b"")
        elif how == "delete":
            target.unlink()
        else:
            target.unlink()
            target.mkdir()


# ------------------------------------------------------------------------------------------ argv

def either(ok, bad):
    """Half the examples draw only values a command should accept, so that the paths past the checks (loading,
    the task, writing) are fuzzed too; the other half draw from everything."""
    return ok, st.one_of(ok, bad)


MODEL = either(st.sampled_from(["gpt", "bert"]), MODELS)
TEXT = either(st.sampled_from(["the ___ sat on the mat", "a [MASK] ran in the park", "the ___ sat in the ___"]), TEXTS)
INPUT = either(st.sampled_from(["text.txt", NON_UTF8_NAME]), INPUT_FILES)
COUNT = either(st.sampled_from(["1", "2", "3"]), NUMBERS)
SMALL_COUNT = either(st.sampled_from(["1", "2", "3"]), SMALL)
PROB = either(st.sampled_from(["0.1", "0.5", "1"]), PROBABILITY)
POSITIVE = either(st.sampled_from(["0.5", "1", "1.3", "1e-3"]), NUMBERS)
NONNEGATIVE = either(st.sampled_from(["0", "0.7", "2"]), NUMBERS)
OUT_FILE = either(st.sampled_from(["out.html", "outdir/page.html", "new.html"]), OUT_FILES)
OUT_DIR = either(st.sampled_from(["new", "new/deeper", NON_UTF8_NAME + "-dir"]), OUT_DIRS)


def options(draw, ok: bool, specs: dict, required: dict | None = None) -> list[str]:
    """Some of `specs` (flag -> (valid values, any values), None for a switch) in any order; `required` flags are
    always given; outside `ok` examples, sometimes an unknown flag or a flag missing its value."""
    argv = []
    chosen = draw(st.lists(st.sampled_from(sorted(specs)), max_size=4, unique=ok))
    for flag, values in {**(required or {}), **{f: specs[f] for f in chosen}}.items():
        argv.append(flag)
        if values is not None:
            value = draw(values[0] if ok else values[1])
            argv += list(value) if isinstance(value, tuple) else [value]
    if not ok:
        extra = draw(st.sampled_from([None] * 6 + ["--bogus", "--json", "-h", "--model"]))
        if extra:
            argv.append(extra)
    return argv


def text_source(draw, ok: bool) -> list[str]:
    how = draw(st.sampled_from(["text", "text", "file"] + ([] if ok else ["stdin", "both"])))
    argv = []
    if how in ("text", "both"):
        argv.append(draw(TEXT[0] if ok else TEXT[1]))
    if how in ("file", "both"):
        argv += ["-f", draw(INPUT[0] if ok else INPUT[1])]
    return argv


@st.composite
def fill_argv(draw):
    ok = draw(st.booleans())
    specs = {"--top": COUNT, "--json": None}
    return ["fill", *text_source(draw, ok), *options(draw, ok, specs, {"--model": MODEL})], []


@st.composite
def generate_argv(draw):
    ok = draw(st.booleans())
    specs = {"--max-tokens": SMALL_COUNT, "--temperature": NONNEGATIVE, "--top-k": COUNT, "--top-p": PROB,
             "--repetition-penalty": POSITIVE, "--beams": SMALL_COUNT, "--stop": TEXT, "--seed": COUNT,
             "--bf16": None, "--json": None}
    required = {"--model": (st.just("gpt"), MODELS), **({"--max-tokens": SMALL_COUNT} if ok else {})}
    return ["generate", *text_source(draw, ok), *options(draw, ok, specs, required)], []


@st.composite
def tokenize_argv(draw):
    ok = draw(st.booleans())
    specs = {"--tokenizer": (st.just("tok"), MODELS), "--json": None}
    return ["tokenize", *text_source(draw, ok), *options(draw, ok, specs, {"--model": MODEL})], []


@st.composite
def info_argv(draw):
    ok = draw(st.booleans())
    return ["info", draw(MODEL[0] if ok else MODEL[1]), *options(draw, ok, {"--json": None})], []


@st.composite
def models_argv(draw):
    ok = draw(st.booleans())
    return ["models", *options(draw, ok, {"--json": None})], []


@st.composite
def convert_argv(draw):
    ok = draw(st.booleans())
    out = draw(OUT_DIR[0] if ok else OUT_DIR[1])
    argv = ["convert", draw(MODEL[0] if ok else MODEL[1]), out, *options(draw, ok, {"--overwrite": None})]
    return argv, [out + "/"] if "--overwrite" in argv else []


@st.composite
def heads_argv(draw):
    ok = draw(st.booleans())
    head = either(st.sampled_from(["0.0", "1.1", "0.1"]),
                  st.sampled_from(["5.0", "0.9", "-1.0", "a.b", "1", "1.1.1", "nan.0", ""]))
    specs = {"--compare": MODEL, "-o": OUT_FILE,
             "--png": (st.tuples(head[0], OUT_FILE[0]), st.tuples(head[1], OUT_FILE[1])),
             "--svg": (st.tuples(head[0], OUT_FILE[0]), st.tuples(head[1], OUT_FILE[1])),
             "--word-level": None, "--hide-sinks": None, "--report": OUT_DIR, "--min-arcs": COUNT, "--json": None}
    if not ok:
        specs["--syntax"] = INPUT
    argv = ["heads", *text_source(draw, ok), *options(draw, ok, specs, {"--model": MODEL})]
    outputs = ["heads.html"]
    for flag in ("-o", "--report"):
        if flag in argv:
            outputs.append(argv[argv.index(flag) + 1] + ("/" if flag == "--report" else ""))
    for flag in ("--png", "--svg"):
        if flag in argv:
            outputs.append(argv[argv.index(flag) + 2])
    return argv, outputs


@st.composite
def tokenizer_train_argv(draw):
    ok = draw(st.booleans())
    out = draw(OUT_DIR[0] if ok else OUT_DIR[1])
    specs = {"--special": (st.sampled_from(["[MASK]", "<|pad|>"]), TEXTS), "--min-frequency": SMALL_COUNT,
             "--overwrite": None}
    files = ["corpus.txt"] if ok else draw(st.lists(st.sampled_from(
        ["corpus.txt", "latin1.txt", "emptydir", "missing.txt", "gpt", "/dev/null"]), max_size=2))
    sizes = (st.sampled_from(["260", "300"]), st.one_of(st.sampled_from(["256", "0"]), SMALL))
    required = {"--out": (st.just(out), st.just(out)), "--vocab-size": sizes} if ok or draw(st.booleans()) else {}
    argv = ["tokenizer", "train", *files, *options(draw, ok, specs, required)]
    return argv, [out + "/"] if "--overwrite" in argv else []


@st.composite
def train_argv(draw):
    ok = draw(st.booleans())
    out = draw(st.sampled_from(["R", "R/deeper"] if ok else
                               ["R", "run", "file.txt", "outdir", "emptydir", "file.txt/sub", "/dev/full"]))
    files = ["corpus.txt"] if ok else draw(st.lists(st.sampled_from(
        ["corpus.txt", "latin1.txt", "emptydir", "missing.txt", "text.txt"]), max_size=2))
    source = draw(st.sampled_from([["--tokenizer", "tok", *TINY_SHAPE], ["--init", "gpt"], ["--init", "bert"]] if ok
                                  else [["--tokenizer", "tok", *TINY_SHAPE], ["--init", "gpt"], ["--resume"],
                                        ["--init", "missing"], ["--tokenizer", "file.txt"], [], ["--init", "run"]]))
    # Values that keep a run small: a huge --steps or --batch-size would only make the test slow, not wiser.
    specs = {"--steps": SMALL_COUNT, "--lr": (st.sampled_from(["1e-3", "0.1"]), NUMBERS),
             "--warmup": SMALL_COUNT, "--dropout": (st.sampled_from(["0", "0.1"]), PROBABILITY),
             "--valid-every": SMALL_COUNT, "--weight-decay": NONNEGATIVE, "--grad-clip": NONNEGATIVE,
             "--min-lr-ratio": PROB, "--seed": COUNT, "--eval-examples": SMALL_COUNT,
             "--valid": (st.just("text.txt"), INPUT_FILES)}
    if not ok:
        specs.update({"--objective": (None, st.sampled_from(["clm", "mlm", "fim", "bogus"])),
                      "--mask-rate": PROB, "--fim-rate": PROB, "--overwrite": None,
                      "--seq-len": (None, st.sampled_from(["8", "0", "-1", "nan", "100000"]))})
    argv = ["train", *files, "--out", out, *source, *TINY_TRAIN, *options(draw, ok, specs)]
    return argv, [out + "/"]


COMMANDS = {"fill": fill_argv(), "generate": generate_argv(), "tokenize": tokenize_argv(), "info": info_argv(),
            "models": models_argv(), "convert": convert_argv(), "heads": heads_argv(),
            "tokenizer-train": tokenizer_train_argv(), "train": train_argv()}


# ------------------------------------------------------------------------------------------ the property

def check(base: Path, argv: list[str], outputs: list[str], corruption, stdin, full_stdout: bool) -> None:
    work = Path(tempfile.mkdtemp(prefix="clozelm-fuzz-"))
    try:
        root = work / "sandbox"
        shutil.copytree(base, root, symlinks=True)
        corrupt(root, corruption)
        before = snapshot(root)
        code, out, err = run_main(argv, root, stdin, full_stdout)
        context = f"argv={argv!r} corruption={corruption!r} stdin={stdin!r} full_stdout={full_stdout}\n{err}"
        assert code in (0, 2), f"exit {code}: {context}"
        assert "Traceback" not in err, context
        errors = [line for line in err.splitlines() if line.startswith("clozelm: error")]
        assert len(errors) == (1 if code == 2 else 0), context
        assert not (root / "pwned").exists(), "a pickle ran code: " + context
        after = snapshot(root)

        def documented(rel: str) -> bool:
            return any(rel == o or (o.endswith("/") and rel.startswith(o)) for o in outputs)

        changed = sorted(rel for rel, digest in before.items() if after.get(rel) != digest and not documented(rel))
        assert not changed, f"changed or removed {changed}: {context}"
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "train"])
def test_cli_fuzz(base, command):
    @FUZZ
    @given(drawn=COMMANDS[command], corruption=corruptions(), stdin=STDIN,
           full_stdout=st.sampled_from([False] * 5 + [True]))
    def fuzz(drawn, corruption, stdin, full_stdout):
        check(base, *drawn, corruption, stdin, full_stdout)

    fuzz()


@settings(FUZZ, max_examples=max(2, EXAMPLES // 2))
@given(drawn=COMMANDS["train"], corruption=corruptions())
def test_cli_fuzz_train(base, drawn, corruption):
    check(base, *drawn, corruption, None, False)


# ------------------------------------------------------------------------------------------ real processes

def run_process(*args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, cwd=None):
    return subprocess.run([sys.executable, "-m", "clozelm", *args], stdin=stdin, stdout=stdout,
                          stderr=subprocess.PIPE, cwd=cwd, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "default"})


def one_error_line(r, fragment: str) -> None:
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clozelm: error: ") and fragment in lines[0], err


@pytest.mark.parametrize("command", ["fill", "heads"])  # generate and tokenize read it the same way
def test_closed_stdin(base, command):
    """`clozelm fill <&-`: Python starts with sys.stdin None."""
    r = subprocess.run(["bash", "-c", f'exec "$0" -m clozelm {command} --model gpt <&-', sys.executable],
                       capture_output=True, cwd=base, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    one_error_line(r, "standard input is closed")


@pytest.mark.parametrize("argv", [["fill", "the ___ sat on the mat", "--model", "gpt"],
                                  ["generate", "the cat", "--model", "gpt", "--max-tokens", "3"],
                                  ["models", "--json"]])
def test_full_disk_on_stdout(base, argv):
    with open("/dev/full", "wb") as full:
        r = run_process(*argv, stdout=full, cwd=base)
    one_error_line(r, "cannot write to standard output: No space left on device")


def test_non_utf8_argv_and_stdin(base):
    r = subprocess.run([sys.executable.encode(), b"-m", b"clozelm", b"fill", b"caf\xe9 ___", b"--model", b"gpt"],
                       capture_output=True, cwd=base, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    one_error_line(r, "the text argument is not UTF-8")
    # a file name that is not UTF-8 is read, and printed back as the bytes it came from
    r = subprocess.run([sys.executable.encode(), b"-m", b"clozelm", b"tokenize", b"-f", b"caf\xe9", b"--model", b"gpt"],
                       capture_output=True, cwd=base, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0 and b"tokens" in r.stdout, r.stderr
