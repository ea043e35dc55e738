"""``rediss://`` misconfigurations say what is wrong: a CA file that does not exist is a
``ConfigurationError`` at construction naming its variable; a certificate that does not verify
says certificate verification (not "cannot be reached ... check host, port") and names the
variable that trusts a private CA. Against a real TLS redis-server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from entra_passthrough import ConfigurationError, SourceUnavailable
from entra_passthrough.redis import RedisStore

from ._server import PASSWORD, RedisServer

CA_VAR = "ENTRA_PASSTHROUGH_REDIS_CA_FILE"


@pytest.fixture(scope="module")
def tls_server() -> Iterator[RedisServer]:
    server = RedisServer(tls=True).start()
    yield server
    server.stop()


def test_a_ca_file_that_does_not_exist_is_refused_at_construction(
    tls_server: RedisServer, tmp_path: Path
) -> None:
    missing = str(tmp_path / "no-such-ca.pem")
    with pytest.raises(ConfigurationError, match=CA_VAR) as info:
        RedisStore.from_url(tls_server.url, ca_file=missing)
    assert "does not exist" in str(info.value)
    assert PASSWORD not in str(info.value)
    with pytest.raises(ConfigurationError, match=CA_VAR):
        RedisStore.from_env({"ENTRA_PASSTHROUGH_REDIS_URL": tls_server.url, CA_VAR: missing})
    with pytest.raises(ConfigurationError, match=CA_VAR):  # a directory is no CA file
        RedisStore.from_url(tls_server.url, ca_file=str(tmp_path))
    assert tls_server.ca_file is not None
    RedisStore.from_url(tls_server.url, ca_file=tls_server.ca_file)  # an existing one: fine


async def test_an_untrusted_certificate_says_certificate_verification(
    tls_server: RedisServer,
) -> None:
    store = RedisStore.from_url(tls_server.url, timeout=1.0)  # the server's CA not trusted
    try:
        with pytest.raises(SourceUnavailable, match="certificate verification") as info:
            await store.get("ep:v1:x")
        assert CA_VAR in str(info.value)
        assert "cannot be reached" not in str(info.value)
        assert PASSWORD not in str(info.value)
        with pytest.raises(SourceUnavailable, match="certificate verification") as sync_info:
            store.sync().get("ep:v1:x")
        assert CA_VAR in str(sync_info.value)
    finally:
        await store.aclose()


async def test_a_plain_redis_port_behind_rediss_still_says_cannot_be_reached(
    redis_server: RedisServer,
) -> None:
    """Not every TLS failure is a certificate one: a plain port answers no TLS at all."""
    url = redis_server.url.replace("redis://", "rediss://")
    store = RedisStore.from_url(url, timeout=1.0)
    try:
        with pytest.raises(SourceUnavailable) as info:
            await store.get("ep:v1:x")
        assert "certificate verification" not in str(info.value)
    finally:
        await store.aclose()
