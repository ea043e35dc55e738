"""``chain.close()`` cuts the chain's token exchanges in flight, and only those.

A worker thread blocked on a token endpoint that accepts the POST and never answers cannot be
stopped, and the interpreter joins a ``ThreadPoolExecutor``'s workers at exit: after
``chain.close()`` the caller kept waiting, and the process could not exit, until the request's
deadline (30 s by default). Now ``close()`` shuts the exchange's socket down, as the deadline
watchdog does: the caller gets a ``SourceUnavailable`` saying the source was closed (not a
deadline, not an unreachable endpoint), and the process exits. Another chain's exchange to the
same endpoint is not cut. Outcomes and counts; the time limits are safety nets only.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from entra_passthrough import (
    Caller,
    Policy,
    SourceUnavailable,
    Timeouts,
    TokenAcquisitionError,
    TokenChain,
)
from entra_passthrough.testing import EntraEmulator

from .conftest import accept_each, mcp_scope, routed_obo_chain

#: Far beyond every safety net below: only close() can end the exchange in time.
LONG = Timeouts(connect=5.0, read=120.0, deadline=120.0, retries=0)
#: Safety net for an outcome that close() makes immediate.
SAFETY = 20.0
ROOT = Path(__file__).resolve().parents[2]


class Silent:
    """A plain-HTTP server on loopback that reads each request and never answers; it counts
    the requests it got and the connections the client ended."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.received = 0
        self.ended = 0
        self.changed = threading.Condition(self.lock)
        accept_each(self.listener, self._hold)

    def _hold(self, conn: socket.socket) -> None:
        try:
            if conn.recv(65536):
                with self.changed:
                    self.received += 1
                    self.changed.notify_all()
            while conn.recv(65536):  # until the client ends the connection
                pass
        except OSError:
            pass
        finally:
            conn.close()
            with self.changed:
                self.ended += 1
                self.changed.notify_all()

    def wait(self, *, received: int = 0, ended: int = 0) -> None:
        with self.changed:
            assert self.changed.wait_for(
                lambda: self.received >= received and self.ended >= ended, SAFETY
            ), (self.received, self.ended)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def silent() -> Iterator[Silent]:
    server = Silent()
    yield server
    server.close()


def _caller(idp: EntraEmulator, n: int) -> Caller:
    # a new assertion each time: never the warm-up's cached token
    return Caller.from_token(
        idp.user_token("alice", audience=idp.agent.client_id, extra_claims={"uti": f"c{n}"})
    )


def _closed(exc: BaseException) -> None:
    assert isinstance(exc, SourceUnavailable), repr(exc)
    assert exc.failure == "source closed"
    assert "closed" in str(exc)
    assert "deadline" not in str(exc)
    assert "close() is for shutdown" in (exc.fix or "")


async def test_close_ends_an_async_exchange_stalled_on_the_token_endpoint(
    idp: EntraEmulator, silent: Silent
) -> None:
    with routed_obo_chain(idp, silent.port, LONG) as chain:
        task = asyncio.ensure_future(chain.get_token_async(mcp_scope(idp), caller=_caller(idp, 1)))
        await asyncio.to_thread(silent.wait, received=1)  # the POST is on the wire
        chain.close()
        with pytest.raises(TokenAcquisitionError) as raised:
            await asyncio.wait_for(task, SAFETY)
        _closed(raised.value)
        await asyncio.to_thread(silent.wait, ended=1)  # its connection was shut down


def test_close_ends_a_sync_exchange_in_the_callers_thread(
    idp: EntraEmulator, silent: Silent
) -> None:
    outcome: list[BaseException | object] = []
    with routed_obo_chain(idp, silent.port, LONG) as chain:

        def call() -> None:
            try:
                outcome.append(chain.get_token(mcp_scope(idp), caller=_caller(idp, 2)))
            except BaseException as exc:  # the outcome is asserted below
                outcome.append(exc)

        thread = threading.Thread(target=call, daemon=True)
        thread.start()
        silent.wait(received=1)
        chain.close()
        thread.join(SAFETY)
        assert not thread.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], BaseException)
    _closed(outcome[0])


async def test_closing_one_chain_leaves_another_chains_exchange_alone(
    idp: EntraEmulator, silent: Silent
) -> None:
    with (
        routed_obo_chain(idp, silent.port, LONG) as first,
        routed_obo_chain(idp, silent.port, LONG) as second,
    ):
        one = asyncio.ensure_future(first.get_token_async(mcp_scope(idp), caller=_caller(idp, 3)))
        other = asyncio.ensure_future(
            second.get_token_async(mcp_scope(idp), caller=_caller(idp, 4))
        )
        await asyncio.to_thread(silent.wait, received=2)  # both POSTs on the wire
        first.close()
        with pytest.raises(TokenAcquisitionError) as raised:
            await asyncio.wait_for(one, SAFETY)
        _closed(raised.value)
        await asyncio.to_thread(silent.wait, ended=1)
        await asyncio.sleep(0.5)  # room for a wrong cut of the other one to land
        assert not other.done()  # still waiting on its own (stalled) request
        assert silent.ended == 1
        second.close()
        with pytest.raises(TokenAcquisitionError) as raised:
            await asyncio.wait_for(other, SAFETY)
        _closed(raised.value)


_CHILD = textwrap.dedent(
    """
    import asyncio, json, socket, sys, threading

    import requests

    from entra_passthrough import Caller, OnBehalfOf, Timeouts, TokenChain

    url, ca_file, tenant, client_id, secret, scope, warm, user = json.loads(sys.stdin.read())
    received = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def hold(conn):
        try:
            conn.recv(65536)
            received.set()
            while conn.recv(65536):
                pass
        except OSError:
            pass

    def accept():
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=hold, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()

    class Routed(requests.Session):
        route = False

        def request(self, method, url, *args, **kwargs):
            if self.route and "/oauth2/" in url:
                url = f"http://127.0.0.1:{port}/token"
            return super().request(method, url, *args, **kwargs)

    http = Routed()
    http.verify = ca_file
    http.trust_env = False
    chain = TokenChain([OnBehalfOf(
        client_id=client_id, tenant_id=tenant, client_secret=secret, authority_host=url,
        http_client=http, timeouts=Timeouts(read=300.0, deadline=300.0, retries=0),
    )])
    chain.get_token([scope], caller=Caller.from_token(warm))  # discovery, answered
    http.route = True

    async def main():
        task = asyncio.ensure_future(chain.get_token_async([scope], caller=Caller.from_token(user)))
        await asyncio.to_thread(received.wait, 60)
        chain.close()
        try:
            await asyncio.wait_for(task, 30)
        except Exception as exc:
            return type(exc).__name__, getattr(exc, "failure", None)
        return "token", None

    print(json.dumps(asyncio.run(main())), flush=True)
    """
)


@pytest.mark.slow
def test_the_process_exits_after_close_with_an_exchange_stalled(idp: EntraEmulator) -> None:
    def token(n: int) -> str:
        return idp.user_token("alice", audience=idp.agent.client_id, extra_claims={"uti": f"p{n}"})

    given = [
        idp.url,
        idp.ca_file,
        idp.tenant_id,
        idp.agent.client_id,
        idp.agent.secret,
        mcp_scope(idp)[0],
        token(1),
        token(2),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    try:
        # A safety net, far below the child's 300 s deadline: a worker left blocked on the
        # stalled POST held the interpreter's exit until then.
        done = subprocess.run(
            [sys.executable, "-c", _CHILD],
            input=json.dumps(given),
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
    except subprocess.TimeoutExpired as expired:
        out = expired.stdout.decode() if isinstance(expired.stdout, bytes) else expired.stdout
        pytest.fail(f"the process did not exit after chain.close(); it printed {out!r}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [
        "SourceUnavailable",
        "source closed",
    ]


async def test_a_call_still_queued_when_the_pool_closes_is_told_so() -> None:
    from entra_passthrough._http import TransportFailure
    from entra_passthrough._msal import WorkerPool

    pool = WorkerPool(max_workers=1, name="close-test")
    release = threading.Event()
    started = threading.Event()

    def hold() -> bool:
        started.set()
        return release.wait(SAFETY)

    try:
        busy = asyncio.ensure_future(pool.run(hold, paced=True))
        assert await asyncio.to_thread(started.wait, SAFETY)  # it holds the only worker
        queued = asyncio.ensure_future(pool.run(lambda: "ran", paced=True))
        for _ in range(1000):  # bounded: until the call is in the pool's queue
            if pool._queued:
                break
            await asyncio.sleep(0.001)
        assert pool._queued == 1
        pool.close()
        # Not a CancelledError, which reads as the caller's own task being cancelled.
        with pytest.raises(TransportFailure) as raised:
            await asyncio.wait_for(queued, SAFETY)
        assert raised.value.kind == "closed"
        release.set()
        assert await asyncio.wait_for(busy, SAFETY) is True
    finally:
        release.set()
        pool.close()


@pytest.mark.parametrize("driver", ["async", "sync"])
async def test_close_ends_a_managed_identity_request_stalled_on_its_endpoint(
    silent: Silent, driver: str
) -> None:
    """The same for ``ManagedIdentity`` (App Service's endpoint, which accepts the request and
    never answers): its async path in a worker, its sync path in the caller's thread."""
    from entra_passthrough import ManagedIdentity

    source = ManagedIdentity(
        endpoint=f"http://127.0.0.1:{silent.port}/msi/token", header="h", timeouts=LONG
    )
    scopes = ("https://vault.azure.net/.default",)
    try:
        if driver == "async":
            task: asyncio.Future[object] = asyncio.ensure_future(
                TokenChain([source], policy=Policy.APP_ONLY).get_token_async(scopes)
            )
        else:
            task = asyncio.ensure_future(
                asyncio.to_thread(TokenChain([source], policy=Policy.APP_ONLY).get_token, scopes)
            )
        await asyncio.to_thread(silent.wait, received=1)
        source.close()
        with pytest.raises(TokenAcquisitionError) as raised:
            await asyncio.wait_for(task, SAFETY)
    finally:
        source.close()
    _closed(raised.value)
