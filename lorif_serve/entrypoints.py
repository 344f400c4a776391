"""Console scripts. They check for the extra they need before importing it, so a client-only
install says what to install instead of failing with ``ModuleNotFoundError: torch``."""

from __future__ import annotations

import importlib.util
import sys


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken or blocked module counts as missing
        return False


def _require(extra: str, *modules: str) -> None:
    missing = [name for name in modules if not _installed(name)]
    if missing:
        print(
            f"error: this command needs {', '.join(missing)}: pip install 'lorif-serve[{extra}]'",
            file=sys.stderr,
        )
        sys.exit(2)


def index() -> None:
    """``lorif-index``: build, inspect and verify index files."""
    _require("indexer", "torch", "h5py", "transformers")
    from lorif_serve.indexer.cli import main

    sys.exit(main())


def serve() -> None:
    """``lorif-serve``: the attribution server (same flags as ``python -m server``)."""
    _require("server", "torch", "h5py", "transformers", "fastapi", "uvicorn")
    from lorif_serve.server.cli import main

    sys.exit(main())


def client() -> None:
    """``lorif-client``: query a server from the command line."""
    from lorif_serve.client.cli import main

    sys.exit(main())
