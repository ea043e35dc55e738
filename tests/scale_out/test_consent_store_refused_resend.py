"""A grant write Redis ran (its reply lost: a dropped connection), which redis-py sends again
once (``retry_on_error``); the resend is refused (the password rotated, or the node demoted to
a replica, meanwhile). The refusal does not prove the write did not run: the broker never
answers "was not saved" (``store_refused``, ``stored: false``) while Redis holds the grant; it
re-reads first (the demoted node still serves reads: the signed-in page), and when the re-read
is refused too, the outcome is unknown (``store_outcome_unknown``, with a sign-out form)."""

from __future__ import annotations

import logging

import pytest
import redis as redis_sync

from _support.consent import consent_link, form_post_fields, platform_caller
from entra_passthrough import TokenRequest
from entra_passthrough._store import Keyring
from entra_passthrough.redis import RedisStore

from ._dropproxy import DropProxy
from ._server import PASSWORD, RedisServer, free_port


class RotatingProxy(DropProxy):
    """Drops the reply of the armed write (Redis ran it) and, at that moment, runs ``on_drop``."""

    on_drop = None

    async def _serve(self, client_r, client_w):  # type: ignore[override]
        return await super()._serve(client_r, _Hook(client_w, self))


class _Hook:
    def __init__(self, w, proxy):
        self._w, self._p = w, proxy

    def __getattr__(self, name):
        return getattr(self._w, name)

    @property
    def transport(self):
        proxy = self._p
        real = self._w.transport

        class T:
            def abort(self_inner):
                if proxy.matched and proxy.on_drop is not None:
                    fn, proxy.on_drop = proxy.on_drop, None
                    fn()
                real.abort()

            def __getattr__(self_inner, n):
                return getattr(real, n)

        return T()


@pytest.mark.parametrize("refusal", ["credentials", "readonly"])
async def test_a_refused_resend_of_a_write_that_ran_is_never_not_saved(
    consent_env, refusal, caplog
) -> None:
    env = consent_env
    server = RedisServer().start()
    proxy = await RotatingProxy(server.port).start()
    ns = f"r27{free_port()}:"
    store = RedisStore.from_url(proxy.url(server.url), namespace=ns, timeout=2.0)
    admin = redis_sync.Redis(host="127.0.0.1", port=server.port, password=PASSWORD)
    try:
        source, _broker = env.make(store=store, keyring=Keyring.generate())
        user = env.idp.users["rita"]
        caller = platform_caller(f"chat-r27-{free_port()}", upn=user.upn)

        def refuse() -> None:
            if refusal == "credentials":
                admin.config_set("requirepass", "rotated-password-0123")
            else:  # a failover: this node is demoted to a replica (read-only), data kept
                admin.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))

        proxy.on_drop = refuse
        caplog.set_level(logging.WARNING, logger="entra_passthrough")
        link = await consent_link(source, env, caller)
        proxy.arm(b"$3\r\nSET\r\n", ns.encode() + b"ep:v2:grant:")
        async with env.browser() as browser:
            page = await browser.get(link)
            action, fields = form_post_fields(page)
            answer = await browser.post(action, data=fields, headers={"accept": "application/json"})
        assert proxy.matched, "the grant write never went through the proxy"
        if refusal == "credentials":
            admin = redis_sync.Redis(
                host="127.0.0.1", port=server.port, password="rotated-password-0123"
            )
        raw = [k for k in admin.keys(ns + "ep:v2:grant:*")]
        body = answer.json()
        served = None
        if raw and refusal == "readonly":  # the failover ends: the grant serves the user
            admin.execute_command("REPLICAOF", "NO", "ONE")
            token = await source.get_token_async(
                TokenRequest(scopes=(env.mcp_scope,), caller=caller)
            )
            served = token is not None
        assert raw, "the write ran (its reply was lost)"
        assert body.get("error") != "store_refused", body
        assert body.get("stored") is not False, body
        if refusal == "readonly":
            assert answer.status_code == 200, body  # the re-read found it
            assert served
        else:
            assert body.get("error") == "store_outcome_unknown", body
    finally:
        try:
            if refusal == "credentials":
                admin.config_set("requirepass", PASSWORD)
            else:
                admin.execute_command("REPLICAOF", "NO", "ONE")
        except Exception:
            pass
        admin.close()
        await store.aclose()
        await proxy.close()
        server.stop()
