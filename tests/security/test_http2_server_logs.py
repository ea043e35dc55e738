"""An agent served over HTTP/2 logs no caller's token, at DEBUG.

hypercorn (the server the Foundry hosting packages run) serves HTTP/2 by default, and hpack, its
header codec, logs every decoded header at DEBUG: the caller's ``Authorization`` whole, and the
raw header block, Huffman-coded (no text pattern finds the token there; any hpack decoder gets
it back). The redacting filter now covers h2 and hypercorn as it covers uvicorn, and drops
hpack's records.

Real hypercorn on 127.0.0.1 (h2c), a real httpx2 HTTP/2 client, a token the emulator issued.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import httpx2
import pytest

from entra_passthrough import CallerMiddleware, current_caller
from entra_passthrough.testing import EntraEmulator

pytest.importorskip("hypercorn")
pytest.importorskip("h2")


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((record.name, record.getMessage()))


async def _app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    caller = current_caller()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": (caller.fingerprint or "-").encode()})


def test_no_token_in_an_http2_servers_debug_logs(entra_emulator: EntraEmulator) -> None:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    token = entra_emulator.user_token("alice", audience=entra_emulator.agent.client_id)
    records = _Records()
    root = logging.getLogger()
    level = root.level
    root.addHandler(records)
    root.setLevel(logging.DEBUG)
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]

        async def run() -> str:
            config = Config()
            config.bind = [f"127.0.0.1:{port}"]
            stop = asyncio.Event()
            server = asyncio.create_task(
                serve(CallerMiddleware(_app), config, shutdown_trigger=stop.wait)
            )
            try:
                async with httpx2.AsyncClient(http1=False, http2=True) as client:
                    for _ in range(100):  # until the server listens (bounded)
                        try:
                            answer = await client.get(
                                f"http://127.0.0.1:{port}/",
                                headers={"authorization": f"Bearer {token}"},
                            )
                            break
                        except httpx2.ConnectError:
                            await asyncio.sleep(0.05)
                    else:
                        raise AssertionError("hypercorn did not start")
                    assert answer.http_version == "HTTP/2"
                    return answer.text
            finally:
                stop.set()
                await asyncio.wait_for(server, 10)

        fingerprint = asyncio.run(run())
    finally:
        root.removeHandler(records)
        root.setLevel(level)
    assert fingerprint.startswith("sha256:")  # the caller was captured over HTTP/2
    leaked = sorted({name for name, message in records.seen if token[:60] in message})
    assert not leaked, leaked
    # hpack also logs the raw header blocks, Huffman-coded: no text pattern finds the token
    # there, and any hpack decoder gets it back. Its records are dropped.
    assert not [name for name, _ in records.seen if name.startswith("hpack")]
