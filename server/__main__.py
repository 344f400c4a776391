"""``python -m server --index PATH [--model PATH] [--host H] [--port P] [--device D] ...``"""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn

from .app import create_app
from .device import DeviceThread
from .loading import StartupError
from .settings import ServerSettings


def parse(argv: list[str] | None = None) -> ServerSettings:
    parser = argparse.ArgumentParser(
        prog="python -m server", description="LoRIF attribution server"
    )
    flags = {
        "index": str,
        "model": str,
        "host": str,
        "port": int,
        "device": str,
        "residency": str,
        "block_rows": int,
        "max_batch": int,
        "max_wait_ms": float,
        "max_queue": int,
        "request_timeout_s": float,
        "max_query_tokens": int,
        "max_body_bytes": int,
        "query_mode": str,
        "query_energy": float,
        "query_rank": int,
        "log_level": str,
    }
    for name, kind in flags.items():
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=kind,
            dest=name,
            help=ServerSettings.model_fields[name].description,
        )
    parser.add_argument("--api-key", action="append", dest="api_keys", help="repeatable")
    parser.add_argument("--verify-on-start", action="store_true", default=None)
    parser.add_argument("--expose-paths", action="store_true", default=None)
    parser.add_argument("--truncate-query-to-factor-rank", action="store_true", default=None)
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    # Flags override the environment and .env, which override the defaults.
    return ServerSettings(**given)


def main(argv: list[str] | None = None) -> int:
    try:
        settings = parse(argv)
    except Exception as exc:  # pydantic's ValidationError names the bad settings
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        from .loading import load_service
        from .metrics import ServerMetrics

        metrics = ServerMetrics()
        device = DeviceThread()
        service = device.call(load_service, settings, metrics)  # fail fast, before binding
    except (StartupError, ValueError, OSError) as exc:
        print(f"error: cannot serve: {exc}", file=sys.stderr)
        return 2
    app = create_app(settings, service, metrics, device)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.request_timeout_s),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
