"""Python client SDK for the attribution server; depends only on httpx and pydantic."""

from ._client import AsyncClient, Client, RetryPolicy
from .errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AttributionError,
    AuthenticationError,
    BadRequestError,
    GatewayTimeoutError,
    PayloadTooLargeError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
)
from .models import AttributionQuery, AttributionResponse, IndexInfo, ResultItem

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncClient",
    "AttributionError",
    "AttributionQuery",
    "AttributionResponse",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "GatewayTimeoutError",
    "IndexInfo",
    "PayloadTooLargeError",
    "RateLimitError",
    "ResultItem",
    "RetryPolicy",
    "ServerError",
    "ServiceUnavailableError",
]
