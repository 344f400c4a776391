"""Fan a query out to every shard server and merge the answers exactly."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from lorif_serve.client import AsyncClient, RetryPolicy
from lorif_serve.client.errors import APIStatusError
from lorif_serve.client.protocol import (
    AttributionQuery,
    AttributionResponse,
    AttributionResult,
    Coverage,
    IndexSummary,
    ResultItem,
)
from lorif_serve.server.coordinator.settings import CoordinatorSettings
from lorif_serve.server.errors import ProblemError


def _merge(parts: Sequence[list[ResultItem]], k: int, largest: bool) -> list[ResultItem]:
    items = [item for part in parts for item in part]
    items.sort(key=lambda item: (-item.score if largest else item.score, item.index))
    return [item.model_copy(update={"rank": rank + 1}) for rank, item in enumerate(items[:k])]


def _merge_query(
    query: AttributionQuery, answers: Sequence[AttributionResult]
) -> AttributionResult:
    results = _merge([a.results for a in answers], query.top_k, largest=True)
    opponents = None
    if query.opponents:
        opponents = _merge([a.opponents or [] for a in answers], query.top_k, largest=False)
    slowest = max(answers, key=lambda a: a.timings.total_ms).timings
    summary = IndexSummary(
        name="sharded",
        n_examples=sum(a.index.n_examples for a in answers),
        format_version=answers[0].index.format_version,
        residency="sharded",
    )
    info = answers[0].query  # the query's own figures: the same from every shard
    if query.filter is not None:  # but each shard counts its own matching rows
        info = info.model_copy(update={"matching": sum(a.query.matching or 0 for a in answers)})
    return AttributionResult(
        results=results,
        opponents=opponents,
        query=info,
        index=summary,
        timings=slowest.model_copy(),
    )


class Coordinator:
    def __init__(self, settings: CoordinatorSettings) -> None:
        self.settings = settings
        key = settings.shard_api_key.get_secret_value() if settings.shard_api_key else None
        self.clients = {
            url: AsyncClient(
                url,
                api_key=key,
                timeout=settings.timeout_s,
                retry=RetryPolicy(max_retries=1, max_delay=1.0),
            )
            for url in settings.shards
        }

    async def fan_out(
        self, queries: list[AttributionQuery]
    ) -> tuple[list[AttributionResult], Coverage]:
        calls = [client.attribute_batch(queries) for client in self.clients.values()]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        answers, missing = [], []
        for url, outcome in zip(self.clients, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                missing.append(f"{url} ({outcome})")
            else:
                answers.append(outcome)
        self._raise_for_failures(answers, missing, outcomes)
        coverage = Coverage(
            shards=len(self.clients), answered=len(answers), missing=missing, partial=bool(missing)
        )
        merged = [
            _merge_query(query, [answer.batch[j] for answer in answers if answer.batch])
            for j, query in enumerate(queries)
        ]
        return merged, coverage

    def _raise_for_failures(
        self, answers: list[AttributionResponse], missing: list[str], outcomes: Sequence[object]
    ) -> None:
        # The same client error from every shard is the request's fault: pass it on.
        rejected = [o for o in outcomes if isinstance(o, APIStatusError) and o.status < 500]
        if rejected and len(rejected) == len(outcomes):
            first = rejected[0]
            detail = first.problem.detail if first.problem and first.problem.detail else str(first)
            raise ProblemError(first.status, detail)
        if missing and (not answers or not self.settings.allow_partial):
            retry = {"Retry-After": str(self.settings.retry_after_s)}
            raise ProblemError(503, "shard(s) unavailable: " + "; ".join(missing), retry)

    async def aclose(self) -> None:
        for client in self.clients.values():
            await client.aclose()
