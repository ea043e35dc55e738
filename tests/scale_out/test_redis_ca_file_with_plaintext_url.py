"""``ENTRA_PASSTHROUGH_REDIS_CA_FILE`` (``ca_file=``) with a ``redis://`` URL: TLS is off, so the
CA file would never be read; a path that did not exist was accepted silently (docs: a missing
path is a ``ConfigurationError`` when the store is built). Both are refused at build, naming
the variable and saying TLS is off; without a CA file ``redis://`` still works (a real server)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from entra_passthrough import ConfigurationError
from entra_passthrough.redis import RedisStore
from entra_passthrough.testing._ca import make_tls_material

from ._server import PASSWORD, RedisServer

CA_VAR = "ENTRA_PASSTHROUGH_REDIS_CA_FILE"


def _real_ca(tmp_path: Path) -> str:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(make_tls_material().ca_cert_pem)
    return str(ca)


@pytest.mark.parametrize("kind", ["missing", "real"])
def test_a_ca_file_with_a_plaintext_url_is_refused_when_built(
    redis_server: RedisServer, tmp_path: Path, kind: str
) -> None:
    ca = str(tmp_path / "nowhere" / "ca.pem") if kind == "missing" else _real_ca(tmp_path)
    for build in (
        lambda: RedisStore.from_url(redis_server.url, ca_file=ca),
        lambda: RedisStore.from_env({"ENTRA_PASSTHROUGH_REDIS_URL": redis_server.url, CA_VAR: ca}),
    ):
        with pytest.raises(ConfigurationError, match=CA_VAR) as info:
            build()
        assert "TLS is off" in str(info.value)
        assert "rediss://" in (info.value.fix or "")
        assert PASSWORD not in f"{info.value} {info.value.fix}"


def test_a_plaintext_url_without_a_ca_file_still_works(redis_server: RedisServer) -> None:
    async def run() -> None:
        store = RedisStore.from_env({"ENTRA_PASSTHROUGH_REDIS_URL": redis_server.url})
        try:
            assert await store.put("plain", b"x", ttl=10) is not None
        finally:
            await store.aclose()

    asyncio.run(run())
