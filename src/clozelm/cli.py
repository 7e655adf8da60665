"""The `clozelm` command. Each subcommand lives with the code it drives and registers itself here.

User errors (ClozelmError, missing files, bad values) print one line `clozelm: error: ...` and exit 2;
Ctrl-C exits 130. Tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from .errors import ClozelmError

# Modules that contribute subcommands: each has add_parser(subparsers) setting `func` on its parser.
COMMAND_MODULES = ["clozelm.cli", "clozelm.training.cli", "clozelm.heads.cli", "clozelm.server.cli"]

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


def read_text_arg(args) -> str:
    """TEXT from the argument, -f FILE, or stdin (when TEXT is '-' or absent and stdin is piped)."""
    if getattr(args, "file", None):
        try:
            return Path(args.file).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ClozelmError(f"{args.file}: no such file") from None
        except UnicodeDecodeError:
            raise ClozelmError(f"{args.file} is not UTF-8 text") from None
    if args.text not in (None, "-"):
        return args.text
    if not sys.stdin.isatty():
        return sys.stdin.read()
    raise ClozelmError("no text given: pass TEXT, -f FILE, or pipe text on stdin")


def cmd_fill(args) -> None:
    from .cloze import fill, method_for
    from .loading import cached_load
    text = read_text_arg(args)
    model = cached_load(args.model)
    answers = fill(text, model=model, top=args.top)
    if args.json:
        print(json.dumps({"model": args.model, "method": method_for(model), "answers": [a.to_dict() for a in answers]},
                         ensure_ascii=False, indent=2))
        return
    width = len(str(len(answers)))
    for rank, a in enumerate(answers, 1):
        print(f"{rank:>{width}}. [{a.score:9.3f}] {a.text.strip()}")
        print(" " * (width + 2) + "  ".join(f"[{i + 1}] {s!r}" for i, s in enumerate(a.blanks)))


def cmd_generate(args) -> None:
    from .generation import Sampling, stream_text
    from .loading import cached_load
    prompt = read_text_arg(args)
    model = cached_load(args.model)
    if args.bf16:  # bf16 weights halve the bytes read per token: decoding is bound by exactly that
        import torch
        model.to(torch.bfloat16)
    sampling = Sampling(max_new_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                        repetition_penalty=args.repetition_penalty, seed=args.seed)
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
    from .loading import embedded_models, local_models
    rows = [(name, "embedded") for name in embedded_models()] + [(str(p), "local") for p in local_models()]
    if args.json:
        print(json.dumps([{"name": n, "where": w} for n, w in rows]))
        return
    if not rows:
        print("no models found (embedded defaults are missing from this install?)")
    for name, where in rows:
        print(f"{name:40s} {where}")


def cmd_info(args) -> None:
    from . import load
    model = load(args.model)
    cfg = model.config
    info = {"family": cfg.family, "parameters": model.num_parameters(), "config": cfg.to_dict(),
            "tokenizer": None if model.tokenizer is None else {"kind": model.tokenizer.name, "vocab_size": model.tokenizer.vocab_size}}
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print(f"{args.model}: {cfg.family}, {cfg.n_layer} layers x {cfg.n_embd} wide, {cfg.n_head} heads, "
          f"{cfg.n_positions} positions, vocab {cfg.vocab_size}, {info['parameters']:,} parameters")
    print(f"  causal={cfg.causal} pre_ln={cfg.pre_ln} activation={cfg.activation} head={cfg.head} pooler={cfg.pooler}")
    tok = info["tokenizer"]
    print(f"  tokenizer: {tok['kind']} ({tok['vocab_size']} tokens)" if tok else "  tokenizer: none in this directory")


def cmd_convert(args) -> None:
    from . import load
    model = load(args.model)
    model.save_pretrained(args.out, overwrite=args.overwrite)
    print(f"wrote {args.out} (config.json, model.safetensors{', tokenizer files' if model.tokenizer else ''})")


def _tokenizer_for(args):
    from .tokenizers import load_tokenizer
    if args.tokenizer:
        return load_tokenizer(Path(args.tokenizer))
    from . import load
    model = load(args.model)
    if model.tokenizer is None:
        raise ClozelmError(f"{args.model} has no tokenizer files; pass --tokenizer DIR")
    return model.tokenizer


def cmd_tokenize(args) -> None:
    text = read_text_arg(args)
    tok = _tokenizer_for(args)
    ids = tok.encode(text, allowed_special="all") if tok.name == "bpe" else tok.encode(text)
    pieces = [tok.id_to_token(i) for i in ids]
    if args.json:
        print(json.dumps({"ids": ids, "pieces": pieces}, ensure_ascii=False))
        return
    print(" ".join(f"{p}[{i}]" for p, i in zip(pieces, ids)))
    print(f"{len(ids)} tokens")


def cmd_tokenizer_train(args) -> None:
    from .tokenizers import train_bpe
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise ClozelmError(f"{out} is not empty; choose a new directory or pass --overwrite")
    files = _expand_inputs(args.files)
    tok = train_bpe(files, vocab_size=args.vocab_size, special_tokens=args.special or ["<|endoftext|>"],
                    min_frequency=args.min_frequency)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(out, format="gpt2")
    print(f"trained {tok.vocab_size} tokens on {len(files)} file(s) -> {out}/encoder.json, {out}/vocab.bpe")


def _expand_inputs(items: list[str]) -> list[Path]:
    files = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
        elif p.is_file():
            files.append(p)
        else:
            raise ClozelmError(f"{item}: no such file or directory")
    if not files:
        raise ClozelmError("no input files found")
    return files


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
    p.add_argument("--top", type=int, default=5, help="number of answers (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_fill)

    p = sub.add_parser("generate", help="continue a text", formatter_class=raw,
                       epilog='examples:\n  clozelm generate "It was a dark and stormy night"\n'
                              '  clozelm generate "Once upon a time" --temperature 0.8 --top-k 40 --seed 3 --stop "."\n'
                              '  clozelm generate "The king said" --beams 4 --max-tokens 20')
    p.add_argument("text", nargs="?", help="prompt (or - / omitted for stdin)")
    p.add_argument("-f", "--file", help="read the prompt from FILE")
    p.add_argument("--model", default="default")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--beams", type=int, default=1, help="beam search with this many beams")
    p.add_argument("--stop", action="append", help="stop before this string (repeatable)")
    p.add_argument("--seed", type=int)
    p.add_argument("--bf16", action="store_true", help="run in bfloat16: ~3x faster on CPU, greedy output may differ")
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
    p.add_argument("--overwrite", action="store_true", help="replace config.json/model.safetensors already in OUT")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("tokenize", help="show the pieces and ids of a text",
                       epilog='examples:\n  clozelm tokenize "Hello world" --model default\n  echo hi | clozelm tokenize --tokenizer my-bpe/',
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("text", nargs="?", help="text (or - / omitted for stdin)")
    p.add_argument("-f", "--file", help="read the text from FILE")
    p.add_argument("--model", default="default", help="model whose tokenizer to use (default: %(default)s)")
    p.add_argument("--tokenizer", help="a tokenizer directory instead of a model")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_tokenize)

    p = sub.add_parser("tokenizer", help="tokenizer tools")
    tsub = p.add_subparsers(dest="tokenizer_command", required=True)
    t = tsub.add_parser("train", help="train a byte-level BPE vocabulary (GPT-2 file format)",
                        epilog="example: clozelm tokenizer train corpus/ --vocab-size 8000 --special '[MASK]' --special '[PAD]' --out bpe/",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("files", nargs="+", help="UTF-8 text files or folders")
    t.add_argument("--vocab-size", type=int, required=True)
    t.add_argument("--special", action="append", help="a special token (repeatable; default <|endoftext|>)")
    t.add_argument("--min-frequency", type=int, default=2)
    t.add_argument("--out", required=True)
    t.add_argument("--overwrite", action="store_true")
    t.set_defaults(func=cmd_tokenizer_train)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clozelm", description="GPT-2 and BERT from scratch: fill hidden tokens, "
                                     "generate, train, inspect attention heads.", epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = sys.modules[__name__] if name == __name__ else importlib.import_module(name)
        except ModuleNotFoundError as e:
            if not name.startswith(e.name or "\0"):
                raise
            continue  # a command module not built yet
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except ClozelmError as e:
        print(f"clozelm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clozelm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
