"""Small saved models (a causal one and a bidirectional one) and a client for a server running in this
process: the setup every server test shares."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from pathlib import Path

import torch

import clozelm
from clozelm.loaded import Model
from clozelm.model import ModelConfig, Transformer
from clozelm.server import Limits, make_server
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
        network = Transformer(ModelConfig(vocab_size=tok.vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                          **extra)).eval()
        Model(network, tok).save_pretrained(d / "model")
        dirs.append(d / "model")
    return dirs[0], dirs[1]


def slow_copy(model_dir, seconds: float) -> Model:
    """The same model, loaded anew, sleeping before every forward pass: a stand-in for a big model."""
    model = clozelm.load(model_dir)
    model.network.register_forward_pre_hook(lambda module, args: time.sleep(seconds))
    return model


@contextlib.contextmanager
def running(models: dict, compile: bool | None = False, **limits):
    """A server on a free port of 127.0.0.1 in a thread of this process, stopped on exit; without compiled decoding
    steps unless told (test_app.py tests them), so that no test's timing includes a compile."""
    server = make_server(models, port=0, limits=Limits(**limits), quiet=True, compile=compile)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def call(server, method, path, body=None, headers=None, timeout=30):
    """(status, response, body as JSON when it is JSON else text)."""
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
