"""One error shape for every response: RFC 9457 problem details, never a stack trace."""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lorif_serve.client.protocol import Problem

log = logging.getLogger("server")


class BodyTooLarge(Exception):
    """A request body grew past the limit while it was being read (raised by ``BodyLimit``)."""


class ProblemError(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


def problem_response(
    status: int, detail: str | None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = Problem(title=HTTPStatus(status).phrase, status=status, detail=detail)
    return JSONResponse(
        body.model_dump(),
        status_code=status,
        headers=headers,
        media_type="application/problem+json",
    )


_FORMS = ("AttributionQuery", "BatchAttributionRequest")  # the two shapes of a request body


def _validation_detail(exc: RequestValidationError) -> str:
    """What is wrong, in the request form the client used (one query, or ``queries``)."""
    errors = list(exc.errors())
    malformed = [e for e in errors if e.get("type") == "json_invalid"]
    if malformed:
        error = malformed[0]
        position = next((p for p in error.get("loc", ()) if isinstance(p, int)), None)
        reason = (error.get("ctx") or {}).get("error", "invalid JSON")
        at = f" at character {position}" if position is not None else ""
        return f"body: malformed JSON{at}: {reason}"
    form = _FORMS[1] if isinstance(exc.body, dict) and "queries" in exc.body else _FORMS[0]
    chosen = [e for e in errors if form in e.get("loc", ())] or errors
    parts = []
    for error in chosen[:10]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body" and p not in _FORMS)
        parts.append(f"{where or 'body'}: {error.get('msg', 'invalid')}")
    return "; ".join(dict.fromkeys(parts))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(_request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(exc.status, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem_response(422, _validation_detail(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, BodyTooLarge):  # FastAPI wraps body-read errors in a 400
            return problem_response(413, str(exc.__cause__))
        return problem_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return problem_response(500, "internal error; see the server log")


# Declared on every route so the OpenAPI document lists each error with its body.
def error_responses(*statuses: int) -> dict[int | str, dict[str, object]]:
    return {
        status: {
            "model": Problem,
            "description": HTTPStatus(status).phrase,
            "content": {"application/problem+json": {}},
        }
        for status in statuses
    }
