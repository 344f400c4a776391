"""Server configuration: flags, ``LORIF_*`` environment variables and ``.env``.

The command line is generated from these fields by pydantic-settings (``server.cli``), so
every setting has a flag, a default and a one-line help without a second list to keep.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Flags as ``--kebab-case``, booleans as ``--x/--no-x``, no JSON needed for lists.
CLI_CONFIG = SettingsConfigDict(
    env_file=".env",
    extra="ignore",
    cli_kebab_case=True,
    cli_implicit_flags=True,
    cli_hide_none_type=True,
    cli_avoid_json=True,
)

# ``LORIF_API_KEYS=k1,k2`` or a JSON list; NoDecode hands the raw string to the validator.
ApiKeys = Annotated[list[SecretStr], NoDecode]


def split_keys(value: object) -> object:
    """Comma-separated keys (environment, ``.env``) become a list; lists pass through."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)  # the JSON list form
        return [key.strip() for key in text.split(",") if key.strip()]
    if isinstance(value, list):
        # ``--api-keys k1,k2`` on the command line arrives as one list item.
        return [key.strip() for item in value for key in str(item).split(",") if key.strip()]
    return value


class ServerSettings(BaseSettings):
    """Every knob of the server. Environment: ``LORIF_<FIELD>`` (e.g. ``LORIF_INDEX``)."""

    model_config = SettingsConfigDict(
        **CLI_CONFIG, env_prefix="LORIF_", cli_prog_name="python -m server"
    )

    index: Path = Field(description="Index file (.h5) to serve.")
    model: Path | None = Field(
        None, description="Model directory or .gguf file; default: the path the index records."
    )
    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, ge=0, le=65535, description="Port to bind (0: any free port).")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N.")
    residency: Literal["auto", "gpu", "ram", "disk"] = Field(
        "auto", description="Where the factors live while serving; auto: the fastest that fits."
    )
    block_rows: int | None = Field(
        None, ge=1, description="Rows per scan block; default by device and residency."
    )
    gpu_memory_fraction: float = Field(
        0.8, gt=0, le=1, description="Share of free GPU memory 'auto' residency may use."
    )
    ram_fraction: float = Field(
        0.5, gt=0, le=1, description="Share of available RAM 'auto' residency may use."
    )
    scan_kernel: Literal["auto", "bounded", "fused", "torch"] = Field(
        "auto",
        description="CPU scan of int8 rows: compiled bounded or fused kernel, or torch "
        "(auto: the fastest available; docs/server.md).",
    )
    max_batch: int = Field(32, ge=1, description="Queries answered by one scan.")
    max_wait_ms: float = Field(5.0, ge=0, description="How long a scan waits to fill a batch.")
    max_queue: int = Field(256, ge=1, description="Queued queries before 503.")
    request_timeout_s: float = Field(60.0, gt=0, description="Per request; then 504.")
    retry_after_s: int = Field(1, ge=1, description="Retry-After seconds sent with a 503.")
    max_query_tokens: int = Field(
        2048, ge=2, description="Prompt + completion tokens per query; over → 413."
    )
    max_batch_tokens: int = Field(
        2048,
        ge=1,
        description=(
            "Padded tokens per featurize pass; larger batches are split (bounds the "
            "activation memory, see docs/server.md)."
        ),
    )
    max_body_bytes: int = Field(2_000_000, ge=1024, description="Request body limit; over → 413.")
    api_keys: ApiKeys = Field(
        default_factory=list,
        description="Bearer keys (repeat the flag, or k1,k2); empty: no authentication.",
    )
    query_mode: Literal["exact", "energy", "rank"] = Field(
        "exact", description="exact dense Hq, or a low-rank Hq by energy fraction or fixed rank."
    )
    query_energy: float = Field(0.99, gt=0, le=1, description="Energy kept by --query-mode energy.")
    query_rank: int = Field(8, ge=1, description="Query rank of --query-mode rank.")
    truncate_query_to_factor_rank: bool = Field(False, description="The paper's rank-c query.")
    verify_on_start: bool = Field(False, description="Hash every dataset before serving.")
    expose_paths: bool = Field(False, description="Show file paths in /v1/index.")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="Log level."
    )

    _split_keys = field_validator("api_keys", mode="before")(split_keys)
