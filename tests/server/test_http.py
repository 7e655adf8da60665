"""The hardened HTTP layer (http.py): bounded and malformed bodies, no path traversal, no files written,
a clear error for a port in use, and a total time limit on receiving one request (408)."""

from __future__ import annotations

import contextlib
import http.client
import json
import select
import socket
import time

import pytest

from clozelm.errors import ClozelmError
from clozelm.server import make_server

from .helpers import assert_json_error, call, raw_request, running, slow_copy


def test_oversize_and_malformed_bodies(server):
    big = json.dumps({"text": "x" * 100_000})
    assert_json_error(*call(server, "POST", "/api/fill", big), 413, "over this server's limit of 65536 bytes")
    # A Content-Length far over the limit is refused without reading what follows.
    answer = raw_request(server, b"POST /api/fill HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: 10000000000\r\n\r\n{\"text\":")
    assert answer.startswith(b"HTTP/1.1 413") and b'"error": "request body of 10000000000 bytes' in answer
    answer = raw_request(server, b"POST /api/fill HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 99999999\r\n"
                                 b"Content-Type: application/json\r\nExpect: 100-continue\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413") and b"100 Continue" not in answer
    answer = raw_request(server, b"POST /api/fill HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                                 b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 411") and b"Content-Length" in answer
    answer = raw_request(server, b"POST /api/fill HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -5\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400")
    answer = raw_request(server, b"NONSENSE\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400") and b'{"error": ' in answer and b"<html" not in answer.lower()
    assert call(server, "GET", "/api/models")[0] == 200


TRAVERSALS = ["/../../etc/passwd", "/static/../../../../etc/passwd", "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
              "/%2e%2e/%2e%2e/etc/passwd", "/..%2f..%2f..%2fetc%2fpasswd", "/static/..%5c..%5c..%5cetc%5cpasswd",
              "//etc/passwd", "/static//etc/passwd", "/static/page.js/../../../../etc/passwd",
              "/static/%252e%252e/%252e%252e/etc/passwd", "/static/page.js%00.css", "/static/", "/static",
              "/static/../app.py", "/static/../../server/app.py", "/api/../../etc/passwd"]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_no_path_traversal(server, path):
    answer = raw_request(server, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 404"), answer[:200]
    assert b"root:" not in answer and b"import" not in answer and b'{"error": ' in answer


def test_the_server_writes_no_files(models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with running(models) as s:
        call(s, "POST", "/api/fill", {"text": "the ___ sat", "top": 1})
        call(s, "GET", "/api/heads?text=the+cat")
        call(s, "POST", "/api/fill", "{bad")
    assert list(tmp_path.iterdir()) == []


def test_a_port_in_use_is_a_clear_error(models):
    with running(models) as s:
        with pytest.raises(ClozelmError, match="in use; pick another with --port"):
            make_server(models, port=s.server_address[1])


# ------------------------------------------------------------------------- slow clients (issue 18, item 15)

def trickle(server, data: bytes, gap: float = 0.05) -> tuple[bytes, float]:
    """Send `data` a byte every `gap` seconds until the server answers, then read to the end:
    (everything the server sent, seconds from the first byte to the end of its answer)."""
    with socket.create_connection(server.server_address[:2], timeout=10) as sock:
        started = time.monotonic()
        for byte in data:
            if select.select([sock], [], [], gap)[0]:
                break  # the server answered (or closed)
            sock.sendall(bytes([byte]))
        chunks = []
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):  # b"" once the server has closed the connection
                chunks.append(chunk)
        return b"".join(chunks), time.monotonic() - started


@pytest.fixture(scope="module")
def impatient(models):
    with running(models, receive_timeout=1.0) as s:
        yield s


def test_headers_sent_a_byte_at_a_time_get_408_and_the_connection_closed(impatient):
    request = (b"GET /api/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 400 + b"\r\n\r\n")
    answer, seconds = trickle(impatient, request)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"Connection: close" in answer and b'{"error": "the request did not arrive within' in answer
    assert seconds < 4  # the limit is on the whole request, not on each read (a byte every 0.05 s never stalls)
    assert call(impatient, "GET", "/api/models")[0] == 200


def test_a_body_sent_a_byte_at_a_time_gets_408(impatient):
    body = json.dumps({"text": "the ___ sat " + "x" * 300}).encode()
    head = (b"POST /api/fill HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    with socket.create_connection(impatient.server_address[:2], timeout=10) as sock:
        sock.sendall(head)  # the headers at once, then the body trickles
        started = time.monotonic()
        for byte in body:
            if select.select([sock], [], [], 0.05)[0]:
                break
            sock.sendall(bytes([byte]))
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
        seconds = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408") and b"Connection: close" in answer, answer[:200]
    assert seconds < 4


def test_the_receive_limit_is_per_request_and_leaves_model_time_alone(model_dirs, models):
    with running({"slow": slow_copy(model_dirs[0], 0.1), "bidi": models["bidi"]}, receive_timeout=0.3) as s:
        host, port = s.server_address[:2]
        conn = http.client.HTTPConnection(host, port, timeout=30)  # one keep-alive connection
        try:
            for _ in range(2):
                conn.request("POST", "/api/fill", json.dumps({"text": "the ___ sat", "model": "slow", "top": 1}),
                             {"Content-Type": "application/json"})
                response = conn.getresponse()
                assert response.status == 200, response.read()
                response.read()
                time.sleep(0.5)  # idle between requests longer than the receive limit: not a slow request
        finally:
            conn.close()


# ----------------------------------------------------------------------- numbers too long (issue 18, item 13)

def test_a_5000_digit_integer_is_400_not_500(server):
    huge = "1" + "0" * 5000
    for body in ('{"text": "The ___ sat.", "top": %s}' % huge, '{"text": %s}' % huge,
                 '{"text": "x", "seed": -%s}' % huge, '[%s]' % huge, '%s' % huge):
        path = "/api/generate" if "seed" in body else "/api/fill"
        status, response, data = call(server, "POST", path, body, {"Content-Type": "application/json"})
        assert_json_error(status, response, data, 400)


@pytest.mark.parametrize("length", ["1" + "0" * 5000, "\u00b2", "1_000", "0x10", " "])
def test_odd_content_lengths_are_400(server, length):
    answer = raw_request(server, b"POST /api/fill HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: " + length.encode("latin-1") + b"\r\n\r\n{}")
    assert answer.startswith(b"HTTP/1.1 400") and b'{"error": ' in answer, answer[:300]


def test_a_huge_content_length_with_expect_100_is_answered(server):
    answer = raw_request(server, b"POST /api/fill HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: " + b"9" * 5000 + b"\r\nExpect: 100-continue\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400"), answer[:300]


@pytest.mark.parametrize("repeated", [b"Host: 127.0.0.1\r\nHost: evil.example", b"Host: 127.0.0.1\r\nContent-Length: 15"])
def test_a_header_given_twice_is_refused(server, repeated):
    """Which of two Host or Content-Length values counts is the sender's trick (a proxy and this server may read
    different ones): refused."""
    body = b'{"text": "a ___"}'
    answer = raw_request(server, b"POST /api/fill HTTP/1.1\r\n" + repeated + b"\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
    assert answer.startswith(b"HTTP/1.1 400") and b"more than once" in answer
