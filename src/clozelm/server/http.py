"""The hardened HTTP layer under `clozelm serve` (standard library only: http.server and threads).

It knows nothing of models. It gives a subclass of `JSONHandler`:

* routing by exact URL path (`routes`: path -> {method: handler method name}) and fixed in-memory files
  (`server.static`), never joined to a filesystem path;
* every error as JSON {"error": "one line"} with its status, http.server's own errors included; a bug is a
  500 whose traceback goes to the server's stderr, never to the client;
* bounded requests: a body over `server.max_body` is refused (413, read and dropped up to DRAIN_LIMIT so the
  client sees the answer), chunked bodies are refused (411), and one whole request (line, headers and
  body) must arrive within `server.receive_timeout` seconds of its first byte, so a client that trickles
  a byte at a time gets 408 and the connection is closed (a per-read timeout alone never fires for it);
* JSON bodies parsed with one-line errors (not UTF-8, nested too deeply, a number too long to convert);
* on a loopback address only loopback Host names (DNS rebinding), and no cross-site browser requests.
"""

from __future__ import annotations

import io
import ipaddress
import json
import math
import re
import socket
import sys
import time
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from ..errors import ClozelmError
from .fields import FieldError, one_line

DRAIN_LIMIT = 1 << 20  # an oversize body up to this size is read and dropped, so the client sees the 413
LINGER = 1.0  # seconds a connection closed early (408) is drained, so the client reads the answer before a reset
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "[::1]", "::1"}
MAX_DIGITS = 100  # longer integers in a JSON body read as infinite: out of every field's range


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class RequestTimeout(Exception):
    """The client did not send a whole request within the server's receive time limit.
    Not a TimeoutError: http.server drops those without an answer."""


class _TimedReader(io.RawIOBase):
    """The connection's read side. While no request is under way a read waits up to `idle` seconds (an idle
    keep-alive connection is then closed quietly); from a request's first byte the whole request must
    arrive within `total` seconds, each read waiting only for what is left."""

    def __init__(self, sock: socket.socket, idle: float, total: float):
        super().__init__()
        self._sock, self.idle, self.total = sock, idle, total
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def next_request(self) -> None:
        self.deadline = None  # the clock starts with the next request's first byte

    def readinto(self, buffer) -> int:
        if self.deadline is None:
            n = self._sock.recv_into(buffer)
            if n:
                self.deadline = time.monotonic() + self.total
            return n
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise RequestTimeout()
        self._sock.settimeout(min(self.idle, left))
        try:
            return self._sock.recv_into(buffer)
        except TimeoutError:
            raise RequestTimeout() from None
        finally:
            self._sock.settimeout(self.idle)  # writes keep the idle timeout


def allowed_hosts(host: str) -> set[str] | None:
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


class HardenedServer(ThreadingHTTPServer):
    """A threading HTTP server that stops cleanly. Subclasses set `static` ({path: (bytes, content type,
    headers)}), `max_body` (bytes) and `receive_timeout` (seconds) before serving."""

    daemon_threads = True  # a stuck client never keeps the process alive
    block_on_close = False
    request_queue_size = 128  # a burst of connections waits in the kernel's backlog instead of being dropped
    allow_reuse_address = True
    static: dict = {}
    max_body: int = 64 * 1024
    receive_timeout: float = 10.0

    def __init__(self, host: str, port: int, handler, quiet: bool = False):
        self.quiet = quiet
        self.allowed_hosts = allowed_hosts(host)
        if ":" in host:
            self.address_family = socket.AF_INET6
        try:
            super().__init__((host, port), handler)
        except OSError as error:
            reason = "it is in use; pick another with --port" if error.errno in (98, 48, 10048) else error.strerror
            raise ClozelmError(f"cannot listen on {host}:{port}: {reason}") from None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def _parse_int(digits: str):
    # Python refuses to turn an integer of more than 4300 digits into an int (a ValueError that is no
    # JSONDecodeError); no field takes anything near that long, so a long one reads as out of range.
    if len(digits.lstrip("-")) > MAX_DIGITS:
        return -math.inf if digits.startswith("-") else math.inf
    return int(digits)


def _content_length(value: str) -> int | None:
    """A Content-Length as a number, None unless it is 1 to 18 ASCII digits (str.isdigit also takes "²",
    which int() refuses, and a longer one is beyond any limit)."""
    value = value.strip()
    return int(value) if re.fullmatch(r"[0-9]{1,18}", value) else None


def parse_json(raw: bytes):
    try:
        return json.loads(raw.decode("utf-8"), parse_int=_parse_int)
    except UnicodeDecodeError:
        raise HTTPError(400, "the body is not UTF-8") from None
    except json.JSONDecodeError as error:
        raise HTTPError(400, f"invalid JSON: {error.msg} at line {error.lineno} column {error.colno}") from None
    except RecursionError:
        raise HTTPError(400, "invalid JSON: nested too deeply") from None
    except ValueError as error:
        raise HTTPError(400, f"invalid JSON: {one_line(error, 100)}") from None


class JSONHandler(BaseHTTPRequestHandler):
    """One connection. Subclasses set `routes` and write the handler methods it names, each called as
    `method(http_method, query)`."""

    protocol_version = "HTTP/1.1"  # keep-alive, and chunked responses for streams
    server_version = "clozelm"
    sys_version = ""
    timeout = 30  # seconds a socket read or write may stall (idle keep-alive connections, slow readers)
    default_request_version = "HTTP/1.0"  # so that even a garbled request line gets a status line and headers
    routes: dict[str, dict[str, str]] = {}
    server: HardenedServer

    # ------------------------------------------------------------------ connection

    def setup(self) -> None:
        super().setup()
        self._reader = _TimedReader(self.connection, self.timeout, self.server.receive_timeout)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        self._reader.next_request()
        self._started = False  # True once a streamed response has sent its headers
        self._body_read = True  # until a request line says otherwise
        self.requestline, self.command, self.request_version = "", "", self.default_request_version
        try:
            super().handle_one_request()
        except RequestTimeout:
            self._time_out()

    def _time_out(self) -> None:
        """408 and close: the client took too long to send its request."""
        self.close_connection = True
        self._body_read = True
        message = (f"the request did not arrive within this server's limit of {self.server.receive_timeout:g} s "
                   "(headers and body)")
        try:
            if self._started:
                self._write_line({"error": message})
                self._end_stream()
            else:
                self._send_json(408, {"error": message})
            self.connection.shutdown(socket.SHUT_WR)
            # Read what the client is still sending for a moment: closing with unread data would reset the
            # connection and could destroy the answer before the client reads it.
            self.connection.settimeout(LINGER)
            until = time.monotonic() + LINGER
            while time.monotonic() < until and self.connection.recv(65536):
                pass
        except OSError:
            pass

    def log_message(self, format, *args):
        if not self.server.quiet:
            super().log_message(format, *args)

    def send_error(self, code, message=None, explain=None):
        """http.server's own errors (bad request line, headers too long, unknown method) as JSON too."""
        self.close_connection = True
        self._body_read = True  # nothing more is read from this connection
        try:
            text = message or HTTPStatus(code).phrase
        except ValueError:
            text = message or "error"
        self._send_json(code, {"error": one_line(text)})

    def handle_expect_100(self):
        # A client that asks first is told about an oversize body before sending it.
        raw = self.headers.get("Content-Length")
        length = _content_length(raw or "")
        if raw is not None and (length is None or length > self.server.max_body):
            self.close_connection = True
            self._body_read = True
            error = self._too_big(length) if length is not None else f"bad Content-Length {one_line(raw, 40)!r}"
            self._send_json(413 if length is not None else 400, {"error": error})
            return False
        return super().handle_expect_100()

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

    # ------------------------------------------------------------------ routing and errors

    def _dispatch(self, method: str) -> None:
        self._body_read = False
        try:
            self._check_host()
            path, _, query = self.path.partition("?")
            query = query.partition("#")[0]
            if path in self.server.static:
                if method not in ("GET", "HEAD"):
                    raise HTTPError(405, f"{path} answers GET only", {"Allow": "GET, HEAD"})
                body, content_type, headers = self.server.static[path]
                self._send(200, body, content_type, headers, cache="no-cache")
                return
            routes = self.routes.get(path)
            if routes is None:
                raise HTTPError(404, f"no such page or API: {one_line(path, 100)} (the API is under /api/, "
                                     "see docs/api.md)")
            if method not in routes:
                allowed = ", ".join(routes)
                raise HTTPError(405, f"{path} answers {allowed}", {"Allow": allowed})
            self._check_fetch_site()
            getattr(self, routes[method])(method, query)
        except HTTPError as error:
            self._fail(error.status, error.message, error.headers)
        except FieldError as error:
            self._fail(error.status, str(error))
        except ClozelmError as error:
            self._fail(400, str(error))
        except RequestTimeout:
            self._time_out()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # the client is gone or stalled: nothing to answer
        except Exception as error:  # a bug: its traceback goes to the server's log, never to the client
            traceback.print_exception(error, file=sys.stderr)
            self._fail(500, f"internal error ({type(error).__name__}); the server's log has the details")

    def _fail(self, status: int, message: str, headers: dict | None = None) -> None:
        try:
            if self._started:  # the stream's headers are out: end it with an error line instead
                self._write_line({"error": one_line(message)})
                self._end_stream()
            else:
                self._send_json(status, {"error": one_line(message)}, headers)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True

    # ------------------------------------------------------------------ answers

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
        if not self._body_read and self._declares_body():
            self.close_connection = True  # an unread body would be taken for the next request
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _declares_body(self) -> bool:
        return (bool(self.headers.get("Transfer-Encoding"))
                or self.headers.get("Content-Length", "0").strip() not in ("", "0"))

    def _send_json(self, status: int, data, headers: dict | None = None) -> None:
        # "replace": a lone surrogate that slipped into a message must not turn an answer into a crash
        body = json.dumps(data, ensure_ascii=False).encode("utf-8", "replace")
        self._send(status, body, "application/json; charset=utf-8", headers)

    def _start_stream(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self._started = True

    def _write_line(self, data) -> None:
        line = json.dumps(data, ensure_ascii=False).encode("utf-8", "replace") + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))

    def _end_stream(self) -> None:
        try:
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True

    # ------------------------------------------------------------------ request checks

    def _check_host(self) -> None:
        for name in ("Host", "Content-Length", "Origin"):  # two values: which one counts is the sender's trick
            if len(self.headers.get_all(name) or []) > 1:
                raise HTTPError(400, f"the {name} header is given more than once")
        allowed = self.server.allowed_hosts
        host = self.headers.get("Host", "")
        if allowed is None or not host:
            return
        name = host if host.endswith("]") else host.rsplit(":", 1)[0]
        if name.lower() not in allowed:
            raise HTTPError(403, f"unexpected Host {one_line(host, 80)!r}: this server answers only to "
                                 f"{', '.join(sorted(allowed))}")

    def _check_fetch_site(self) -> None:
        # Browsers label every request with where it comes from; the API serves this page and direct clients
        # (curl, scripts), not other sites.
        site = self.headers.get("Sec-Fetch-Site")
        if site not in (None, "same-origin", "none"):
            raise HTTPError(403, "cross-site requests are refused: use the page this server serves")
        origin = self.headers.get("Origin")
        try:
            foreign = bool(origin) and origin != "null" and \
                urlsplit(origin).netloc.lower() != self.headers.get("Host", "").lower()
        except ValueError:  # not a URL ("http://[::1"): no page of this server sent it
            foreign = True
        if foreign:
            raise HTTPError(403, "cross-origin requests are refused: use the page this server serves")

    def _too_big(self, length: int) -> str:
        return f"request body of {length} bytes is over this server's limit of {self.server.max_body} bytes"

    def _read_json(self):
        """The request's JSON body, parsed (a JSON value of any kind: the fields are checked by the caller)."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise HTTPError(411, "send the body with a Content-Length (chunked request bodies are not accepted)")
        raw_length = self.headers.get("Content-Length")
        if raw_length is None:
            raise HTTPError(411, "a JSON body with a Content-Length is required")
        length = _content_length(raw_length)
        if length is None:
            self.close_connection = True
            raise HTTPError(400, f"bad Content-Length {one_line(raw_length, 40)!r}")
        if length > self.server.max_body:
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
        return parse_json(raw)

    def _drain(self, length: int) -> None:
        try:
            while length > 0:
                chunk = self.rfile.read(min(length, 65536))
                if not chunk:
                    return
                length -= len(chunk)
        except OSError:
            pass
