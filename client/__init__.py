"""Python client SDK for the attribution server; depends only on httpx and pydantic."""

from lorif_serve.client.clients import AsyncClient, Client, RetryPolicy
from lorif_serve.client.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AttributionError,
    AuthenticationError,
    BadRequestError,
    GatewayTimeoutError,
    InvalidRequestError,
    PayloadTooLargeError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
)
from lorif_serve.client.protocol import AttributionQuery, AttributionResponse, IndexInfo, ResultItem

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
    "InvalidRequestError",
    "PayloadTooLargeError",
    "RateLimitError",
    "ResultItem",
    "RetryPolicy",
    "ServerError",
    "ServiceUnavailableError",
]
