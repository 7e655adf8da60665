"""The `clozelm` command. Each subcommand lives with the code it drives and registers itself here.

User errors (ClozelmError, bad option values, missing files, output that cannot be written) print one line
`clozelm: error: ...` and exit 2; Ctrl-C exits 130. Tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

from .args import _checked, add_device_option, add_dtype_option, float_in, int_in, nonnegative_int, positive_int, read_text_arg  # noqa: F401 (read_text_arg)
from ..errors import ClozelmError
from ..files import check_can_write_into, check_writable_dir, expand_inputs, make_dirs, remove_empty

# A fill keeps `top` hypotheses and a beam search 2 x `beams` (each with its cache) at every step: past these the
# memory, not the answer, is what grows.
MAX_TOP = 1000
MAX_BEAMS = 64

# Modules that contribute subcommands: each has add_parser(subparsers) setting `func` on its parser.
COMMAND_MODULES = ["clozelm.cli", "clozelm.cli.train", "clozelm.cli.heads", "clozelm.cli.serve",
                   "clozelm.cli.eval", "clozelm.cli.study"]

EPILOG = """examples:
  clozelm fill "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a ___."
  clozelm fill "The [MASK] sat on the ___." --model default-bert --top 3 --json
  clozelm generate "It was a dark and stormy night" --max-tokens 40 --temperature 0.8 --seed 1
  clozelm models
  clozelm train corpus/ --tokenizer bpe/ --objective fim --n-layer 6 --n-embd 384 --n-head 6 --out runs/fim
  clozelm serve --model default --compare default-bert
  clozelm heads "The dog that chased the cat ran away." -o view.html --compare default-bert
  clozelm info gpt2-dir/                      describe a model directory
  clozelm convert openai/124M/ gpt2-hf/       OpenAI checkpoint -> Hugging Face format
  clozelm tokenize "Hello world" --model gpt2-dir/
  clozelm tokenizer train corpus/*.txt --vocab-size 8000 --special '[MASK]' --out my-bpe/
"""


def cmd_fill(args) -> None:
    from ..api import cached_load
    from ..cloze import FillOptions, fill, method_for, parse
    text = read_text_arg(args)
    model = cached_load(args.model, dtype=args.dtype, device=args.device)
    if args.top > FillOptions().beam and len(parse(text).blanks) > 1:  # said first: the search can take minutes
        print(f"clozelm: note: {args.top} partial answers are carried from one blank to the next, so the search grows "
              "with --top; a smaller --top is faster", file=sys.stderr)
    answers = fill(text, model, top=args.top)
    for note in dict.fromkeys(note for a in answers for note in a.notes):  # each once, in order
        print(f"clozelm: note: {note}", file=sys.stderr)
    if not answers:
        print("clozelm: note: no reconstruction fits the blanks with this model's tokens", file=sys.stderr)
    if args.json:
        print(json.dumps({"model": args.model, "method": method_for(model), "answers": [a.to_dict() for a in answers]},
                         ensure_ascii=False, indent=2))
        return
    width = len(str(len(answers)))
    for rank, a in enumerate(answers, 1):
        print(f"{rank:>{width}}. [{a.score:9.3f}] {a.text.strip()}")
        print(" " * (width + 2) + "  ".join(f"[{i + 1}] {s!r}" for i, s in enumerate(a.blanks)))


def cmd_generate(args) -> None:
    from ..api import cached_load
    from ..generation import Sampling, stream_text, unused_settings
    if args.bf16 and args.dtype not in (None, "bf16"):
        raise ClozelmError(f"--bf16 and --dtype {args.dtype} ask for two precisions; give one")
    dtype = "bf16" if args.bf16 else args.dtype or "fp32"
    unused = unused_settings(Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                      repetition_penalty=args.repetition_penalty, seed=args.seed), args.beams)
    if unused is not None:
        why, names = unused
        flags = ", ".join("--" + name.replace("_", "-") for name in names)
        if why == "beams":
            raise ClozelmError(f"--beams searches for the most likely text and samples nothing: leave out {flags}")
        raise ClozelmError(f"{flags} {'shapes' if len(names) == 1 else 'shape'} sampling, and without --temperature "
                           "decoding is greedy and samples nothing: add --temperature (such as 0.8) or leave them out")
    if args.stop and not all(args.stop):
        raise ClozelmError("--stop needs a non-empty string (an empty one would stop before the first token)")
    for stop in args.stop or []:  # one that is not UTF-8 could never match the text generated
        _checked(stop, f"--stop {stop!r}")
    prompt = read_text_arg(args)
    # bf16 weights halve the bytes read per token: decoding is bound by exactly that
    model = cached_load(args.model, dtype=dtype, device=args.device)
    sampling = Sampling(max_new_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                        repetition_penalty=args.repetition_penalty, seed=args.seed, compile=args.compile)
    pieces = stream_text(model, prompt, sampling, stop=args.stop or [], beams=args.beams)
    if args.json:
        print(json.dumps({"prompt": prompt, "completion": "".join(pieces)}, ensure_ascii=False))
        return
    sys.stdout.write(prompt)
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


def cmd_models(args) -> None:
    from ..loading import embedded_models, installed_models, local_models
    rows = ([(name, "embedded") for name in embedded_models()] + [(name, "installed") for name in installed_models()]
            + [(str(p), "local") for p in local_models()])
    if args.json:
        print(json.dumps([{"name": n, "where": w} for n, w in rows]))
        return
    if not rows:
        print("no models found (embedded defaults are missing from this install?)")
    for name, where in rows:
        print(f"{name:40s} {where}")


def cmd_info(args) -> None:
    from ..api import load
    model = load(args.model)
    cfg = model.config
    info = {"family": cfg.family, "parameters": model.num_parameters(), "config": cfg.to_dict(),
            "tokenizer": None if model.tokenizer is None else {"kind": model.tokenizer.kind, "vocab_size": model.tokenizer.vocab_size}}
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print(f"{args.model}: {cfg.family}, {cfg.n_layer} layers x {cfg.n_embd} wide, {cfg.n_head} heads, "
          f"{cfg.n_positions} positions, vocab {cfg.vocab_size}, {info['parameters']:,} parameters")
    print(f"  causal={cfg.causal} pre_ln={cfg.pre_ln} activation={cfg.activation} head={cfg.head} pooler={cfg.pooler}")
    tok = info["tokenizer"]
    print(f"  tokenizer: {tok['kind']} ({tok['vocab_size']} tokens)" if tok else "  tokenizer: none in this directory")


def cmd_convert(args) -> None:
    from ..api import load
    from ..files import check_writable_dir
    # what can be said before a load that may take minutes (save_pretrained checks every file it writes again)
    out = check_writable_dir(args.out)
    taken = [name for name in ("config.json", "model.safetensors") if (out / name).exists()]
    if taken and not args.overwrite:
        raise ClozelmError(f"refusing to overwrite {', '.join(taken)} in {out}; choose a new directory or pass "
                           "--overwrite")
    model = load(args.model, tokenizer=not args.no_tokenizer)
    model.save_pretrained(args.out, overwrite=args.overwrite)
    print(f"wrote {args.out} (config.json, model.safetensors{', tokenizer files' if model.tokenizer else ''})")


def _tokenizer_for(args):
    from ..loading import tokenizer_dir
    from ..tokenizers import load_tokenizer
    if args.tokenizer:
        if args.model is not None:
            raise ClozelmError("--model and --tokenizer both name the tokenizer to use; give one")
        return load_tokenizer(tokenizer_dir(args.tokenizer))
    from ..api import load
    model = load(args.model or "default")
    if model.tokenizer is None:
        raise ClozelmError(f"{args.model or 'default'} has no tokenizer files; pass --tokenizer DIR")
    return model.tokenizer


def cmd_tokenize(args) -> None:
    text = read_text_arg(args)
    tok = _tokenizer_for(args)
    ids = tok.encode(text, specials=True)
    pieces = tok.pieces(ids)
    if args.json:
        print(json.dumps({"ids": ids, "pieces": pieces}, ensure_ascii=False))
        return
    print(" ".join(f"{p}[{i}]" for p, i in zip(pieces, ids)))
    print(f"{len(ids)} tokens")


def cmd_tokenizer_train(args) -> None:
    from ..tokenizers import TOKENIZER_FILES, train_bpe
    out = output_dir(args.out, "--out")  # before training: a bad --out must not cost the training time
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise ClozelmError(f"{out} is not empty; choose a new directory or pass --overwrite")
    files = expand_inputs(args.files, exclude=[out])
    # <|endoftext|> separates documents for `clozelm train`: --special adds to it, never replaces it
    specials = ["<|endoftext|>"] + [t for t in dict.fromkeys(args.special or []) if t != "<|endoftext|>"]
    for token in specials:
        if any(ch.isalnum() for ch in token) and all(ch.isalnum() or ch.isspace() for ch in token):
            print(f"clozelm: note: special token {token!r} is plain text: wherever it occurs in a text, inside a word "
                  "too, it becomes that token (write special tokens as <|name|> or [NAME])", file=sys.stderr)
    created = make_dirs(out)
    try:
        check_can_write_into(out, "--out")
        tok = train_bpe(files, vocab_size=args.vocab_size, special_tokens=specials, min_frequency=args.min_frequency)
    except BaseException:
        remove_empty(created)  # nothing was written: leave no empty folder behind
        raise
    if tok.vocab_size < args.vocab_size:
        print(f"clozelm: note: the text has no more pairs to merge (at least --min-frequency "
              f"{args.min_frequency} times): {tok.vocab_size:,} tokens, not {args.vocab_size:,}", file=sys.stderr)
    tok.save(out, format="gpt2")
    # --overwrite: another tokenizer's files left beside the new ones would be read instead of them
    stale = [name for name in TOKENIZER_FILES if name not in ("encoder.json", "vocab.bpe") and (out / name).is_file()]
    for name in stale:
        (out / name).unlink()
    if stale:
        print(f"clozelm: note: removed the previous tokenizer's {', '.join(stale)} from {out}", file=sys.stderr)
    print(f"trained {tok.vocab_size} tokens on {len(files)} file(s) -> {out}/encoder.json, {out}/vocab.bpe")


def output_dir(path: str, what: str = "output directory") -> Path:
    """`path` as a directory that exists or can be created: a file there, or a file where one of its parents
    should be, is a one-line error now rather than after the work."""
    out = check_writable_dir(path, what)
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ClozelmError(f"{what} {out}: {parent} is a file, not a directory")
            break
    return out


def add_parser(sub) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("fill", help="give back the hidden words of a text", formatter_class=raw,
                       description="Hide words with ___ (one word, any length) or tokens with [MASK] (one token each); "
                                   "clozelm ranks complete reconstructions of the text.",
                       epilog='examples:\n  clozelm fill "The ___ sat on the mat."\n'
                              '  clozelm fill "The [MASK] [MASK] sat on the ___." --model default-bert --top 3\n'
                              '  clozelm fill -f letter.txt --model default-fim --json')
    p.add_argument("text", nargs="?", help="text with blanks (or - / omitted for stdin)")
    p.add_argument("-f", "--file", help="read the text from FILE")
    p.add_argument("--model", default="default", help="embedded name, directory or hub id (default: %(default)s)")
    p.add_argument("--top", type=int_in(1, MAX_TOP), default=5, help="number of answers (default: %(default)s)")
    add_dtype_option(p)
    add_device_option(p, with_dtype=True)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_fill)

    p = sub.add_parser("generate", help="continue a text", formatter_class=raw,
                       epilog='examples:\n  clozelm generate "It was a dark and stormy night"\n'
                              '  clozelm generate "Once upon a time" --temperature 0.8 --top-k 40 --seed 3 --stop "."\n'
                              '  clozelm generate "The king said" --beams 4 --max-tokens 20')
    p.add_argument("text", nargs="?", help="prompt (or - / omitted for stdin; an empty prompt starts a new document)")
    p.add_argument("-f", "--file", help="read the prompt from FILE")
    p.add_argument("--model", default="default")
    p.add_argument("--max-tokens", type=positive_int, default=64)
    p.add_argument("--temperature", type=float_in(0.0), default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=nonnegative_int, default=0, help="0 = off (default)")
    p.add_argument("--top-p", type=float_in(0.0, 1.0, lo_open=True), default=1.0, help="in (0, 1]; 1 = off (default)")
    p.add_argument("--repetition-penalty", type=float_in(0.0, lo_open=True), default=1.0, help="> 0; 1 = off (default)")
    p.add_argument("--beams", type=int_in(1, MAX_BEAMS), default=1,
                   help=f"beam search with this many beams, at most {MAX_BEAMS} (default 1: none)")
    p.add_argument("--stop", action="append", help="stop before this string (repeatable)")
    p.add_argument("--seed", type=nonnegative_int)
    p.add_argument("--bf16", action="store_true", help="the same as --dtype bf16: faster on CPU, greedy output may differ")
    add_dtype_option(p, default=None)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="each layer of a decoding step as one compiled graph: faster tokens after seconds of "
                        "compiling; needs the CPU and no --beams (refused otherwise); "
                        "default: for 1000 new tokens or more, on CPUs without AMX, where measured faster; where a "
                        "step runs every layer in one call to clozelm's C kernels (x86 CPUs with AVX2), faster "
                        "still, nothing compiles")
    add_device_option(p, with_dtype=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("models", help="list embedded and local models", epilog="example: clozelm models --json",
                       formatter_class=raw)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("info", help="describe a model", epilog="example: clozelm info path/to/model",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model directory, embedded model name, or hub id")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert", help="save any loadable model in Hugging Face format",
                       epilog="example: clozelm convert openai-124M/ gpt2-hf/", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("--overwrite", action="store_true", help="replace model and tokenizer files already in OUT "
                   "(without it, nothing is written when any would be replaced)")
    p.add_argument("--no-tokenizer", action="store_true", help="save the weights and config alone (a model whose "
                   "tokenizer clozelm cannot read, or one whose tokenizer files OUT already holds)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("tokenize", help="show the pieces and ids of a text",
                       epilog='examples:\n  clozelm tokenize "Hello world" --model default\n  echo hi | clozelm tokenize --tokenizer my-bpe/',
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("text", nargs="?", help="text (or - / omitted for stdin)")
    p.add_argument("-f", "--file", help="read the text from FILE")
    p.add_argument("--model", help="model whose tokenizer to use (default: default)")
    p.add_argument("--tokenizer", help="a tokenizer directory (or an embedded model's name) instead of a model")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_tokenize)

    p = sub.add_parser("tokenizer", help="tokenizer tools",
                       epilog="example: clozelm tokenizer train corpus/ --vocab-size 8192 --special '<|mask|>' --out bpe/",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    tsub = p.add_subparsers(dest="tokenizer_command", required=True)
    t = tsub.add_parser("train", help="train a byte-level BPE vocabulary (GPT-2 file format)",
                        epilog="example: clozelm tokenizer train corpus/ --vocab-size 8000 --special '[MASK]' --special '[PAD]' --out bpe/",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("files", nargs="+", help="UTF-8 text files or folders")
    t.add_argument("--vocab-size", type=positive_int, required=True)
    t.add_argument("--special", action="append", help="a special token besides <|endoftext|>, which every vocabulary "
                                                      "gets (repeatable)")
    t.add_argument("--min-frequency", type=positive_int, default=2)
    t.add_argument("--out", required=True)
    t.add_argument("--overwrite", action="store_true")
    t.set_defaults(func=cmd_tokenizer_train)


class Parser(argparse.ArgumentParser):
    """argparse with its errors in one line like every other clozelm error (argparse prints the usage first)."""

    def error(self, message: str):
        self.exit(2, f"clozelm: error: {_one_line(message)} (see {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:  # said here, not by argparse, to point at the command's own --help
            command = " ".join(getattr(namespace, name) for name in ("command", "tokenizer_command")
                               if isinstance(getattr(namespace, name, None), str))
            prog = f"{self.prog} {command}".strip()
            self.exit(2, f"clozelm: error: {_one_line('unrecognized arguments: ' + ' '.join(extras))} "
                         f"(see {prog} --help)\n")
        return namespace

    def parse_known_args(self, args=None, namespace=None):
        # A command with a list of files takes them after its options too (`clozelm eval default --tasks ppl
        # held-out.txt`): argparse's intermixed parsing, which itself calls this method, hence the flag.
        lists = any(a.nargs in ("*", "+") for a in self._get_positional_actions())
        if not lists or getattr(self, "_intermixed", False):
            return super().parse_known_args(args, namespace)
        self._intermixed = True
        try:
            return super().parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixed = False


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="clozelm", description="GPT-2 and BERT from scratch: fill hidden tokens, "
                    "generate, train, inspect attention heads.", epilog=EPILOG,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")  # subparsers are Parsers too
    for name in COMMAND_MODULES:
        try:
            module = sys.modules[__name__] if name == __name__ else importlib.import_module(name)
        except ModuleNotFoundError as e:
            if not name.startswith(e.name or "\0"):
                raise
            continue  # a command module not built yet
        module.add_parser(sub)
    return parser


class OutputError(Exception):
    """Standard output could not be written (a full disk, a closed pipe): raised by `_Output` so that main() tells
    it from a failure to write one of the command's own files."""

    def __init__(self, error: OSError):
        super().__init__(error.strerror or type(error).__name__)
        self.error = error


class _Output:
    """sys.stdout while a command runs: the stream itself, with its write errors raised as OutputError."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        try:
            return self._stream.write(text)
        except OSError as error:
            raise OutputError(error) from None

    def flush(self):
        try:
            self._stream.flush()
        except OSError as error:
            raise OutputError(error) from None

    def __getattr__(self, name):
        return getattr(self._stream, name)


class _Messages(_Output):
    """sys.stderr while a command runs: a note or error that cannot be written (`2>/dev/full`) is dropped, since
    there is nowhere left to say so."""

    def write(self, text):
        try:
            return self._stream.write(text)
        except (OSError, ValueError):
            return len(text)

    def flush(self):
        try:
            self._stream.flush()
        except (OSError, ValueError):
            pass


def main(argv: list[str] | None = None) -> int:
    saved = sys.stdout, sys.stderr
    # `clozelm ... >&-` starts Python with sys.stdout None: the output goes nowhere, as asked.
    out = saved[0] if saved[0] is not None else open(os.devnull, "w", encoding="utf-8")
    err = saved[1] if saved[1] is not None else open(os.devnull, "w", encoding="utf-8")
    try:  # a file name that is not UTF-8 is printed back as the bytes it came from
        out.reconfigure(errors="surrogateescape")
    except (AttributeError, ValueError, OSError):
        pass
    sys.stdout, sys.stderr = _Output(out), _Messages(err)
    try:
        return _run(argv)
    finally:
        sys.stdout, sys.stderr = saved


def _run(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else [str(item) for item in argv]
    for item in argv:  # neither comes from a real command line, only from a caller of main()
        try:
            if b"\0" in os.fsencode(item):
                return _error(f"argument {item[:40]!r} holds a NUL character")
        except UnicodeEncodeError:
            return _error(f"argument {item[:40]!r} is not text a command line can hold (a lone surrogate)")
    try:
        try:
            parser = build_parser()  # imports torch: a Ctrl-C in these first seconds is an interrupt like any other
            args = parser.parse_args(argv)
            _refuse_empty_paths(args)
            args.func(args)
            code = 0
        except SystemExit as exit_:  # argparse after --help or a bad option (Parser.error), a command's own status
            if not isinstance(exit_.code, (int, type(None))):
                raise
            code = exit_.code or 0
        sys.stdout.flush()  # here, not at exit: a full disk must be an error line, not a lost last block
        return code
    except ClozelmError as e:
        return _error(str(e))
    except KeyboardInterrupt:
        print("clozelm: interrupted", file=sys.stderr)
        return 130
    except OutputError as e:
        _silence(sys.stdout)
        if isinstance(e.error, BrokenPipeError):  # the reader went away (`clozelm ... | head`): nothing to report
            return 0
        return _error(f"cannot write to standard output: {e}")
    except BrokenPipeError:
        return 0
    except OSError as e:  # a file the command reads or writes; a command should have said which, this is the net
        where = f"{e.filename}: " if e.filename else ""
        return _error(f"{where}{e.strerror or type(e).__name__}")


# Arguments that name a file, a directory or a model, in every command, as a message names them: an empty one
# would mean the current directory to pathlib (`convert default ""` would write a model into it). An empty
# --compare means no second model, as it always has.
_PATH_ARGUMENTS = {"model": "model name or path", "init": "--init model",
                   "tokenizer": "--tokenizer path", "out": "output path", "file": "input file", "report": "--report folder",
                   "syntax": "--syntax file", "lambada": "--lambada file", "pairs": "--pairs file",
                   "probe": "--probe folder", "files": "input path", "valid": "--valid path", "corpus": "corpus path",
                   "png": "--png file", "svg": "--svg file"}


def _refuse_empty_paths(args) -> None:
    for name, what in _PATH_ARGUMENTS.items():
        value = getattr(args, name, None)
        for item in value if isinstance(value, list) else [value]:
            path = item[-1] if isinstance(item, (list, tuple)) else item  # --png/--svg: (LAYER.HEAD, PATH)
            if isinstance(path, str) and not path.strip():
                raise ClozelmError(f"the {what} is empty ({path!r}); give a path"
                                   + (" or a model name" if "model" in what or name == "tokenizer" else ""))


def _error(message: str) -> int:
    print(f"clozelm: error: {_one_line(message)}", file=sys.stderr)
    return 2


def _one_line(message: str) -> str:
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def _silence(stream) -> None:
    """Point a failed standard output at /dev/null, so the interpreter's last flush at exit fails no more."""
    try:
        fd = stream.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
    except (AttributeError, OSError, ValueError):
        return
    try:
        os.dup2(null, fd)
    except OSError:
        pass
    finally:
        os.close(null)


if __name__ == "__main__":
    sys.exit(main())
