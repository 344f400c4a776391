"""Between a route and the batcher: deadlines, admission errors and response assembly.

Routes stay thin: they hand the validated body to ``AttributionServing.attribute`` and
return what it gives. The coordinator assembles its merged answers with ``assemble`` too.
"""

from __future__ import annotations

import asyncio
import math
import time

from lorif_serve.client.protocol import (
    AttributionRequest,
    AttributionResponse,
    AttributionResult,
    BatchAttributionRequest,
    Coverage,
    IndexSummary,
    queries_of,
)
from lorif_serve.server.batcher import DynamicBatcher, Expired, QueueFull, TooManyQueries, WorkItem
from lorif_serve.server.errors import ProblemError
from lorif_serve.server.metrics import ServerMetrics
from lorif_serve.server.service import AttributionService
from lorif_serve.server.settings import ServerSettings


def assemble(
    body: AttributionRequest,
    results: list[AttributionResult],
    index: IndexSummary,
    began: float,
    coverage: Coverage | None = None,
) -> AttributionResponse:
    """The response in the form the request used (single query or batch), with total time."""
    total_ms = 1000 * (time.perf_counter() - began)
    for result in results:
        result.timings.total_ms = total_ms
    if not isinstance(body, BatchAttributionRequest):
        (single,) = results
        return AttributionResponse(
            **single.model_dump(exclude={"timings"}), timings=single.timings, coverage=coverage
        )
    return AttributionResponse(
        batch=results, index=index, timings=results[0].timings, coverage=coverage
    )


class AttributionServing:
    """Submits a request's queries to the batcher and waits for them within the deadline."""

    def __init__(
        self,
        service: AttributionService,
        batcher: DynamicBatcher,
        settings: ServerSettings,
        metrics: ServerMetrics,
    ) -> None:
        self.service, self.batcher = service, batcher
        self.settings, self.metrics = settings, metrics

    async def attribute(self, body: AttributionRequest) -> AttributionResponse:
        began = time.perf_counter()
        loop = asyncio.get_running_loop()
        deadline = began + self.settings.request_timeout_s
        items = [
            WorkItem(query, self.service.encode(query), loop.create_future(), loop, deadline)
            for query in queries_of(body)
        ]
        self._submit(items)
        results = await self._wait(items)
        return assemble(body, results, self.service.summary, began)

    def _submit(self, items: list[WorkItem]) -> None:
        try:
            self.batcher.submit(items)
        except TooManyQueries as exc:
            self.metrics.rejections.labels("batch_too_large").inc()
            raise ProblemError(413, str(exc)) from exc
        except QueueFull as exc:
            self.metrics.rejections.labels("queue_full").inc()
            seconds = max(self.settings.retry_after_s, math.ceil(exc.retry_after or 0))
            raise ProblemError(503, str(exc), {"Retry-After": str(seconds)}) from exc

    async def _wait(self, items: list[WorkItem]) -> list[AttributionResult]:
        timeout = self.settings.request_timeout_s
        try:
            return list(
                await asyncio.wait_for(asyncio.gather(*(item.future for item in items)), timeout)
            )
        except (TimeoutError, Expired) as exc:
            for item in items:
                item.future.cancel()
            self.metrics.rejections.labels("timeout").inc()
            raise ProblemError(504, f"no answer within {timeout:g} s") from exc
