"""The web page at ``/``: static HTML, a script and a style sheet, no build step.

The page holds no data: it calls the JSON API from the browser with the key the person
types (kept in the browser's local storage), so the API's access rules are the page's.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

from lorif_serve.server.errors import ProblemError

_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# Scripts and styles from this origin only; the page's own JSON calls go to this origin too.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@cache
def _read(name: str) -> bytes:
    return resources.files("lorif_serve.server").joinpath("web", name).read_bytes()


def _asset(name: str) -> Response:
    if name not in _FILES:
        raise ProblemError(404, f"no page asset {name!r}")
    return Response(_read(name), media_type=_FILES[name], headers=_HEADERS)


@router.get("/")
async def page() -> Response:
    return _asset("index.html")


@router.get("/ui/{name}")
async def asset(name: str) -> Response:
    return _asset(name)
