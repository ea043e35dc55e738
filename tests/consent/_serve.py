"""A real HTTPS server on loopback in a thread (uvicorn, port 0), for the broker tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


class Slot:
    """An ASGI app whose target is set after the server started (the port is needed first)."""

    def __init__(self) -> None:
        self.app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return
        assert self.app is not None, "no app mounted yet"
        await self.app(scope, receive, send)


@contextmanager
def serve_https(app: Any, *, certfile: str, keyfile: str) -> Iterator[int]:
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
        log_level="warning",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(1000):  # readiness poll, bounded (~10 s)
            if server.started or not thread.is_alive():
                break
            time.sleep(0.01)
        assert server.started, "uvicorn did not start"
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
