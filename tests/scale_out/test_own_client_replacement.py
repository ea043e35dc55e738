"""docs/scale-out.md, "When Redis fails": a store built from your own redis client cannot
replace it after it broke for good (it keeps failing, typed), and one given ``client_factory=``
replaces it at the next call. A real redis-server; the break (redis-py 5.x's torn handshake) is
injected into the store's client, as in test_broken_client_replaced.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis_asyncio

from entra_passthrough import SourceUnavailable
from entra_passthrough.redis import RedisStore

from ._server import RedisServer, free_port

PAGE = Path(__file__).resolve().parents[2] / "docs" / "scale-out.md"


def _torn(client: Any) -> None:
    """Every GET of ``client`` fails as redis-py 5.x's torn handshake did (for good)."""

    async def failing(*args: Any, **kwargs: Any) -> Any:
        raise AttributeError("'NoneType' object has no attribute 'writelines'")

    client.get = failing


@pytest.mark.parametrize("factory", [False, True], ids=["own-client", "own-client-and-factory"])
async def test_own_client_is_replaced_only_with_a_factory(
    redis_server: RedisServer, factory: bool
) -> None:
    built: list[Any] = []

    def make() -> Any:
        built.append(redis_asyncio.Redis.from_url(redis_server.url))
        return built[-1]

    mine = redis_asyncio.Redis.from_url(redis_server.url)
    store = RedisStore(
        mine, namespace=f"own{free_port()}:", client_factory=make if factory else None
    )
    try:
        assert await store.put("k", b"v", ttl=30) is not None
        _torn(mine)
        with pytest.raises(SourceUnavailable):
            await store.get("k")
        if factory:
            entry = await store.get("k")  # the factory's client: the store works again
            assert entry is not None
            assert entry.value == b"v"
            assert len(built) == 1
        else:
            with pytest.raises(SourceUnavailable):
                await store.get("k")  # the same broken client, for good
            assert built == []
    finally:
        await store.aclose()
        await mine.aclose()
        for client in built:
            await client.aclose()


def test_the_docs_say_what_to_do_with_your_own_client() -> None:
    section = PAGE.read_text(encoding="utf-8").split("## When Redis fails", 1)[1]
    section = section.split("\n## ", 1)[0]
    assert "client_factory=" in section
    assert "your own client" in section
