"""Bind the listening socket before anything slow, and hand it to uvicorn.

Loading a model and an index takes seconds to minutes; finding out afterwards that the port
is taken wastes all of it. Binding first turns that into one line at start-up, and passing
the bound socket to uvicorn leaves no window in which another process could take the port.
"""

from __future__ import annotations

import errno
import socket

import uvicorn
from starlette.types import ASGIApp

from lorif_serve.errors import StartupError


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv4 or IPv6, as the host resolves).

    Raises:
        StartupError: naming the address and why it cannot be used.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise StartupError(f"cannot listen on {host}:{port}: unknown host ({exc})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart over TIME_WAIT
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise StartupError(f"cannot listen on {host}:{port}: {reason}") from None
    sock.set_inheritable(True)
    return sock


def serve(app: ASGIApp, sock: socket.socket, log_level: str, graceful_s: int | None = None) -> None:
    """Run uvicorn on an already bound socket until it is told to stop."""
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=graceful_s)
    uvicorn.Server(config).run(sockets=[sock])
