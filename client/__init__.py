"""Python client SDK for the attribution server; depends only on httpx and pydantic."""
