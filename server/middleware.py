"""ASGI middleware: the streamed body limit, and request counting and latency by route."""

from __future__ import annotations

import time

from fastapi import FastAPI, Response
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lorif_serve.server.batcher import RequestsInFlight
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


class Observe:
    """ASGI middleware: the declared body length and media type are checked before the app
    runs (413 / 415), and every answered request is counted and timed by route.

    Plain ASGI rather than ``@app.middleware("http")``: that form runs every request in its
    own task and streams every response through a queue, which cost more than a route.
    """

    def __init__(
        self, app: ASGIApp, metrics: ServerMetrics, limit: int, in_flight: RequestsInFlight
    ) -> None:
        self.app, self.metrics, self.limit, self.in_flight = app, metrics, limit, in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = self._refusal(Headers(scope=scope), scope["method"])
        if refused is not None:
            await refused(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        counted = scope["method"] == "POST"  # the requests that bring queries
        self.in_flight.count += int(counted)
        try:
            await self.app(scope, receive, sending)
        finally:
            self.in_flight.count -= int(counted)
            path = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(path, scope["method"], str(status)).inc()
            self.metrics.latency.labels(path, scope["method"]).observe(time.perf_counter() - began)

    def _refusal(self, headers: Headers, method: str) -> Response | None:
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            self.metrics.rejections.labels("body_too_large").inc()
            return problem_response(413, f"request body over {self.limit} bytes")
        if method == "POST" and not _is_json(headers.get("content-type")):
            self.metrics.rejections.labels("media_type").inc()
            given = headers.get("content-type") or "no content type"
            return problem_response(415, f"send the body as application/json (got {given})")
        return None


def install_middleware(
    app: FastAPI, metrics: ServerMetrics, max_body_bytes: int, in_flight: RequestsInFlight
) -> None:
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    # the outer one
    app.add_middleware(Observe, metrics=metrics, limit=max_body_bytes, in_flight=in_flight)


def _is_json(content_type: str | None) -> bool:
    """``application/json`` or any ``…+json`` media type, parameters (charset) ignored."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")
