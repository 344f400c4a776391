"""Server configuration: flags, ``LORIF_*`` environment variables and ``.env``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServerSettings(BaseSettings):
    """Every knob of the server. Environment: ``LORIF_<FIELD>`` (e.g. ``LORIF_INDEX``)."""

    model_config = SettingsConfigDict(env_prefix="LORIF_", env_file=".env", extra="ignore")

    index: Path = Field(description="Index file (.h5) to serve.")
    model: Path | None = Field(None, description="Model dir or .gguf; default: the index's record.")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    residency: Literal["auto", "gpu", "ram", "disk"] = "auto"
    block_rows: int | None = Field(
        None,
        ge=1,
        description="Rows per scan block; default by device and residency (see engine).",
    )
    gpu_memory_fraction: float = Field(0.8, gt=0, le=1)
    ram_fraction: float = Field(0.5, gt=0, le=1)
    max_batch: int = Field(32, ge=1, description="Queries answered by one scan.")
    max_wait_ms: float = Field(5.0, ge=0, description="How long a scan waits to fill a batch.")
    max_queue: int = Field(256, ge=1, description="Queued queries before 503.")
    request_timeout_s: float = Field(60.0, gt=0, description="Per request; then 504.")
    retry_after_s: int = Field(1, ge=1, description="Retry-After on 503.")
    max_query_tokens: int = Field(2048, ge=2, description="prompt + completion tokens; over → 413.")
    max_body_bytes: int = Field(2_000_000, ge=1024, description="Request body limit; over → 413.")
    api_keys: list[SecretStr] = Field(
        default_factory=list, description="Bearer keys; empty = open."
    )
    query_mode: Literal["exact", "energy", "rank"] = Field(
        "exact", description="exact dense Hq, or a low-rank Hq by energy fraction or fixed rank."
    )
    query_energy: float = Field(0.99, gt=0, le=1)
    query_rank: int = Field(8, ge=1)
    truncate_query_to_factor_rank: bool = Field(False, description="The paper's rank-c query.")
    verify_on_start: bool = Field(False, description="Hash every dataset before serving.")
    expose_paths: bool = Field(False, description="Show file paths in /v1/index.")
    log_level: str = "info"

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip().startswith("["):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value


@lru_cache
def get_settings() -> ServerSettings:
    return ServerSettings()  # type: ignore[call-arg]
