"""The shared stores' and the L2 cache's numbers are checked when they are built: a NaN
timeout, 0 connections, a negative wait or a lease of NaN was taken (and failed, or never
waited, at the first request on every replica), a string count ended in a ``TypeError`` and
``SharedTokenCache`` raised a bare ``ValueError`` with no fix. Each is now a
``ConfigurationError`` (still a ``ValueError``) with a fix, naming the parameter."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from entra_passthrough import ConfigurationError, Keyring, MemoryStore
from entra_passthrough.redis import RedisStore, SharedTokenCache

from ._server import RedisServer

Build = Callable[[RedisServer], Any]


def _shared(server: RedisServer, **options: Any) -> SharedTokenCache:
    return SharedTokenCache(RedisStore.from_url(server.url), Keyring.generate(), **options)


#: (id, build, the parameter the message must name)
CASES: list[tuple[str, Build, str]] = [
    ("l2-lease-nan", lambda s: _shared(s, lease=math.nan), "lease"),
    ("l2-lease-inf", lambda s: _shared(s, lease=math.inf), "lease"),
    ("l2-lease-str", lambda s: _shared(s, lease="10"), "lease"),
    ("l2-wait-neg", lambda s: _shared(s, wait=-1), "wait"),
    ("l2-wait-0", lambda s: _shared(s, wait=0), "wait"),
    ("l2-retry-after-nan", lambda s: _shared(s, retry_after=math.nan), "retry_after"),
    ("l2-retry-after-neg", lambda s: _shared(s, retry_after=-1), "retry_after"),
    ("redis-timeout-nan", lambda s: RedisStore.from_url(s.url, timeout=math.nan), "timeout"),
    ("redis-timeout-0", lambda s: RedisStore.from_url(s.url, timeout=0), "timeout"),
    ("redis-timeout-str", lambda s: RedisStore.from_url(s.url, timeout="2"), "timeout"),  # type: ignore[arg-type]
    ("redis-timeout-inf", lambda s: RedisStore.from_url(s.url, timeout=math.inf), "timeout"),
    (
        "redis-max-connections-0",
        lambda s: RedisStore.from_url(s.url, max_connections=0),
        "max_connections",
    ),
    (
        "redis-max-connections-str",
        lambda s: RedisStore.from_url(s.url, max_connections="64"),  # type: ignore[arg-type]
        "max_connections",
    ),
    (
        "redis-max-connections-float",
        lambda s: RedisStore.from_url(s.url, max_connections=2.5),  # type: ignore[arg-type]
        "max_connections",
    ),
    ("memory-max-entries-str", lambda s: MemoryStore(max_entries="10"), "max_entries"),  # type: ignore[arg-type]
    ("memory-max-entries-float", lambda s: MemoryStore(max_entries=1.5), "max_entries"),  # type: ignore[arg-type]
    ("memory-max-entries-bool", lambda s: MemoryStore(max_entries=True), "max_entries"),
]


@pytest.mark.parametrize(("build", "name"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_wrong_number_is_refused_at_build_with_a_fix(
    redis_server: RedisServer, build: Build, name: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        build(redis_server)
    assert info.value.fix, str(info.value)
    assert name in str(info.value), str(info.value)
    assert redis_server.password not in f"{info.value} {info.value.fix}"


async def test_the_edges_still_work_against_redis(redis_server: RedisServer) -> None:
    """One connection and a sub-second timeout are a working store; no wait before a retry
    is a working L2 (the checks refuse mistakes, not small values)."""
    store = RedisStore.from_url(
        redis_server.url, namespace="edges:", timeout=0.5, max_connections=1
    )
    try:
        version = await store.put("k", b"v", ttl=60, expect=None)
        entry = await store.get("k")
        assert entry is not None
        assert entry.version == version
        shared = SharedTokenCache(store, Keyring.generate(), lease=0.5, wait=0.3, retry_after=0)
        assert (shared.lease, shared.wait, shared.retry_after) == (0.5, 0.3, 0.0)
    finally:
        await store.aclose()
