"""uvicorn on 127.0.0.1 in a daemon thread: one implementation for every test that needs a
real HTTP(S) server. The port is 0 (the kernel picks a free one, so parallel workers never
collide); readiness is polled on uvicorn's own ``started`` flag, bounded, never slept for."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

ASGI = Any
Lifespan = Literal["auto", "on", "off"]


class ServerThread:
    """uvicorn serving ``make_app(base_url)`` on 127.0.0.1 in a daemon thread.

    The socket is bound first, so the app can know its own URL (an RFC 9728 ``resource``, a
    redirect URI). ``restart()`` keeps the port (SO_REUSEADDR); ``handover()`` starts the next
    server on the same port before stopping this one (SO_REUSEPORT). TCP_NODELAY: a hand-made
    socket would otherwise stall ~40 ms per answer (Nagle + delayed ACK, docs/platform-facts.md).
    """

    def __init__(
        self,
        make_app: Callable[[str], ASGI],
        *,
        name: str = "srv",
        graceful: float | None = 1.0,
        lifespan: Lifespan = "on",
        certfile: str | None = None,
        keyfile: str | None = None,
        start_timeout: float = 30.0,
        reuse_port: bool = True,
    ) -> None:
        self.make_app = make_app
        self.name = name
        self.graceful = graceful
        self.lifespan: Lifespan = lifespan
        self.certfile = certfile
        self.keyfile = keyfile
        self.start_timeout = start_timeout
        self.reuse_port = reuse_port
        self.port = 0
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.certfile else "http"

    @property
    def base(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self) -> ServerThread:
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.reuse_port:  # for restart() and handover(); a one-shot server needs neither
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.make_app(self.base),
            log_level="warning",
            lifespan=self.lifespan,
            ssl_certfile=self.certfile,
            ssl_keyfile=self.keyfile,
            # Bounded: long-lived GET streams would hold a restart. A small value cuts the
            # calls in flight off (a crash, as far as the client can tell).
            timeout_graceful_shutdown=self.graceful,
        )
        server = _Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{self.name}", daemon=True
        )
        thread.start()
        for _ in range(int(self.start_timeout / 0.01)):  # bounded readiness poll
            if server.started or not thread.is_alive():
                break
            thread.join(0.01)
        if not server.started:
            server.should_exit = True
            thread.join(5)
            sock.close()
            raise RuntimeError(f"uvicorn ({self.name}) did not start")
        self._server, self._thread, self._sock = server, thread, sock
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            assert self._thread is not None
            assert self._sock is not None
            self._thread.join(15)
            self._sock.close()
            self._server = self._thread = self._sock = None

    def restart(self) -> None:
        """Stop, then start again on the same port: clients see a gap (connection refused)."""
        self.stop()
        self.start()

    def handover(self) -> None:
        """Start a fresh server (fresh state) on the same port, then stop this one: no gap,
        but every session and keep-alive connection of the old one is gone."""
        old_server, old_thread, old_sock = self._server, self._thread, self._sock
        self._server = self._thread = self._sock = None
        self.start()
        if old_server is not None:
            old_server.should_exit = True
            assert old_thread is not None
            assert old_sock is not None
            old_thread.join(15)
            old_sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _server_class() -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, whose shutdown also cuts the connections still open once the
        graceful timeout has passed (a crash, as the clients see it). Left to the loop's end,
        their transports were collected later, in whatever test ran then, as an unraisable
        ResourceWarning (an error under ``filterwarnings = error``)."""

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            await super().shutdown(sockets=sockets)
            for connection in list(self.server_state.connections):
                transport = getattr(connection, "transport", None)
                if transport is not None and not transport.is_closing():
                    transport.abort()
            await asyncio.sleep(0)  # connection_lost runs: the sockets are closed here

    return Server


def _Server(config: Any) -> Any:
    return _server_class()(config)


@contextmanager
def serve_in_thread(
    app: ASGI | None = None,
    *,
    make_app: Callable[[str], ASGI] | None = None,
    lifespan: Lifespan = "on",
    certfile: str | None = None,
    keyfile: str | None = None,
    name: str = "test",
) -> Iterator[str]:
    """Serve ``app`` (or ``make_app(base_url)``, for an app that must know its own URL) and
    yield its base URL, ``http(s)://127.0.0.1:<port>``; stop the server on exit."""
    if (app is None) == (make_app is None):
        raise TypeError("pass exactly one of app= or make_app=")
    factory = make_app if make_app is not None else (lambda _base: app)
    with ServerThread(
        factory,
        name=name,
        lifespan=lifespan,
        certfile=certfile,
        keyfile=keyfile,
        graceful=None,
        reuse_port=False,
    ) as server:
        yield server.base


class LoopbackHop:
    """An asyncio TCP server on 127.0.0.1 whose connections ``_serve`` handles (a subclass's
    proxy behaviour). ``aclose`` aborts every accepted connection, also one whose task never
    started (Python 3.11's ``Server.close`` leaves accepted connections open, and the garbage
    collector's ResourceWarning would then fail whichever test runs next)."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback, run as the connection is accepted: known at once to ``aclose``.
        self._writers.append(writer)
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.transport.abort()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError
