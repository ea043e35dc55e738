"""What a request arriving with a known token costs on the way out: no claims decode."""

from __future__ import annotations

from typing import Any

import pytest

from entra_passthrough import Caller, OnBehalfOf, TokenChain
from entra_passthrough._caller import bind_caller
from entra_passthrough.testing import EntraEmulator


async def test_a_new_caller_with_a_cached_token_is_never_decoded(
    entra_emulator: EntraEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import entra_passthrough._caller as caller_module

    idp = entra_emulator
    real = caller_module.UnverifiedClaims.from_token
    decodes = 0

    def counting(token: str) -> Any:
        nonlocal decodes
        decodes += 1
        return real(token)

    monkeypatch.setattr(caller_module.UnverifiedClaims, "from_token", staticmethod(counting))
    source = OnBehalfOf(
        client_id=idp.agent.client_id,
        tenant_id=idp.tenant_id,
        authority_host=idp.url,
        client_secret=idp.agent.secret,
        http_client=idp.msal_http_client(),
    )
    chain = TokenChain([source])
    scopes = (f"{idp.mcp.app_id_uri}/.default",)
    raw = [(b"authorization", f"Bearer {idp.user_token('alice')}".encode())]
    try:
        tokens = set()
        for _ in range(50):  # 50 requests of one user, each with its own Caller
            caller = Caller.from_headers(raw)
            with bind_caller(caller, cap_at_expiry=False):  # as the middleware binds it
                tokens.add((await chain.get_token_async(scopes)).token)
            caller.end()
    finally:
        chain.close()
    assert len(tokens) == 1
    assert chain.cache.stats().misses == 1
    assert decodes == 1  # the miss (preflight reads the claims); every hit hashed only
