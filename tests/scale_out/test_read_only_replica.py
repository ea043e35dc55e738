"""A store pointed at a read-only replica (a replica's or geo-secondary's endpoint, or a URL
copied from the wrong line) reads but cannot write: the first write (a lease, a grant) fails
typed, saying the endpoint is a read-only replica and to use the primary's read-write
endpoint, never "Redis failed (ReadOnlyError). Fix: check the Redis server's log."."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from entra_passthrough import SourceUnavailable
from entra_passthrough.redis import RedisStore

from ._server import RedisServer


@dataclass
class _Replica(RedisServer):
    """A ``replica-read-only`` replica of the server on ``primary_port``."""

    primary_port: int = 0

    def args(self) -> list[str]:
        return [
            *super().args(),
            "--replicaof", "127.0.0.1", str(self.primary_port),
            "--masterauth", self.password,
            "--replica-read-only", "yes",
        ]  # fmt: skip


@pytest.fixture(scope="module")
def replica(redis_server: RedisServer) -> Iterator[RedisServer]:
    server = _Replica(persist=False, primary_port=redis_server.port).start()
    client = server.client()
    try:
        for _ in range(500):  # bounded (~10 s): the replica has synced with its primary
            if client.info("replication").get("master_link_status") == "up":
                break
            time.sleep(0.02)
        else:
            pytest.fail("the replica did not sync with its primary in time")
        yield server
    finally:
        client.close()
        server.stop()


@pytest.mark.parametrize("write", ["set", "put-if-absent", "compare-and-set", "delete"])
async def test_a_write_to_a_read_only_replica_says_so(
    redis_server: RedisServer, replica: RedisServer, write: str
) -> None:
    store = RedisStore.from_url(replica.url, timeout=2)
    twin = store.sync()
    name = f"ep:v1:tokl:{write}"
    primary = RedisStore.from_url(redis_server.url, timeout=2)
    try:
        version = await primary.put(name, b"0", ttl=60)  # a record the replica then holds too
        for _ in range(500):  # bounded (~10 s)
            found = await store.get(name)  # reads work
            if found is not None and found.version == version:
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail("the record did not reach the replica in time")
        calls = {
            "set": (lambda: store.put(name, b"1", ttl=10), lambda: twin.put(name, b"1", ttl=10)),
            "put-if-absent": (  # absent for this name: the script reaches its SET
                lambda: store.put(name + ":new", b"1", ttl=10, expect=None),
                lambda: twin.put(name + ":new", b"1", ttl=10, expect=None),
            ),
            "compare-and-set": (
                lambda: store.put(name, b"1", ttl=10, expect=version),
                lambda: twin.put(name, b"1", ttl=10, expect=version),
            ),
            "delete": (
                lambda: store.delete(name, expect=version),
                lambda: twin.delete(name, expect=version),
            ),
        }
        call, sync_call = calls[write]
        with pytest.raises(SourceUnavailable, match="read-only replica") as info:
            await call()
        text = str(info.value)
        assert "primary" in text
        assert "read-write endpoint" in text
        assert "server's log" not in text
        assert replica.password not in text
        with pytest.raises(SourceUnavailable, match="read-only replica"):
            sync_call()
    finally:
        await store.aclose()
        await primary.aclose()
