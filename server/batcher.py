"""Dynamic batching: a bounded queue drained by the one thread that owns the device.

Async handlers enqueue work items and await their futures; the scan thread takes up to
``max_batch`` items (waiting at most ``max_wait_ms`` for more), answers them in one pass and
resolves the futures on the event loop. A full queue is refused at once (→ 503), and so is
a request the queue ahead of it could not answer before its deadline (admission control,
see ``WaitEstimate``).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from lorif_serve.client.protocol import AttributionQuery
from lorif_serve.indexer.core.query import Encoded
from lorif_serve.server.device import DeviceThread
from lorif_serve.server.metrics import ServerMetrics


class QueueFull(Exception):
    """No room for the request's queries now (→ 503; retrying later may succeed)."""


class TooManyQueries(Exception):
    """A batch larger than the whole queue: it can never be admitted (→ 413)."""


class Expired(Exception):
    """The request's deadline passed before its scan started."""


@dataclass
class WorkItem:
    query: AttributionQuery
    encoded: Encoded
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    deadline: float
    enqueued: float = field(default_factory=time.perf_counter)

    def resolve(self, outcome: Any) -> None:
        def settle() -> None:
            if self.future.done():
                return  # cancelled by a timeout meanwhile
            if isinstance(outcome, BaseException):
                self.future.set_exception(outcome)
            else:
                self.future.set_result(outcome)

        try:
            self.loop.call_soon_threadsafe(settle)
        except RuntimeError:
            pass  # the requester's event loop is gone: nobody is waiting for this answer


Process = Callable[[Sequence[WorkItem]], Sequence[Any]]


class WaitEstimate:
    """Seconds until queued queries are answered, from the measured cost per query.

    A batch's cost is measured per query (a real model featurizes every query of a batch,
    so a 16-query batch costs far more than one), averaged over recent batches. The
    estimate covers only what is queued or in flight, so it falls back to zero when the
    server is idle: an idle server always admits a request, which also re-measures the cost
    after an unusually slow batch.
    """

    def __init__(self, smoothing: float = 0.2) -> None:
        self.smoothing = smoothing
        self.per_query = 0.0
        self._lock = threading.Lock()
        self._in_flight = 0
        self._in_flight_since = 0.0

    def started(self, queries: int) -> None:
        with self._lock:
            self._in_flight, self._in_flight_since = queries, time.perf_counter()

    def finished(self, queries: int, seconds: float) -> None:
        with self._lock:
            sample = seconds / max(queries, 1)
            if self.per_query == 0.0:
                self.per_query = sample
            else:
                self.per_query += self.smoothing * (sample - self.per_query)
            self._in_flight = 0

    def seconds(self, queued: int) -> float:
        """Time to answer ``queued`` queries waiting behind the batch in flight."""
        with self._lock:
            remaining = 0.0
            if self._in_flight:
                expected = self._in_flight * self.per_query
                remaining = max(0.0, expected - (time.perf_counter() - self._in_flight_since))
            return remaining + queued * self.per_query

    @property
    def idle(self) -> bool:
        return self._in_flight == 0


class DynamicBatcher:
    def __init__(
        self,
        process: Process,
        max_batch: int,
        max_wait_ms: float,
        max_queue: int,
        metrics: ServerMetrics,
    ) -> None:
        self._process = process
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self._queue: queue.Queue[WorkItem] = queue.Queue(maxsize=max_queue)
        self._slots = threading.Semaphore(max_queue)  # reserve room for a whole batch request
        self._stop = threading.Event()
        self._metrics = metrics
        self._done: Future[None] | None = None
        self.wait = WaitEstimate()

    def start(self, device: DeviceThread) -> None:
        """Run the scan loop on the thread that owns the device."""
        self._done = device.start(self._run)

    def stop(self, timeout: float = 60.0) -> None:
        """Finish everything already queued, then stop the scan loop."""
        self._stop.set()
        if self._done is not None:
            try:
                self._done.result(timeout)
            except FutureTimeout:
                pass  # bounded: a wedged device must not hang shutdown

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def estimated_wait(self, extra: int) -> float:
        """Seconds until ``extra`` more queries would be answered (0 on an idle server)."""
        queued = self._queue.qsize()
        if queued == 0 and self.wait.idle:
            return 0.0  # nothing ahead: always admit, which also re-measures the cost
        return self.wait.seconds(queued + extra)

    def submit(self, items: Sequence[WorkItem]) -> None:
        """Enqueue all items or none of them.

        Refused (→ 503) when the queue is full, or when the queue would not be answered
        before the items' deadline: shedding early beats a 504 after waiting.
        """
        if self._stop.is_set():
            raise QueueFull("shutting down")
        if len(items) > self._queue.maxsize:
            raise TooManyQueries(
                f"a batch of {len(items)} queries is larger than the server's queue "
                f"(max_queue {self._queue.maxsize}): split it"
            )
        budget = min(item.deadline for item in items) - time.perf_counter()
        wait = self.estimated_wait(len(items))
        if wait > budget:
            raise QueueFull(f"busy: the queue needs about {wait:.1f} s, over the request timeout")
        taken = 0
        for _ in items:
            if not self._slots.acquire(blocking=False):
                for _ in range(taken):
                    self._slots.release()
                raise QueueFull(f"queue full ({self._queue.maxsize} queries)")
            taken += 1
        for item in items:
            self._queue.put_nowait(item)
        self._metrics.queue_depth.set(self._queue.qsize())

    def _get(self, timeout: float) -> WorkItem | None:
        try:
            item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return None
        self._slots.release()
        return item

    def _next_batch(self) -> list[WorkItem]:
        """The first queued item (waiting up to 50 ms, so shutdown is noticed), then up to
        ``max_batch`` more that arrive within ``max_wait``."""
        first = self._get(0.05)
        if first is None:
            return []
        batch = [first]
        until = time.perf_counter() + self.max_wait
        while len(batch) < self.max_batch:
            item = self._get(until - time.perf_counter())
            if item is None:
                break
            batch.append(item)
        return batch

    def _run(self) -> None:
        while not (self._stop.is_set() and self._queue.empty()):
            batch = self._next_batch()
            self._metrics.queue_depth.set(self._queue.qsize())
            if not batch:
                continue
            now = time.perf_counter()
            live = []
            for item in batch:
                if item.future.cancelled():
                    continue
                if now > item.deadline:
                    item.resolve(Expired("deadline passed while queued"))
                    continue
                live.append(item)
            if not live:
                continue
            self._answer(live)

    def _answer(self, live: list[WorkItem]) -> None:
        self._metrics.batch_size.observe(len(live))
        began = time.perf_counter()
        self.wait.started(len(live))
        try:
            outcomes = list(self._process(live))
        except Exception as exc:  # one bad batch must not kill the scan thread
            outcomes = [exc] * len(live)
        self.wait.finished(len(live), time.perf_counter() - began)
        for item, outcome in zip(live, outcomes, strict=True):
            item.resolve(outcome)
