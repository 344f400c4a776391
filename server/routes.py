"""HTTP routes: each handler checks access, calls one object on ``app.state``, returns a model."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from lorif_serve.client.protocol import AttributionRequest, AttributionResponse, Health, IndexInfo
from lorif_serve.server.auth import Authorized, Ready
from lorif_serve.server.errors import ProblemError, error_responses
from lorif_serve.server.serving import AttributionServing


async def serving_of(request: Request, _: Ready) -> AttributionServing:
    """The serving object, once the lifespan made it and the server is ready."""
    return request.app.state.serving


Serving = Annotated[AttributionServing, Depends(serving_of)]

router = APIRouter()


@router.post(
    "/v1/attributions",
    response_model=AttributionResponse,
    response_model_exclude_none=True,
    responses=error_responses(401, 413, 415, 422, 500, 503, 504),
    summary="Which training examples made this completion likely?",
)
async def attribute(
    body: AttributionRequest, _: Authorized, serving: Serving
) -> AttributionResponse:
    return await serving.attribute(body)


@router.get(
    "/v1/index",
    response_model=IndexInfo,
    response_model_exclude_none=True,
    responses=error_responses(401, 503),
)
async def index_info(_: Authorized, serving: Serving) -> IndexInfo:
    return serving.service.info


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """Liveness: the process answers. Never depends on load, so a busy server is not restarted."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses=error_responses(503))
async def readyz(request: Request) -> Health:
    """Readiness: model and index loaded and verified, and not shutting down."""
    if not getattr(request.app.state, "ready", False):
        retry = str(request.app.state.settings.retry_after_s)
        raise ProblemError(503, "not ready", {"Retry-After": retry})
    return Health(status="ready")


@router.get("/metrics", responses=error_responses(401), response_class=Response)
async def metrics(request: Request, _: Authorized) -> Response:
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
