"""``python -m server.coordinator --shards URL --shards URL [...]``"""

from __future__ import annotations

import sys

import uvicorn

from lorif_serve.errors import LorifError
from lorif_serve.server.cli_settings import settings_from_cli
from lorif_serve.server.coordinator.app import create_coordinator_app
from lorif_serve.server.coordinator.settings import CoordinatorSettings


def main(argv: list[str] | None = None) -> int:
    try:
        settings = settings_from_cli(CoordinatorSettings, argv)  # None: sys.argv
    except LorifError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        create_coordinator_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
    )
    return 0
