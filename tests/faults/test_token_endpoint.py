"""Time and throttling on the token endpoint: real MSAL, the emulator's faults, HTTPS."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest

from entra_passthrough import (
    ConsentRequired,
    SourceUnavailable,
    Throttled,
    Timeouts,
    bind_caller,
)
from entra_passthrough.testing import EntraEmulator

from .conftest import mcp_scope

FAST = Timeouts(connect=2.0, read=1.0, deadline=4.0, retries=2, backoff=0.01, max_backoff=0.02)


def test_429_retry_after_is_honoured_for_every_user_of_the_endpoint(
    idp: EntraEmulator, rig_factory: Any
) -> None:
    rig = rig_factory()
    idp.inject_fault("token", status=429, retry_after=30, count=100)
    before = rig.posts
    with bind_caller(token=rig.user_token("alice")), pytest.raises(Throttled) as info:
        rig.chain.get_token(mcp_scope(idp))
    assert rig.posts - before == 1  # a 30 s wait is not done inside the call
    first = info.value
    assert first.retry_after is not None
    assert 25 < first.retry_after <= 30
    assert first.status == 429
    assert "throttling" in str(first)
    assert "retry in" in str(first)
    for i in range(20):  # other users, other assertions: the endpoint is closed for all
        with (
            bind_caller(token=rig.user_token("bob" if i % 2 else "alice")),
            pytest.raises(Throttled) as again,
        ):
            rig.chain.get_token(mcp_scope(idp))
        assert again.value.retry_after is not None
        assert 0 < again.value.retry_after <= 30
    assert rig.posts - before == 1


def test_short_retry_after_is_waited_for_then_one_retry(
    idp: EntraEmulator, rig_factory: Any
) -> None:
    rig = rig_factory(FAST)
    idp.inject_fault("token", status=503, retry_after=1, count=1)
    before = rig.posts
    with bind_caller(token=rig.user_token()):
        result = rig.chain.get_token(mcp_scope(idp))
    assert result.token
    assert rig.posts - before == 2


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_transient_5xx_is_retried_with_backoff(
    idp: EntraEmulator, rig_factory: Any, status: int
) -> None:
    rig = rig_factory(FAST)
    idp.inject_fault("token", status=status, count=2)
    before = rig.posts
    with bind_caller(token=rig.user_token()):
        assert rig.chain.get_token(mcp_scope(idp)).token
    assert rig.posts - before == 3


def test_persistent_5xx_fails_typed_then_fails_fast_without_a_post(
    idp: EntraEmulator, rig_factory: Any
) -> None:
    rig = rig_factory(Timeouts(retries=2, backoff=0.01, max_backoff=0.02, negative_ttl=30))
    idp.inject_fault("token", status=503, count=3)
    before = rig.posts
    with bind_caller(token=rig.user_token()), pytest.raises(SourceUnavailable) as info:
        rig.chain.get_token(mcp_scope(idp))
    assert "HTTP 503 after 3 attempts" in str(info.value)
    assert "(Unknown)" not in str(info.value)
    assert rig.posts - before == 3  # 1 + 2 retries, never more
    # The endpoint failed for good: the next users fail fast (negative cache), no POST.
    for user in ("alice", "bob"):
        with bind_caller(token=rig.user_token(user)), pytest.raises(SourceUnavailable) as again:
            rig.chain.get_token(mcp_scope(idp))
        assert "no request was sent" in str(again.value)
    assert rig.posts - before == 3


def test_non_retryable_answer_is_not_retried_and_not_cached(
    idp: EntraEmulator, rig_factory: Any
) -> None:
    """A 400 (consent missing) goes back at once, and the retry after consent is a real POST:
    nothing of MSAL's 60 s cache of 400 answers comes back."""
    rig = rig_factory(FAST)
    token = rig.user_token("carol")
    before = rig.posts
    try:
        with bind_caller(token=token), pytest.raises(ConsentRequired):
            rig.chain.get_token(mcp_scope(idp))
        assert rig.posts - before == 1
        idp.grant_consent("carol", idp.agent.client_id, [f"{idp.mcp.app_id_uri}/access_as_user"])
        with bind_caller(token=token):
            assert rig.chain.get_token(mcp_scope(idp)).token
        assert rig.posts - before == 2
    finally:
        idp.revoke_consent("carol", idp.agent.client_id)


def test_dropped_connection_is_retried(idp: EntraEmulator, rig_factory: Any) -> None:
    rig = rig_factory(FAST)
    idp.inject_fault("token", drop=True, count=1)
    with bind_caller(token=rig.user_token()):
        assert rig.chain.get_token(mcp_scope(idp)).token


def test_stalled_endpoint_times_out_typed(idp: EntraEmulator, rig_factory: Any) -> None:
    rig = rig_factory(Timeouts(connect=1.0, read=0.3, deadline=1.0, retries=1, backoff=0.01))
    idp.inject_fault("token", status=None, delay=5.0, count=2)
    with bind_caller(token=rig.user_token()), pytest.raises(SourceUnavailable) as info:
        rig.chain.get_token(mcp_scope(idp))
    text = str(info.value)
    assert "did not answer in time" in text or "deadline" in text


async def test_async_caller_is_released_at_the_deadline(
    idp: EntraEmulator, rig_factory: Any
) -> None:
    rig = rig_factory(Timeouts(connect=1.0, read=0.5, deadline=1.0, retries=0))
    idp.inject_fault("token", status=None, delay=5.0, count=1)
    with bind_caller(token=rig.user_token()), pytest.raises(SourceUnavailable):
        await rig.chain.get_token_async(mcp_scope(idp))


async def test_a_healthy_user_never_waits_on_stalled_ones(
    idp: EntraEmulator, rig_factory: Any
) -> None:
    """8 users' requests stall (the old default pool had 8 workers); a ninth user's request,
    answered at once, completes while all 8 are still stalled."""
    rig = rig_factory(Timeouts(connect=2.0, read=8.0, deadline=10.0, retries=0))
    stalled = 8
    idp.inject_fault("token", status=None, delay=3.0, count=stalled)
    finished: list[str] = []
    lock = threading.Lock()

    async def call(label: str, token: str) -> None:
        with bind_caller(token=token):
            await rig.chain.get_token_async(mcp_scope(idp))
        with lock:
            finished.append(label)

    tasks = [
        asyncio.create_task(call(f"stalled{i}", rig.user_token("alice"))) for i in range(stalled)
    ]
    for _ in range(2000):  # bounded poll: every stall fault taken by a request in flight
        if not idp._rt.faults.get("token"):
            break
        await asyncio.sleep(0.005)
    assert not idp._rt.faults.get("token"), "the stalled requests never reached the emulator"
    await call("healthy", rig.user_token("bob"))
    assert finished == ["healthy"]
    await asyncio.gather(*tasks)
    assert len(finished) == stalled + 1


async def test_when_retry_after_lapses_one_probe_goes_out_not_a_herd(
    idp: EntraEmulator, rig_factory: Any
) -> None:
    rig = rig_factory(Timeouts(max_retry_wait=0))
    throttle = rig.obo._throttle
    offset = 0.0
    real = throttle._clock
    throttle._clock = lambda: real() + offset  # the gate's clock, moved instead of waited
    idp.inject_fault("token", status=429, retry_after=5, count=1)
    before = rig.posts
    with bind_caller(token=rig.user_token()), pytest.raises(Throttled):
        await rig.chain.get_token_async(mcp_scope(idp))
    assert rig.posts - before == 1

    async def one(i: int) -> object:
        with bind_caller(token=rig.user_token("bob" if i % 2 else "alice")):
            try:
                return await rig.chain.get_token_async(mcp_scope(idp))
            except Throttled as exc:
                return exc

    # The wait lapses while Entra still throttles: 20 users arrive together, one probe goes
    # out, gets 429 again, and the other 19 fail fast on its answer: 1 POST, not 20.
    offset = 6.0
    idp.inject_fault("token", status=429, retry_after=5, delay=0.3, count=1)
    outcomes = await asyncio.gather(*(one(i) for i in range(20)))
    assert rig.posts - before == 2
    assert all(isinstance(o, Throttled) for o in outcomes)
    # It lapses again and Entra answers: the probe reopens the endpoint, everyone is served.
    offset = 12.0
    idp.token_latency = 0.3  # the probe is on the wire while the others arrive
    outcomes = await asyncio.gather(*(one(i) for i in range(20)))
    assert not [o for o in outcomes if isinstance(o, Throttled)]
    assert rig.posts - before == 2 + 20


def test_truncated_answer_is_retried_and_never_logged(
    idp: EntraEmulator, rig_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    rig = rig_factory(FAST)
    caplog.set_level(logging.DEBUG)
    idp.inject_fault("token", truncate=7, count=1)
    before = rig.posts
    with bind_caller(token=rig.user_token()):
        assert rig.chain.get_token(mcp_scope(idp)).token
    assert rig.posts - before == 2
    idp.inject_fault("token", truncate=7, count=3)
    with bind_caller(token=rig.user_token()), pytest.raises(SourceUnavailable) as info:
        rig.chain.get_token(mcp_scope(idp))
    assert "not valid JSON" in str(info.value)
    assert rig.posts - before == 5
    logged = caplog.text
    with idp._rt.lock:
        issued = list(idp._rt.issued)
    assert issued
    assert not [t for t in issued if t[:40] in logged]


async def test_a_short_retry_after_is_waited_out_by_every_caller(
    idp: EntraEmulator, rig_factory: Any
) -> None:
    """Retry-After: 1 while 8 users arrive: nobody sees an error, and nobody sends a POST
    before the wait is over (then one probe, then the rest)."""
    rig = rig_factory(Timeouts(retries=2, deadline=10.0))
    idp.inject_fault("token", status=503, retry_after=1, count=1)
    before = rig.posts
    with bind_caller(token=rig.user_token()):
        first = asyncio.create_task(rig.chain.get_token_async(mcp_scope(idp)))
        for _ in range(2000):  # bounded: until the 503 has been answered
            if not idp._rt.faults.get("token") and rig.posts - before == 1:
                break
            await asyncio.sleep(0.005)

    async def one(i: int) -> object:
        with bind_caller(token=rig.user_token("bob" if i % 2 else "alice")):
            return await rig.chain.get_token_async(mcp_scope(idp))

    results = await asyncio.gather(first, *(one(i) for i in range(8)))
    assert all(r.token for r in results)
    assert rig.posts - before == 1 + 9  # the 503, then one POST per user: no extra retries


@pytest.mark.parametrize("status", [429, 503])
def test_a_short_retry_after_answered_again_and_again_ends_within_the_retries(
    idp: EntraEmulator, rig_factory: Any, status: int
) -> None:
    """docs/reliability.md: a short ``Retry-After`` is waited out inside the call; the request
    that probes after it waits out another short one too, within its ``retries``, then the
    call gets ``Throttled`` with the time left: at most ``retries`` + 1 POSTs for a call into
    an endpoint that answers ``Retry-After: 1`` again and again (as IMDS under a burst, whose
    second short wait is usually the last: test_managed_identity_single_flight)."""
    rig = rig_factory(FAST)
    idp.inject_fault("token", status=status, retry_after=1, count=1000)
    before = rig.posts
    try:
        with bind_caller(token=rig.user_token()), pytest.raises(Throttled) as info:
            rig.chain.get_token(mcp_scope(idp))
    finally:
        idp.clear_faults()
    assert rig.posts - before == FAST.retries + 1
    assert info.value.retry_after is not None
