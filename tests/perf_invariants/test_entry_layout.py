"""What one cached OBO entry holds (the memory bound per entry rests on it): a flat key whose
prefix (source, scopes, claims, capabilities) is one object shared by every user's entry, and
the result alone as the value (an entry capped by its assertion needs no timing object)."""

from __future__ import annotations

from entra_passthrough import Caller, OnBehalfOf, TokenChain, TokenResult, bind_caller
from entra_passthrough.testing import EntraEmulator


async def test_entries_share_their_key_prefix_and_hold_the_result_alone(
    entra_emulator: EntraEmulator,
) -> None:
    idp = entra_emulator
    source = OnBehalfOf(
        client_id=idp.agent.client_id,
        tenant_id=idp.tenant_id,
        authority_host=idp.url,
        client_secret=idp.agent.secret,
        http_client=idp.msal_http_client(),
    )
    chain = TokenChain([source])
    scopes = (f"{idp.mcp.app_id_uri}/.default",)
    users = ("alice", "bob")
    try:
        for name in users:
            raw = [(b"authorization", f"Bearer {idp.user_token(name)}".encode())]
            with bind_caller(Caller.from_headers(raw), cap_at_expiry=False):
                await chain.get_token_async(list(scopes))  # the general path builds the key
            hit = chain.cached_token(scopes, caller=Caller.from_headers(raw))  # the hit path
            assert hit is not None
        entries = dict(chain.cache._entries)
    finally:
        chain.close()
    assert len(entries) == len(users)
    prefixes = {id(key[0]) for key in entries}
    assert len(prefixes) == 1  # one shared object
    for key, value in entries.items():
        assert isinstance(key, tuple)
        assert len(key) == 3  # (prefix, client id, assertion hash): no nested partition tuple
        assert all(isinstance(part, str) for part in key[1:])
        assert isinstance(value, TokenResult)  # no timing object beside it
        assert value.cache_key is key
