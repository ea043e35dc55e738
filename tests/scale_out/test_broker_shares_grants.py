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


async def test_the_broker_command_over_rediss_with_an_acl_user_serves_two_replicas(
    tmp_path: Path,
) -> None:
    """`entra-passthrough broker` as its own process, its store from the environment
    (``rediss://`` with a private CA, an ACL user in the URL): a user consents through it once
    and two agent replicas with stores of their own serve them without asking again; the
    broker says it shares its grants, never warns, never prints the password."""
    import os
    import secrets
    import socket
    import ssl
    import subprocess
    import sys
    import time

    import httpx2

    from _support.consent import submit_form_post
    from entra_passthrough._sources.delegated import DelegatedConsent
    from entra_passthrough.testing import EntraEmulator, World
    from entra_passthrough.testing._ca import make_tls_material
    from entra_passthrough.testing._world import App, Grant, stable_id

    port = free_port()
    base = f"https://127.0.0.1:{port}"
    world = World.default()
    tenant = world.tenants[0].id
    mcp = next(a for a in world.apps if a.name == "mcp")
    app = App(
        name="broker-command",
        client_id=stable_id("app", "broker-command"),
        tenant_id=tenant,
        object_id=stable_id("sp", "broker-command"),
        secret="broker-command-" + secrets.token_hex(8),
        redirect_uris=(f"{base}/callback",),
        multi_tenant=False,
    )
    world = world.with_app(app).with_grant(
        Grant(app.client_id, mcp.client_id, ("access_as_user",), user="alice")
    )
    tls = make_tls_material()
    (tmp_path / "cert.pem").write_bytes(tls.server_cert_pem)
    (tmp_path / "key.pem").write_bytes(tls.server_key_pem)
    redis_tls = RedisServer(tls=True).start()
    admin = redis_tls.client()
    try:
        admin.execute_command(
            "ACL", "SETUSER", "agent", "on", ">agent-pw-77", "resetkeys", "~ep:*", "-@all",
            "+get", "+set", "+del", "+eval", "+evalsha", "+script|load", "+ping",
        )  # fmt: skip
    finally:
        admin.close()
    url = f"rediss://agent:agent-pw-77@127.0.0.1:{redis_tls.port}/0"
    keys = "k1:" + base64_key()
    proc: subprocess.Popen[str] | None = None
    stores: list[RedisStore] = []
    try:
        with EntraEmulator(world=world) as idp:
            bundle = tmp_path / "bundle.pem"
            bundle.write_bytes(Path(idp.ca_file).read_bytes() + b"\n" + tls.ca_cert_pem)
            config = tmp_path / "broker.json"
            config.write_text(
                json.dumps(
                    {
                        "client_id": app.client_id,
                        "tenant_id": tenant,
                        "authority_host": idp.url,
                        "redirect_uris": [f"{base}/callback"],
                        "ca_file": idp.ca_file,
                    }
                )
            )
            assert redis_tls.ca_file is not None
            environ = {
                **os.environ,
                "ENTRA_PASSTHROUGH_CONSENT_KEYS": keys,
                "ENTRA_PASSTHROUGH_CONSENT_CLIENT_SECRET": app.secret,
                "ENTRA_PASSTHROUGH_REDIS_URL": url,
                "ENTRA_PASSTHROUGH_REDIS_CA_FILE": redis_tls.ca_file,
            }
            proc = subprocess.Popen(
                [
                    sys.executable, "-m", "entra_passthrough.cli", "broker",
                    "--config", str(config), "--port", str(port),
                    "--certfile", str(tmp_path / "cert.pem"),
                    "--keyfile", str(tmp_path / "key.pem"),
                ],
                env=environ,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            for _ in range(600):  # bounded readiness poll
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            else:
                pytest.fail("the broker never listened")
            keyring = Keyring.from_string(keys)
            stores = [RedisStore.from_url(url, ca_file=redis_tls.ca_file) for _ in range(2)]
            replicas = [
                DelegatedConsent(
                    client_id=app.client_id,
                    tenant_id=tenant,
                    client_secret=app.secret,
                    store=store,
                    keyring=keyring,
                    broker_url=base,
                    authority_host=idp.url,
                    http_client=idp.msal_http_client(),
                )
                for store in stores
            ]
            user = idp.users["alice"]
            request = TokenRequest(
                scopes=(f"{idp.mcp.app_id_uri}/access_as_user",),
                caller=platform_caller("chat-alice-command", upn=user.upn),
            )
            with pytest.raises(ConsentRequired) as info:
                await replicas[0].get_token_async(request)
            assert info.value.link is not None
            trust = ssl.create_default_context(cafile=str(bundle))
            async with httpx2.AsyncClient(verify=trust, follow_redirects=True) as browser:
                done = await submit_form_post(browser, await browser.get(info.value.link))
            assert done.status_code == 200, done.text[:300]
            for replica in replicas:
                assert await replica.get_token_async(request) is not None
                replica.close()
            proc.terminate()
            _, err = proc.communicate(timeout=30)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.communicate()
        for store in stores:
            await store.aclose()
        redis_tls.stop()
    assert "grants are shared through RedisStore(rediss://127.0.0.1:" in err
    assert "WARNING" not in err
    assert "agent-pw-77" not in err


def base64_key() -> str:
    import base64
    import secrets

    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
