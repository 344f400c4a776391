"""One exception class per failure family; every HTTP error carries the problem details."""

from __future__ import annotations

from lorif_serve.client.protocol import Problem
from lorif_serve.errors import LorifError


class AttributionError(LorifError):
    """Base class of every error this client raises (a ``LorifError``, like the server's)."""


class APIConnectionError(AttributionError):
    """The server could not be reached (after retries)."""


class APITimeoutError(APIConnectionError):
    """The request timed out on the client side (after retries)."""


class APIStatusError(AttributionError):
    """The server answered with an error status."""

    def __init__(self, status: int, problem: Problem | None, body: str = "") -> None:
        self.status, self.problem = status, problem
        detail = problem.detail if problem and problem.detail else body[:200]
        title = problem.title if problem else "error"
        super().__init__(f"{status} {title}: {detail}")


class BadRequestError(APIStatusError):
    """400/422: the request is invalid; fix it before retrying."""


class InvalidRequestError(BadRequestError):
    """The request is invalid before it is sent (checked with the server's own models)."""

    def __init__(self, detail: str) -> None:
        super().__init__(422, Problem(title="Unprocessable Content", status=422, detail=detail))


class AuthenticationError(APIStatusError):
    """401/403: missing or wrong API key."""


class PayloadTooLargeError(APIStatusError):
    """413: the body or the query's token count is over the server's limit."""


class RateLimitError(APIStatusError):
    """429."""


class ServerError(APIStatusError):
    """5xx."""


class ServiceUnavailableError(ServerError):
    """503: overloaded or not ready (retried, honouring Retry-After)."""


class GatewayTimeoutError(ServerError):
    """504: the server gave up on the request."""


def error_for_status(status: int, problem: Problem | None, body: str) -> APIStatusError:
    special: dict[int, type[APIStatusError]] = {
        401: AuthenticationError,
        403: AuthenticationError,
        413: PayloadTooLargeError,
        429: RateLimitError,
        503: ServiceUnavailableError,
        504: GatewayTimeoutError,
    }
    if status in special:
        return special[status](status, problem, body)
    if status >= 500:
        return ServerError(status, problem, body)
    if status in (400, 422):
        return BadRequestError(status, problem, body)
    return APIStatusError(status, problem, body)
