"""The standalone consent broker on the consent tests' HTTPS slot, with a store of its own."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.applications import Starlette
from starlette.routing import Mount

from _support.consent import ConsentEnv
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
