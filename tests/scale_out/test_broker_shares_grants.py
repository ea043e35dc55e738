"""The standalone broker and two agent replicas share grants through one Redis: consent given
through the broker is served by both replicas without asking again, and a refresh token is
redeemed once per refresh however many replicas ask."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from _support.consent import ConsentEnv, follow_link, platform_caller
from entra_passthrough import ConsentRequired, SourceUnavailable, TokenRequest, UserKey
from entra_passthrough._store import Keyring
from entra_passthrough.consent._cli import build_store, main
from entra_passthrough.redis import RedisStore

from ._broker import StandaloneBroker
from ._server import RedisServer, free_port


async def test_consent_through_the_broker_serves_both_replicas(
    consent_env: ConsentEnv, redis_server: RedisServer
) -> None:
    env = consent_env
    keyring = Keyring.generate()
    namespace = f"broker{free_port()}:"
    stores = [RedisStore.from_url(redis_server.url, namespace=namespace) for _ in range(3)]
    broker: StandaloneBroker | None = None
    try:
        replica1, _ = env.make(store=stores[0], keyring=keyring)  # type: ignore[arg-type]
        replica2, _ = env.make(store=stores[1], keyring=keyring)  # type: ignore[arg-type]
        # The standalone broker, as `entra-passthrough broker --store redis://...` builds it.
        broker = StandaloneBroker(env, stores[2], keyring)
        user = env.idp.users["pat"]
        request = TokenRequest(
            scopes=(env.mcp_scope,), caller=platform_caller("chat-pat-redis", upn=user.upn)
        )
        with pytest.raises(ConsentRequired) as info:
            await replica1.get_token_async(request)
        assert info.value.link is not None
        page = await follow_link(env, info.value.link)
        assert page.status_code == 200, page.text

        before = env.idp.stats()["grants"].get("refresh_token", 0)
        results = await asyncio.gather(
            *(r.get_token_async(request) for r in (replica1, replica2) for _ in range(10))
        )
        after = env.idp.stats()["grants"].get("refresh_token", 0)
        assert all(r is not None for r in results)
        assert after - before == 2  # one per replica (their L1s), serialised by the lease
        key = UserKey.from_caller(request.caller)
        assert key is not None
        found = await replica2.grants.get_grant(key.hashed)
        assert found is not None
        assert found[0].lease_owner is None
        assert found[0].upn == user.upn
    finally:
        for store in stores[:2]:
            await store.aclose()
        if broker is not None:
            await broker.aclose()


async def test_grant_store_down_is_a_typed_error_never_a_token(consent_env: ConsentEnv) -> None:
    env = consent_env
    dead = RedisStore.from_url(f"redis://:pw@127.0.0.1:{free_port()}/0", timeout=0.5)
    source, _ = env.make(store=dead, keyring=Keyring.generate())  # type: ignore[arg-type]
    request = TokenRequest(scopes=(env.mcp_scope,), caller=platform_caller("chat-pat-down"))
    with pytest.raises(SourceUnavailable, match="store is unavailable"):
        await source.get_token_async(request)
    await dead.aclose()


def test_build_store_picks_redis_for_a_url() -> None:
    port = free_port()
    store = build_store(f"redis://:pw@127.0.0.1:{port}/0", {})
    assert isinstance(store, RedisStore)
    assert type(build_store(None, {})).__name__ == "MemoryStore"
    assert type(build_store("memory", {})).__name__ == "MemoryStore"


def _cli_config(tmp_path: Path) -> str:
    path = tmp_path / "broker.json"
    path.write_text(
        json.dumps(
            {
                "client_id": "11111111-1111-1111-1111-111111111111",
                "tenant_id": "22222222-2222-2222-2222-222222222222",
                "redirect_uris": ["https://consent.contoso.com/callback"],
            }
        )
    )
    return str(path)


@pytest.mark.parametrize("shared", [True, False])
def test_the_memory_store_warning_goes_once_redis_is_configured(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    shared: bool,
) -> None:
    import uvicorn

    served: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app, **kw))
    monkeypatch.setenv("ENTRA_PASSTHROUGH_CONSENT_KEYS", "k1:" + "A" * 43)
    monkeypatch.setenv("ENTRA_PASSTHROUGH_CONSENT_CLIENT_SECRET", "s3cret")
    argv = ["--config", _cli_config(tmp_path), "--insecure-http"]
    if shared:
        argv += ["--store", f"redis://:redis-pw@127.0.0.1:{free_port()}/0"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert ("WARNING" in err) is not shared
    assert "redis-pw" not in err
    assert served["app"] is not None


async def test_with_the_shared_cache_two_replicas_make_one_refresh(
    consent_env: ConsentEnv, redis_server: RedisServer
) -> None:
    from entra_passthrough import Policy, TokenCache, TokenChain
    from entra_passthrough.redis import SharedTokenCache

    env = consent_env
    keyring = Keyring.generate()
    namespace = f"deleg{free_port()}:"
    stores = [RedisStore.from_url(redis_server.url, namespace=namespace) for _ in range(3)]
    broker: StandaloneBroker | None = None
    try:
        sources = [env.make(store=s, keyring=keyring)[0] for s in stores[:2]]  # type: ignore[arg-type]
        broker = StandaloneBroker(env, stores[2], keyring)
        user = env.idp.users["rita"]
        caller = platform_caller("chat-rita-l2", upn=user.upn)
        request = TokenRequest(scopes=(env.mcp_scope,), caller=caller)
        with pytest.raises(ConsentRequired) as info:
            await sources[0].get_token_async(request)
        assert info.value.link is not None
        assert (await follow_link(env, info.value.link)).status_code == 200
        chains = [
            TokenChain(
                [source],
                policy=Policy.USER_ONLY,
                cache=TokenCache(shared=SharedTokenCache(store, keyring)),
            )
            for source, store in zip(sources, stores[:2], strict=True)
        ]
        before = env.idp.stats()["grants"].get("refresh_token", 0)
        results = await asyncio.gather(
            *(c.get_token_async([env.mcp_scope], caller=caller) for c in chains for _ in range(10))
        )
        assert env.idp.stats()["grants"].get("refresh_token", 0) - before == 1
        assert len({r.token for r in results}) == 1
    finally:
        for store in stores[:2]:
            await store.aclose()
        if broker is not None:
            await broker.aclose()
