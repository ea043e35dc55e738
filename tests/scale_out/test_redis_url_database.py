"""The database part of the Redis URL (its path, ``/3``, or ``?db=3``) is checked when the store
is built: redis-py silently took a path that is not a number (``/abc``) as database 0, which may
hold another app's keys, read ``/1/2`` as 12 and ``?db=1_0`` as 10, and sent a negative index
that every call then failed on. Refused with a ``ConfigurationError`` naming the URL's database
part and the fix, never the password. An index past the server's ``databases`` setting is known
only when connecting: every call then fails naming the URL's database, not "check the server's
log"."""

from __future__ import annotations

import pytest
import redis

from entra_passthrough import ConfigurationError, SourceUnavailable
from entra_passthrough.redis import RedisStore

from ._server import PASSWORD, RedisServer

VARIABLE = "ENTRA_PASSTHROUGH_REDIS_URL"
SECRET = "pa55-word-in-the-url"


def _url(tail: str) -> str:
    return f"redis://:{SECRET}@127.0.0.1:6379{tail}"


@pytest.mark.parametrize(
    ("tail", "shown"),
    [
        ("/abc", "path 'abc'"),
        ("/0x1", "path '0x1'"),
        ("/1/2", "path '1/2'"),
        ("/-1", "path '-1'"),
        ("/+1", "path '+1'"),
        ("/%20", "path ' '"),
        ("/99999999999", "path '99999999999'"),
        ("/0?db=-1", "?db= '-1'"),
        ("/0?db=1_0", "?db= '1_0'"),
        ("?db=%203", "?db= ' 3'"),
        ("?db=", "?db= ''"),
    ],
)
def test_a_database_part_that_is_not_a_number_refuses_the_build(tail: str, shown: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        RedisStore.from_env({VARIABLE: _url(tail)})
    text = str(info.value)
    assert f"the database of the Redis URL (url, {VARIABLE}) ({shown}) is not a database " in text
    assert "Fix: end ENTRA_PASSTHROUGH_REDIS_URL (url) with /0" in text
    assert SECRET not in text


def test_a_path_and_a_db_option_that_disagree_refuse_the_build() -> None:
    with pytest.raises(ConfigurationError, match=r"names two databases") as info:
        RedisStore.from_env({VARIABLE: _url("/1?db=2")})
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("tail", ["", "/", "/0", "/15", "/%33", "?db=3", "/3?db=3"])
def test_a_database_number_is_taken(tail: str) -> None:
    store = RedisStore.from_env({VARIABLE: _url(tail)})
    assert repr(store) == "RedisStore(redis://127.0.0.1:6379)"


async def test_a_database_the_server_does_not_have_names_the_url(
    redis_server: RedisServer,
) -> None:
    """redis-server has 16 databases by default: SELECT 99999 fails on every new connection."""
    url = f"redis://:{PASSWORD}@127.0.0.1:{redis_server.port}/99999"
    store = RedisStore.from_env({VARIABLE: url})
    try:
        with pytest.raises(SourceUnavailable) as info:
            await store.get("ep:k")
        with pytest.raises(SourceUnavailable) as sync_info:
            store.sync().get("ep:k")
    finally:
        await store.aclose()
    for error in (info.value, sync_info.value):
        text = str(error)
        assert "Redis refused the database the URL names (99999)" in text
        assert f"Fix: end {VARIABLE} (url) with /0" in text
        assert "server's log" not in text
        assert PASSWORD not in text


async def test_a_database_the_server_has_is_used(redis_server: RedisServer) -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:{redis_server.port}/15"
    store = RedisStore.from_env({VARIABLE: url})
    try:
        version = await store.put("ep:database-15", b"v", ttl=30, expect=None)
        assert version is not None
    finally:
        await store.aclose()
    for database, held in ((15, 1), (0, 0)):
        admin = redis.Redis(
            host="127.0.0.1", port=redis_server.port, password=PASSWORD, db=database
        )
        try:
            assert admin.exists("ep:database-15") == held
        finally:
            admin.close()
