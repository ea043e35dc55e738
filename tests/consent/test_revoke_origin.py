"""``POST /revoke`` with an ``Origin`` urllib cannot split (an unclosed IPv6 bracket) is the
typed 400 ``csrf`` page every other bad sign-out request gets, never a 500 (docs/consent.md:
every failure answers 400). Real uvicorn, raw socket: httpx would not send such a header."""

from __future__ import annotations

import socket

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from _support.servers import serve_in_thread
from entra_passthrough import Keyring, MemoryStore
from entra_passthrough.consent import ConsentBroker

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT = "11111111-2222-3333-4444-555555555555"


def _post_revoke(port: int, origin: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /consent/revoke HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: "
            + origin
            + b"\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 3\r\n"
            b"Connection: close\r\n\r\nt=x"
        )
        answer = b""
        for _ in range(1000):  # bounded: the server closes the connection after its answer
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


@pytest.mark.parametrize("origin", [b"http://[::1", b"https://[", b"http://[zz]"])
def test_a_malformed_origin_is_refused_as_cross_site(origin: bytes) -> None:
    broker = ConsentBroker(
        client_id=CLIENT,
        tenant_id=TENANT,
        client_secret="not-used",
        store=MemoryStore(),
        keyring=Keyring.generate(),
        redirect_uris=["http://127.0.0.1:9/consent/callback"],
    )
    app = Starlette(routes=[Mount("/consent", broker.app)])
    try:
        with serve_in_thread(app, lifespan="off") as base:
            answer = _post_revoke(int(base.rsplit(":", 1)[1]), origin)
    finally:
        broker.close()
    status = answer.split(b"\r\n", 1)[0]
    assert status.startswith(b"HTTP/1.1 400"), status
    assert b"Cross-site sign-out requests are refused." in answer
