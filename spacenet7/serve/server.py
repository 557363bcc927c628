"""Running the application with uvicorn: in the foreground (``spacenet7 serve``) or in a thread (tests, benches)."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from spacenet7.errors import SN7Error

log = logging.getLogger(__name__)
LIMIT_CONCURRENCY = 256  # open connections and tasks beyond this are answered 503 by uvicorn itself


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one).

    Raises:
        SN7Error: the address is taken or cannot be bound: the OS's reason with the host and port.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as exc:
        sock.close()
        reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
        hint = (
            "; another server uses it: choose another with port=N (port=0: any free port)"
            if exc_errno(exc) == errno.EADDRINUSE
            else ""
        )
        raise SN7Error(f"serve: cannot listen on {host}:{port}: {reason}{hint}") from None
    sock.listen(128)
    return sock


def exc_errno(exc: BaseException) -> int | None:
    """The ``errno`` of an OSError (``None`` for other errors)."""
    return getattr(exc, "errno", None)


def url(sock: socket.socket) -> str:
    """``http://host:port/`` of a bound socket."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _server(app: FastAPI, log_level: str) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        log_level=log_level,
        limit_concurrency=LIMIT_CONCURRENCY,
        timeout_graceful_shutdown=5,
        access_log=False,
        lifespan="off",
    )
    return uvicorn.Server(config)


def serve_forever(app: FastAPI, host: str, port: int) -> None:
    """Serve until interrupted (Ctrl-C), printing the URL once the socket is bound."""
    sock = bind(host, port)
    if not is_loopback(host):
        log.warning("serve: host=%s makes the server reachable from other machines", host)
    print(f"spacenet7 serve: {url(sock)}  (API docs: {url(sock)}docs; Ctrl-C stops)", flush=True)
    _server(app, "info").run(sockets=[sock])


@contextlib.contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0) -> Iterator[str]:
    """Serve ``app`` from a background thread while the block runs; yields the base URL."""
    sock = bind(host, port)
    server = _server(app, "warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("serve: the server thread did not start")
        time.sleep(0.02)
    try:
        yield url(sock)
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
