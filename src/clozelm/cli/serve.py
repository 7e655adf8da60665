"""`clozelm serve`: the local page and its JSON API (docs/api.md)."""

from __future__ import annotations

import argparse
import sys

from .args import add_device_option, add_dtype_option, float_in, int_in, port
from ..loaded import model_label
from ..server.limits import LIMIT_RANGES

EPILOG = """examples:
  clozelm serve                                   default vs default-bert on http://127.0.0.1:8765/
  clozelm serve --model default-fim --compare none --port 9000
  clozelm serve --model my-gpt2/ --compare my-bert/ --timeout 120
  clozelm serve --model smollm2.gguf --compare none --dtype int4    int4 weights: the fewest bytes a token

The server answers only on this machine unless --host says otherwise. Ctrl-C stops it.
"""


def cmd_serve(args) -> None:
    from ..api import cached_load
    from ..server.app import make_server
    from ..server.limits import Limits
    names = [args.model]
    if args.compare and args.compare.lower() != "none" and args.compare != args.model:
        names.append(args.compare)
    # a body holds the text as JSON: up to 4 bytes a character (UTF-8), plus the other fields
    limits = Limits(timeout=args.timeout, workers=args.workers, queue_size=args.queue, max_text=args.max_text,
                    max_body=max(Limits.max_body, 4 * args.max_text + 4096))
    models = {name: cached_load(name, dtype=args.dtype, device=args.device) for name in names}
    server = make_server(models, host=args.host, port=args.port, limits=limits, quiet=args.quiet,
                         compile=args.compile)
    try:
        if server.compiled:
            print(f"clozelm: compiling the decoding steps of {', '.join(map(model_label, sorted(server.compiled)))} "
                  "(seconds, once)", file=sys.stderr, flush=True)
            server.compile_steps()
        if server.allowed_hosts is None:
            print(f"clozelm: note: serving on {args.host}: anyone who can reach this machine can use the models",
                  file=sys.stderr)
        who = " vs ".join(model_label(n) for n in names)
        print(f"clozelm: serving {who} on {server.url} (Ctrl-C to stop)", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        print("clozelm: stopped", file=sys.stderr)  # Ctrl-C is how a server is meant to stop: exit 0
    finally:
        server.server_close()


def _limit(field: str):
    """The argparse type of an option that sets Limits.`field`: its range as Limits checks it, finite."""
    low, high, integer = LIMIT_RANGES[field]
    return int_in(low, high) if integer else float_in(low, high)


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="a local web page: fill with two models side by side, generate, attention heads",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
                       description="Serve one page and the JSON API it uses (see docs/api.md): fill hidden words with "
                                   "two models side by side, stream a continuation, look at attention heads.")
    p.add_argument("--model", default="default", help="embedded name or model directory (default: %(default)s)")
    p.add_argument("--compare", default="default-bert", metavar="M2",
                   help="a second model shown beside the first; 'none' for one model (default: %(default)s)")
    add_dtype_option(p, scope=", for every model served")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="generate through compiled decoding steps, compiled before the server starts (seconds; "
                        "default: on CPUs without AMX, where measured faster; --no-compile: never, for the quickest "
                        "start; a model whose steps run every layer in one call to clozelm's C kernels, on x86 CPUs "
                        "with AVX2, compiles nothing)")
    add_device_option(p, with_dtype=True)
    p.add_argument("--port", type=port, default=8765, help="0 picks a free port (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine only)")
    p.add_argument("--timeout", type=_limit("timeout"), default=60.0,
                   help="seconds one request may take, waiting included (default: %(default)s)")
    p.add_argument("--workers", type=_limit("workers"), default=1, help="threads running models (default: %(default)s)")
    p.add_argument("--queue", type=_limit("queue_size"), default=8,
                   help="requests that may wait for a worker before the server answers 503 (default: %(default)s)")
    p.add_argument("--max-text", type=_limit("max_text"), default=4000,
                   help="longest text accepted, in characters (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no request log on stderr")
    p.set_defaults(func=cmd_serve)
