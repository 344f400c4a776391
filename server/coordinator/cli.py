"""``python -m server.coordinator --shards URL --shards URL [...]``"""

from __future__ import annotations

import sys

from lorif_serve.errors import LorifError
from lorif_serve.server.cli_settings import settings_from_cli
from lorif_serve.server.coordinator.app import create_coordinator_app
from lorif_serve.server.coordinator.settings import CoordinatorSettings
from lorif_serve.server.listen import bind_listener, serve


def main(argv: list[str] | None = None) -> int:
    try:
        settings = settings_from_cli(CoordinatorSettings, argv)  # None: sys.argv
    except LorifError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        sock = bind_listener(settings.host, settings.port)
    except LorifError as exc:
        print(f"error: cannot serve: {exc}", file=sys.stderr)
        return 2
    serve(create_coordinator_app(settings), sock, settings.log_level)
    return 0
