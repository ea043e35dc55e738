"""What ``TokenChain.get_token[_async]`` refuses before any source is asked: no scopes, or an
entry that is not a non-blank string. MSAL sends only its OpenID scopes for an empty list, and
Entra answers those with a token for Microsoft Graph: ``get_token([])`` returned (and cached) a
token for an audience nobody asked for; ``[None]`` was an untyped ``TypeError``. Also: the
duplicate-name refusal carries its fix, and a chain with no sources says so. Real MSAL against
the emulator."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from entra_passthrough import (
    Caller,
    ConfigurationError,
    ManagedIdentity,
    PolicyViolation,
    TokenChain,
)
from entra_passthrough.testing import EntraEmulator

from .conftest import make_obo, mcp_scope, obo_posts

BAD_SCOPES: dict[str, Any] = {
    "empty list": [],
    "empty tuple": (),
    "empty string": [""],
    "blank": ["  "],
    "blank beside a good one": ["api://x/.default", " \n"],
    "none": [None],
    "bytes": [b"api://x/.default"],
}


@pytest.mark.parametrize("driver", ["sync", "async"])
@pytest.mark.parametrize("case", sorted(BAD_SCOPES))
def test_bad_scopes_are_refused_before_any_request(
    idp: EntraEmulator, driver: str, case: str
) -> None:
    chain = TokenChain([make_obo(idp)])
    caller = Caller.from_token(idp.user_token("alice", audience=idp.agent.client_id))
    before = obo_posts(idp)

    def ask() -> object:
        if driver == "sync":
            return chain.get_token(BAD_SCOPES[case], caller=caller)
        return asyncio.run(chain.get_token_async(BAD_SCOPES[case], caller=caller))

    try:
        with pytest.raises(ConfigurationError) as info:
            ask()
    finally:
        chain.close()
    assert info.value.fix is not None
    assert "api://<app>/.default" in info.value.fix
    assert obo_posts(idp) == before
    assert chain.cache.stats().size == 0


def test_good_scopes_still_work(idp: EntraEmulator) -> None:
    chain = TokenChain([make_obo(idp)])
    caller = Caller.from_token(idp.user_token("alice", audience=idp.agent.client_id))
    try:
        assert chain.get_token(mcp_scope(idp), caller=caller).token
        assert chain.get_token(f" {mcp_scope(idp)[0]} ", caller=caller).token  # one string
    finally:
        chain.close()


def test_duplicate_source_names_say_how_to_tell_them_apart() -> None:
    with pytest.raises(ConfigurationError) as info:
        TokenChain([ManagedIdentity(), ManagedIdentity()])
    assert info.value.fix is not None
    assert "name=" in info.value.fix
    assert "managed_identity" in info.value.fix


def test_a_chain_without_sources_says_so() -> None:
    chain = TokenChain([])
    with pytest.raises(PolicyViolation) as info:
        chain.get_token(["api://x/.default"])
    assert "no sources" in str(info.value)
    assert info.value.fix is not None
    assert "TokenChain([" in info.value.fix
