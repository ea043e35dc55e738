"""Text a Redis server (or a proxy in front of one) puts in an error reply never reaches our
messages or log lines with control characters: a NOPERM reply carrying terminal escape
sequences (set the window title, clear the screen) was quoted as it came in
``SourceUnavailable`` and in ``ResponseOwners``' WARNING. A RESP server on 127.0.0.1 that answers
every command with that error; the real ``RedisStore`` and ``ResponseOwners``."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from entra_passthrough.agent_framework import ResponseOwners
from entra_passthrough.redis import RedisStore

ESCAPES = "\x1b]0;owned\x07\x1b[2J\x1b[1;31mFORGED"
REPLY = f"NOPERM {ESCAPES} this user has no permissions to run the 'set' command"


@pytest.fixture
def hostile_redis() -> Iterator[int]:
    """A RESP server answering every command with ``REPLY`` as an error."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)

    def serve(conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        try:
            while line := reader.readline():
                if line[:1] == b"*":
                    for _ in range(int(line[1:].strip())):
                        size = int(reader.readline()[1:].strip())
                        reader.read(size + 2)
                conn.sendall(b"-" + REPLY.encode() + b"\r\n")
        except OSError:
            pass
        finally:
            conn.close()

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


async def _host(scope: dict, receive: object, send: object) -> None:  # pragma: no cover
    raise AssertionError("the owner store failed: the host is never reached")


async def test_a_redis_reply_with_escapes_is_quoted_printable(
    hostile_redis: int, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisStore.from_url(
        f"redis://127.0.0.1:{hostile_redis}/0", allow_plaintext=True, timeout=2
    )
    app = ResponseOwners(_host, store=store)
    failure: Exception | None = None
    try:
        with caplog.at_level(logging.WARNING):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                answer = await client.post(
                    "/responses",
                    json={"input": "hi", "store": True},
                    headers={"x-agent-user-id": "u1"},
                )
        try:
            await store.put("ep:probe", b"v", ttl=5)
        except Exception as exc:
            failure = exc
    finally:
        await store.aclose()
    assert answer.status_code == 503
    assert failure is not None
    shown = [str(failure), *(record.getMessage() for record in caplog.records)]
    assert any("FORGED" in text for text in shown)  # Redis' words are still quoted
    for text in shown:
        assert text.isprintable(), repr(text)
