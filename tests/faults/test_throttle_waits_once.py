"""A 429 without a usable ``Retry-After`` is waited out once, not round after round.

Such a 429 closes the endpoint for ``negative_ttl`` (2 s). docs/reliability.md: a short wait is
waited out inside the call, "then one request probes and the rest follow its answer". Callers
that waited for the probe used to meet the 2 s gate its 429 closed again and wait another round,
up to 8 of them (10 OBO callers: up to 8 s, 4 POSTs); a managed identity's queued callers (its
token flight, its worker pool) each paid a round of their own (20 async callers: 18 s). And an
async caller's job still queued in the pool when its caller stopped waiting sent requests later,
each with a deadline of its own.

Real MSAL against the emulator (its fault injection): OBO over HTTPS, and the emulator's App
Service-shaped managed identity endpoint.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
import requests

from entra_passthrough import (
    ManagedIdentity,
    Policy,
    SourceUnavailable,
    Throttled,
    Timeouts,
    TokenChain,
    bind_caller,
)
from entra_passthrough.testing import EntraEmulator

from .conftest import mcp_scope


class CountingSession(requests.Session):
    """The application's session for the identity endpoint, counting the requests sent (when
    they are sent, not when the endpoint ends them)."""

    def __init__(self) -> None:
        super().__init__()
        self.trust_env = False
        self.sent: list[float] = []
        self._lock = threading.Lock()

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        with self._lock:
            self.sent.append(time.monotonic())
        return super().request(method, url, *args, **kwargs)


def app_service_mi(idp: EntraEmulator, session: requests.Session, **kw: Any) -> ManagedIdentity:
    env = idp.mi_env("app_service")
    return ManagedIdentity(
        client_id=idp.managed_identity.client_id,
        endpoint=env["IDENTITY_ENDPOINT"],
        header=env["IDENTITY_HEADER"],
        http_client=session,
        **kw,
    )


def run_threads(n: int, call: Any) -> list[tuple[float, BaseException | None]]:
    """``call(i)`` in ``n`` threads started together: (seconds taken, exception) each."""
    results: list[tuple[float, BaseException | None]] = []
    lock = threading.Lock()
    start = threading.Barrier(n)

    def one(i: int) -> None:
        start.wait(10.0)
        t = time.monotonic()
        error: BaseException | None = None
        try:
            call(i)
        except Exception as exc:  # recorded, asserted by the test
            error = exc
        with lock:
            results.append((time.monotonic() - t, error))

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60.0)
    assert not any(thread.is_alive() for thread in threads)
    return results


def test_obo_callers_that_waited_for_the_probe_take_its_answer(
    idp: EntraEmulator, rig_factory: Any
) -> None:
    """Entra answers every POST 429 without ``Retry-After``. 10 users arriving while the 2 s
    gate is closed wait it out once; one probes, its 429 is everyone's answer: ``Throttled``
    with the time left of the gate it closed, after about 2 s and one POST."""
    rig = rig_factory()  # the default timeouts: negative_ttl 2 s, max_retry_wait 2 s
    idp.inject_fault("token", status=429, count=1000)
    with bind_caller(token=rig.user_token("bob")), pytest.raises(Throttled):
        rig.chain.get_token(mcp_scope(idp))  # closes the gate for 2 s
    before = rig.posts
    assertions = [rig.user_token("alice") for _ in range(10)]

    def call(i: int) -> None:
        with bind_caller(token=assertions[i]):
            rig.chain.get_token(mcp_scope(idp))

    results = run_threads(10, call)
    assert all(isinstance(error, Throttled) for _, error in results), results
    waits = sorted(seconds for seconds, _ in results)
    assert waits[-1] < 4.0, waits  # one round (~2 s); it used to be up to 8 s
    assert rig.posts - before <= 2  # the probe (and at most one request racing it)
    told = [error.retry_after for _, error in results if isinstance(error, Throttled)]
    assert all(r is not None and 0 < r <= 2.0 for r in told), told


def test_mi_callers_queued_on_the_token_flight_take_its_answer(idp: EntraEmulator) -> None:
    """``token_for_resource`` (a managed identity as an app's federated credential): 10 callers
    for one resource, the endpoint answers 429 without ``Retry-After``. The first caller's
    request is the answer of the 9 that waited for it: ``Throttled`` at once, one request. Each
    used to send its own after a 2 s wait, one after the other (here until the 6 s deadline)."""
    session = CountingSession()
    mi = app_service_mi(idp, session, timeouts=Timeouts(deadline=6.0))
    try:
        idp.inject_fault("msi", status=429, count=1000)
        results = run_threads(10, lambda _i: mi.token_for_resource("api://AzureADTokenExchange"))
        assert all(isinstance(error, Throttled) for _, error in results), results
        waits = sorted(seconds for seconds, _ in results)
        assert waits[-1] < 2.0, waits
        assert len(session.sent) == 1
    finally:
        mi.close()
        session.close()


def test_mi_async_callers_queued_in_the_pool_take_the_answer(idp: EntraEmulator) -> None:
    """12 async callers (12 resources) and 2 workers; the endpoint answers 429 without
    ``Retry-After``. A job that waited for a worker waited for the requests ahead of it to this
    endpoint: their 429 is its answer too. Every caller is answered within a round; they used
    to be answered two by two, a 2 s round each (here until the 8 s deadline)."""
    session = CountingSession()
    mi = app_service_mi(idp, session, max_workers=2, timeouts=Timeouts(deadline=8.0))
    chain = TokenChain([mi], policy=Policy.APP_ONLY)
    try:
        idp.inject_fault("msi", status=429, count=1000)

        async def one(i: int) -> tuple[float, BaseException | None]:
            t = time.monotonic()
            try:
                await chain.get_token_async([f"https://r{i}.example/.default"])
            except Exception as exc:  # recorded, asserted below
                return time.monotonic() - t, exc
            return time.monotonic() - t, None

        async def main() -> list[tuple[float, BaseException | None]]:
            return list(await asyncio.gather(*(one(i) for i in range(12))))

        results = asyncio.run(main())
        assert all(isinstance(error, Throttled) for _, error in results), results
        waits = sorted(seconds for seconds, _ in results)
        assert waits[-1] < 3.5, waits
        assert len(session.sent) <= 4
    finally:
        chain.close()
        session.close()


def test_mi_async_jobs_send_nothing_after_their_callers_stopped_waiting(
    idp: EntraEmulator,
) -> None:
    """One worker, an endpoint that holds every request 3 s, a 2 s deadline with retries:
    3 async callers stop waiting at the deadline (plus a second). A job that starts after that
    has no deadline left and sends nothing; a job's attempts end at its caller's deadline, not
    at a deadline of its own counted from when a worker took it."""
    session = CountingSession()
    timeouts = Timeouts(connect=1.0, read=0.5, deadline=2.0, retries=3, backoff=0.01)
    mi = app_service_mi(idp, session, max_workers=1, timeouts=timeouts)
    chain = TokenChain([mi], policy=Policy.APP_ONLY)
    try:
        idp.inject_fault("msi", status=None, delay=3.0, count=1000)

        async def one(i: int) -> BaseException | None:
            try:
                await chain.get_token_async([f"https://s{i}.example/.default"])
            except Exception as exc:  # recorded, asserted below
                return exc
            return None

        async def main() -> list[BaseException | None]:
            return list(await asyncio.gather(*(one(i) for i in range(3))))

        started = time.monotonic()
        errors = asyncio.run(main())
        assert all(isinstance(error, SourceUnavailable) for error in errors), errors
        gone = time.monotonic()
        time.sleep(3.0)  # a worker freed now would start a queued job
        late = [t - started for t in session.sent if t > gone]
        assert late == [], f"requests sent after every caller had gone, at {late} s"
        # nothing after the callers' deadline (2 s from the call), a little slack for a thread
        assert all(t - started < timeouts.deadline + 0.3 for t in session.sent)
    finally:
        chain.close()
        session.close()
        idp.clear_faults()
        idp.wait_idle(15.0)


def test_agent_id_callers_queued_on_the_t1_flight_take_its_answer(idp: EntraEmulator) -> None:
    """Agent ID whose blueprint credential is a managed identity endpoint (Foundry's token
    service) answering 429 without ``Retry-After``: 10 users queue on the blueprint's T1 single
    flight, behind the first user's request. Its 429 is their answer: each used to find the
    identity endpoint's own flight free when its turn came and sit out a 2 s round of its own,
    one after the other (20 users: 28 s, almost the whole deadline)."""
    from entra_passthrough import AgentIdentityOnBehalfOf

    session = CountingSession()
    env = idp.mi_env("app_service")
    mi = ManagedIdentity(
        client_id=idp.blueprint.client_id,
        endpoint=env["IDENTITY_ENDPOINT"],
        header=env["IDENTITY_HEADER"],
        http_client=session,
    )
    source = AgentIdentityOnBehalfOf(
        agent_identity_id=idp.agent_identity.client_id,
        blueprint_client_id=idp.blueprint.client_id,
        tenant_id=idp.tenant_id,
        managed_identity=mi,
        authority_host=idp.url,
        http_client=idp.msal_http_client(),
    )
    chain = TokenChain([source])
    try:
        idp.inject_fault("msi", status=429, count=1000)
        assertions = [
            idp.user_token("bob", audience=idp.blueprint.client_id, extra_claims={"oid": oid})
            for oid in (f"00000000-0000-0000-0000-{i:012d}" for i in range(10))
        ]

        def call(i: int) -> None:
            with bind_caller(token=assertions[i]):
                chain.get_token(mcp_scope(idp))

        results = run_threads(10, call)
        assert all(isinstance(error, Throttled) for _, error in results), results
        waits = sorted(seconds for seconds, _ in results)
        assert waits[-1] < 4.0, waits
        assert len(session.sent) <= 2
    finally:
        chain.close()
        mi.close()
        session.close()
