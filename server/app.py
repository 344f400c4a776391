"""The FastAPI application: lifespan (load once, drain on exit), middleware, routes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI

from lorif_serve.server.batcher import DynamicBatcher, RequestsInFlight
from lorif_serve.server.device import DeviceThread
from lorif_serve.server.errors import install_error_handlers
from lorif_serve.server.loading import load_service
from lorif_serve.server.metrics import ServerMetrics
from lorif_serve.server.middleware import install_middleware
from lorif_serve.server.page import router as page_router
from lorif_serve.server.routes import router
from lorif_serve.server.service import AttributionService
from lorif_serve.server.serving import AttributionServing
from lorif_serve.server.settings import ServerSettings


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
    app = FastAPI(
        title="LoRIF attribution server",
        version="1",
        lifespan=_lifespan(settings, metrics, device),
    )
    app.state.settings, app.state.metrics = settings, metrics
    app.state.service, app.state.ready, app.state.lifespans = service, False, 0
    app.state.in_flight = RequestsInFlight()
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(page_router)
    install_middleware(app, metrics, settings.max_body_bytes, app.state.in_flight)
    return app


def _lifespan(
    settings: ServerSettings, metrics: ServerMetrics, device: DeviceThread
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
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
            app.state.service = device.call(load_service, settings, metrics)
        service: AttributionService = app.state.service
        batcher = DynamicBatcher(
            service.process,
            settings.max_batch,
            settings.max_wait_ms,
            settings.max_queue,
            metrics,
            app.state.in_flight,
        )
        batcher.start(device)
        app.state.serving = AttributionServing(service, batcher, settings, metrics)
        app.state.ready = True
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

    return lifespan
