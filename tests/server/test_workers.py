"""The worker pool (workers.py): time limits that free the worker through the model's forward-pass hook, a
dropped stream that gives its worker back, a bounded queue answering 503, and 100 concurrent requests from
another process."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

from clozelm.server.workers import Busy, Cancelled, WorkerPool

from .helpers import assert_json_error, call, running, slow_copy


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



def _hooks(model) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.network.modules())


def test_the_pool_stops_a_job_at_its_next_forward_pass_without_touching_the_model(models, one_thread):
    model = models["causal"]
    hooks = _hooks(model)
    pool = WorkerPool(workers=1, queue_size=2)
    passes = []

    def work(job):
        for _ in range(1000):
            model(torch.tensor([[1, 2, 3]]))
            passes.append(threading.current_thread().name)
            time.sleep(0.01)

    try:
        job = pool.submit(work, timeout=0.3)
        assert _hooks(model) == hooks  # the pool stops work through clozelm.loaded.checked_forwards, not hooks
        assert job.done.wait(5)
        assert isinstance(job.error, Cancelled) and str(job.error) == "time limit"
        assert 1 <= len(passes) < 100 and set(passes) == {"clozelm-model-0"}
        passes.clear()
        job = pool.submit(work, timeout=30)
        time.sleep(0.2)
        job.cancelled.set()
        assert job.done.wait(5) and str(job.error) == "cancelled" and len(passes) < 50
        model(torch.tensor([[1, 2, 3]]))  # outside the pool's threads nothing checks the forward passes
    finally:
        pool.close()
    assert _hooks(model) == hooks


def test_a_full_queue_is_busy_with_a_retry_time():
    pool = WorkerPool(workers=1, queue_size=1)
    release = threading.Event()
    try:
        first = pool.submit(lambda job: release.wait(5), timeout=10)
        time.sleep(0.1)  # running
        pool.submit(lambda job: None, timeout=10)  # waiting
        with pytest.raises(Busy) as busy:
            pool.submit(lambda job: None, timeout=10)
        assert busy.value.retry_after >= 1 and "busy" in str(busy.value)
        release.set()
        assert first.done.wait(5) and first.error is None
    finally:
        release.set()
        pool.close()


def test_closing_the_pool_ends_waiting_jobs():
    pool = WorkerPool(workers=1, queue_size=4)
    release = threading.Event()
    running_job = pool.submit(lambda job: release.wait(5), timeout=10)
    time.sleep(0.1)
    waiting = pool.submit(lambda job: None, timeout=10)
    threading.Timer(0.3, release.set).start()
    pool.close()
    assert waiting.done.is_set() and str(waiting.error) == "server stopping"
    assert running_job.done.wait(5)
