"""A cached token is only ever served for a source of the kind it was issued as. Two chains that
share one ``TokenCache`` with a source of one name and different kinds, or a source whose kind
changed at run time, served the app chain's token to a user chain's platform-identified caller on
the hit path (the full path refused it). Entries are keyed by the source's kind too, and a hit of
another kind than its source's is never served. (Replicas sharing Redis with differently
configured sources: ``tests/scale_out/test_l2_keyed_by_kind.py``.)"""

from __future__ import annotations

import time
from typing import Any

import pytest

from entra_passthrough import (
    Caller,
    IdentityKind,
    Policy,
    PolicyViolation,
    TokenCache,
    TokenChain,
    TokenResult,
)

USER, APP = IdentityKind.USER, IdentityKind.APP
SCOPES = ["api://x/.default"]


class Source:
    name = "custom"

    def __init__(self, kind: IdentityKind) -> None:
        self.kind = kind
        self.calls = 0

    def cache_partition(self, request: Any) -> tuple[str, ...] | None:
        caller = request.caller
        return ("u", caller.user_id) if caller is not None and caller.user_id else None

    def get_token(self, request: Any) -> TokenResult:
        self.calls += 1
        return TokenResult(
            token=f"eyJ.{self.kind.value}-token-{self.calls}.sig",
            expires_on=time.time() + 3600,
            kind=self.kind,
            source=self.name,
        )

    async def get_token_async(self, request: Any) -> TokenResult:
        return self.get_token(request)


async def _get(chain: TokenChain, caller: Caller, driver: str) -> TokenResult:
    if driver == "sync":
        return chain.get_token(SCOPES, caller=caller)
    return await chain.get_token_async(SCOPES, caller=caller)


@pytest.mark.parametrize("driver", ["sync", "async"])
async def test_two_chains_sharing_a_cache_never_serve_each_others_kind(driver: str) -> None:
    cache = TokenCache()
    app_source, user_source = Source(APP), Source(USER)
    app_chain = TokenChain([app_source], policy=Policy.USER_OR_APP, cache=cache)
    user_chain = TokenChain([user_source], policy=Policy.USER_OR_APP, cache=cache)
    caller = Caller(user_id="platform-user-1")
    assert (await _get(app_chain, caller, driver)).kind is APP
    for _ in range(3):  # the miss, then the hit path
        got = await _get(user_chain, caller, driver)
        assert got.kind is USER
        assert "user-token" in got.token
    assert user_source.calls == 1
    assert (await _get(app_chain, caller, driver)).kind is APP  # and the other way round
    assert app_source.calls == 1


@pytest.mark.parametrize("driver", ["sync", "async"])
async def test_a_source_whose_kind_changed_is_never_served_its_old_kind(driver: str) -> None:
    source = Source(APP)
    chain = TokenChain([source], policy=Policy.USER_OR_APP)
    caller = Caller(user_id="platform-user-1")
    assert (await _get(chain, caller, driver)).kind is APP
    source.kind = USER
    try:
        again = await _get(chain, caller, driver)
    except PolicyViolation:
        return  # refused: fail closed is fine
    assert again.kind is USER
    assert source.calls == 2
