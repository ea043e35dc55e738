"""Retry-After is honoured per authority for the whole process, not per source object."""

from __future__ import annotations

from typing import Any

import pytest

from entra_passthrough import Throttled, bind_caller
from entra_passthrough._http import SHARED_THROTTLE, Throttle
from entra_passthrough.testing import EntraEmulator

from .conftest import mcp_scope


def test_two_sources_for_one_authority_send_one_post_into_a_retry_after(
    idp: EntraEmulator, rig_factory: Any
) -> None:
    """Two ``OnBehalfOf`` objects (two chains) for the same tenant: the first 429 with
    ``Retry-After: 30`` closes the endpoint for both; the second never sends a POST."""
    first, second = rig_factory(), rig_factory()
    idp.inject_fault("token", status=429, retry_after=30, count=100)
    before = first.posts + second.posts
    with bind_caller(token=first.user_token("alice")), pytest.raises(Throttled):
        first.chain.get_token(mcp_scope(idp))
    for i in range(10):
        rig = second if i % 2 == 0 else first
        with bind_caller(token=rig.user_token("bob")), pytest.raises(Throttled) as info:
            rig.chain.get_token(mcp_scope(idp))
        assert info.value.retry_after is not None
        assert 0 < info.value.retry_after <= 30
    assert first.posts + second.posts - before == 1


def test_another_authority_is_not_blocked(idp: EntraEmulator, rig_factory: Any) -> None:
    """The gate is the token endpoint's (tenant included): a gate on another endpoint, or on
    another tenant of the same host, leaves this one open."""
    rig = rig_factory()
    failure_url = f"{idp.url}/some-other-tenant/oauth2/v2.0/token"
    from entra_passthrough._http import TransportFailure

    SHARED_THROTTLE.block_authority(
        failure_url, 30.0, TransportFailure("throttled", status=429, retry_after=30.0)
    )
    before = rig.posts
    with bind_caller(token=rig.user_token("alice")):
        assert rig.chain.get_token(mcp_scope(idp)).token
    assert rig.posts - before == 1


def test_the_shared_throttle_is_bounded() -> None:
    from entra_passthrough._http import TransportFailure

    throttle = Throttle()
    failure = TransportFailure("throttled", status=429, retry_after=60.0)
    for i in range(Throttle.MAX_ENTRIES + 500):
        throttle.block_authority(f"https://login.example/t{i}/oauth2/v2.0/token", 60.0, failure)
    assert len(throttle) <= Throttle.MAX_ENTRIES
    throttle.clear()
    assert len(throttle) == 0


def test_a_throttled_client_does_not_block_another_client_of_the_tenant(
    idp: EntraEmulator, rig_factory: Any
) -> None:
    """Entra throttles per application and tenant: a 429 with ``Retry-After: 30`` to client A
    (the agent app) closes the tenant's token endpoint for A only. Client B (another app of
    the same tenant, same token endpoint URL) keeps getting tokens, one POST each, while A's
    calls fail fast: one POST from A during the whole ``Retry-After``."""
    a = rig_factory()
    b = rig_factory(app=idp.blueprint)
    assert a.obo.client_id != b.obo.client_id
    idp.inject_fault("token", status=429, retry_after=30, count=1)  # the next POST: A's
    a_before, b_before = a.posts, b.posts
    with bind_caller(token=a.user_token("alice")), pytest.raises(Throttled) as first:
        a.chain.get_token(mcp_scope(idp))
    assert first.value.status == 429
    served = 0
    for i in range(10):
        user = "alice" if i % 2 == 0 else "bob"
        with bind_caller(token=b.user_token(user)):
            assert b.chain.get_token(mcp_scope(idp)).token
            served += 1
        with bind_caller(token=a.user_token(user)), pytest.raises(Throttled) as info:
            a.chain.get_token(mcp_scope(idp))
        assert info.value.retry_after is not None
        assert 0 < info.value.retry_after <= 30
    assert served == 10
    assert b.posts - b_before == 10  # B: every call a real request, none refused
    assert a.posts - a_before == 1  # A: the one 429, then nothing until Retry-After lapses
