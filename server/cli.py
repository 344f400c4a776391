"""``python -m server --index PATH [--model PATH] [--host H] [--port P] [--device D] ...``

Every flag comes from ``ServerSettings`` (``--help`` lists them with their defaults).
"""

from __future__ import annotations

import logging
import sys

from lorif_serve.errors import LorifError
from lorif_serve.server.app import create_app
from lorif_serve.server.cli_settings import settings_from_cli
from lorif_serve.server.device import DeviceThread
from lorif_serve.server.listen import bind_listener, serve
from lorif_serve.server.loading import load_service
from lorif_serve.server.metrics import ServerMetrics
from lorif_serve.server.settings import ServerSettings


def main(argv: list[str] | None = None) -> int:
    try:
        settings = settings_from_cli(ServerSettings, argv)  # None: sys.argv
    except LorifError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    metrics = ServerMetrics()
    device = DeviceThread()
    try:
        sock = bind_listener(settings.host, settings.port)  # a taken port fails in milliseconds
        service = device.call(load_service, settings, metrics)  # then load, before serving
    except (LorifError, OSError) as exc:
        print(f"error: cannot serve: {exc}", file=sys.stderr)
        return 2
    app = create_app(settings, service, metrics, device)
    serve(app, sock, settings.log_level, int(settings.request_timeout_s))
    return 0
