"""Dynamic batching: a bounded queue drained by the one thread that owns the device.

Async handlers enqueue work items and await their futures; the scan thread takes up to
``max_batch`` items (waiting at most ``max_wait_ms`` for more), answers them in one pass and
resolves the futures on the event loop. A full queue is refused at once (→ 503).
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

from client.models import AttributionQuery

from .device import DeviceThread
from .featurizer import Encoded
from .metrics import ServerMetrics


class QueueFull(Exception):
    """No room for the request's queries."""


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
        self._batch_seconds = 0.0

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
        """Seconds until ``extra`` more queries would be answered, from recent batch times."""
        batches_ahead = (self._queue.qsize() + extra + self.max_batch - 1) // self.max_batch
        return (batches_ahead + 1) * self._batch_seconds  # +1: the batch in flight

    def submit(self, items: Sequence[WorkItem]) -> None:
        """Enqueue all items or none of them.

        Refused (→ 503) when the queue is full, or when the queue would not be answered
        before the items' deadline: shedding early beats a 504 after waiting.
        """
        if self._stop.is_set():
            raise QueueFull("shutting down")
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

    def _take(self) -> WorkItem:
        item = self._queue.get_nowait()
        self._slots.release()
        return item

    def _next_batch(self) -> list[WorkItem]:
        try:
            first = self._queue.get(timeout=0.05)
        except queue.Empty:
            return []
        self._slots.release()
        batch = [first]
        until = time.perf_counter() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                batch.append(self._take())
                continue
            except queue.Empty:
                pass
            remaining = until - time.perf_counter()
            if remaining <= 0:
                break
            time.sleep(min(remaining, 0.0005))
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
            self._metrics.batch_size.observe(len(live))
            began = time.perf_counter()
            try:
                outcomes = list(self._process(live))
            except Exception as exc:  # one bad batch must not kill the scan thread
                outcomes = [exc] * len(live)
            # Moving average of a batch's time, for admission (estimated_wait).
            self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * (time.perf_counter() - began)
            for item, outcome in zip(live, outcomes, strict=True):
                item.resolve(outcome)
