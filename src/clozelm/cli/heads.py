"""`clozelm heads`: attention views, one head's map as PNG/SVG, head-role report, heads vs syntax."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .args import add_device_option, nonnegative_int, positive_int, read_text_arg
from ..errors import ClozelmError
from ..loaded import model_label
from ..files import check_output_file, read_text_file

EPILOG = """examples:
  clozelm heads "The cat sat on the mat because it was warm." -o view.html
  clozelm heads -f chapter.txt --model default-bert --compare default -o compare.html
  clozelm heads "The keys to the cabinet are on the table." --png 2.3 head.png --svg 2.3 head.svg
  clozelm heads --report roles/ --model default           (heads.md, heads.json, heads.png)
  clozelm heads --syntax essay.txt --model default-bert    (needs: pip install 'clozelm[syntax]')

Layers and heads count from 0, as in the view (L0 H0 is the first head of the first layer).
"""


def _layer_head(value: str) -> tuple[int, int]:
    try:
        layer, head = (nonnegative_int(part) for part in value.split("."))
        return layer, head
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"expected LAYER.HEAD such as 3.5, got {value[:40]!r}") from None


def _note(message: str) -> None:
    print(f"clozelm: note: {message}", file=sys.stderr)


PAGE_TOKENS = 1024  # tokens the page and maps read by default (every layer's and head's T x T map is kept)


def _text(args) -> str:
    return read_text_arg(args)


def cmd_heads(args) -> None:
    from ..api import cached_load
    if args.syntax:
        return _syntax(args)
    if args.report:
        return _report(args, cached_load(args.model, device=args.device))
    from ..heads.extract import attention_map
    text = _text(args)
    model = cached_load(args.model, device=args.device)
    for flag, specs in (("--png", args.png), ("--svg", args.svg)):  # before the model runs and any file is written
        for (layer, head), _ in specs:
            if not (0 <= layer < model.config.n_layer and 0 <= head < model.config.n_head):
                raise ClozelmError(f"{flag} {layer}.{head}: {args.model} has layers 0-{model.config.n_layer - 1} and "
                                   f"heads 0-{model.config.n_head - 1}")
    limit = args.max_tokens or PAGE_TOKENS
    maps = attention_map(model, text, model_name=model_label(args.model), max_tokens=limit)
    for note in maps.notes:
        _note(note)
    wrote = []
    for specs, fmt in ((args.png, "png"), (args.svg, "svg")):
        for (layer, head), path in specs:
            wrote.append(_export(maps, layer, head, Path(path), fmt, args.word_level, args.hide_sinks))
    if args.out or not wrote:
        from ..heads.views import write_page
        maps_list = [maps]
        if args.compare:
            other = attention_map(cached_load(args.compare, device=args.device), text,
                                  model_name=model_label(args.compare), max_tokens=limit)
            for note in other.notes:
                _note(f"{args.compare}: {note}")
            maps_list.append(other)
        out = Path(args.out or "heads.html")
        write_page(maps_list, out)
        size = out.stat().st_size
        who = " vs ".join(f"{m.model_name} ({m.n_layers}x{m.n_heads}, {m.n_tokens} tokens)" for m in maps_list)
        wrote.append(f"{out} ({size / 1e6:.1f} MB): {who}")
    for line in wrote:
        print(f"wrote {line}")


def _export(maps, layer: int, head: int, path: Path, fmt: str, words: bool, hide_sinks: bool) -> str:
    from ..heads.render import map_png, map_svg, write_file
    matrix, labels = maps.head(layer, head, words=words, hide_sinks=hide_sinks)
    if fmt == "png":
        write_file(path, map_png(matrix))
    else:
        title = f"{maps.model_name}: layer {layer}, head {head}" + (" (words)" if words else "") + \
                (" (sinks hidden)" if hide_sinks else "")
        write_file(path, map_svg(matrix, labels, title))
    return f"{path}: layer {layer} head {head}, {len(labels)} x {len(labels)}"


def _report(args, model) -> None:
    from ..heads.roles import ROLES, head_roles
    # no text: the built-in sample (standard input only when asked for with "-": a script's stdin is no text)
    text = _text(args) if (args.text or args.file) else None
    report = head_roles(model, text, model_name=model_label(args.model))
    paths = report.write(args.report)
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
        return
    for role in ROLES:
        found = report.heads_with(role)
        if found:
            shown = ", ".join(f"L{layer}H{head} {score:.2f}" for layer, head, score in found[:8])
            more = f" (+{len(found) - 8} more)" if len(found) > 8 else ""
            print(f"{role:10s} {shown}{more}")
    print("wrote " + ", ".join(str(p) for p in paths))


def _syntax(args) -> None:
    from ..api import cached_load
    from ..heads.syntax import load_spacy, syntax_analysis
    nlp = load_spacy()  # before loading anything: a missing extra is the first thing to say
    text = read_text_file(args.syntax, "--syntax file")
    model = cached_load(args.model, device=args.device)
    chosen = {} if args.min_arcs is None else {"min_arcs": args.min_arcs}
    report = syntax_analysis(model, text, nlp=nlp, model_name=model_label(args.model), **chosen)
    if args.out:
        from ..heads.render import write_file
        out = Path(args.out)
        json_path = out.with_suffix(".json") if out.suffix != ".json" else out
        if out.suffix != ".json":
            write_file(out, report.to_markdown())
        write_file(json_path, report.to_json())
        print(f"wrote {out}" + (f" and {json_path}" if json_path != out else ""), file=sys.stderr)
    print(report.to_json() if args.json else report.to_markdown(), end="" if not args.json else "\n")


def add_parser(sub) -> None:
    p = sub.add_parser("heads", help="see what attention heads look at: views, head roles, heads vs syntax",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
                       description="Without --report/--syntax: write an interactive page (head view, model view, "
                                   "word level, sink-aware, side by side with --compare) and/or one head's map.")
    p.add_argument("text", nargs="?", help="text to look at (- or omitted: standard input; with --report, omitted: a built-in sample)")
    p.add_argument("-f", "--file", help="read the text from FILE")
    p.add_argument("--model", default="default", help="embedded name, directory or hub id (default: %(default)s)")
    p.add_argument("--compare", metavar="M2", help="a second model shown side by side on the same text")
    add_device_option(p)
    # every layer's and head's T x T map is kept: a long-context model (8k positions and more) reading a whole
    # chapter would need tens of GB, and the page is meant for a few hundred tokens
    p.add_argument("--max-tokens", type=positive_int, metavar="N",
                   help=f"the page and maps read the text's first N tokens at most (default: {PAGE_TOKENS}; a note "
                        "says when the text was cut)")
    p.add_argument("-o", "--out", help="the HTML page to write (default heads.html); with --syntax, the Markdown "
                                       "table (a .json is written next to it)")
    p.add_argument("--png", nargs=2, action="append", default=[], metavar=("LAYER.HEAD", "OUT.png"),
                   help="write one head's map as PNG (repeatable)")
    p.add_argument("--svg", nargs=2, action="append", default=[], metavar=("LAYER.HEAD", "OUT.svg"),
                   help="write one head's map as SVG with token labels (repeatable)")
    p.add_argument("--word-level", action="store_true", help="PNG/SVG: words instead of pieces")
    p.add_argument("--hide-sinks", action="store_true", help="PNG/SVG: drop attention to the first token and "
                                                           "[CLS]/[SEP]/eos, renormalise rows")
    p.add_argument("--report", metavar="OUT_DIR", help="label every head (previous/next token, sink, delimiter, broad, "
                                                     "duplicate, induction); TEXT, -f FILE or - (standard input) give the text, "
                                                     "its first 1,024 tokens (default: a sample)")
    p.add_argument("--syntax", metavar="FILE", help="heads vs dependency syntax on FILE (Clark et al. 2019); "
                                                   "needs pip install 'clozelm[syntax]'")
    p.add_argument("--min-arcs", type=nonnegative_int, help="--syntax: leave out relations with fewer arcs in a direction "
                                                          "(default: 40, 20 in each half the heads are chosen and "
                                                          "scored on)")
    p.add_argument("--json", action="store_true", help="--report/--syntax: print JSON")
    p.add_argument("--overwrite", action="store_true", help="replace files that are already there (default: refuse)")
    p.set_defaults(func=_run)


def _run(args) -> None:
    for name in ("png", "svg"):
        try:
            setattr(args, name, [(_layer_head(spec[0]), spec[1]) for spec in getattr(args, name)])
        except argparse.ArgumentTypeError as error:
            raise ClozelmError(f"--{name}: {error}") from None
    if args.report and args.syntax:
        raise ClozelmError("--report and --syntax are separate runs; give one of them")
    if args.min_arcs is not None and not args.syntax:
        raise ClozelmError("--min-arcs filters the --syntax table, and none is asked for")
    page_flags = [name for name, given in (("--png", args.png), ("--svg", args.svg), ("--compare", args.compare),
                                           ("--max-tokens", args.max_tokens)) if given]
    for flag, given, others in (("--report", args.report, (["-o"] if args.out else []) + page_flags),
                                ("--syntax", args.syntax, page_flags)):  # --syntax -o: where its table goes
        if given and others:
            raise ClozelmError(f"{flag} writes its own output; {', '.join(others)} belong to the attention page "
                               "and maps: run them separately")
    if args.compare and (args.png or args.svg) and not args.out:
        raise ClozelmError("--compare shows a second model on the attention page, which --png/--svg alone do not "
                           "write: add -o PAGE.html")
    if args.syntax and (args.text or args.file):
        raise ClozelmError("--syntax reads its text from its FILE; leave out the text and -f")
    for flag, given, needs in (("--word-level", args.word_level, args.png or args.svg),
                               ("--hide-sinks", args.hide_sinks, args.png or args.svg),
                               ("--json", args.json, args.report or args.syntax)):
        if given and not needs:
            raise ClozelmError(f"{flag} changes " + ("--png/--svg maps" if flag != "--json" else
                                                     "--report/--syntax output") + ", and none is asked for")
    for path in _outputs(args):  # before any work: the user's files are replaced only with --overwrite
        check_output_file(path, args.overwrite)
    cmd_heads(args)


def _outputs(args) -> list[Path]:
    """The files this call will write."""
    if args.report:
        folder = Path(args.report)
        if folder.exists() and not folder.is_dir():
            raise ClozelmError(f"--report {folder} is a file, expected a directory")
        return [folder / name for name in ("heads.md", "heads.json", "heads.png")] if folder.is_dir() else []
    if args.syntax:
        if not args.out:
            return []
        out = Path(args.out)
        return [out] if out.suffix == ".json" else [out, out.with_suffix(".json")]
    paths = [Path(path) for _, path in args.png + args.svg]
    if args.out or not paths:
        paths.append(Path(args.out or "heads.html"))
    seen = {}
    for path in paths:  # two outputs to one file: the second would replace the first without a word
        key = path.resolve()
        if key in seen:
            raise ClozelmError(f"{path} is named for two outputs; give each its own file")
        seen[key] = path
    return paths
