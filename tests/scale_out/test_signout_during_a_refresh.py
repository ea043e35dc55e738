"""A user signs out (the broker's sign-out form) while replica A's refresh of their grant is at
Entra, over a real redis-server with two replicas sharing the grant store and the shared (L2)
token cache. The token Entra issues after the sign-out reaches no one: not A's request (it
gets ``ConsentRequired``), not the shared cache, so not replica B; every later request on
either replica needs consent again. docs/consent.md: "sign-out stops new ones"."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from _support.consent import ConsentEnv, platform_caller, revoke_ticket, submit_form_post
from entra_passthrough import ConsentRequired, Policy, TokenCache, TokenChain, TokenRequest
from entra_passthrough._sources.delegated import DelegatedConsent
from entra_passthrough._store import Keyring
from entra_passthrough.redis import RedisStore, SharedTokenCache

from ._server import RedisServer, free_port

POST = 2.0  # A's refresh at Entra (the emulator delays it)


def _entered(source: DelegatedConsent) -> threading.Event:
    """Set when the source's POST of a refresh token starts."""
    entered = threading.Event()
    original = source.client.refresh

    def refresh(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        return original(*args, **kwargs)

    source.client.refresh = refresh  # type: ignore[method-assign]
    return entered


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_a_refresh_that_ends_after_the_sign_out_shares_no_token(
    consent_env: ConsentEnv,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
    sync: bool,
) -> None:
    env = consent_env
    namespace = f"signout{free_port()}:"
    keyring = Keyring.generate()
    stores = [RedisStore.from_url(redis_server.url, namespace=namespace) for _ in range(2)]
    chains: list[TokenChain] = []
    try:
        # A, then B: B's broker is the one mounted (it signs the user in and out).
        a, b = (env.make(store=s, keyring=keyring)[0] for s in stores)  # type: ignore[arg-type]
        chains = [
            TokenChain(
                [source],
                policy=Policy.USER_ONLY,
                cache=TokenCache(shared=SharedTokenCache(s, keyring, sync_store=s.sync())),
            )
            for source, s in zip((a, b), stores, strict=True)
        ]
        pat = env.idp.users["pat"]
        caller = platform_caller(f"chat-pat-signout-race-{sync}", upn=pat.upn)

        async def ask(chain: TokenChain) -> Any:
            if sync:  # the sync API, on a thread of its own
                return await asyncio.to_thread(chain.get_token, [env.mcp_scope], caller=caller)
            return await chain.get_token_async([env.mcp_scope], caller=caller)

        with pytest.raises(ConsentRequired) as info:
            await b.get_token_async(TokenRequest(scopes=(env.mcp_scope,), caller=caller))
        assert info.value.link is not None
        async with env.browser() as browser:
            page = await browser.get(info.value.link)
            done = await submit_form_post(browser, page)
            assert done.status_code == 200, done.text[:300]
            ticket = revoke_ticket(done.text)

            entered = _entered(a)
            env.idp.inject_fault("token", status=None, delay=POST)  # A's refresh only
            from_a = asyncio.ensure_future(ask(chains[0]))
            for _ in range(1000):  # bounded (~10 s)
                if entered.is_set():
                    break
                await asyncio.sleep(0.01)
            assert entered.is_set(), "A never started its refresh"
            await asyncio.sleep(0.3)  # A's POST is at Entra
            signed_out = await browser.post(
                f"{env.base}/revoke",
                data={"t": ticket},
                headers={"Origin": env.base.rsplit("/", 1)[0]},
            )
            assert signed_out.status_code == 200, signed_out.text[:300]
            assert not from_a.done(), "A's refresh ended before the sign-out"

        # A's request: the token Entra issued after the sign-out is not served...
        with pytest.raises(ConsentRequired):
            await asyncio.wait_for(from_a, 30)
        assert env.idp.wait_idle(10)
        # ...nor shared: B, which never served this user, has nothing to serve; nor cached in A.
        for chain in chains:
            with pytest.raises(ConsentRequired):
                await ask(chain)
        assert "keeping the newer one" not in caplog.text  # there is no newer grant
        assert "consent grant was deleted while its refresh was at Entra" in caplog.text
    finally:
        env.idp.clear_faults()
        for chain in chains:
            chain.close()
        for store in stores:
            await store.aclose()
