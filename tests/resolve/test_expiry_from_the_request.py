"""A token's expiry is counted from when its request was sent, not from when the answer
arrived: ``expires_in`` counts from issuance, so the expiry counted from the answer (MSAL's
``expires_on``) ran past the token's own ``exp`` by the answer's time on the wire. The cache
served the token to that expiry: a token already expired reached the resource (up to 0.84 s
past ``exp`` in a probe's long runs), and a resource with no leeway refused it. Against the
emulator with a token latency, real MSAL."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest

from entra_passthrough import ManagedIdentity, TokenChain, TokenRequest, bind_caller
from entra_passthrough.testing import EntraEmulator
from entra_passthrough.testing._world import Lifetimes, World

from .conftest import make_obo, mcp_scope

LATENCY = 0.4
LIFETIME = 30


def _exp(token: str) -> float:
    payload = token.split(".")[1]
    return float(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"])


@pytest.fixture(scope="module")
def slow_idp() -> Iterator[EntraEmulator]:
    world = World.default().with_lifetimes(Lifetimes(access_token=LIFETIME))
    with EntraEmulator(world=world, token_latency=LATENCY) as idp:
        yield idp


def test_an_obo_token_expires_no_later_than_its_exp(slow_idp: EntraEmulator) -> None:
    chain = TokenChain([make_obo(slow_idp)])
    try:
        # a user token that outlives the downstream one: the downstream's own expiry applies
        with bind_caller(token=slow_idp.user_token("alice", audience=slow_idp.agent.client_id)):
            for _ in range(2):  # the first also builds the tenant's app (discovery)
                result = chain.get_token(mcp_scope(slow_idp))
                assert result.expires_on <= _exp(result.token)
                chain.cache.clear()
    finally:
        chain.close()


def test_a_managed_identity_token_expires_no_later_than_its_exp(
    slow_idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in EntraEmulator.MI_HOST_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in slow_idp.mi_env("app_service").items():
        monkeypatch.setenv(name, value)
    source: Any = ManagedIdentity()
    try:
        result = source.get_token(TokenRequest(tuple(mcp_scope(slow_idp))))
        assert result is not None
        assert result.expires_on <= _exp(result.token)
    finally:
        source.close()
