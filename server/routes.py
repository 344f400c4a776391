"""HTTP routes: thin handlers that validate, call the service through the batcher, return models."""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from client.models import (
    AttributionRequest,
    AttributionResponse,
    BatchAttributionRequest,
    Health,
    IndexInfo,
    queries_of,
)

from .batcher import DynamicBatcher, Expired, QueueFull, WorkItem
from .errors import ProblemError, error_responses
from .metrics import ServerMetrics
from .service import AttributionService
from .settings import ServerSettings

_bearer = HTTPBearer(auto_error=False)


def settings_of(request: Request) -> ServerSettings:
    return request.app.state.settings


def metrics_of(request: Request) -> ServerMetrics:
    return request.app.state.metrics


def require_key(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    keys = settings_of(request).api_keys
    if not keys:
        return
    given = credentials.credentials.encode() if credentials else b""
    # Compare with every key in constant time; never log what was sent.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key.get_secret_value().encode())
    if not matched:
        metrics_of(request).rejections.labels("auth").inc()
        raise ProblemError(401, "missing or invalid API key", {"WWW-Authenticate": "Bearer"})


def ready_service(request: Request) -> tuple[AttributionService, DynamicBatcher]:
    state = request.app.state
    if not getattr(state, "ready", False):
        metrics_of(request).rejections.labels("not_ready").inc()
        retry = str(settings_of(request).retry_after_s)
        raise ProblemError(503, "the server is not ready", {"Retry-After": retry})
    return state.service, state.batcher


Authorized = Annotated[None, Depends(require_key)]
Ready = Annotated[tuple[AttributionService, DynamicBatcher], Depends(ready_service)]

router = APIRouter()


@router.post(
    "/v1/attributions",
    response_model=AttributionResponse,
    response_model_exclude_none=True,
    responses=error_responses(401, 413, 422, 500, 503, 504),
    summary="Which training examples made this completion likely?",
)
async def attribute(
    body: AttributionRequest, request: Request, _: Authorized, ready: Ready
) -> AttributionResponse:
    began = time.perf_counter()
    service, batcher = ready
    settings = settings_of(request)
    loop = asyncio.get_running_loop()
    deadline = began + settings.request_timeout_s
    items = [
        WorkItem(query, service.encode(query), loop.create_future(), loop, deadline)
        for query in queries_of(body)
    ]
    try:
        batcher.submit(items)
    except QueueFull as exc:
        metrics_of(request).rejections.labels("queue_full").inc()
        raise ProblemError(503, str(exc), {"Retry-After": str(settings.retry_after_s)}) from exc
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(item.future for item in items)), settings.request_timeout_s
        )
    except (TimeoutError, Expired) as exc:
        for item in items:
            item.future.cancel()
        metrics_of(request).rejections.labels("timeout").inc()
        raise ProblemError(504, f"no answer within {settings.request_timeout_s:g} s") from exc
    total_ms = 1000 * (time.perf_counter() - began)
    for result in results:
        result.timings.total_ms = total_ms
    if not isinstance(body, BatchAttributionRequest):
        (single,) = results
        return AttributionResponse(**single.model_dump(exclude={"timings"}), timings=single.timings)
    return AttributionResponse(batch=results, index=service.summary, timings=results[0].timings)


@router.get(
    "/v1/index",
    response_model=IndexInfo,
    response_model_exclude_none=True,
    responses=error_responses(401, 503),
)
async def index_info(_: Authorized, ready: Ready) -> IndexInfo:
    return ready[0].info


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """Liveness: the process answers. Never depends on load, so a busy server is not restarted."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses=error_responses(503))
async def readyz(request: Request) -> Health:
    """Readiness: model and index loaded and verified, and not shutting down."""
    if not getattr(request.app.state, "ready", False):
        raise ProblemError(
            503, "not ready", {"Retry-After": str(settings_of(request).retry_after_s)}
        )
    return Health(status="ready")


@router.get("/metrics", responses=error_responses(401), response_class=Response)
async def metrics(request: Request, _: Authorized) -> Response:
    return Response(generate_latest(metrics_of(request).registry), media_type=CONTENT_TYPE_LATEST)
