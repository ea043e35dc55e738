"""The standalone consent broker on the consent tests' HTTPS slot, with a store of its own."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from _support.consent import ConsentEnv, follow_link, platform_caller
from entra_passthrough import ConsentRequired, TokenRequest
from entra_passthrough._sources.delegated import DelegatedConsent
from entra_passthrough._store import Keyring
from entra_passthrough.consent import ConsentBroker
from entra_passthrough.redis import RedisStore


class StandaloneBroker:
    """What `entra-passthrough broker --store redis://...` serves. Its RedisStore lives on the
    server thread's event loop (redis-py asyncio clients are bound to one loop), so it is
    closed there."""

    def __init__(self, env: ConsentEnv, store: RedisStore, keyring: Keyring) -> None:
        self.store = store
        self._loops: list[asyncio.AbstractEventLoop] = []
        broker = ConsentBroker(
            client_id=env.app.client_id,
            tenant_id=env.idp.tenant_id,
            authority_host=env.idp.url,
            redirect_uris=[env.redirect_uri],
            client_secret=env.app.secret,
            store=store,
            keyring=keyring,
            http_client=env.idp.msal_http_client(),
        )
        inner = Starlette(routes=[Mount("/consent", broker.app)])

        async def app(scope: Any, receive: Any, send: Any) -> None:
            self._loops.append(asyncio.get_running_loop())
            await inner(scope, receive, send)

        env.slot.app = app

    async def aclose(self) -> None:
        if self._loops:
            closing = asyncio.run_coroutine_threadsafe(self.store.aclose(), self._loops[0])
            await asyncio.wrap_future(closing)


async def consent(env: ConsentEnv, source: DelegatedConsent, user: str, chat_id: str) -> Any:
    """Walk ``user`` through consent for the platform chat ``chat_id`` (ConsentRequired, then
    the link); the request that will now be served."""
    u = env.idp.users[user]
    request = TokenRequest(scopes=(env.mcp_scope,), caller=platform_caller(chat_id, upn=u.upn))
    with pytest.raises(ConsentRequired) as info:
        await source.get_token_async(request)
    assert info.value.link is not None
    page = await follow_link(env, info.value.link)
    assert page.status_code == 200, page.text
    return request
