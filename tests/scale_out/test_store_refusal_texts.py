"""What the store says when Redis' ACL or the TLS trust is wrong, against a real redis-server:
a command the ACL denies inside one of the library's scripts names the ACL (not "check the
server's log"); the URL options ``db`` and ``client_name`` need ``+select`` and
``+client|setname`` besides the documented ACL, and the refusal says so; a CA file that exists
but holds no certificate is a ``ConfigurationError`` naming its variable when the store is
built, never "Redis cannot be reached"."""

from __future__ import annotations

from pathlib import Path

import pytest

from entra_passthrough import ConfigurationError, SourceUnavailable
from entra_passthrough.redis import RedisStore

from ._server import PASSWORD, RedisServer

CA_VAR = "ENTRA_PASSTHROUGH_REDIS_CA_FILE"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "scale-out.md"


def _documented_acl() -> list[str]:
    """The least-privilege ACL line of docs/scale-out.md, as ACL SETUSER arguments."""
    line = next(x for x in DOCS.read_text().splitlines() if x.startswith("ACL SETUSER agent "))
    return line.split()[3:]


@pytest.mark.parametrize("denied", ["-set", "-get", "-del"])
async def test_a_command_denied_inside_a_script_names_the_acl(
    redis_server: RedisServer, denied: str
) -> None:
    admin = redis_server.client()
    user = f"no{denied[1:]}"
    admin.execute_command("ACL", "SETUSER", user, "on", ">pw", "~*", "+@all", denied)
    admin.close()
    store = RedisStore.from_url(f"redis://{user}:pw@127.0.0.1:{redis_server.port}/0", timeout=1)
    name = f"ep:v1:{user}"
    try:
        if denied == "-del":  # the script reaches its DEL only for the version it finds
            version = await store.put(name, b"v", ttl=5, expect=None)
            assert version is not None

            async def call() -> object:
                return await store.delete(name, expect=version)

            def sync_call() -> object:
                return store.sync().delete(name, expect=version)
        else:

            async def call() -> object:
                return await store.put(name, b"v", ttl=5, expect=None)

            def sync_call() -> object:
                return store.sync().put(name, b"v", ttl=None, expect=None)

        with pytest.raises(SourceUnavailable, match="ACL does not allow") as info:
            await call()
        assert "+script|load" in str(info.value)
        assert "server's log" not in str(info.value)
        with pytest.raises(SourceUnavailable, match="ACL does not allow"):
            sync_call()
    finally:
        await store.aclose()


async def test_db_and_client_name_need_the_commands_the_docs_name(
    redis_server: RedisServer,
) -> None:
    docs = DOCS.read_text()
    assert "+select" in docs
    assert "+client|setname" in docs
    admin = redis_server.client()
    admin.execute_command("ACL", "SETUSER", "agent-min", *_documented_acl())
    password = next(a for a in _documented_acl() if a.startswith(">"))[1:]
    base = f"redis://agent-min:{password}@127.0.0.1:{redis_server.port}"
    try:
        plain = RedisStore.from_url(base + "/0", timeout=1)
        assert await plain.put("ep:v1:acl", b"v", ttl=5) is not None  # the line itself works
        await plain.aclose()
        for query, needed in [("/1", "+select"), ("/0?client_name=agent1", "+client|setname")]:
            store = RedisStore.from_url(base + query, timeout=1)
            with pytest.raises(SourceUnavailable, match="ACL does not allow") as info:
                await store.get("ep:v1:acl")
            assert needed in str(info.value)
            assert password not in str(info.value)
            await store.aclose()
        admin.execute_command("ACL", "SETUSER", "agent-min", "+select", "+client|setname")
        both = RedisStore.from_url(base + "/1?client_name=agent1", timeout=1)
        assert await both.put("ep:v1:acl", b"v", ttl=5) is not None
        await both.aclose()
    finally:
        admin.execute_command("ACL", "DELUSER", "agent-min")
        admin.close()


@pytest.mark.parametrize("content", ["", "not a certificate\n", "-----BEGIN CERTIFICATE-----\n"])
def test_a_ca_file_without_a_certificate_is_refused_when_built(
    tmp_path: Path, content: str
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text(content)
    url = f"rediss://:{PASSWORD}@127.0.0.1:6380/0"
    with pytest.raises(ConfigurationError, match=CA_VAR) as info:
        RedisStore.from_url(url, ca_file=str(ca))
    assert "holds no certificate" in str(info.value)
    assert "cannot be reached" not in str(info.value)
    assert PASSWORD not in str(info.value)
    with pytest.raises(ConfigurationError, match=CA_VAR):
        RedisStore.from_env({"ENTRA_PASSTHROUGH_REDIS_URL": url, CA_VAR: str(ca)})
