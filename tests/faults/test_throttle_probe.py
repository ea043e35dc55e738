"""The throttle's probe and ``Retry-After`` values that ask for no wait.

When a closed endpoint reopens, one request (the probe) goes out and the others wait for its
answer. The probe must be taken only by a request that is sent, and must not make its own
retry wait for it; a ``Retry-After: 0`` (or an HTTP date already past) must close the endpoint
like a 429 without the header, not turn the throttling off.

Real MSAL against the emulator over HTTPS (its fault injection), and for an HTTP date a plain
HTTP server on 127.0.0.1 answering the token POSTs.
"""

from __future__ import annotations

import asyncio
import email.utils
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from entra_passthrough import SourceUnavailable, Throttled, Timeouts, bind_caller
from entra_passthrough.testing import EntraEmulator

from .conftest import mcp_scope, routed_obo_chain

NOT_SENT = "no request was sent"


def call(rig: Any, idp: EntraEmulator, user: str = "alice") -> Any:
    with bind_caller(token=rig.user_token(user)):
        return rig.chain.get_token(mcp_scope(idp))


def test_a_request_refused_by_its_own_negative_entry_leaves_the_probe_to_others(
    idp: EntraEmulator, rig_factory: Any
) -> None:
    """X's request timed out (a negative entry for X's request only); Y's got ``429,
    Retry-After: 1``. X, calling again first after the gate lapsed, fails fast without a POST.
    It must not take the endpoint's probe: Z, the next user, is served with one POST (it used to
    wait the whole probe window and get ``Throttled`` with nothing sent)."""
    rig = rig_factory(Timeouts(connect=2.0, read=1.0, deadline=10.0, retries=0, negative_ttl=30.0))
    x = rig.user_token("alice")
    idp.inject_fault("token", status=None, delay=3.0, count=1)  # past the 1 s read timeout
    before = rig.posts
    with bind_caller(token=x), pytest.raises(SourceUnavailable, match="did not answer in time"):
        rig.chain.get_token(mcp_scope(idp))
    idp.inject_fault("token", status=429, retry_after=1, count=1)
    with pytest.raises(Throttled):
        call(rig, idp, "bob")
    assert rig.posts - before == 2
    time.sleep(1.5)  # the 1 s gate lapses; X's entry (30 s) does not
    with bind_caller(token=x), pytest.raises(SourceUnavailable) as again:
        rig.chain.get_token(mcp_scope(idp))
    assert NOT_SENT in str(again.value)  # true here: X sent nothing
    assert rig.posts - before == 2
    assert call(rig, idp, "alice").token  # Z: Entra answers, the probe goes out
    assert call(rig, idp, "bob").token
    assert rig.posts - before == 4


#: A 503 episode closes the endpoint for ``negative_ttl`` (0.5 s); the probe window is
#: connect + read (5 s), the time a probe waiting for itself used to hold everyone.
EPISODE = Timeouts(
    connect=2.0,
    read=3.0,
    deadline=20.0,
    retries=2,
    backoff=0.05,
    max_backoff=0.1,
    negative_ttl=0.5,
)


def close_by_an_episode(rig: Any, idp: EntraEmulator, retries: int) -> None:
    """A 503 outlives every retry: the endpoint is closed for ``negative_ttl``; then wait for
    it to lapse, so that the next request sent is the probe."""
    idp.inject_fault("token", status=503, count=retries + 1)
    before = rig.posts
    with pytest.raises(SourceUnavailable):
        call(rig, idp, "bob")
    assert rig.posts - before == retries + 1
    time.sleep(1.0)  # past the 0.5 s pause


def test_the_probe_retries_without_waiting_for_itself(idp: EntraEmulator, rig_factory: Any) -> None:
    """After the episode, the probe's first POST gets one more 503; its retry goes out after
    the backoff and gets the token. Users who arrived meanwhile waited for that answer and are
    served too: 4 tokens for 5 POSTs (they all used to fail after the 5 s window, "no request
    was sent", after one POST)."""
    rig = rig_factory(EPISODE)
    close_by_an_episode(rig, idp, EPISODE.retries)
    idp.inject_fault("token", status=503, delay=0.5, count=1)  # the probe's first attempt
    before = rig.posts
    outcomes: list[str] = []
    lock = threading.Lock()
    assertions = [rig.user_token(user) for user in ("alice", "bob", "alice", "bob")]

    def user(assertion: str) -> None:
        try:
            with bind_caller(token=assertion):
                rig.chain.get_token(mcp_scope(idp))
            outcome = "token"
        except Exception as exc:  # recorded, asserted below
            outcome = f"{type(exc).__name__}: {exc}"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=user, args=(assertions[0],), daemon=True)]
    threads[0].start()
    time.sleep(0.2)  # the probe's first POST is held at the emulator
    for assertion in assertions[1:]:
        threads.append(threading.Thread(target=user, args=(assertion,), daemon=True))
        threads[-1].start()
    for thread in threads:
        thread.join(30.0)
    assert not any(thread.is_alive() for thread in threads)
    assert outcomes == ["token"] * 4
    assert rig.posts - before == 5  # the probe's 503 and retry, then one POST per other user


def test_a_probe_that_fails_for_good_says_it_sent_its_requests(
    idp: EntraEmulator, rig_factory: Any
) -> None:
    """The probe's two POSTs both get 503: the caller hears "after 2 attempts", never "no
    request was sent"; the next user, refused by the pause that follows, is told the truth."""
    timeouts = Timeouts(
        connect=2.0,
        read=3.0,
        deadline=20.0,
        retries=1,
        backoff=0.05,
        max_backoff=0.1,
        negative_ttl=0.5,
    )
    rig = rig_factory(timeouts)
    close_by_an_episode(rig, idp, timeouts.retries)
    idp.inject_fault("token", status=503, count=2)
    before = rig.posts
    with pytest.raises(SourceUnavailable) as probe:
        call(rig, idp, "alice")
    assert rig.posts - before == 2
    assert "HTTP 503 after 2 attempts" in str(probe.value)
    assert NOT_SENT not in str(probe.value)
    with pytest.raises(SourceUnavailable) as next_user:
        call(rig, idp, "bob")
    assert NOT_SENT in str(next_user.value)
    assert rig.posts - before == 2


#: A gate longer than ``max_retry_wait`` (2 s): a caller arriving while it is closed fails at
#: once instead of waiting it out, so that the counts below do not depend on timing.
NO_WAIT = Timeouts(
    connect=2.0, read=5.0, deadline=20.0, retries=2, backoff=0.05, max_backoff=0.1, negative_ttl=5.0
)


def test_retry_after_zero_closes_the_endpoint_like_a_bare_429(
    idp: EntraEmulator, rig_factory: Any
) -> None:
    """``429, Retry-After: 0`` on every POST: one POST per call, its retries refused by the
    gate, and the next call sends nothing (it used to send three POSTs per call, retried at
    once, and tell the caller "retry in 0 s")."""
    rig = rig_factory(NO_WAIT)
    idp.inject_fault("token", status=429, retry_after=0, count=1000)
    before = rig.posts
    with pytest.raises(Throttled) as first:
        call(rig, idp, "alice")
    assert rig.posts - before == 1
    assert first.value.retry_after is not None
    assert 0 < first.value.retry_after <= NO_WAIT.negative_ttl
    assert NOT_SENT not in str(first.value)  # it sent one
    for user in ("bob", "alice", "bob"):
        with pytest.raises(Throttled) as again:
            call(rig, idp, user)
        assert again.value.retry_after is not None
        assert 0 < again.value.retry_after <= NO_WAIT.negative_ttl
    assert rig.posts - before == 1


def test_a_burst_into_retry_after_zero_sends_at_most_one_post_per_user(
    idp: EntraEmulator, rig_factory: Any
) -> None:
    """50 users at once into ``429, Retry-After: 0``: those already on the wire get their own
    429, none retries into the gate (it used to be 150 POSTs: every user three)."""
    rig = rig_factory(NO_WAIT)
    idp.inject_fault("token", status=429, retry_after=0, count=1000)
    assertions = [rig.user_token("bob" if i % 2 else "alice") for i in range(50)]
    before = rig.posts

    async def one(assertion: str) -> Any:
        with bind_caller(token=assertion):
            try:
                await rig.chain.get_token_async(mcp_scope(idp))
            except Throttled as exc:
                return exc
        return None

    async def burst() -> list[Any]:
        return await asyncio.gather(*(one(a) for a in assertions))

    results = asyncio.run(burst())
    assert all(isinstance(r, Throttled) for r in results)
    assert all(r.retry_after is not None and r.retry_after > 0 for r in results)
    assert 1 <= rig.posts - before <= 50


def test_a_5xx_with_retry_after_zero_is_retried_with_backoff_then_pauses(
    idp: EntraEmulator, rig_factory: Any
) -> None:
    """``503, Retry-After: 0`` is a 503 without the header: retried with backoff, then
    ``SourceUnavailable`` and the short pause (it used to be ``Throttled``, "retry in 0 s", with
    no pause: the next call sent three POSTs again)."""
    rig = rig_factory(NO_WAIT)
    idp.inject_fault("token", status=503, retry_after=0, count=1000)
    before = rig.posts
    with pytest.raises(SourceUnavailable) as first:
        call(rig, idp, "alice")
    assert "HTTP 503 after 3 attempts" in str(first.value)
    assert rig.posts - before == 3
    with pytest.raises(SourceUnavailable) as again:
        call(rig, idp, "bob")
    assert NOT_SENT in str(again.value)
    assert rig.posts - before == 3


class _PastDate(BaseHTTPRequestHandler):
    """Every token POST: 429 with ``Retry-After`` an HTTP date a minute ago (a server clock
    behind ours)."""

    hits = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.lock:
            type(self).hits += 1
        body = b'{"error":"temporarily_unavailable","error_description":"AADSTS90033: busy"}'
        self.send_response(429)
        self.send_header("Retry-After", email.utils.formatdate(time.time() - 60, usegmt=True))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def past_date_server() -> Iterator[ThreadingHTTPServer]:
    _PastDate.hits = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PastDate)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10.0)


def test_a_retry_after_date_already_past_closes_the_endpoint_like_a_bare_429(
    idp: EntraEmulator, past_date_server: ThreadingHTTPServer
) -> None:
    """One POST for two calls (it used to be three POSTs per call, "retry in 0 s")."""
    port = past_date_server.server_address[1]
    with routed_obo_chain(idp, port, NO_WAIT) as chain:
        for user in ("alice", "bob"):
            token = idp.user_token(
                user, audience=idp.agent.client_id, extra_claims={"uti": f"past-{user}"}
            )
            with bind_caller(token=token), pytest.raises(Throttled) as info:
                chain.get_token(mcp_scope(idp))
            assert info.value.retry_after is not None
            assert 0 < info.value.retry_after <= NO_WAIT.negative_ttl
    assert _PastDate.hits == 1
