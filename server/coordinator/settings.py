"""Coordinator configuration: flags, ``LORIF_COORDINATOR_*`` variables and ``.env``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lorif_serve.server.settings import CLI_CONFIG, ApiKeys, split_keys


class CoordinatorSettings(BaseSettings):
    """Every knob of the coordinator. Environment: ``LORIF_COORDINATOR_<FIELD>``."""

    model_config = SettingsConfigDict(
        **CLI_CONFIG,
        env_prefix="LORIF_COORDINATOR_",
        cli_prog_name="python -m server.coordinator",
    )

    shards: list[str] = Field(min_length=1, description="Base URLs of the shard servers.")
    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8100, ge=0, le=65535, description="Port to bind.")
    api_keys: ApiKeys = Field(
        default_factory=list,
        description="Bearer keys clients must send (repeat the flag, or k1,k2); empty: open.",
    )
    shard_api_key: SecretStr | None = Field(None, description="Key sent to the shard servers.")
    allow_partial: bool = Field(False, description="Answer from the shards that answered.")
    timeout_s: float = Field(60.0, gt=0, description="Per shard call.")
    retry_after_s: int = Field(1, ge=1, description="Retry-After seconds sent with a 503.")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="Log level."
    )

    _split_keys = field_validator("api_keys", mode="before")(split_keys)
