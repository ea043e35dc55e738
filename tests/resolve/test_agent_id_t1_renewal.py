"""The blueprint's T1 (``AgentIdentityOnBehalfOf``): renewed ahead of its expiry, and a renewal
that fails leaves the held T1 in use while it is valid.

A failed renewal (HTTP 503, a timeout, a dropped connection) raised although the held T1 had
minutes left, so during an Entra blip in the last five minutes of every T1 each new user failed.
Now the held T1 is sent until ``_T1_SAFETY`` before its end, the failure is logged (WARNING,
never the token), and the next attempt waits ``_T1_RETRY`` (not one request per user). A T1 that
lives less than the margin was renewed for every exchange: the margin is at most half its life.

Time passes by moving ``time.time`` for the whole process (the library, MSAL and the emulator
alike), as if the clock had run on."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from entra_passthrough import (
    AgentIdentityOnBehalfOf,
    SourceUnavailable,
    TokenChain,
    bind_caller,
)
from entra_passthrough._http import SHARED_THROTTLE, Timeouts
from entra_passthrough.testing import EntraEmulator, Lifetimes, World

from .conftest import decode, mcp_scope, session, token_posts

T1_LIFETIME = 600  # the emulator's access tokens, T1 among them: ten minutes
_real_time = time.time


class _Clock:
    """``time.time`` moved on by ``offset`` seconds."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return _real_time() + self.offset


@pytest.fixture(autouse=True)
def _fresh_throttle() -> Iterator[None]:
    SHARED_THROTTLE.clear()
    yield
    SHARED_THROTTLE.clear()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    moved = _Clock()
    monkeypatch.setattr(time, "time", moved)
    return moved


def _emulator(lifetime: int) -> EntraEmulator:
    return EntraEmulator(world=World.default().with_lifetimes(Lifetimes(access_token=lifetime)))


@pytest.fixture
def idp() -> Iterator[EntraEmulator]:
    with _emulator(T1_LIFETIME) as emulator:
        yield emulator


def _source(idp: EntraEmulator) -> AgentIdentityOnBehalfOf:
    return AgentIdentityOnBehalfOf(
        blueprint_client_id=idp.blueprint.client_id,
        agent_identity_id=idp.agent_identity.client_id,
        tenant_id=idp.tenant_id,
        client_secret=idp.blueprint.secret,
        authority_host=idp.url,
        http_client=session(idp),
        timeouts=Timeouts(retries=0),  # one failed request is one failed renewal
    )


def _t1_grants(idp: EntraEmulator) -> int:
    return int(idp.stats()["grants"]["client_credentials"])


def _serve(idp: EntraEmulator, chain: TokenChain, user: str) -> dict[str, Any]:
    with bind_caller(token=idp.user_token(user, audience=idp.blueprint.client_id)):
        return decode(chain.get_token(mcp_scope(idp)).token)


def test_a_failed_renewal_keeps_the_valid_t1_and_backs_off(
    idp: EntraEmulator, clock: _Clock, caplog: pytest.LogCaptureFixture
) -> None:
    chain = TokenChain([_source(idp)])
    try:
        _serve(idp, chain, "alice")
        assert _t1_grants(idp) == 1

        # The T1 is due for renewal (less than 300 s left) but valid for ~290 s more: the
        # renewal is answered 503. bob is served with the held T1.
        clock.offset = T1_LIFETIME - 290
        idp.inject_fault("token", status=503, count=1)
        posts = token_posts(idp)
        with caplog.at_level(logging.WARNING, logger="entra_passthrough.agent_id"):
            claims = _serve(idp, chain, "bob")
        assert claims["oid"] == idp.users["bob"].oid
        assert token_posts(idp) - posts == 2  # the failed renewal, bob's exchange
        warnings = [r for r in caplog.records if r.name == "entra_passthrough.agent_id"]
        assert len(warnings) == 1
        assert warnings[0].levelno == logging.WARNING
        assert "SourceUnavailable" in warnings[0].getMessage()
        held = chain.sources[0]._t1._token  # type: ignore[attr-defined]
        assert held.token not in caplog.text

        # Within the back-off: no renewal request, the held T1 is sent.
        posts = token_posts(idp)
        assert _serve(idp, chain, "alice")["oid"] == idp.users["alice"].oid
        assert token_posts(idp) - posts == 1

        # After the back-off the renewal is tried again, and succeeds.
        clock.offset += 20
        SHARED_THROTTLE.clear()  # its 2 s negative entry runs on the monotonic clock: past too
        before = _t1_grants(idp)
        assert _serve(idp, chain, "bob")["oid"] == idp.users["bob"].oid
        assert _t1_grants(idp) - before == 1
    finally:
        idp.clear_faults()
        chain.close()


def test_a_failed_renewal_of_a_t1_about_to_expire_is_raised(
    idp: EntraEmulator, clock: _Clock
) -> None:
    chain = TokenChain([_source(idp)])
    try:
        _serve(idp, chain, "alice")
        clock.offset = T1_LIFETIME - 30  # 30 s left: too little to send it
        idp.inject_fault("token", status=503, count=1)
        with pytest.raises(SourceUnavailable, match="T1"):
            _serve(idp, chain, "bob")
    finally:
        idp.clear_faults()
        chain.close()


def test_a_t1_shorter_than_the_margin_is_not_renewed_for_every_exchange() -> None:
    # A T1 of two minutes (less than the 300 s margin) was renewed before every exchange.
    with _emulator(120) as idp:
        chain = TokenChain([_source(idp)])
        try:
            for user in ("alice", "bob", "alice", "bob"):
                assert _serve(idp, chain, user)["oid"] == idp.users[user].oid
            assert _t1_grants(idp) == 1
        finally:
            chain.close()


async def test_a_cold_burst_and_a_due_renewal_each_cost_one_t1(
    idp: EntraEmulator, clock: _Clock
) -> None:
    chain = TokenChain([_source(idp)])
    users = ("alice", "bob") * 6  # a new user token each: each a cache miss, an exchange

    async def burst() -> None:
        async def one(user: str) -> dict[str, Any]:
            with bind_caller(token=idp.user_token(user, audience=idp.blueprint.client_id)):
                return decode((await chain.get_token_async(mcp_scope(idp))).token)

        results = await asyncio.gather(*(one(u) for u in users))
        assert [r["oid"] for r in results] == [idp.users[u].oid for u in users]

    try:
        await burst()
        assert _t1_grants(idp) == 1
        clock.offset = T1_LIFETIME - 200  # due for renewal, still valid
        await burst()
        assert _t1_grants(idp) == 2
    finally:
        chain.close()
