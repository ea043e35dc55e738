"""An answer that trickles in under the read timeout is cut off at the acquisition's deadline.

The read timeout is per read: a token endpoint (or a proxy) sending its body a byte at a time,
each byte within the read timeout, never timed out. The deadline was checked only between
attempts, so such an answer held a sync caller and the worker thread for as long as it
trickled (60 s in a 6 s deadline). Counted, not timed: the trickling server records how many
bytes it could send before the client closed the connection.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from entra_passthrough import Caller, SourceUnavailable, Timeouts
from entra_passthrough._http import GuardedHttpClient, Throttle, TransportFailure
from entra_passthrough.testing import EntraEmulator

from .conftest import accept_each, get_token_as, mcp_scope, routed_obo_chain

PLANNED = 200  # bytes of body the server trickles, one every INTERVAL: 20 s in all
INTERVAL = 0.1


class Trickle:
    """A plain-HTTP server on loopback: headers at once, then the body one byte at a time."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sent: list[int] = []
        self.done = threading.Event()
        accept_each(self.listener, self._answer)

    def _answer(self, conn: socket.socket) -> None:
        sent = 0
        try:
            conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100000\r\n\r\n"
            )
            for _ in range(PLANNED):  # bounded
                conn.sendall(b" ")
                sent += 1
                time.sleep(INTERVAL)
        except OSError:
            pass  # the client closed the connection
        finally:
            conn.close()
            self.sent.append(sent)
            self.done.set()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def trickle() -> Iterator[Trickle]:
    server = Trickle()
    yield server
    server.close()


def _wait_for_answer(server: Trickle) -> int:
    # bounded wait: cut at the deadline (2-3 s), else the whole drip (20 s) ends it
    assert server.done.wait(60), "no trickling answer ended"
    return server.sent[-1]


def test_the_guarded_layer_cuts_a_trickling_body_at_the_deadline(trickle: Trickle) -> None:
    client = GuardedHttpClient(
        requests.Session(),
        timeouts=Timeouts(read=2.0, deadline=2.0, retries=0),
        throttle=Throttle(),
    )
    try:
        with pytest.raises(TransportFailure) as info:
            client.post(f"http://127.0.0.1:{trickle.port}/token", data={"client_id": "x"})
    finally:
        client.close()
    assert info.value.kind == "deadline"
    assert _wait_for_answer(trickle) < PLANNED  # cut off, not read to its end


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_trickling_token_endpoint_fails_the_call_at_its_deadline(
    idp: EntraEmulator, trickle: Trickle, mode: str
) -> None:
    with routed_obo_chain(idp, trickle.port, Timeouts(read=2.0, deadline=3.0, retries=0)) as chain:
        caller = Caller.from_token(
            idp.user_token("bob", audience=idp.agent.client_id, extra_claims={"uti": mode})
        )
        with pytest.raises(SourceUnavailable, match="deadline"):
            get_token_as(mode, chain, mcp_scope(idp), caller=caller)
    assert _wait_for_answer(trickle) < PLANNED  # the worker let go of the connection
