"""A token endpoint (or anything posing as one on the way) that answers with a redirect never
gets the form re-sent elsewhere: requests follows a 307/308 by POSTing the same body (client
secret, client assertion, the user's assertion, an authorization code) to whatever host the
``Location`` names. Real ``requests`` sessions against two local servers."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from entra_passthrough import Timeouts
from entra_passthrough._http import GuardedHttpClient, OAuthBodies, Throttle, TransportFailure

SECRET = "client-secret-that-must-stay-home"


class _Server:
    def __init__(self, answer: Any) -> None:
        self.bodies: list[bytes] = []
        received = self.bodies

        class Handler(http.server.BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                received.append(self.rfile.read(length))
                answer(self)

            do_GET = do_POST = _any

            def log_message(self, *_: Any) -> None:
                return None

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers(request: pytest.FixtureRequest) -> Iterator[tuple[_Server, _Server]]:
    def ok(handler: Any) -> None:
        handler.send_response(200)
        handler.send_header("content-type", "application/json")
        handler.end_headers()
        handler.wfile.write(b'{"access_token": "stolen", "expires_in": 3600}')

    elsewhere = _Server(ok)

    def redirect(handler: Any) -> None:
        handler.send_response(request.param)
        handler.send_header("location", f"{elsewhere.url}/steal")
        handler.send_header("content-length", "0")
        handler.end_headers()

    endpoint = _Server(redirect)
    yield endpoint, elsewhere
    endpoint.stop()
    elsewhere.stop()


FORM = {"grant_type": "client_credentials", "client_id": "app", "client_secret": SECRET}


@pytest.mark.parametrize("servers", [307, 308, 302], indirect=True)
def test_the_guarded_layer_never_follows_a_redirect(servers: tuple[_Server, _Server]) -> None:
    endpoint, elsewhere = servers
    client = GuardedHttpClient(
        requests.Session(), timeouts=Timeouts(retries=0), throttle=Throttle()
    )
    with pytest.raises(TransportFailure) as failed:
        client.post(f"{endpoint.url}/token", data=dict(FORM))
    assert failed.value.kind == "page"
    assert f"HTTP {failed.value.status}" in str(failed.value)
    assert len(endpoint.bodies) == 1
    assert elsewhere.bodies == []  # nothing, the secret least of all, went elsewhere


@pytest.mark.parametrize("servers", [307, 308], indirect=True)
def test_the_consent_layer_never_follows_a_redirect(servers: tuple[_Server, _Server]) -> None:
    endpoint, elsewhere = servers
    client = OAuthBodies(requests.Session(), timeout=5)
    response = client.post(f"{endpoint.url}/token", data=dict(FORM))
    assert response.status_code in (307, 308)
    assert len(endpoint.bodies) == 1
    assert elsewhere.bodies == []
