"""The server behind `clozelm serve`: the hardened HTTP layer (http.py), the worker pool (workers.py) and the
JSON API (endpoints.py, fields checked in fields.py) put together, with the page's files.

Request threads (one per connection) parse, check and answer; model work runs on a few worker threads fed
by a bounded queue (503 when full), each job with a deadline (504) that also stops the model at its next
forward pass. The server sends only the files in STATIC_ROUTES, looked up by exact URL path (never joined
to a filesystem path), and writes no files. Every error is JSON {"error": "..."} with its status. The API is
documented in docs/api.md.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from ..errors import ClozelmError
from ..loaded import Model, model_label
from .endpoints import APIHandler, request_fields
from .http import HardenedServer
from .limits import Limits
from .workers import WorkerPool

STATIC_DIR = Path(__file__).parent / "static"
# URL path -> (file in STATIC_DIR, Content-Type). The whole list of files this server will ever send.
STATIC_ROUTES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/static/page.js": ("page.js", "text/javascript; charset=utf-8"),
    "/static/page.css": ("page.css", "text/css; charset=utf-8"),
}
# The page loads its script and style from this server and talks only to this server.
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; frame-src 'self'; "
            "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class Server(HardenedServer):
    def __init__(self, models: dict, host: str = "127.0.0.1", port: int = 8765, limits: Limits | None = None,
                 quiet: bool = False, compile: bool | None = False):
        if not models:
            raise ClozelmError("no model to serve")
        for name, model in models.items():
            if not isinstance(model, Model):
                raise ClozelmError(f"model {name!r}: the server takes loaded models (clozelm.load(...) or "
                                   f"clozelm.Model(network, tokenizer)), not {type(model).__name__}")
        self.models = dict(models)
        self.limits = limits or Limits()
        self.max_body, self.receive_timeout = self.limits.max_body, self.limits.receive_timeout
        self.fields = request_fields(self.limits, self.models)
        self.compiled = _compiled_models(self.models, compile)
        self.static = _read_static()
        self.pool = None
        self._heads_cache: OrderedDict = OrderedDict()
        self._heads_lock = threading.Lock()
        super().__init__(host, port, APIHandler, quiet)
        self.pool = WorkerPool(self.limits.workers, self.limits.queue_size)

    def compile_steps(self) -> None:
        """Compile the decoding steps of the models whose streams run compiled now, not at their first request."""
        from ..generation import compile_steps
        for name in self.compiled:
            compile_steps(self.models[name])

    def compiles(self, name: str) -> bool:
        """Whether the generations of model `name` decode through compiled steps now: chosen at start, and not
        since refused (a torch.compile that failed in this process leaves every model eager, without an error)."""
        from ..generation import compile_refusal
        return name in self.compiled and compile_refusal(self.models[name]) is None

    def server_close(self) -> None:
        super().server_close()
        if self.pool is not None:
            self.pool.close()

    def heads_page(self, key, make) -> str:
        """The heads page for `key`, made by `make()` unless one of the last few is the same."""
        with self._heads_lock:
            if key in self._heads_cache:
                self._heads_cache.move_to_end(key)
                return self._heads_cache[key]
        page = make()
        with self._heads_lock:
            self._heads_cache[key] = page
            while len(self._heads_cache) > self.limits.heads_cache:
                self._heads_cache.popitem(last=False)
        return page


def _compiled_models(models: dict, compile: bool | None) -> frozenset:
    """The names of the models whose generations decode through compiled steps: with `compile` None, every
    generating model that allows them (on the CPU; a server lives long enough to repay the seconds of compiling)
    where `compiled_by_default` for it; True refuses a generating model that does not allow them; False: none. A
    model the one-call step serves (`one_call_steps`) is never among them: its steps do not run compiled."""
    from ..generation import can_generate, compile_refusal, compiled_by_default, one_call_steps
    if compile is False:
        return frozenset()
    generating = [name for name, model in models.items()
                  if can_generate(model) and (compile is not None or compiled_by_default(model))]
    if compile and not generating:
        raise ClozelmError("compiled decoding steps are for generating, and none of the models served can generate")
    refusals = {name: compile_refusal(models[name]) for name in generating if not one_call_steps(models[name])}
    if compile:
        for name, why in refusals.items():
            if why:
                raise ClozelmError(f"{model_label(name)}: {why}")
    return frozenset(name for name, why in refusals.items() if why is None)


def _read_static() -> dict:
    files = {}
    headers = {"Content-Security-Policy": PAGE_CSP, "X-Frame-Options": "DENY"}
    for route, (name, content_type) in STATIC_ROUTES.items():
        try:
            files[route] = ((STATIC_DIR / name).read_bytes(), content_type, headers)
        except OSError:
            raise ClozelmError(f"the page's files are missing from this install ({STATIC_DIR / name}); "
                               "reinstall clozelm") from None
    return files


def make_server(models: dict, host: str = "127.0.0.1", port: int = 8765, limits: Limits | None = None,
                quiet: bool = False, compile: bool | None = False) -> Server:
    """A server for `models` ({name: loaded Model}, first one first on the page), bound and ready for
    serve_forever(). port=0 picks a free port (server.url tells which). compile: whether generations decode
    through compiled steps (None: where the model allows it, as `clozelm serve` does; `server.compiled` names
    them, and `server.compile_steps()` compiles them before the first request, which otherwise waits for it)."""
    return Server(models, host, port, limits, quiet, compile)
