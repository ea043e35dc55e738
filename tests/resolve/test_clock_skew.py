"""This host's clock behind Entra's: still one on-behalf-of POST per user token.

The cache counts a token's expiry on this host's clock (``started + expires_in``) and caps it
at the assertion's ``exp``, which is on Entra's clock. With this host behind Entra's by more
than the cap's slack (30 s), a downstream token that outlives its assertion on Entra's clock
ended short of the cap on this host's and was refreshed ahead: two POSTs per user token, every
token. The emulator's clock is moved (only its modules' ``time``); the library, MSAL and the
cache keep this host's. Counts, never times: the cache's own clock is a fake one, moved on.
"""

from __future__ import annotations

import importlib
import pkgutil
import time
import types
from collections.abc import Iterator

import pytest

import entra_passthrough.testing as emulator_package
from entra_passthrough import AssertionNotUsable, Caller, TokenCache, TokenChain
from entra_passthrough.testing import EntraEmulator, Lifetimes, World

from .conftest import decode, make_obo, mcp_scope, obo_posts

LIFETIME = 600.0  # the emulator's access tokens (user and downstream): ten minutes
AHEAD = 60.0  # Entra's clock ahead of this host's


class _Shifted(types.ModuleType):
    """``time`` with ``time()`` moved by ``offset`` seconds."""

    def __init__(self, offset: float) -> None:
        super().__init__("time")
        self.offset = offset

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)

    def time(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def entra_ahead(monkeypatch: pytest.MonkeyPatch) -> Iterator[EntraEmulator]:
    shifted = _Shifted(AHEAD)
    for info in pkgutil.iter_modules(emulator_package.__path__):
        module = importlib.import_module(f"{emulator_package.__name__}.{info.name}")
        if getattr(module, "time", None) is time:
            monkeypatch.setattr(module, "time", shifted)
    world = World.default().with_lifetimes(Lifetimes(access_token=int(LIFETIME)))
    with EntraEmulator(world=world) as idp:
        yield idp


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def test_one_post_per_user_token_with_this_host_behind(entra_ahead: EntraEmulator) -> None:
    idp = entra_ahead
    clock = Clock()
    chain = TokenChain([make_obo(idp)], cache=TokenCache(clock=clock))
    try:
        assertion = idp.user_token("alice", audience=idp.agent.client_id, lifetime=int(LIFETIME))
        cap = float(decode(assertion)["exp"])
        caller = Caller.from_token(assertion)
        scopes = mcp_scope(idp)
        before = obo_posts(idp)
        first = await chain.get_token_async(scopes, caller=caller)
        own_exp = float(decode(first.token)["exp"])
        assert own_exp >= cap  # it outlives its assertion on Entra's clock: capped
        assert first.expires_on < cap - 30  # ... but on this host's it ends short of the cap

        # Through the token's life, past where a refresh ahead would start (5 min before its
        # end), to its last seconds: the same token, and no second POST.
        for moment in (0.0, 200.0, 320.0, 450.0, first.expires_on - clock.now - 1.0):
            clock.now = time.time() + moment
            served = await chain.get_token_async(scopes, caller=caller)
            assert served.token == first.token
            await chain.cache.wait_refreshes_async()
        assert obo_posts(idp) - before == 1
        assert chain.cache.stats().refreshes == 0

        # Never served past its own expiry on this host's clock (its exp on Entra's).
        clock.now = first.expires_on
        assert chain.cached_token(scopes, caller=caller) is None
    finally:
        chain.close()


async def test_an_assertion_expired_only_on_entras_clock_says_this_host_is_behind(
    entra_ahead: EntraEmulator,
) -> None:
    # Valid for 30 more seconds by this host's clock, expired 30 s ago by Entra's: AADSTS500133,
    # whose fix points at this host's clock, not only at a fresh user token.
    idp = entra_ahead
    now = int(time.time())
    assertion = idp.user_token(
        "alice",
        audience=idp.agent.client_id,
        extra_claims={"iat": now - 10, "nbf": now - 10, "exp": now + 30},
    )
    chain = TokenChain([make_obo(idp)])
    try:
        with pytest.raises(AssertionNotUsable) as info:
            await chain.get_token_async(mcp_scope(idp), caller=Caller.from_token(assertion))
    finally:
        chain.close()
    error = info.value
    assert error.code is not None
    assert error.code.code == 500133
    assert "this host's clock is behind Entra's" in str(error)
