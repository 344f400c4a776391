"""The coordinator's app: the same API as a shard server, answered by fanning out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request

from lorif_serve.client.protocol import AttributionRequest, AttributionResponse, Health, queries_of
from lorif_serve.server.auth import Authorized
from lorif_serve.server.coordinator.merge import Coordinator
from lorif_serve.server.coordinator.settings import CoordinatorSettings
from lorif_serve.server.errors import ProblemError, error_responses, install_error_handlers
from lorif_serve.server.metrics import ServerMetrics
from lorif_serve.server.serving import assemble

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
    return assemble(body, results, results[0].index, began, coverage)


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
