"""A Redis ACL refusal says what Redis refused, from its own ``NOPERM`` reply, and what to grant,
before the " Fix:" tail (the consent broker's log keeps a store error's message without its fix):
the refused command (``+evalsha``), or a key rule that does not allow the store's keys, a
read-only one (``%R~ep:*``) refusing the writes. Against a real redis-server."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest
import redis

from _support.consent import ConsentEnv, consent_link, form_post_fields, platform_caller
from entra_passthrough import SourceUnavailable
from entra_passthrough._errors import without_fix
from entra_passthrough.redis import RedisStore

from ._server import RedisServer

#: The least-privilege line of docs/scale-out.md, for a user of the test's own.
DOCUMENTED = "resetkeys ~ep:* -@all +get +set +del +eval +evalsha +script|load +ping"


@pytest.fixture
def admin(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_server.client()
    yield client
    client.execute_command("ACL", "DELUSER", "acl-agent")
    client.close()


def _user(admin: redis.Redis, rules: str) -> None:
    admin.execute_command("ACL", "DELUSER", "acl-agent")
    admin.execute_command("ACL", "SETUSER", "acl-agent", "on", ">acl-pw-7", *rules.split())


def _store(server: RedisServer, namespace: str = "") -> RedisStore:
    url = f"redis://acl-agent:acl-pw-7@127.0.0.1:{server.port}/0"
    return RedisStore.from_url(url, timeout=1, namespace=namespace)


@pytest.mark.parametrize("denied", ["evalsha", "set", "del"])
async def test_a_refused_command_is_named_with_its_grant(
    redis_server: RedisServer, admin: redis.Redis, denied: str
) -> None:
    _user(admin, DOCUMENTED.replace(f" +{denied}", ""))
    store = _store(redis_server)
    try:
        if denied == "evalsha":
            call, sync_call = (
                lambda: store.put("ep:v1:a", b"v", ttl=5, expect=None),
                lambda: store.sync().put("ep:v1:a", b"v", ttl=5, expect=None),
            )
        elif denied == "set":
            call, sync_call = (
                lambda: store.put("ep:v1:a", b"v", ttl=5),
                lambda: store.sync().put("ep:v1:a", b"v", ttl=5),
            )
        else:
            call, sync_call = (
                lambda: store.delete("ep:v1:a"),
                lambda: store.sync().delete("ep:v1:a"),
            )
        with pytest.raises(SourceUnavailable, match="ACL does not allow") as info:
            await call()
        with pytest.raises(SourceUnavailable, match="ACL does not allow") as sync_info:
            sync_call()
        for error in (info.value, sync_info.value):
            message = without_fix(error)  # what a log that drops the fix still says
            assert f"'{denied}'" in message
            assert f"grant it +{denied}" in message
            assert "acl-pw-7" not in str(error)
            assert "+script|load" in str(error)  # the fix: the whole documented set
    finally:
        await store.aclose()


async def test_a_read_only_key_rule_says_the_write_was_refused(
    redis_server: RedisServer, admin: redis.Redis
) -> None:
    _user(admin, DOCUMENTED.replace("~ep:*", "%R~app1:ep:*"))
    store = _store(redis_server, namespace="app1:")
    try:
        assert await store.get("ep:v1:ro") is None  # reads are allowed
        for call in (
            lambda: store.put("ep:v1:ro", b"v", ttl=5),
            lambda: store.put("ep:v1:ro", b"v", ttl=5, expect=None),
            lambda: store.delete("ep:v1:ro"),
        ):
            with pytest.raises(SourceUnavailable, match="ACL does not allow") as info:
                await call()
            message = without_fix(info.value)
            assert "refused the write" in message
            assert "read and write on ~app1:ep:*" in message  # the pattern, with the namespace
            assert "%R~" in message
        with pytest.raises(SourceUnavailable, match="refused the write"):
            store.sync().put("ep:v1:ro", b"v", ttl=5)
    finally:
        await store.aclose()


async def test_a_key_rule_for_other_keys_names_the_store_s_pattern(
    redis_server: RedisServer, admin: redis.Redis
) -> None:
    _user(admin, DOCUMENTED.replace("~ep:*", "~other:*"))
    store = _store(redis_server)
    try:
        with pytest.raises(SourceUnavailable, match="ACL does not allow") as info:
            await store.get("ep:v1:k")
        message = without_fix(info.value)
        assert "read the store's keys" in message
        assert "~ep:*" in message
        assert "no permissions to access" in message  # Redis' own words
    finally:
        await store.aclose()


@pytest.mark.parametrize("change", [("-evalsha",), ("resetkeys", "%R~ep:*")])
async def test_the_broker_logs_what_to_grant_when_a_write_is_refused(
    consent_env: ConsentEnv,
    redis_server: RedisServer,
    admin: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    change: tuple[str, ...],
) -> None:
    """The broker's ACL changes between /start and the callback: the page is the typed 503,
    and the broker's log line (the error without its fix) names what to grant."""
    _user(admin, DOCUMENTED)
    store = _store(redis_server)
    try:
        source, _ = consent_env.make(store=store)  # type: ignore[arg-type]
        pat = consent_env.idp.users["pat"]
        caller = platform_caller(f"chat-pat-acl-{time.monotonic_ns()}", upn=pat.upn)
        link = await consent_link(source, consent_env, caller)
        async with consent_env.browser() as browser:
            action, fields = form_post_fields(await browser.get(link))
            admin.execute_command("ACL", "SETUSER", "acl-agent", *change)
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="entra_passthrough.consent"):
                answer = await browser.post(action, data=fields)
        assert answer.status_code == 503
        lines = [
            r.getMessage() for r in caplog.records if "consent callback failed" in r.getMessage()
        ]
        assert lines, [r.getMessage() for r in caplog.records]
        expected = "grant it +evalsha" if change == ("-evalsha",) else "read and write on ~ep:*"
        assert any(expected in line for line in lines), lines
        assert not any("acl-pw-7" in line for line in lines)
    finally:
        await store.aclose()
