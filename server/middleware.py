"""ASGI middleware: the streamed body limit, and request counting and latency by route."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lorif_serve.server.errors import BodyTooLarge, problem_response
from lorif_serve.server.metrics import ServerMetrics


class BodyLimit:
    """ASGI middleware counting body bytes as they arrive, so a chunked body without a
    Content-Length cannot exceed ``limit`` either (declared lengths are checked up front)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(f"request body over {self.limit} bytes")
            return message

        await self.app(scope, limited, send)


def install_middleware(app: FastAPI, metrics: ServerMetrics, max_body_bytes: int) -> None:
    app.add_middleware(BodyLimit, limit=max_body_bytes)

    @app.middleware("http")
    async def observe(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body_bytes):
            metrics.rejections.labels("body_too_large").inc()
            return problem_response(413, f"request body over {max_body_bytes} bytes")
        if request.method == "POST" and not _is_json(request.headers.get("content-type")):
            metrics.rejections.labels("media_type").inc()
            given = request.headers.get("content-type") or "no content type"
            return problem_response(415, f"send the body as application/json (got {given})")
        began = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.requests.labels(path, request.method, str(response.status_code)).inc()
        metrics.latency.labels(path, request.method).observe(time.perf_counter() - began)
        return response


def _is_json(content_type: str | None) -> bool:
    """``application/json`` or any ``…+json`` media type, parameters (charset) ignored."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")
