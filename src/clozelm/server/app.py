"""The HTTP server and JSON API behind `clozelm serve` (standard library only: http.server and threads).

Request threads (one per connection) parse, validate and answer; model work runs on a few worker threads
fed by a bounded queue, because the CPU, not the number of connections, is what runs out:

* a full queue is answered at once with 503 and Retry-After instead of piling up work nobody will wait for;
* every job has a deadline counted from the moment it was queued. The request thread stops waiting at the
  deadline (504), and the job stops at its next forward pass: a pre-hook on the model and on each of its
  blocks raises when the job running on that thread is past its deadline or was cancelled (client gone,
  server stopping). A Python thread cannot be killed from outside; this is how a slow call gives its
  worker back.

The server sends only the files in STATIC_ROUTES, looked up by exact URL path (never joined to a
filesystem path), and writes no files. Every error is JSON {"error": "..."} with its status. The API is
documented in docs/api.md.
"""

from __future__ import annotations

import ipaddress
import json
import math
import queue
import sys
import threading
import time
import traceback
from collections import OrderedDict
from dataclasses import asdict, dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import torch

from ..errors import ClozelmError

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
# The heads view is one self-contained page (inline script, style and data) shown in a sandboxed iframe;
# it may not load or send anything.
HEADS_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data: blob:; "
             "base-uri 'none'; form-action 'none'; frame-ancestors 'self'")
GRACE = 0.5  # seconds a request thread waits past a job's deadline for the job to report its own timeout
DRAIN_LIMIT = 1 << 20  # an oversize body up to this size is read and dropped, so the client sees the 413
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "[::1]", "::1"}


@dataclass(frozen=True)
class Limits:
    max_body: int = 64 * 1024  # bytes of one request body
    max_text: int = 4000  # characters of one text
    max_top: int = 20  # answers per model
    max_new_tokens: int = 200  # tokens one generation may ask for
    timeout: float = 60.0  # seconds a request may take for its model work, time in the queue included
    queue_size: int = 8  # model jobs waiting beyond those running
    workers: int = 1  # threads doing model work (torch already spreads one call over the cores)
    heads_cache: int = 4  # heads pages kept, so the page's check-then-show costs one computation


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class Cancelled(BaseException):
    """Raised inside a forward pass to abandon a job. A BaseException, so that no `except Exception`
    between the model and the worker loop can swallow it."""


class Job:
    def __init__(self, work, deadline: float, stream: bool):
        self.work = work
        self.deadline = deadline
        self.cancelled = threading.Event()
        self.done = threading.Event()
        self.result = None
        self.error: BaseException | None = None
        self.events: queue.Queue | None = queue.Queue() if stream else None  # ("text", str) ... ("end", error)

    def check(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled("cancelled")
        if time.monotonic() > self.deadline:
            raise Cancelled("time limit")

    def emit(self, kind: str, value=None) -> None:
        self.events.put((kind, value))


class WorkerPool:
    def __init__(self, workers: int, queue_size: int):
        self._jobs: queue.Queue = queue.Queue(maxsize=queue_size)
        self._local = threading.local()
        self._stopping = threading.Event()
        self._mean_seconds = 1.0  # recent job time, for Retry-After
        self.workers = workers
        self._threads = [threading.Thread(target=self._run, name=f"clozelm-model-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, work, timeout: float, stream: bool = False) -> Job:
        job = Job(work, time.monotonic() + timeout, stream)
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            wait = self.retry_after()
            raise HTTPError(503, f"the server is busy ({self._jobs.qsize()} requests waiting for the model); "
                                 f"retry in {wait} s", {"Retry-After": str(wait)}) from None
        return job

    def retry_after(self) -> int:
        return max(1, min(60, math.ceil(self._mean_seconds * (self._jobs.qsize() + 1) / self.workers)))

    def check_hook(self, module, args) -> None:
        """Forward pre-hook: abandon the current thread's job when it is cancelled or late."""
        job = getattr(self._local, "job", None)
        if job is not None:
            if self._stopping.is_set():
                raise Cancelled("server stopping")
            job.check()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None or self._stopping.is_set():
                if job is not None:
                    job.error = Cancelled("server stopping")
                    self._finish(job)
                return
            started = time.monotonic()
            self._local.job = job
            try:
                job.check()  # it may have waited in the queue past its deadline
                with torch.inference_mode():
                    job.result = job.work(job)
            except BaseException as error:  # handed to the request thread, which answers with JSON
                job.error = error
            finally:
                self._local.job = None
                self._mean_seconds = 0.7 * self._mean_seconds + 0.3 * (time.monotonic() - started)
                self._finish(job)

    @staticmethod
    def _finish(job: Job) -> None:
        if job.events is not None:
            job.emit("end", job.error)
        job.done.set()

    def close(self) -> None:
        self._stopping.set()
        while True:  # queued jobs will not run: tell their request threads now
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.error = Cancelled("server stopping")
                self._finish(job)
        for _ in self._threads:
            try:
                self._jobs.put(None, timeout=1)
            except queue.Full:
                pass
        for thread in self._threads:
            thread.join(timeout=5)


def model_label(name: str) -> str:
    """A model argument as the page shows it: a directory by its last part(s), not its full path."""
    path = Path(name).expanduser()
    if not path.exists():
        return name
    path = path.resolve()
    return f"{path.parent.name}/{path.name}" if path.name in ("model", "weights") else path.name


def can_generate(model) -> bool:
    tok = model.tokenizer
    return bool(model.config.causal and model.config.head is not None and tok is not None and tok.name == "bpe")


class Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client never keeps the process alive
    block_on_close = False
    request_queue_size = 128  # a burst of connections waits in the kernel's backlog instead of being dropped
    allow_reuse_address = True

    def __init__(self, models: dict, host: str = "127.0.0.1", port: int = 8765, limits: Limits | None = None,
                 quiet: bool = False):
        if not models:
            raise ClozelmError("no model to serve")
        self.models = dict(models)
        self.limits = limits or Limits()
        self.quiet = quiet
        self.pool = None
        self._hooks = []
        self._heads_cache: OrderedDict = OrderedDict()
        self._heads_lock = threading.Lock()
        self.static = self._read_static()
        self.allowed_hosts = _allowed_hosts(host)
        if ":" in host:
            import socket
            self.address_family = socket.AF_INET6
        try:
            super().__init__((host, port), Handler)
        except OSError as error:
            reason = "it is in use; pick another with --port" if error.errno in (98, 48, 10048) else error.strerror
            raise ClozelmError(f"cannot listen on {host}:{port}: {reason}") from None
        self.pool = WorkerPool(self.limits.workers, self.limits.queue_size)
        for model in self.models.values():
            for module in [model, *getattr(model, "h", ())]:
                self._hooks.append(module.register_forward_pre_hook(self.pool.check_hook))

    @staticmethod
    def _read_static() -> dict:
        files = {}
        for route, (name, content_type) in STATIC_ROUTES.items():
            try:
                files[route] = ((STATIC_DIR / name).read_bytes(), content_type)
            except OSError:
                raise ClozelmError(f"the page's files are missing from this install ({STATIC_DIR / name}); "
                                   "reinstall clozelm") from None
        return files

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    def server_close(self) -> None:
        super().server_close()
        if self.pool is not None:
            self.pool.close()
        for hook in self._hooks:  # the models may be cached and used elsewhere in this process
            hook.remove()
        self._hooks = []

    def model_info(self, name: str) -> dict:
        from ..cloze import method_for
        model = self.models[name]
        cfg, tok = model.config, model.tokenizer
        return {"name": name, "label": model_label(name), "family": cfg.family, "method": method_for(model),
                "causal": cfg.causal, "can_generate": can_generate(model), "layers": cfg.n_layer,
                "heads": cfg.n_head, "width": cfg.n_embd, "positions": cfg.n_positions,
                "vocab_size": cfg.vocab_size, "parameters": model.num_parameters(),
                "tokenizer": None if tok is None else tok.name}

    def heads_page(self, key, make) -> str:
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


def _allowed_hosts(host: str) -> set[str] | None:
    """Host headers accepted: on a loopback address only loopback names, so a web page elsewhere cannot
    reach this server through a DNS name that resolves to 127.0.0.1 (DNS rebinding). Serving on another
    address is the user's explicit choice to be reachable under any name."""
    try:
        loopback = host in LOOPBACK_NAMES or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        return None
    return LOOPBACK_NAMES | {host.lower(), f"[{host}]".lower()}


def make_server(models: dict, host: str = "127.0.0.1", port: int = 8765, limits: Limits | None = None,
                quiet: bool = False) -> Server:
    """A server for `models` ({name: loaded model}, first one first on the page), bound and ready for
    serve_forever(). port=0 picks a free port (server.url tells which)."""
    return Server(models, host, port, limits, quiet)


# ------------------------------------------------------------------------------------------------ requests

API_ROUTES = {
    "/api/models": {"GET": "api_models", "HEAD": "api_models"},
    "/api/fill": {"POST": "api_fill"},
    "/api/generate": {"POST": "api_generate"},
    "/api/tokenize": {"POST": "api_tokenize"},
    "/api/heads": {"GET": "api_heads", "POST": "api_heads"},
}


def _one_line(message: str, limit: int = 300) -> str:
    line = " ".join(str(message).split())
    return line if len(line) <= limit else line[:limit - 1] + "…"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and chunked responses for streamed generation
    server_version = "clozelm"
    sys_version = ""
    timeout = 30  # seconds a socket read or write may stall (idle keep-alive connections, slow clients)
    default_request_version = "HTTP/1.0"  # so that even a garbled request line gets a status line and headers
    server: Server

    # ------------------------------------------------------------------ plumbing

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def do_PATCH(self):
        self._dispatch("PATCH")

    def do_OPTIONS(self):
        self._dispatch("OPTIONS")

    def log_message(self, format, *args):
        if not self.server.quiet:
            super().log_message(format, *args)

    def send_error(self, code, message=None, explain=None):
        """http.server's own errors (bad request line, headers too long, unknown method) as JSON too."""
        self.close_connection = True
        self._body_read = True  # nothing more is read from this connection
        try:
            status = HTTPStatus(code)
            text = message or status.phrase
        except ValueError:
            text = message or "error"
        self._send_json(code, {"error": _one_line(text)})

    def handle_expect_100(self):
        # A client that asks first is told about an oversize body before sending it.
        length = self.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.server.limits.max_body:
            self.close_connection = True
            self._body_read = True
            self._send_json(413, {"error": self._too_big(int(length))})
            return False
        return super().handle_expect_100()

    def _dispatch(self, method: str) -> None:
        self._started = False  # True once a streamed response has sent its headers
        self._body_read = False
        try:
            self._check_host()
            path, _, query = self.path.partition("?")
            query = query.partition("#")[0]
            if path in self.server.static:
                if method not in ("GET", "HEAD"):
                    raise HTTPError(405, f"{path} answers GET only", {"Allow": "GET, HEAD"})
                body, content_type = self.server.static[path]
                csp = {"Content-Security-Policy": PAGE_CSP, "X-Frame-Options": "DENY"}
                self._send(200, body, content_type, csp, cache="no-cache")
                return
            routes = API_ROUTES.get(path)
            if routes is None:
                raise HTTPError(404, f"no such page or API: {_one_line(path, 100)} (the API is under /api/, see docs/api.md)")
            if method not in routes:
                allowed = ", ".join(routes)
                raise HTTPError(405, f"{path} answers {allowed}", {"Allow": allowed})
            self._check_fetch_site()
            getattr(self, routes[method])(method, query)
        except HTTPError as error:
            self._fail(error.status, error.message, error.headers)
        except ClozelmError as error:
            self._fail(400, str(error))
        except Cancelled as error:
            self._fail(504, self._late_message() if str(error) == "time limit" else f"the request was {error}")
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # the client is gone or stalled: nothing to answer
        except Exception as error:  # a bug: its traceback goes to the server's log, never to the client
            traceback.print_exception(error, file=sys.stderr)
            self._fail(500, f"internal error ({type(error).__name__}); the server's log has the details")

    def _fail(self, status: int, message: str, headers: dict | None = None) -> None:
        if self._started:  # the stream's headers are out: end it with an error line instead
            self._write_line({"error": _one_line(message)})
            self._end_stream()
            return
        try:
            self._send_json(status, {"error": _one_line(message)}, headers)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True

    def _late_message(self) -> str:
        return (f"the model did not answer within the server's time limit of {self.server.limits.timeout:g} s "
                "(waiting included); try a shorter text, fewer answers or fewer tokens")

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None,
              cache: str = "no-store") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if not getattr(self, "_body_read", True) and self._declares_body():
            self.close_connection = True  # an unread body would be taken for the next request
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _declares_body(self) -> bool:
        return bool(self.headers.get("Transfer-Encoding")) or self.headers.get("Content-Length", "0").strip() not in ("", "0")

    def _send_json(self, status: int, data, headers: dict | None = None) -> None:
        # "replace": a lone surrogate that slipped into a message must not turn an answer into a crash
        body = json.dumps(data, ensure_ascii=False).encode("utf-8", "replace")
        self._send(status, body, "application/json; charset=utf-8", headers)

    # ------------------------------------------------------------------ request checks

    def _check_host(self) -> None:
        allowed = self.server.allowed_hosts
        host = self.headers.get("Host", "")
        if allowed is None or not host:
            return
        name = host if host.endswith("]") else host.rsplit(":", 1)[0]
        if name.lower() not in allowed:
            raise HTTPError(403, f"unexpected Host {_one_line(host, 80)!r}: this server answers only to "
                                 f"{', '.join(sorted(allowed))}")

    def _check_fetch_site(self) -> None:
        # Browsers label every request with where it comes from; the API serves this page and direct clients
        # (curl, scripts), not other sites.
        site = self.headers.get("Sec-Fetch-Site")
        if site not in (None, "same-origin", "none"):
            raise HTTPError(403, "cross-site requests are refused: use the page this server serves")
        origin = self.headers.get("Origin")
        if origin and origin != "null" and urlsplit(origin).netloc.lower() != self.headers.get("Host", "").lower():
            raise HTTPError(403, "cross-origin requests are refused: use the page this server serves")

    def _too_big(self, length: int) -> str:
        return f"request body of {length} bytes is over this server's limit of {self.server.limits.max_body} bytes"

    def _read_json(self, fields: set[str]) -> dict:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise HTTPError(411, "send the body with a Content-Length (chunked request bodies are not accepted)")
        raw_length = self.headers.get("Content-Length")
        if raw_length is None:
            raise HTTPError(411, "a JSON body with a Content-Length is required")
        if not raw_length.strip().isdigit():
            self.close_connection = True
            raise HTTPError(400, f"bad Content-Length {_one_line(raw_length, 40)!r}")
        length = int(raw_length)
        if length > self.server.limits.max_body:
            self.close_connection = True  # the rest of the body is not read: this connection cannot go on
            if length <= DRAIN_LIMIT:
                self._drain(length)
            raise HTTPError(413, self._too_big(length))
        raw = self.rfile.read(length)
        self._body_read = True
        if len(raw) < length:
            self.close_connection = True
            raise HTTPError(400, f"the body ended after {len(raw)} of {length} bytes")
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            # Also what makes a browser ask before sending a request from another site (CORS preflight).
            raise HTTPError(415, "send the body as Content-Type: application/json")
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise HTTPError(400, "the body is not UTF-8") from None
        except json.JSONDecodeError as error:
            raise HTTPError(400, f"invalid JSON: {error.msg} at line {error.lineno} column {error.colno}") from None
        except RecursionError:
            raise HTTPError(400, "invalid JSON: nested too deeply") from None
        if not isinstance(data, dict):
            raise HTTPError(400, "the body must be a JSON object such as {\"text\": \"The ___ sat on the mat.\"}")
        unknown = sorted(set(data) - fields)
        if unknown:
            raise HTTPError(400, f"unknown field {_one_line(unknown[0], 40)!r} (this endpoint takes: "
                                 f"{', '.join(sorted(fields))})")
        return data

    def _drain(self, length: int) -> None:
        try:
            while length > 0:
                chunk = self.rfile.read(min(length, 65536))
                if not chunk:
                    return
                length -= len(chunk)
        except OSError:
            pass

    def _text(self, data: dict, key: str = "text") -> str:
        if key not in data:
            raise HTTPError(400, f"missing field {key!r}")
        value = data[key]
        if not isinstance(value, str):
            raise HTTPError(400, f"{key!r} must be a string")
        if len(value) > self.server.limits.max_text:
            raise HTTPError(413, f"the text is {len(value)} characters; this server takes at most "
                                 f"{self.server.limits.max_text}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise HTTPError(400, f"{key!r} is not valid Unicode (it holds a lone surrogate)") from None
        return value

    @staticmethod
    def _number(data: dict, key: str, default, low, high, integer: bool = True):
        value = data.get(key, default)
        if value is None and default is None:
            return None
        kind = "an integer" if integer else "a number"
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or (integer and not float(value).is_integer()) or not low <= value <= high):
            raise HTTPError(400, f"{key!r} must be {kind} from {low} to {high}")
        return int(value) if integer else float(value)

    def _model_names(self, requested) -> list[str]:
        """The served models a request asks for: one by name, or all of them when none is named."""
        models = self.server.models
        if requested is None:
            return list(models)
        if isinstance(requested, str) and requested in models:
            return [requested]
        shown = _one_line(requested, 60) if isinstance(requested, str) else type(requested).__name__
        raise HTTPError(400, f"unknown model {shown!r}: this server has {', '.join(models)}")

    # ------------------------------------------------------------------ model work

    def _run(self, work):
        """Run `work(job)` on a worker and wait for it, within the time limit."""
        job = self.server.pool.submit(work, self.server.limits.timeout)
        if not job.done.wait(max(0.0, job.deadline - time.monotonic()) + GRACE):
            job.cancelled.set()
            raise HTTPError(504, self._late_message())
        if job.error is not None:
            raise job.error
        return job.result

    # ------------------------------------------------------------------ endpoints

    def api_models(self, method, query):
        limits = asdict(self.server.limits)
        self._send_json(200, {"models": [self.server.model_info(n) for n in self.server.models],
                              "limits": {k: limits[k] for k in ("max_body", "max_text", "max_top", "max_new_tokens",
                                                                "timeout")}})

    def api_fill(self, method, query):
        from ..cloze import fill, method_for, parse
        data = self._read_json({"text", "top", "model"})
        text = self._text(data)
        top = self._number(data, "top", 5, 1, self.server.limits.max_top)
        names = self._model_names(data.get("model"))
        template = parse(text)  # a text without blanks is the same error for every model: say it once

        def work(job):
            results = []
            for name in names:
                job.check()
                model = self.server.models[name]
                started = time.monotonic()
                try:
                    answers = fill(text, model=model, top=top)
                except ClozelmError as error:
                    results.append({"model": name, "error": _one_line(str(error))})
                    continue
                results.append({"model": name, "method": method_for(model),
                                "seconds": round(time.monotonic() - started, 3),
                                "answers": [_answer_json(a, template) for a in answers]})
            return results

        results = self._run(work)
        errors = [r["error"] for r in results if "error" in r]
        if len(errors) == len(results):
            message = errors[0] if len(set(errors)) == 1 else "; ".join(f"{r['model']}: {r['error']}" for r in results)
            raise HTTPError(400, message)
        self._send_json(200, {"text": text, "results": results})

    def api_tokenize(self, method, query):
        data = self._read_json({"text", "model"})
        text = self._text(data)
        results = []
        for name in self._model_names(data.get("model")):
            tok = self.server.models[name].tokenizer
            if tok is None:
                results.append({"model": name, "error": "this model has no tokenizer"})
                continue
            # Tokenizing is cheap and touches no model: it runs here, not on a worker.
            ids = tok.encode(text, allowed_special="all") if tok.name == "bpe" else tok.encode(text)
            tokens = [{"id": i, "piece": tok.id_to_token(i), "text": _token_text(tok, i)} for i in ids]
            results.append({"model": name, "count": len(ids), "tokens": tokens})
        self._send_json(200, {"text": text, "results": results})

    def api_heads(self, method, query):
        if method == "POST":
            data = self._read_json({"text", "model"})
        else:
            fields = parse_qs(query, max_num_fields=8)
            unknown = sorted(set(fields) - {"text", "model"})
            if unknown:
                raise HTTPError(400, f"unknown parameter {_one_line(unknown[0], 40)!r} (this endpoint takes: model, text)")
            data = {key: values[0] for key, values in fields.items()}
        text = self._text(data)
        if not text.strip():
            raise HTTPError(400, "empty text: give a text to look at")
        names = self._model_names(data.get("model"))
        try:
            from ..heads import attention_map
        except ImportError:
            raise HTTPError(501, "the attention heads view is not part of this install") from None

        def work(job):
            maps = []
            for name in names:
                job.check()
                maps.append(attention_map(self.server.models[name], text, model_name=model_label(name)))
            return maps[0].to_html(compare=maps[1] if len(maps) > 1 else None)

        page = self.server.heads_page((text, tuple(names)), lambda: self._run(work))
        self._send(200, page.encode("utf-8"), "text/html; charset=utf-8", {"Content-Security-Policy": HEADS_CSP})

    def api_generate(self, method, query):
        from ..generation import Sampling, stream_text
        data = self._read_json({"text", "model", "max_tokens", "temperature", "top_k", "top_p",
                                "repetition_penalty", "seed", "stop", "beams"})
        text = self._text(data)
        models = self.server.models
        if data.get("model") is None:
            name = next((n for n in models if can_generate(models[n])), None)
            if name is None:
                raise HTTPError(400, "none of this server's models can generate (they are bidirectional): use fill")
        else:
            name = self._model_names(data["model"])[0]
            if not can_generate(models[name]):
                raise HTTPError(400, f"{name} cannot generate (it is not a causal model with a byte-level BPE "
                                     "tokenizer): use fill")
        model = models[name]
        stop = data.get("stop", [])
        if isinstance(stop, str):
            stop = [stop]
        if (not isinstance(stop, list) or len(stop) > 8
                or not all(isinstance(s, str) and 0 < len(s) <= 100 for s in stop)):
            raise HTTPError(400, "'stop' must be a list of at most 8 non-empty strings of at most 100 characters")
        sampling = Sampling(
            max_new_tokens=self._number(data, "max_tokens", 40, 1, self.server.limits.max_new_tokens),
            temperature=self._number(data, "temperature", 0.0, 0, 100, integer=False),
            top_k=self._number(data, "top_k", 0, 0, model.config.vocab_size),
            top_p=self._number(data, "top_p", 1.0, 0, 1, integer=False),
            repetition_penalty=self._number(data, "repetition_penalty", 1.0, 0, 100, integer=False),
            seed=self._number(data, "seed", None, 0, 2 ** 63 - 1))
        sampling.check()
        beams = self._number(data, "beams", 1, 1, 8)

        def work(job):
            for piece in stream_text(model, text, sampling, stop=stop, beams=beams):
                job.check()
                job.emit("text", piece)

        job = self.server.pool.submit(work, self.server.limits.timeout, stream=True)
        started = time.monotonic()
        kind, value = self._next_event(job)
        if kind == "end" and value is not None:
            raise value  # failed before its first piece: a plain JSON error with its status
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self._started = True
        try:
            self._write_line({"model": name})
            while kind == "text":
                self._write_line({"text": value})
                kind, value = self._next_event(job)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            job.cancelled.set()  # nobody is reading: free the worker at its next forward pass
            raise
        done = {"done": True, "seconds": round(time.monotonic() - started, 3), "stopped": None}
        if kind == "late" or (isinstance(value, Cancelled) and str(value) == "time limit"):
            done["stopped"] = "time limit"
        elif value is not None:
            done = {"error": _one_line(str(value) if isinstance(value, (ClozelmError, Cancelled))
                                       else f"internal error ({type(value).__name__})")}
            if not isinstance(value, (ClozelmError, Cancelled)):
                traceback.print_exception(value, file=sys.stderr)
        self._write_line(done)
        self._end_stream()

    def _next_event(self, job: Job):
        try:
            return job.events.get(timeout=max(0.0, job.deadline - time.monotonic()) + GRACE)
        except queue.Empty:
            job.cancelled.set()
            if not self._started:
                raise HTTPError(504, self._late_message()) from None
            return "late", None

    def _write_line(self, data) -> None:
        line = json.dumps(data, ensure_ascii=False).encode("utf-8", "replace") + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))

    def _end_stream(self) -> None:
        try:
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True


def _token_text(tok, token_id: int) -> str:
    if hasattr(tok, "token_bytes"):
        return tok.token_bytes(token_id).decode("utf-8", "replace")
    return tok.id_to_token(token_id)


def _answer_json(answer, template) -> dict:
    """An answer with `parts`: the text cut into known text and filled blanks, for highlighting."""
    out = answer.to_dict()
    parts = [{"text": template.segments[0]}]
    for blank, filled, segment in zip(template.blanks, answer.blanks, template.segments[1:]):
        if blank.lead_space:
            parts.append({"text": " "})
        parts += [{"fill": filled}, {"text": segment}]
    parts = [p for p in parts if p.get("text", True)]
    if "".join(p.get("text", p.get("fill", "")) for p in parts) == answer.text:
        out["parts"] = parts
    return out
