"""A managed identity as an app's federated credential: one identity endpoint request per
resource at a time. Every OBO exchange asks for the client assertion; a cold burst of users sent
one request each (32 users, 32 requests), and an endpoint that throttles a burst (IMDS answers
429) failed some users though one token was needed. A cached token is renewed ahead of need by
one caller while the others keep using it."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from entra_passthrough import (
    ManagedIdentity,
    SourceUnavailable,
    TokenAcquisitionError,
    TokenChain,
    bind_caller,
)
from entra_passthrough._http import SHARED_THROTTLE
from entra_passthrough.testing import EntraEmulator, Lifetimes, World

from .conftest import make_mi, make_obo, mcp_scope

_USERS = 32
_AUDIENCE = "api://AzureADTokenExchange"


@pytest.fixture(autouse=True)
def _fresh_throttle() -> Iterator[None]:
    # The Retry-After gates and negative entries are process-wide: a test's failures must not
    # make the next test's requests fail fast without being sent.
    SHARED_THROTTLE.clear()
    yield
    SHARED_THROTTLE.clear()


def msi_requests(idp: EntraEmulator) -> int:
    return idp.stats()["endpoints"]["msi"]


async def _burst(idp: EntraEmulator, chain: TokenChain, users: int) -> list[Any]:
    tokens = [idp.user_token(("alice", "bob")[i % 2]) for i in range(users)]

    async def one(token: str) -> Any:
        with bind_caller(token=token):
            return await chain.get_token_async(mcp_scope(idp))

    return await asyncio.gather(*(one(t) for t in tokens), return_exceptions=True)


def _mi_obo_chain(idp: EntraEmulator) -> tuple[ManagedIdentity, TokenChain]:
    mi = make_mi(idp)
    return mi, TokenChain([make_obo(idp, managed_identity=mi)])


async def test_a_cold_burst_sends_one_identity_endpoint_request(idp: EntraEmulator) -> None:
    mi, chain = _mi_obo_chain(idp)
    try:
        # The identity endpoint answers slowly: the whole burst arrives while the first
        # request is on the wire.
        idp.inject_fault("msi", status=None, delay=0.3, count=1)
        before = msi_requests(idp)
        results = await _burst(idp, chain, _USERS)
        assert [r for r in results if isinstance(r, BaseException)] == []
        assert msi_requests(idp) - before == 1
    finally:
        chain.close()
        mi.close()


async def test_a_throttling_endpoint_costs_one_flight_not_every_user(idp: EntraEmulator) -> None:
    """As IMDS under a burst: the first answers are 429 Retry-After: 1. One caller waits them
    out (within its retries); everyone else gets the token it fetched."""
    mi, chain = _mi_obo_chain(idp)
    try:
        idp.inject_fault("msi", status=429, retry_after=1, count=2)
        before = msi_requests(idp)
        results = await _burst(idp, chain, _USERS)
        assert [type(r).__name__ for r in results if isinstance(r, BaseException)] == []
        assert msi_requests(idp) - before == 3  # 429, 429, the token
    finally:
        chain.close()
        mi.close()


async def test_an_endpoint_that_fails_is_not_asked_by_every_waiting_user(
    idp: EntraEmulator,
) -> None:
    """Every user fails (typed), and the endpoint gets one flight's attempts, not one per user:
    after the flight failed for good, the next callers find the failure remembered
    (``Timeouts.negative_ttl``) instead of each sending their own retries."""
    mi, chain = _mi_obo_chain(idp)
    try:
        idp.inject_fault("msi", status=500, count=1000)
        before = msi_requests(idp)
        results = await _burst(idp, chain, 8)
        assert all(isinstance(r, TokenAcquisitionError) for r in results), results
        assert msi_requests(idp) - before <= 3  # one flight: the first attempt + 2 retries
    finally:
        idp.clear_faults()
        chain.close()
        mi.close()


class _GatedSession(requests.Session):
    """A requests session whose sends wait for ``gate`` while it is set: a renewal held on the
    wire for as long as the test needs, without timing."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def send(self, request: Any, **kwargs: Any) -> Any:
        gate = self.gate
        if gate is not None:
            self.entered.set()
            gate.wait(10)
        return super().send(request, **kwargs)


@pytest.fixture(scope="module")
def short_lived() -> Iterator[EntraEmulator]:
    # 500 s tokens: usable (more than the 300 s margin left) but already due for renewal.
    world = World.default().with_lifetimes(Lifetimes(access_token=500))
    with EntraEmulator(world=world) as emulator:
        yield emulator


def test_a_token_due_for_renewal_is_renewed_by_one_caller_while_others_use_it(
    short_lived: EntraEmulator,
) -> None:
    idp = short_lived
    http = _GatedSession()
    mi = make_mi(idp, http_client=http)
    try:
        before = msi_requests(idp)
        first = mi.token_for_resource(_AUDIENCE)
        assert msi_requests(idp) - before == 1

        gate = threading.Event()
        http.gate = gate
        renewed: list[str] = []
        renewer = threading.Thread(
            target=lambda: renewed.append(mi.token_for_resource(_AUDIENCE)), daemon=True
        )
        renewer.start()
        try:
            # The due token is renewed ahead of need: the renewal is on the wire...
            assert http.entered.wait(10), "a token due for renewal was not renewed"
            # ...and every other caller meanwhile gets the valid cached token at once.
            others = [mi.token_for_resource(_AUDIENCE) for _ in range(16)]
            assert others == [first] * 16
        finally:
            gate.set()
            renewer.join(10)
        http.gate = None
        assert len(renewed) == 1
        assert renewed[0] != first
        assert msi_requests(idp) - before == 2
    finally:
        mi.close()
        http.close()


def test_a_failed_renewal_keeps_the_valid_token(short_lived: EntraEmulator) -> None:
    idp = short_lived
    mi = make_mi(idp)
    try:
        first = mi.token_for_resource(_AUDIENCE)
        idp.inject_fault("msi", status=400, count=1)  # not retried: one failed renewal
        before = msi_requests(idp)
        assert mi.token_for_resource(_AUDIENCE) == first
        assert msi_requests(idp) - before == 1
    finally:
        idp.clear_faults()
        mi.close()


def test_waiting_for_the_flight_is_bounded_by_the_deadline(idp: EntraEmulator) -> None:
    """A caller waiting for another's request gives up at its own deadline, typed."""
    from entra_passthrough._http import deadline

    http = _GatedSession()
    mi = make_mi(idp, http_client=http)
    release = threading.Event()
    http.gate = release
    first = threading.Thread(target=lambda: _swallow(mi), daemon=True)
    first.start()
    try:
        assert http.entered.wait(10)  # the first caller's request is on the wire
        with deadline(0.2), pytest.raises(SourceUnavailable) as info:
            mi.token_for_resource(_AUDIENCE)
        assert "deadline" in str(info.value)
    finally:
        release.set()
        first.join(10)
        mi.close()
        http.close()


def _swallow(mi: ManagedIdentity) -> None:
    with contextlib.suppress(TokenAcquisitionError):
        mi.token_for_resource(_AUDIENCE)
