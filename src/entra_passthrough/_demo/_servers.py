"""The demo's loopback servers: uvicorn in a thread, on a port known before the app is built
(the MCP server and the consent broker must know their own URL)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

import uvicorn

ASGI = Callable[..., Any]


class Served:
    """An ASGI app on 127.0.0.1, HTTP or HTTPS. The socket is bound first (with TCP_NODELAY,
    docs/platform-facts.md: a hand-made socket otherwise stalls ~40 ms per answer) so the app can be
    built knowing its own base URL."""

    def __init__(self, *, https: bool = False) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.base = f"{'https' if https else 'http'}://127.0.0.1:{self.port}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(
        self, app: ASGI, *, certfile: str | None = None, keyfile: str | None = None
    ) -> Served:
        tls: dict[str, Any] = {"ssl_certfile": certfile, "ssl_keyfile": keyfile} if certfile else {}
        config = uvicorn.Config(app, log_level="error", lifespan="on", **tls)
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [self._sock]}, daemon=True, name="demo-server"
        )
        thread.start()
        for _ in range(3000):  # bounded: ~30 s at most
            if server.started or not thread.is_alive():
                break
            thread.join(0.01)
        if not server.started:
            server.should_exit = True
            raise RuntimeError("a demo server did not start")
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)
        self._sock.close()
