"""The FastAPI application: lifespan (load once, drain on exit), middleware, routes."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response

from .batcher import DynamicBatcher
from .device import DeviceThread
from .errors import BodyLimit, install_error_handlers, problem_response
from .metrics import ServerMetrics
from .routes import router
from .service import AttributionService
from .settings import ServerSettings

log = logging.getLogger("server")


def create_app(
    settings: ServerSettings,
    service: AttributionService | None = None,
    metrics: ServerMetrics | None = None,
    device: DeviceThread | None = None,
) -> FastAPI:
    """Build the app. Tests pass a ready ``service`` (e.g. with a fake featurizer).

    ``device`` is the thread that loaded ``service``; scans run on it too (see device.py).
    """
    metrics = metrics or (service.metrics if service is not None else ServerMetrics())
    device = device or DeviceThread()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if app.state.lifespans:
            # Already running (a test harness or a second server over the same app object):
            # one batcher owns the device thread, so a second must not be started.
            app.state.lifespans += 1
            try:
                yield
            finally:
                app.state.lifespans -= 1
            return
        app.state.lifespans = 1
        if app.state.service is None:
            from .loading import load_service

            app.state.service = device.call(load_service, settings, metrics)
        svc: AttributionService = app.state.service
        batcher = DynamicBatcher(
            svc.process, settings.max_batch, settings.max_wait_ms, settings.max_queue, metrics
        )
        batcher.start(device)
        app.state.batcher, app.state.ready = batcher, True
        metrics.ready.set(1)
        try:
            yield
        finally:
            # Refuse new work, answer what is queued, then stop.
            app.state.ready = False
            metrics.ready.set(0)
            # Wait for the scan in flight (bounded, so a wedged device cannot hang shutdown).
            batcher.stop(timeout=max(30.0, 2 * settings.request_timeout_s))
            app.state.lifespans = 0

    app = FastAPI(title="LoRIF attribution server", version="1", lifespan=lifespan)
    app.state.settings, app.state.metrics = settings, metrics
    app.state.service, app.state.ready, app.state.lifespans = service, False, 0
    install_error_handlers(app)
    app.include_router(router)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)

    @app.middleware("http")
    async def observe(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > settings.max_body_bytes):
            metrics.rejections.labels("body_too_large").inc()
            return problem_response(413, f"request body over {settings.max_body_bytes} bytes")
        began = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.requests.labels(path, request.method, str(response.status_code)).inc()
        metrics.latency.labels(path, request.method).observe(time.perf_counter() - began)
        return response

    return app
