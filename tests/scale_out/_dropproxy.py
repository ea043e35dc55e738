"""A TCP proxy in front of redis-server that lets Redis run a command and loses (or delays) its
reply: a network blip, a failover or ``CLIENT KILL`` landing between the execution and the
answer. Armed with byte patterns: the next client write holding all of a pattern's parts is
passed on to Redis, and the reply that follows on that connection is dropped (the connection
is reset) or, with ``delay``, held that long. Loopback only; one pattern per reply. ``close``
aborts every accepted connection (``LoopbackHop``), also one whose handler never started or was
cancelled while it connected upstream: left open, the garbage collector's ResourceWarning failed
whichever test ran next on the worker."""

from __future__ import annotations

import asyncio
import contextlib

from _support.servers import LoopbackHop


class DropProxy(LoopbackHop):
    def __init__(self, upstream_port: int) -> None:
        super().__init__()
        self.upstream_port = upstream_port
        #: Patterns still armed (each a tuple of byte strings that must all be in one write).
        self.armed: list[tuple[bytes, ...]] = []
        #: > 0: a matching reply is held this long (then delivered) instead of dropped.
        self.delay = 0.0
        #: The patterns that matched, in order.
        self.matched: list[tuple[bytes, ...]] = []

    async def start(self) -> DropProxy:  # type: ignore[override]
        await super().start()
        return self

    def url(self, upstream_url: str) -> str:
        """``upstream_url`` through the proxy."""
        return upstream_url.replace(f":{self.upstream_port}/", f":{self.port}/")

    def arm(self, *parts: bytes) -> None:
        self.armed.append(parts)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_w.transport.abort()
            return
        pending = {"reply": False}

        async def upstream() -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await client_r.read(65536):
                    for pattern in list(self.armed):
                        if all(part in data for part in pattern):
                            self.armed.remove(pattern)
                            self.matched.append(pattern)
                            pending["reply"] = True
                            break
                    up_w.write(data)
                    await up_w.drain()
            up_w.close()

        async def downstream() -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await up_r.read(65536):
                    if pending["reply"]:
                        pending["reply"] = False
                        if not self.delay:
                            # Redis ran the command; its answer never reaches the client.
                            client_w.transport.abort()
                            up_w.transport.abort()
                            return
                        await asyncio.sleep(self.delay)  # Redis ran it; the answer is late
                    client_w.write(data)
                    await client_w.drain()
            client_w.close()

        try:
            await asyncio.gather(upstream(), downstream())
        finally:
            client_w.transport.abort()
            up_w.transport.abort()

    async def close(self) -> None:
        await self.aclose()
