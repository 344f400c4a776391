"""``Client`` and ``AsyncClient``: one request path each, retries as a policy."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from lorif_serve.client.errors import (
    APIConnectionError,
    APITimeoutError,
    InvalidRequestError,
    error_for_status,
)
from lorif_serve.client.protocol import (
    AttributionQuery,
    AttributionResponse,
    Health,
    IndexInfo,
    Problem,
)

API_KEY_ENV = "LORIF_API_KEY"
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter; ``Retry-After`` is honoured up to ``max_delay``.

    ``total_seconds`` bounds all attempts and waits together (default: the client's
    ``timeout``), so a dead server costs one timeout, not one per attempt.
    """

    max_retries: int = 3
    initial_delay: float = 0.25
    max_delay: float = 8.0
    total_seconds: float | None = None

    def delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None:
            try:
                return min(max(float(retry_after), 0.0), self.max_delay)
            except ValueError:
                pass
        return random.uniform(0, min(self.max_delay, self.initial_delay * 2**attempt))


def _headers(api_key: str | None) -> dict[str, str]:
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    return {"Authorization": f"Bearer {key}"} if key else {}


def _raise_for(response: httpx.Response) -> None:
    problem = None
    try:
        problem = Problem.model_validate_json(response.content)
    except ValidationError:
        pass
    raise error_for_status(response.status_code, problem, response.text)


def base_url(url: str) -> str:
    """``host:port`` means ``http://host:port``; anything else must be http(s)://."""
    if "://" not in url:
        return f"http://{url}"
    if not url.startswith(("http://", "https://")):
        raise InvalidRequestError(f"url: use http:// or https://, got {url!r}")
    return url


class _Attempts:
    """One request's retry state: attempts made, time spent, and when to give up."""

    def __init__(self, policy: RetryPolicy, url: str, budget: float) -> None:
        self.policy, self.url, self.budget = policy, url, budget
        self.began = time.monotonic()
        self.made = 0

    def remaining(self) -> float:
        return self.budget - (time.monotonic() - self.began)

    def next_delay(
        self, response: httpx.Response | None = None, error: httpx.TransportError | None = None
    ) -> float:
        """Seconds to wait before the next attempt, or raise the final, typed error."""
        self.made += 1
        retry_after = response.headers.get("retry-after") if response is not None else None
        delay = self.policy.delay(self.made - 1, retry_after)
        final = self.made > self.policy.max_retries or delay >= self.remaining()
        if error is not None:
            if final:
                kind = (
                    APITimeoutError
                    if isinstance(error, httpx.TimeoutException)
                    else (APIConnectionError)
                )
                spent = time.monotonic() - self.began
                raise kind(
                    f"cannot reach {self.url} ({error or type(error).__name__}) after "
                    f"{self.made} attempt{'s' if self.made > 1 else ''} in {spent:.1f} s"
                ) from error
            return delay
        assert response is not None
        if final or response.status_code not in RETRY_STATUSES:
            _raise_for(response)
        return delay


def _query(**fields: Any) -> AttributionQuery:
    """Validate here, so a bad query fails before any request, with the server's wording."""
    try:
        return AttributionQuery(**fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'query'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidRequestError(problems) from None


def _request_body(prompt: str, completion: str, **options: Any) -> dict[str, Any]:
    query = _query(prompt=prompt, completion=completion, **options)
    return query.model_dump(mode="json", exclude_none=True)


def _batch_body(queries: list[AttributionQuery] | list[dict[str, Any]]) -> dict[str, Any]:
    parsed = [q if isinstance(q, AttributionQuery) else _query(**q) for q in queries]
    return {"queries": [q.model_dump(mode="json", exclude_none=True) for q in parsed]}


class Client:
    """Synchronous client.

    Args:
        url: the server's base URL, e.g. ``http://127.0.0.1:8000`` (``host:port`` means
            ``http://host:port``).
        api_key: bearer key; default ``$LORIF_API_KEY``.
        timeout: seconds per attempt, and for all attempts of one call together unless
            ``retry.total_seconds`` says otherwise.
        retry: the retry policy (connection errors, 408/409/429/5xx).
        transport: an httpx transport (tests inject ``httpx.MockTransport``).

    Raises (from every call): ``InvalidRequestError`` before sending a query that the
    server would refuse, ``APIStatusError`` subclasses for error answers, and
    ``APIConnectionError`` / ``APITimeoutError`` naming the URL and the attempts made.
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self.url, self.timeout = base_url(url), timeout
        self._http = httpx.Client(
            base_url=self.url, headers=_headers(api_key), timeout=timeout, transport=transport
        )

    def _send(self, method: str, path: str, model: type[M], json: Any = None) -> M:
        attempts = _Attempts(self.retry, self.url + path, self.retry.total_seconds or self.timeout)
        while True:
            timeout = max(0.001, min(self.timeout, attempts.remaining()))
            try:
                response = self._http.request(method, path, json=json, timeout=timeout)
            except httpx.TransportError as exc:
                delay = attempts.next_delay(error=exc)
            else:
                if response.is_success:
                    return model.model_validate_json(response.content)
                delay = attempts.next_delay(response=response)
            time.sleep(delay)

    def attribute(
        self,
        prompt: str,
        completion: str,
        top_k: int = 10,
        opponents: bool = False,
        return_text: bool = True,
        layers: list[str] | None = None,
        filter: Mapping[str, Any] | None = None,
        explain: bool = False,
    ) -> AttributionResponse:
        """Top-k proponents (and optionally opponents) of ``completion`` given ``prompt``.

        ``filter``: rank only examples whose metadata match, e.g. ``{"topic": "sport"}``,
        ``{"topic": {"in": ["sport", "tech"]}}``, ``{"id": {"prefix": "bbc/"}}``.
        ``explain``: split each result's score over layers and tokens (slower).
        """
        body = _request_body(
            prompt,
            completion,
            top_k=top_k,
            opponents=opponents,
            return_text=return_text,
            layers=layers,
            filter=filter,
            explain=explain,
        )
        return self._send("POST", "/v1/attributions", AttributionResponse, body)

    def attribute_batch(
        self, queries: list[AttributionQuery] | list[dict[str, Any]]
    ) -> AttributionResponse:
        """Several queries answered by one scan; results under ``.batch`` in order."""
        return self._send("POST", "/v1/attributions", AttributionResponse, _batch_body(queries))

    def index_info(self) -> IndexInfo:
        return self._send("GET", "/v1/index", IndexInfo)

    def health(self) -> Health:
        return self._send("GET", "/readyz", Health)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """The asyncio twin of :class:`Client`; same arguments (transport: an async transport)."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self.url, self.timeout = base_url(url), timeout
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=_headers(api_key), timeout=timeout, transport=transport
        )

    async def _send(self, method: str, path: str, model: type[M], json: Any = None) -> M:
        attempts = _Attempts(self.retry, self.url + path, self.retry.total_seconds or self.timeout)
        while True:
            timeout = max(0.001, min(self.timeout, attempts.remaining()))
            try:
                response = await self._http.request(method, path, json=json, timeout=timeout)
            except httpx.TransportError as exc:
                delay = attempts.next_delay(error=exc)
            else:
                if response.is_success:
                    return model.model_validate_json(response.content)
                delay = attempts.next_delay(response=response)
            await asyncio.sleep(delay)

    async def attribute(
        self,
        prompt: str,
        completion: str,
        top_k: int = 10,
        opponents: bool = False,
        return_text: bool = True,
        layers: list[str] | None = None,
        filter: Mapping[str, Any] | None = None,
        explain: bool = False,
    ) -> AttributionResponse:
        body = _request_body(
            prompt,
            completion,
            top_k=top_k,
            opponents=opponents,
            return_text=return_text,
            layers=layers,
            filter=filter,
            explain=explain,
        )
        return await self._send("POST", "/v1/attributions", AttributionResponse, body)

    async def attribute_batch(
        self, queries: list[AttributionQuery] | list[dict[str, Any]]
    ) -> AttributionResponse:
        return await self._send(
            "POST", "/v1/attributions", AttributionResponse, _batch_body(queries)
        )

    async def index_info(self) -> IndexInfo:
        return await self._send("GET", "/v1/index", IndexInfo)

    async def health(self) -> Health:
        return await self._send("GET", "/readyz", Health)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
