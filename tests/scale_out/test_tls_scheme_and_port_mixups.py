"""A ``rediss://`` URL at a plaintext Redis port (Azure's 6379 where 6380 is the TLS port) says
that TLS was asked for and the server did not answer it, and names the TLS ports: not "did not
answer in time, check the load and network". The opposite (``redis://`` at a TLS port) says
the server closed the connection as a TLS port does and names ``rediss://``. Against real
redis-servers (the TLS one with a CA made for the test)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from entra_passthrough import SourceUnavailable
from entra_passthrough.redis import RedisStore

from ._server import PASSWORD, RedisServer


@pytest.fixture(scope="module")
def tls_server() -> Iterator[RedisServer]:
    server = RedisServer(tls=True, persist=False).start()
    yield server
    server.stop()


async def test_rediss_at_a_plaintext_port_says_the_server_did_not_speak_tls(
    redis_server: RedisServer, tls_server: RedisServer
) -> None:
    url = redis_server.url.replace("redis://", "rediss://")
    store = RedisStore.from_url(url, ca_file=tls_server.ca_file, timeout=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(SourceUnavailable) as info:
            await store.get("ep:v1:x")
        assert time.monotonic() - started < 5  # two tries of the connect timeout
        with pytest.raises(SourceUnavailable) as sync_info:
            store.sync().get("ep:v1:x")
        for error in (info.value, sync_info.value):
            text = str(error)
            assert "rediss://" in text
            assert "TLS" in text
            assert "6380 with TLS, 6379 without" in text
            assert "certificate verification" not in text
            assert PASSWORD not in text
    finally:
        await store.aclose()


async def test_a_plaintext_answer_to_the_handshake_says_so_at_once() -> None:
    """When the ClientHello's random bytes hold a newline, a plaintext Redis answers it as an
    inline command ("-ERR unknown command"), and the handshake fails at once, not by timeout
    (a listener that answers so every time, as that Redis does then)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]

    def answer() -> None:
        for _ in range(4):  # two tries each, the async and the blocking client
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(4096)
                conn.sendall(b"-ERR unknown command\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    store = RedisStore.from_url(f"rediss://:{PASSWORD}@127.0.0.1:{port}/0", timeout=2)
    try:
        started = time.monotonic()
        with pytest.raises(SourceUnavailable, match="does not speak TLS") as info:
            await store.get("ep:v1:x")
        assert time.monotonic() - started < 2  # no timeout waited out
        with pytest.raises(SourceUnavailable, match="does not speak TLS"):
            store.sync().get("ep:v1:x")
        assert "6380 with TLS, 6379 without" in str(info.value)
    finally:
        await store.aclose()
        listener.close()
        thread.join(5)


async def test_redis_at_a_tls_port_names_rediss(tls_server: RedisServer) -> None:
    url = tls_server.url.replace("rediss://", "redis://")
    store = RedisStore.from_url(url, timeout=0.5)
    try:
        with pytest.raises(SourceUnavailable) as info:
            await store.get("ep:v1:x")
        with pytest.raises(SourceUnavailable) as sync_info:
            store.sync().get("ep:v1:x")
        for error in (info.value, sync_info.value):
            text = str(error)
            assert "as a TLS port does" in text
            assert "use rediss:// for a TLS port" in text
            assert "6380 with TLS" in text
            assert PASSWORD not in text
    finally:
        await store.aclose()


async def test_a_plaintext_redis_that_is_down_still_says_cannot_be_reached() -> None:
    """Nothing listens: refused, not closed; no TLS hint."""
    server = RedisServer()  # never started: its port is free
    store = RedisStore.from_url(server.url, timeout=0.5)
    try:
        with pytest.raises(SourceUnavailable, match="cannot be reached") as info:
            await store.get("ep:v1:x")
        assert "TLS port" not in str(info.value)
    finally:
        await store.aclose()
