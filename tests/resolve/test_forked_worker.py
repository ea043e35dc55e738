"""A source built before a fork works in the child: gunicorn ``--preload`` (and
multiprocessing's ``fork``) builds the app, and its chain, in the parent, then forks the
workers. The child inherited each worker pool's executor without its threads; the executor still
counted the parent's idle workers and started none, so every async token request in every
worker waited out its 30 s deadline and failed "Entra did not answer" although nothing was sent.
The child also inherited the parent's open connections to Entra: two processes on one
connection can each read the answer to the other's request."""

from __future__ import annotations

import asyncio
import http.server
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from entra_passthrough import TokenChain, bind_caller
from entra_passthrough._msal import http_session
from entra_passthrough.testing import EntraEmulator

from .conftest import decode, make_obo, mcp_scope

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX fork only")


def _in_child(work: Callable[[], int], *, within: float = 20.0) -> int:
    """``work()`` in a forked child, bounded: its return value as the exit code, 3 if it hung,
    4 if it raised."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 4
        try:
            signal.signal(signal.SIGALRM, lambda *_: os._exit(3))
            signal.alarm(int(within))
            code = work()
        finally:
            os._exit(code)
    end = time.monotonic() + within + 10
    while time.monotonic() < end:  # bounded
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return 3


@pytest.mark.parametrize("parent_took_a_token", [False, True])
def test_async_acquisition_in_a_forked_child(idp: EntraEmulator, parent_took_a_token: bool) -> None:
    chain = TokenChain([make_obo(idp)])  # the pool's workers start here, in the parent
    try:
        scopes = mcp_scope(idp)
        if parent_took_a_token:  # a warm MSAL app and a kept-alive connection to Entra
            with bind_caller(token=idp.user_token("alice", audience=idp.agent.client_id)):
                chain.get_token(scopes)
        bob = idp.user_token("bob", audience=idp.agent.client_id)

        async def acquire() -> str:
            with bind_caller(token=bob):
                return (await chain.get_token_async(scopes)).token

        def child() -> int:
            token = asyncio.run(asyncio.wait_for(acquire(), 15))
            return 0 if decode(token)["oid"] == idp.users["bob"].oid else 5

        assert _in_child(child) == 0
        # The parent's pool is untouched by the child's.
        with bind_caller(token=bob):
            assert decode(asyncio.run(chain.get_token_async(scopes)).token)["oid"] == (
                idp.users["bob"].oid
            )
    finally:
        chain.close()


class _Peers(http.server.ThreadingHTTPServer):
    daemon_threads = True


class _EchoPeer(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the client keeps its connection

    def do_GET(self) -> None:
        body = str(self.client_address[1]).encode()  # the client's port names its connection
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def echo_peer() -> Iterator[str]:
    server = _Peers(("127.0.0.1", 0), _EchoPeer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_a_forked_child_opens_its_own_connections(echo_peer: str, tmp_path: object) -> None:
    session = http_session(__file__)  # a session the library creates (its CA is not used: http)
    try:
        parent_port = session.get(echo_peer, timeout=5).text
        assert session.get(echo_peer, timeout=5).text == parent_port  # kept alive

        def child() -> int:
            return 0 if session.get(echo_peer, timeout=5).text != parent_port else 6

        assert _in_child(child) == 0
        # The parent's connection is still its own, and still open.
        assert session.get(echo_peer, timeout=5).text == parent_port
    finally:
        session.close()


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_a_child_forked_during_an_acquisition_makes_its_own(
    idp: EntraEmulator, driver: str
) -> None:
    """The parent forks while one of its threads acquires a user's token: the child inherited
    that acquisition as in flight, but no thread of the child will finish it. A child caller
    of the same user and scopes joined it and waited 120 s (sync) or for ever (async)."""
    idp.token_latency = 2.0
    chain = TokenChain([make_obo(idp)])
    scopes = mcp_scope(idp)
    alice = idp.user_token("alice", audience=idp.agent.client_id)

    def parent_acquires() -> None:
        with bind_caller(token=alice):
            chain.get_token(scopes)

    leader = threading.Thread(target=parent_acquires, daemon=True)
    try:
        leader.start()
        time.sleep(0.5)  # the parent's request is at Entra

        def child() -> int:
            with bind_caller(token=alice):
                if driver == "sync":
                    token = chain.get_token(scopes).token
                else:
                    token = asyncio.run(asyncio.wait_for(chain.get_token_async(scopes), 12)).token
            return 0 if decode(token)["oid"] == idp.users["alice"].oid else 5

        assert _in_child(child, within=15.0) == 0
        leader.join(10)
    finally:
        idp.token_latency = 0.0
        chain.close()
