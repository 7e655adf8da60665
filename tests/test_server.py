"""`clozelm serve`: the JSON API on small saved models (a causal one and a bidirectional one), and its
robustness: bounded bodies and texts, JSON errors with the right status, no path traversal, time limits
that free the worker, a bounded queue answering 503, and 100 concurrent requests from another process."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import clozelm
from clozelm.errors import ClozelmError
from clozelm.model import ModelConfig, Transformer
from clozelm.server import Limits, make_server
from clozelm.server.app import STATIC_DIR
from handbuilt import word_tokenizer

SENTENCES = ["the cat sat on the mat", "a dog ran in the park", "the bird sang in the tree"]


def build_models(root: Path) -> tuple[Path, Path]:
    """A tiny causal LM and a tiny masked LM with a word-level BPE vocabulary, saved as HF directories."""
    dirs = []
    for name, extra in (("causal", {}), ("bidi", {"causal": False, "pre_ln": False, "head": "mlm"})):
        d = root / name
        d.mkdir()
        tok = word_tokenizer(d, SENTENCES)
        torch.manual_seed(0)
        model = Transformer(ModelConfig(vocab_size=tok.vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                        **extra)).eval()
        model.tokenizer = tok
        model.save_pretrained(d / "model")
        dirs.append(d / "model")
    return dirs[0], dirs[1]


@contextlib.contextmanager
def running(models: dict, **limits):
    """A server on a free port of 127.0.0.1 in a thread of this process, stopped on exit."""
    server = make_server(models, port=0, limits=Limits(**limits), quiet=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def call(server, method, path, body=None, headers=None, timeout=30):
    """(status, headers, body as JSON when it is JSON else text)."""
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
            headers = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        raw = response.read().decode("utf-8")
        kind = response.getheader("Content-Type", "")
        return response.status, response, json.loads(raw) if kind.startswith("application/json") else raw
    finally:
        conn.close()


def raw_request(server, data: bytes, timeout=10) -> bytes:
    """Send bytes as they are (paths http.client would not send, lying headers) and read the answer."""
    with socket.create_connection(server.server_address[:2], timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        with contextlib.suppress(socket.timeout, ConnectionResetError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


def assert_json_error(status, response, data, expected_status, fragment=""):
    assert status == expected_status, (status, data)
    assert response.getheader("Content-Type").startswith("application/json")
    assert list(data) == ["error"], data
    message = data["error"]
    assert "\n" not in message and "Traceback" not in message and fragment in message, message


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="module")
def models(model_dirs):
    return {"causal": clozelm.load(model_dirs[0]), "bidi": clozelm.load(model_dirs[1])}


@pytest.fixture(scope="module")
def server(models):
    with running(models) as s:
        yield s


def slow_copy(model_dir, seconds: float):
    """The same model, loaded anew, sleeping before every forward pass: a stand-in for a big model."""
    model = clozelm.load(model_dir)
    model.register_forward_pre_hook(lambda module, args: time.sleep(seconds))
    return model


# -------------------------------------------------------------------------------------------------- API

def test_page_and_its_files_are_served_and_reference_nothing_outside(server):
    status, response, page = call(server, "GET", "/")
    assert status == 200 and response.getheader("Content-Type").startswith("text/html")
    assert "script-src 'self'" in response.getheader("Content-Security-Policy")
    assert '<script src="/static/page.js"' in page and 'href="/static/page.css"' in page
    for path in ("/static/page.js", "/static/page.css"):
        assert call(server, "GET", path)[0] == 200
    for f in STATIC_DIR.iterdir():  # works offline: no CDN, no external font or URL
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", f.read_text()), f
    assert call(server, "HEAD", "/")[0] == 200


def test_models_lists_both_with_their_method_and_the_limits(server):
    status, _, data = call(server, "GET", "/api/models")
    assert status == 200
    assert [(m["name"], m["method"], m["can_generate"]) for m in data["models"]] == [
        ("causal", "causal", True), ("bidi", "bidirectional", False)]
    assert data["limits"]["max_text"] == 4000 and data["limits"]["timeout"] == 60


def test_fill_answers_from_both_models_as_the_library_does(server, models):
    text = "the ___ sat on the mat"
    status, _, data = call(server, "POST", "/api/fill", {"text": text, "top": 3})
    assert status == 200 and data["text"] == text
    assert [r["model"] for r in data["results"]] == ["causal", "bidi"]
    for result in data["results"]:
        model = models[result["model"]]
        expected = [a.to_dict() for a in clozelm.fill(text, model=model, top=3)]
        got = [{k: v for k, v in a.items() if k != "parts"} for a in result["answers"]]
        assert got == expected and result["method"] == clozelm.cloze.method_for(model)
        for a in result["answers"]:  # parts spell the answer, the blank marked
            assert "".join(p.get("text", p.get("fill")) for p in a["parts"]) == a["text"]
            assert [p["fill"] for p in a["parts"] if "fill" in p] == a["blanks"]
    status, _, one = call(server, "POST", "/api/fill", {"text": "a [MASK] ran in the park", "top": 1, "model": "bidi"})
    assert status == 200 and [r["model"] for r in one["results"]] == ["bidi"] and len(one["results"][0]["answers"]) == 1


def test_generate_streams_ndjson_equal_to_generate(server, models):
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("POST", "/api/generate", json.dumps({"text": "the cat", "max_tokens": 8}),
                 {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("Transfer-Encoding") == "chunked"
    assert response.getheader("Content-Type").startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.read().decode().splitlines()]
    conn.close()
    assert lines[0] == {"model": "causal"} and lines[-1]["done"] is True and lines[-1]["stopped"] is None
    streamed = "".join(line["text"] for line in lines[1:-1])
    assert streamed == clozelm.generate("the cat", model=models["causal"], max_new_tokens=8)
    assert_json_error(*call(server, "POST", "/api/generate", {"text": "the cat", "model": "bidi"}), 400, "cannot generate")
    assert_json_error(*call(server, "POST", "/api/generate", {"text": "the cat", "max_tokens": 100}), 400, "64-token context")
    assert_json_error(*call(server, "POST", "/api/generate", {"text": "x", "stop": [""]}), 400, "stop")


def test_tokenize_gives_the_tokenizers_pieces(server, models):
    status, _, data = call(server, "POST", "/api/tokenize", {"text": "the cat sat"})
    assert status == 200
    for result in data["results"]:
        tok = models[result["model"]].tokenizer
        assert [t["id"] for t in result["tokens"]] == tok.encode("the cat sat") and result["count"] == len(result["tokens"])
        assert "".join(t["text"] for t in result["tokens"]) == "the cat sat"


def test_heads_is_a_self_contained_page_for_both_models(server):
    status, response, page = call(server, "GET", "/api/heads?text=the+cat+sat+on+the+mat")
    assert status == 200 and response.getheader("Content-Type").startswith("text/html")
    assert "frame-ancestors 'self'" in response.getheader("Content-Security-Policy")
    assert 'id="heads-data"' in page and '"name":"causal"' in page and '"name":"bidi"' in page  # both models
    status, _, posted = call(server, "POST", "/api/heads", {"text": "the cat sat on the mat", "model": "causal"})
    assert status == 200 and '"name":"causal"' in posted and '"name":"bidi"' not in posted
    assert_json_error(*call(server, "GET", "/api/heads?text=+"), 400, "empty text")
    assert_json_error(*call(server, "GET", "/api/heads?text=a&color=red"), 400, "unknown parameter")


# -------------------------------------------------------------------------------------------- bad input

BAD_REQUESTS = [
    ("POST", "/api/fill", "{not json", {}, 400, "invalid JSON"),
    ("POST", "/api/fill", "[1, 2]", {}, 400, "JSON object"),
    ("POST", "/api/fill", {"text": "the ___", "tpo": 3}, {}, 400, "unknown field 'tpo'"),
    ("POST", "/api/fill", {"top": 3}, {}, 400, "missing field 'text'"),
    ("POST", "/api/fill", {"text": 3}, {}, 400, "must be a string"),
    ("POST", "/api/fill", {"text": "the ___ " * 600}, {}, 413, "at most 4000"),
    ("POST", "/api/fill", {"text": "the ___", "top": 0}, {}, 400, "'top' must be an integer from 1 to 20"),
    ("POST", "/api/fill", {"text": "the ___", "top": True}, {}, 400, "'top'"),
    ("POST", "/api/fill", {"text": "the ___", "top": 2.5}, {}, 400, "'top'"),
    ("POST", "/api/fill", {"text": "the ___", "model": "../../etc"}, {}, 400, "unknown model"),
    ("POST", "/api/fill", {"text": "nothing hidden here"}, {}, 400, "no blank"),
    ("POST", "/api/fill", {"text": "   "}, {}, 400, "empty text"),
    ("POST", "/api/fill", '{"text": "the \\ud800 ___"}', {}, 400, "lone surrogate"),
    ("POST", "/api/fill", b"\xff\xfe", {}, 400, "not UTF-8"),
    ("POST", "/api/fill", "[" * 60000 + "]" * 10, {}, 400, "invalid JSON"),
    ("POST", "/api/fill", '{"text": "the ___"}', {"Content-Type": "text/plain"}, 415, "application/json"),
    ("POST", "/api/generate", {"text": "x", "temperature": float("nan")}, {}, 400, "'temperature'"),
    ("POST", "/api/generate", {"text": "x", "top_p": 0}, {}, 400, "top-p"),
    ("GET", "/api/fill", None, {}, 405, "answers POST"),
    ("PUT", "/api/models", "{}", {}, 405, "answers GET"),
    ("DELETE", "/", None, {}, 405, "GET only"),
    ("GET", "/api/nothing", None, {}, 404, "no such page"),
    ("GET", "/api/models", None, {"Host": "evil.example:8765"}, 403, "unexpected Host"),
    ("POST", "/api/fill", {"text": "the ___"}, {"Sec-Fetch-Site": "cross-site"}, 403, "cross-site"),
    ("POST", "/api/fill", {"text": "the ___"}, {"Origin": "http://evil.example"}, 403, "cross-origin"),
    ("BREW", "/api/models", None, {}, 501, "Unsupported method"),
]


@pytest.mark.parametrize("method,path,body,headers,status,fragment", BAD_REQUESTS,
                         ids=[f"{m} {p} {s} {f}" for m, p, _, _, s, f in BAD_REQUESTS])
def test_bad_requests_get_one_line_json_errors(server, method, path, body, headers, status, fragment):
    if isinstance(body, (str, bytes)) and "Content-Type" not in headers:
        headers = {**headers, "Content-Type": "application/json"}
    assert_json_error(*call(server, method, path, body, headers), status, fragment)


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


# ------------------------------------------------------------------------------------ time and load

def test_a_slow_call_times_out_frees_its_worker_and_blocks_no_one(model_dirs, models):
    served = {"slow": slow_copy(model_dirs[0], 0.25), "bidi": models["bidi"]}
    with running(served, timeout=1.0) as s:
        result = {}
        worker = threading.Thread(target=lambda: result.update(
            slow=call(s, "POST", "/api/fill", {"text": "the ___ sat on the ___", "model": "slow"})))
        started = time.monotonic()
        worker.start()
        time.sleep(0.2)
        assert call(s, "GET", "/api/models")[0] == 200 and time.monotonic() - started < 1.0  # not blocked
        worker.join(timeout=10)
        assert_json_error(*result["slow"], 504, "time limit of 1 s")
        assert time.monotonic() - started < 2.5
        # The worker was given back at the slow model's next forward pass: the other model answers.
        status, _, data = call(s, "POST", "/api/fill", {"text": "a [MASK] ran", "model": "bidi", "top": 1})
        assert status == 200 and data["results"][0]["answers"]
        # A stream that runs out of time keeps what it produced and says why it ended.
        status, response, body = call(s, "POST", "/api/generate", {"text": "the cat", "model": "slow", "max_tokens": 40})
        lines = [json.loads(line) for line in body.splitlines()]
        assert status == 200 and lines[-1]["done"] and lines[-1]["stopped"] == "time limit"
        assert 1 <= len(lines) - 2 < 40


def test_a_dropped_stream_gives_its_worker_back(model_dirs, models):
    served = {"slow": slow_copy(model_dirs[0], 0.1), "bidi": models["bidi"]}
    with running(served, timeout=20.0) as s:
        sock = socket.create_connection(s.server_address[:2], timeout=10)
        body = json.dumps({"text": "the cat", "max_tokens": 60}).encode()
        sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        sock.close()  # the reader is gone after the first piece: 60 tokens would take 6 s more
        started = time.monotonic()
        status, _, _ = call(s, "POST", "/api/fill", {"text": "a [MASK] ran", "model": "bidi", "top": 1})
        assert status == 200 and time.monotonic() - started < 3


def test_a_full_queue_answers_503_with_retry_after(model_dirs):
    with running({"slow": slow_copy(model_dirs[0], 0.2)}, timeout=2.0, queue_size=1) as s:
        results = []
        threads = [threading.Thread(target=lambda: results.append(call(s, "POST", "/api/fill", {"text": "the ___ sat"})))
                   for _ in range(4)]
        for t in threads:
            t.start()
            time.sleep(0.05)  # one running, one waiting, the rest refused
        for t in threads:
            t.join(timeout=10)
        statuses = sorted(r[0] for r in results)
        assert statuses.count(503) >= 2 and set(statuses) <= {200, 503, 504}, statuses
        for status, response, data in results:
            if status == 503:
                assert_json_error(status, response, data, 503, "busy")
                assert int(response.getheader("Retry-After")) >= 1
        assert call(s, "GET", "/api/models")[0] == 200


LOAD_SCRIPT = r"""
import http.client, json, sys, threading, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
bodies = [("/api/fill", {"text": "the ___ sat on the mat", "top": 2}), ("/api/tokenize", {"text": "the cat"}),
          ("/api/fill", {"text": "a [MASK] ran in the park", "model": "bidi"}), ("/api/models", None)]
barrier, results, lock = threading.Barrier(n), [], threading.Lock()
def one(i):
    path, body = bodies[i % len(bodies)]
    conn = http.client.HTTPConnection(host, port, timeout=60)
    barrier.wait()
    try:
        if body is None:
            conn.request("GET", path)
        else:
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        r = conn.getresponse()
        data = json.loads(r.read())
        outcome = (r.status, r.getheader("Retry-After"), "error" in data)
    except Exception as e:
        outcome = (type(e).__name__, None, True)
    finally:
        conn.close()
    with lock:
        results.append(outcome)
threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
started = time.monotonic()
for t in threads: t.start()
for t in threads: t.join(90)
print(json.dumps({"results": results, "seconds": time.monotonic() - started}))
"""


def test_100_concurrent_requests_from_another_process_are_answered_or_refused(server, tmp_path):
    script = tmp_path / "load.py"
    script.write_text(LOAD_SCRIPT)
    host, port = server.server_address[:2]
    run = subprocess.run([sys.executable, str(script), host, str(port), "100"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    results = report["results"]
    assert len(results) == 100
    statuses = [status for status, _, _ in results]
    assert set(statuses) <= {200, 429, 503}, statuses
    assert statuses.count(200) >= 10, statuses  # the queue let work through...
    for status, retry_after, has_error in results:  # ...and refused the rest properly
        assert has_error == (status != 200)
        if status != 200:
            assert retry_after is not None and int(retry_after) >= 1
    assert call(server, "GET", "/api/models")[0] == 200
    assert call(server, "POST", "/api/fill", {"text": "the ___ sat", "top": 1})[0] == 200


# --------------------------------------------------------------------------------------------------- CLI

def test_serve_command_starts_answers_and_stops_on_ctrl_c(model_dirs):
    process = subprocess.Popen([sys.executable, "-m", "clozelm", "serve", "--model", str(model_dirs[0]),
                                "--compare", "none", "--port", "0", "--quiet"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        line = process.stdout.readline()
        match = re.search(r"on http://127\.0\.0\.1:(\d+)/", line)
        assert match, line + process.stderr.read()
        conn = http.client.HTTPConnection("127.0.0.1", int(match.group(1)), timeout=30)
        conn.request("GET", "/api/models")
        data = json.loads(conn.getresponse().read())
        conn.close()
        assert [m["label"] for m in data["models"]] == ["causal/model"]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=15) == 0
        errors = process.stderr.read()
        assert "stopped" in errors and "Traceback" not in errors, errors
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_command_errors_are_one_line():
    r = subprocess.run([sys.executable, "-m", "clozelm", "serve", "--model", "./no/such/model", "--port", "0"],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "no such file" in r.stderr, r.stderr


def test_a_port_in_use_is_a_clear_error(models):
    with running(models) as s:
        with pytest.raises(ClozelmError, match="in use; pick another with --port"):
            make_server(models, port=s.server_address[1])
