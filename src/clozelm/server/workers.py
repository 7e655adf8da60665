"""The worker pool: model work on a few threads fed by a bounded queue, each job with a deadline.

The CPU, not the number of connections, is what runs out, so request threads hand model work to
`WorkerPool.submit` and wait:

* a full queue is refused at once (`Busy`, with the seconds to wait) instead of piling up work nobody will
  wait for;
* every job has a deadline counted from the moment it was queued. A worker runs its job inside
  `clozelm.loaded.checked_forwards`, so before every forward pass of any model the job's `check` runs and
  raises `Cancelled` when the job is past its deadline or was cancelled (client gone, server stopping).
  A Python thread cannot be killed from outside; this is how a slow call gives its worker back, and the
  models are not touched to do it.

Nothing here knows about HTTP.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable

import torch

from ..loaded import checked_forwards


class Cancelled(BaseException):
    """Raised before a forward pass to abandon a job. A BaseException, so that no `except Exception`
    between the model and the worker loop can swallow it."""


class Busy(Exception):
    """The queue is full: try again in `retry_after` seconds."""

    def __init__(self, waiting: int, retry_after: int):
        super().__init__(f"the server is busy ({waiting} requests waiting for the model); retry in {retry_after} s")
        self.retry_after = retry_after


class Job:
    """One piece of model work: `work(job)` runs on a worker; its result or error is left here."""

    def __init__(self, work: Callable[["Job"], object], deadline: float, stream: bool):
        self.work = work
        self.deadline = deadline
        self.cancelled = threading.Event()
        self.done = threading.Event()
        self.result = None
        self.error: BaseException | None = None
        # A streaming job's events, in order: ("text", str) ... then ("end", error or None).
        self.events: queue.Queue | None = queue.Queue() if stream else None

    def check(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled("cancelled")
        if time.monotonic() > self.deadline:
            raise Cancelled("time limit")

    def emit(self, kind: str, value=None) -> None:
        self.events.put((kind, value))

    def wait(self, grace: float) -> bool:
        """Wait until the job is done or `grace` seconds past its deadline; False when it is late."""
        return self.done.wait(max(0.0, self.deadline - time.monotonic()) + grace)

    def next_event(self, grace: float):
        """The next streaming event, or ("late", None) `grace` seconds past the deadline."""
        try:
            return self.events.get(timeout=max(0.0, self.deadline - time.monotonic()) + grace)
        except queue.Empty:
            return "late", None


class WorkerPool:
    def __init__(self, workers: int, queue_size: int):
        self._jobs: queue.Queue = queue.Queue(maxsize=queue_size)
        self._stopping = threading.Event()
        self._mean_seconds = 1.0  # recent job time, for Retry-After
        self.workers = workers
        self._threads = [threading.Thread(target=self._run, name=f"clozelm-model-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, work: Callable[[Job], object], timeout: float, stream: bool = False) -> Job:
        """Queue `work(job)`; raises Busy when the queue is full."""
        job = Job(work, time.monotonic() + timeout, stream)
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            raise Busy(self._jobs.qsize(), self.retry_after()) from None
        return job

    def retry_after(self) -> int:
        return max(1, min(60, math.ceil(self._mean_seconds * (self._jobs.qsize() + 1) / self.workers)))

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None or self._stopping.is_set():
                if job is not None:
                    self._finish(job, Cancelled("server stopping"))
                return
            started = time.monotonic()

            def check(job=job) -> None:
                if self._stopping.is_set():
                    raise Cancelled("server stopping")
                job.check()

            error = None
            try:
                check()  # it may have waited in the queue past its deadline
                with checked_forwards(check), torch.inference_mode():
                    job.result = job.work(job)
            except BaseException as caught:  # handed to the request thread, which answers
                error = caught
            finally:
                self._mean_seconds = 0.7 * self._mean_seconds + 0.3 * (time.monotonic() - started)
                self._finish(job, error)

    @staticmethod
    def _finish(job: Job, error: BaseException | None) -> None:
        job.error = error
        if job.events is not None:
            job.emit("end", error)
        job.done.set()

    def close(self) -> None:
        self._stopping.set()
        while True:  # queued jobs will not run: tell their request threads now
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._finish(job, Cancelled("server stopping"))
        for _ in self._threads:
            try:
                self._jobs.put(None, timeout=1)
            except queue.Full:
                pass
        for thread in self._threads:
            thread.join(timeout=5)
