"""Coordinator for a sharded index: fan a query out to shard servers, merge exactly.

Each shard server serves one shard file (a complete index of a row range) and returns
its local top-k with global row numbers; the global top-k is contained in the union of
the local ones, so sorting the union by score is exact (SPEC §8). A shard that fails makes
the answer a 503 naming it, or, with ``allow_partial``, a partial answer flagged in
``coverage``.

    python -m server.coordinator --shard http://10.0.0.1:8000 --shard http://10.0.0.2:8000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import uvicorn
from fastapi import APIRouter, FastAPI, Request
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from client import AsyncClient, RetryPolicy
from client.errors import APIStatusError
from client.models import (
    AttributionQuery,
    AttributionRequest,
    AttributionResponse,
    AttributionResult,
    BatchAttributionRequest,
    Coverage,
    Health,
    IndexSummary,
    ResultItem,
    queries_of,
)

from .errors import ProblemError, error_responses, install_error_handlers
from .metrics import ServerMetrics
from .routes import Authorized


class CoordinatorSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LORIF_COORDINATOR_", env_file=".env", extra="ignore"
    )

    shards: list[str] = Field(min_length=1, description="Base URLs of the shard servers.")
    host: str = "127.0.0.1"
    port: int = 8100
    api_keys: list[SecretStr] = Field(default_factory=list, description="Keys clients must send.")
    shard_api_key: SecretStr | None = Field(None, description="Key sent to the shard servers.")
    allow_partial: bool = Field(False, description="Answer from the shards that answered.")
    timeout_s: float = 60.0
    retry_after_s: int = 1
    log_level: str = "info"


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
    return AttributionResult(
        results=results,
        opponents=opponents,
        query=answers[0].query,
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


router = APIRouter()


@router.post(
    "/v1/attributions",
    response_model=AttributionResponse,
    response_model_exclude_none=True,
    responses=error_responses(401, 413, 422, 500, 503, 504),
)
async def attribute(
    body: AttributionRequest, request: Request, _: Authorized
) -> AttributionResponse:
    began = time.perf_counter()
    coordinator: Coordinator = request.app.state.coordinator
    results, coverage = await coordinator.fan_out(queries_of(body))
    for result in results:
        result.timings.total_ms = 1000 * (time.perf_counter() - began)
    if not isinstance(body, BatchAttributionRequest):
        (single,) = results
        return AttributionResponse(
            **single.model_dump(exclude={"timings"}), timings=single.timings, coverage=coverage
        )
    return AttributionResponse(
        batch=results, index=results[0].index, timings=results[0].timings, coverage=coverage
    )


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses=error_responses(503))
async def readyz(request: Request) -> Health:
    coordinator: Coordinator = request.app.state.coordinator
    checks = await asyncio.gather(
        *(c.health() for c in coordinator.clients.values()), return_exceptions=True
    )
    down = [
        url
        for url, c in zip(coordinator.clients, checks, strict=True)
        if isinstance(c, BaseException)
    ]
    if down and (len(down) == len(checks) or not coordinator.settings.allow_partial):
        raise ProblemError(
            503,
            f"shard(s) not ready: {', '.join(down)}",
            {"Retry-After": str(coordinator.settings.retry_after_s)},
        )
    return Health(status="ready", detail=f"{len(checks) - len(down)}/{len(checks)} shards ready")


def create_coordinator_app(settings: CoordinatorSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.coordinator = Coordinator(settings)
        try:
            yield
        finally:
            await app.state.coordinator.aclose()

    app = FastAPI(title="LoRIF attribution coordinator", version="1", lifespan=lifespan)
    app.state.settings, app.state.metrics = settings, ServerMetrics()
    install_error_handlers(app)
    app.include_router(router)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.coordinator")
    parser.add_argument("--shard", action="append", dest="shards", help="shard server URL (repeat)")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--allow-partial", action="store_true", default=None)
    parser.add_argument("--timeout-s", type=float)
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    try:
        settings = CoordinatorSettings(**given)
    except Exception as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        create_coordinator_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
