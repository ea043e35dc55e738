"""One verifier shared by sync code and asyncio code, or by two event loops: a caller whose
token has a ``kid`` the cache lacks, while the other driver's refetch is in flight, waits for
that fetch and shares its outcome. It used to get 401 at once: it could only join a fetch of its
own loop, and its own refetch was refused (the other driver had taken the rate-limit slot).

The key endpoint (HTTPS, loopback) holds its answers until the test releases them, so the
refetch is in flight for as long as the test needs; every wait is bounded."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from _support.servers import serve_in_thread
from _support.tokens import API, API_URI, TENANT, USER_OID, Issuer
from entra_passthrough import JwtVerifier, TokenVerificationError
from entra_passthrough.server import current_user, require_entra_auth

from ._https_keys import KeyEndpoint

WAIT = 10.0


@pytest.fixture
def verifier(issuer: Issuer, keys: KeyEndpoint) -> JwtVerifier:
    v = JwtVerifier(
        audiences=[API, API_URI], tenants=[TENANT], jwks_uri=keys.keys_url, verify=keys.ca_file
    )
    assert v.verify(issuer.token()).oid == USER_OID  # keys cached: one fetch
    return v


class Background:
    """``call()`` in a thread of its own; ``result()`` is its return value or its error."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.outcome: list[Any] = []
        self.thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self.thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self.outcome.append(call())
        except BaseException as exc:  # handed to the test
            self.outcome.append(exc)

    def result(self) -> Any:
        self.thread.join(WAIT + 5)
        assert self.outcome, "still running"
        return self.outcome[0]


def refetch_in_flight(issuer: Issuer, keys: KeyEndpoint) -> str:
    """The issuer rolls its keys and the endpoint holds its answers: the token returned is
    signed with a key the cache does not have."""
    issuer.rotate()
    keys.hold()
    return issuer.token()


def started(keys: KeyEndpoint) -> None:
    assert keys.entered.wait(WAIT), "the refetch never reached the endpoint"


async def test_an_http_request_waits_for_a_sync_refetch(
    issuer: Issuer, keys: KeyEndpoint, verifier: JwtVerifier
) -> None:
    async def me(request: Request) -> JSONResponse:
        return JSONResponse({"oid": current_user().oid})

    app = require_entra_auth(Starlette(routes=[Route("/me", me)]), verifier=verifier)
    with serve_in_thread(app, lifespan="off") as url:
        token = refetch_in_flight(issuer, keys)
        sync = Background(lambda: verifier.verify(token))  # the sync driver's refetch
        started(keys)
        async with httpx2.AsyncClient(timeout=WAIT + 5) as http:
            request = asyncio.ensure_future(
                http.get(f"{url}/me", headers={"Authorization": f"Bearer {token}"})
            )
            await asyncio.sleep(0.3)
            assert not request.done(), request.result().text  # it waits for the fetch
            keys.release.set()
            answer = await request
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"oid": USER_OID}
    assert sync.result().oid == USER_OID
    assert keys.requests == 2  # one refetch, shared


async def test_a_caller_on_another_loop_waits_for_that_loops_refetch(
    issuer: Issuer, keys: KeyEndpoint, verifier: JwtVerifier
) -> None:
    token = refetch_in_flight(issuer, keys)
    other_loop = Background(lambda: asyncio.run(verifier.verify_async(token)))
    started(keys)
    waiting = asyncio.ensure_future(verifier.verify_async(token))
    cancelled = asyncio.ensure_future(verifier.verify_async(token))
    await asyncio.sleep(0.3)
    assert not waiting.done(), waiting.exception()
    cancelled.cancel()  # a waiter that goes away takes nothing with it
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    keys.release.set()
    assert (await asyncio.wait_for(waiting, WAIT)).oid == USER_OID
    assert other_loop.result().oid == USER_OID
    assert keys.requests == 2


def test_a_sync_caller_waits_for_an_async_refetch(
    issuer: Issuer, keys: KeyEndpoint, verifier: JwtVerifier
) -> None:
    token = refetch_in_flight(issuer, keys)
    loop_side = Background(lambda: asyncio.run(verifier.verify_async(token)))
    started(keys)
    sync_side = Background(lambda: verifier.verify(token))
    sync_side.thread.join(0.3)
    assert not sync_side.outcome, sync_side.outcome  # it waits for the fetch
    keys.release.set()
    assert sync_side.result().oid == USER_OID
    assert loop_side.result().oid == USER_OID
    assert keys.requests == 2


async def test_a_forged_kid_still_costs_no_fetch_of_its_own(
    issuer: Issuer, keys: KeyEndpoint, verifier: JwtVerifier
) -> None:
    """Waiting for the other driver's fetch is not a fetch: a kid nobody publishes is refused
    once that fetch lands, and the rate limit still holds afterwards."""
    token = refetch_in_flight(issuer, keys)
    sync = Background(lambda: verifier.verify(token))
    started(keys)
    forged = asyncio.ensure_future(verifier.verify_async(Issuer().token()))
    await asyncio.sleep(0.3)
    keys.release.set()
    with pytest.raises(TokenVerificationError, match="does not publish"):
        await asyncio.wait_for(forged, WAIT)
    assert sync.result().oid == USER_OID
    with pytest.raises(TokenVerificationError, match="does not publish"):
        await verifier.verify_async(Issuer().token())
    assert keys.requests == 2


async def test_a_sync_verify_on_the_loop_thread_never_waits_behind_a_sync_waiter(
    issuer: Issuer, keys: KeyEndpoint, verifier: JwtVerifier
) -> None:
    """An async route that calls ``verify()`` by mistake, while a sync caller waits for this
    loop's fetch: it used to queue behind that waiter's lock, stopping the loop, so the loop's
    own fetch could not finish and timed out (every request 401, the rotation lost)."""
    token = refetch_in_flight(issuer, keys)
    loop_fetch = asyncio.ensure_future(verifier.verify_async(token))
    assert await asyncio.to_thread(keys.entered.wait, WAIT), "the refetch never started"
    sync = Background(lambda: verifier.verify(token))  # waits for this loop's fetch
    sync.thread.join(0.3)
    assert not sync.outcome, sync.outcome
    with pytest.raises(TokenVerificationError, match="does not publish"):
        verifier.verify(token)  # on the loop's thread: answered from the keys held, at once
    keys.release.set()
    assert (await asyncio.wait_for(loop_fetch, WAIT)).oid == USER_OID
    assert sync.result().oid == USER_OID
    assert verifier.verify(token).oid == USER_OID
    assert keys.requests == 2


def test_a_fetch_that_died_with_its_loop_gives_back_its_refetch(
    issuer: Issuer, keys: KeyEndpoint, verifier: JwtVerifier
) -> None:
    """A loop that ends mid-fetch (``asyncio.run`` of a call that timed out) cancels the fetch:
    it fetched nothing, so the next caller may fetch at once (it was rate limited for
    ``min_refetch_interval``, and the rotated key refused meanwhile)."""
    token = refetch_in_flight(issuer, keys)

    async def give_up() -> None:
        await asyncio.wait_for(verifier.verify_async(token), 0.3)

    with pytest.raises(TimeoutError):
        asyncio.run(give_up())
    keys.release.set()
    assert verifier.verify(token).oid == USER_OID
    assert keys.requests == 3  # the cached keys, the fetch that died, this one
