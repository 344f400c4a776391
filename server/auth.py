"""Request dependencies: the bearer API key and readiness, as ``Annotated`` aliases.

They are coroutines although nothing in them waits: FastAPI runs a plain function
dependency on a worker thread, and the hop (one per dependency per request) cost more than
the check itself under load.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from lorif_serve.server.errors import ProblemError
from lorif_serve.server.metrics import ServerMetrics

_bearer = HTTPBearer(auto_error=False)


def key_matches(given: str, keys: list[SecretStr]) -> bool:
    """Compare with every key in constant time; never log what was sent."""
    sent = given.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(sent, key.get_secret_value().encode())
    return matched


async def require_key(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    keys: list[SecretStr] = request.app.state.settings.api_keys
    if not keys:
        return
    if not key_matches(credentials.credentials if credentials else "", keys):
        metrics: ServerMetrics = request.app.state.metrics
        metrics.rejections.labels("auth").inc()
        raise ProblemError(401, "missing or invalid API key", {"WWW-Authenticate": "Bearer"})


async def require_ready(request: Request) -> None:
    """503 + Retry-After while loading or draining."""
    if not getattr(request.app.state, "ready", False):
        request.app.state.metrics.rejections.labels("not_ready").inc()
        retry = str(request.app.state.settings.retry_after_s)
        raise ProblemError(503, "the server is not ready", {"Retry-After": retry})


Authorized = Annotated[None, Depends(require_key)]
Ready = Annotated[None, Depends(require_ready)]
