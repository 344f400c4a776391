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


class RequestsInFlight:
    """POST requests the server has received and not yet answered (counted by the HTTP
    middleware on the event loop; the scan thread only reads the number)."""

    def __init__(self) -> None:
        self.count = 0


class QueueFull(Exception):
    """No room for the request's queries now (→ 503; retrying later may succeed)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds until the queue should have room, if known


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

    @property
    def tokens(self) -> int:
        return len(self.encoded[0])

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


@dataclass
class Answered:
    """What ``process`` returns: one outcome per item, and how long featurizing took."""

    outcomes: Sequence[Any]
    featurize_seconds: float = 0.0


Process = Callable[[Sequence[WorkItem]], Answered]


class WaitEstimate:
    """Seconds until queued queries are answered: measured cost per token plus per batch.

    Featurizing runs the model over every token of every query, so it is measured per token
    (a 16-query batch of long queries costs far more than one short query); the rest of a
    batch (preconditioning, one scan shared by the whole batch) is measured per batch.
    Both are smoothed over recent batches. The estimate covers only what is queued or in
    flight, so it is zero on an idle server: an idle server always admits a request, which
    also re-measures the cost after an unusually slow batch.
    """

    def __init__(self, smoothing: float = 0.2) -> None:
        self.smoothing = smoothing
        self.per_token = 0.0
        self.per_batch = 0.0
        self._measured = False
        self._lock = threading.Lock()
        self._in_flight_tokens = 0
        self._in_flight_since = 0.0
        self._busy = False

    def started(self, tokens: int) -> None:
        with self._lock:
            self._busy, self._in_flight_tokens = True, tokens
            self._in_flight_since = time.perf_counter()

    def finished(self, tokens: int, seconds: float, featurize_seconds: float) -> None:
        with self._lock:
            token_cost = featurize_seconds / max(tokens, 1)
            batch_cost = max(0.0, seconds - featurize_seconds)
            if not self._measured:
                self.per_token, self.per_batch, self._measured = token_cost, batch_cost, True
            else:
                self.per_token += self.smoothing * (token_cost - self.per_token)
                self.per_batch += self.smoothing * (batch_cost - self.per_batch)
            self._busy = False

    def seconds(self, queued_tokens: int, queued_batches: int) -> float:
        """Time to answer what is queued (its tokens, in this many batches) and in flight."""
        with self._lock:
            remaining = 0.0
            if self._busy:
                expected = self._in_flight_tokens * self.per_token + self.per_batch
                remaining = max(0.0, expected - (time.perf_counter() - self._in_flight_since))
            return remaining + queued_tokens * self.per_token + queued_batches * self.per_batch

    @property
    def idle(self) -> bool:
        return not self._busy


class DynamicBatcher:
    def __init__(
        self,
        process: Process,
        max_batch: int,
        max_wait_ms: float,
        max_queue: int,
        metrics: ServerMetrics,
        in_flight: RequestsInFlight | None = None,
    ) -> None:
        """``in_flight``: where given, a query that is the only request in the server, after
        a batch that was a lone query too, is answered at once instead of waiting
        ``max_wait_ms`` for company (``_next_batch``)."""
        self._process = process
        self._in_flight = in_flight
        self._last_size = 1  # queries in the last batch taken
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self._queue: queue.Queue[WorkItem] = queue.Queue(maxsize=max_queue)
        self._slots = threading.Semaphore(max_queue)  # reserve room for a whole batch request
        self._stop = threading.Event()
        self._metrics = metrics
        self._done: Future[None] | None = None
        self.wait = WaitEstimate()
        self._queued_tokens = 0  # tokens of the queued items (guarded by _tokens_lock)
        self._tokens_lock = threading.Lock()

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

    def estimated_wait(self, items: Sequence[WorkItem]) -> float:
        """Seconds until ``items`` would be answered if queued now (0 on an idle server)."""
        queued = self._queue.qsize()
        if queued == 0 and self.wait.idle:
            return 0.0  # nothing ahead: always admit, which also re-measures the cost
        with self._tokens_lock:
            tokens = self._queued_tokens + sum(item.tokens for item in items)
        batches = -(-(queued + len(items)) // self.max_batch)
        return self.wait.seconds(tokens, batches)

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
        wait = self.estimated_wait(items)
        if wait > budget:
            raise QueueFull(
                f"busy: the queue needs about {wait:.1f} s, over the request timeout",
                retry_after=wait - budget,
            )
        taken = 0
        for _ in items:
            if not self._slots.acquire(blocking=False):
                for _ in range(taken):
                    self._slots.release()
                raise QueueFull(f"queue full ({self._queue.maxsize} queries)")
            taken += 1
        with self._tokens_lock:
            self._queued_tokens += sum(item.tokens for item in items)
        for item in items:
            self._queue.put_nowait(item)
        self._metrics.queue_depth.set(self._queue.qsize())

    def _get(self, timeout: float) -> WorkItem | None:
        try:
            item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return None
        self._slots.release()
        with self._tokens_lock:
            self._queued_tokens -= item.tokens
        return item

    def _next_batch(self) -> list[WorkItem]:
        """The first queued item (waiting up to 50 ms, so shutdown is noticed), then up to
        ``max_batch`` more that arrive within ``max_wait`` — unless the last batch was a
        lone query too and now nothing else is queued and no other request is in the server:
        waiting could then only add latency (one client: the whole window, 5 ms by default,
        on every query). After a batch of several, the window stays: a few clients answered
        together come back together, a few milliseconds apart."""
        first = self._get(0.05)
        if first is None:
            return []
        batch = [first]
        until = time.perf_counter() + self.max_wait
        while len(batch) < self.max_batch:
            if self._alone():
                break
            item = self._get(until - time.perf_counter())
            if item is None:
                break
            batch.append(item)
        self._last_size = len(batch)
        return batch

    def _alone(self) -> bool:
        """A lone query after a lone query: nothing queued, at most one request (the
        batch's own) received, and the last batch was one query."""
        return (
            self._in_flight is not None
            and self._last_size <= 1
            and self._in_flight.count <= 1
            and self._queue.empty()
        )

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
        tokens = sum(item.tokens for item in live)
        self.wait.started(tokens)
        try:
            answered = self._process(live)
        except Exception as exc:  # one bad batch must not kill the scan thread
            answered = Answered([exc] * len(live))
        seconds = time.perf_counter() - began
        self.wait.finished(tokens, seconds, min(answered.featurize_seconds, seconds))
        for item, outcome in zip(live, answered.outcomes, strict=True):
            item.resolve(outcome)
