"""uvicorn on 127.0.0.1, port 0, in a thread; readiness is polled, never slept for."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def serve(make_app: Callable[[str], Any]) -> Iterator[str]:
    """Yield ``http://127.0.0.1:<port>`` while ``make_app(base_url)`` is served.

    The socket is bound first so the app can know its own URL (RFC 9728 ``resource``);
    TCP_NODELAY avoids Nagle + delayed-ACK stalls on a hand-made socket (docs/platform-facts.md).
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(make_app(base), log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="uvicorn-test", daemon=True
    )
    thread.start()
    try:
        for _ in range(2000):  # bounded: at most ~20 s
            if server.started or not thread.is_alive():
                break
            thread.join(0.01)
        if not server.started:
            raise RuntimeError("uvicorn did not start")
        yield base
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
