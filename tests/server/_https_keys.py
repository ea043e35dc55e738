"""A signing-key endpoint over HTTPS on 127.0.0.1 for the verifier tests: uvicorn with a server
certificate from the emulator's own CA helper, the keys of an ``Issuer`` plus any extra JWKs,
and controls (answer 500, hold every answer until released, count requests)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _support.servers import serve_in_thread
from _support.tokens import TENANT, Issuer
from entra_passthrough.testing._ca import make_tls_material

#: How long a held answer waits for ``release`` at most (a test that forgets to release it).
HOLD_LIMIT = 30.0


class KeyEndpoint:
    """The ASGI app: ``GET <anything>/keys`` answers the issuer's JWKS (and ``extra`` JWKs)."""

    def __init__(self, issuer: Issuer) -> None:
        self.issuer = issuer
        self.extra: list[dict[str, Any]] = []
        self.down = False
        self.requests = 0
        self.entered = threading.Event()  # a request arrived (and is held, if held)
        self.release = threading.Event()
        self.release.set()
        self.base = ""
        self.ca_file = ""

    @property
    def keys_url(self) -> str:
        return f"{self.base}/{TENANT}/discovery/v2.0/keys"

    def hold(self) -> None:
        """Answers wait for ``release`` from now on (a fetch that stays in flight)."""
        self.entered.clear()
        self.release.clear()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.requests += 1
        self.entered.set()
        end = time.monotonic() + HOLD_LIMIT
        while not self.release.is_set() and time.monotonic() < end:
            await asyncio.sleep(0.01)
        if self.down:
            status, body = 500, b"down"
        else:
            doc = self.issuer.jwks()
            body = json.dumps({"keys": [*doc["keys"], *self.extra]}).encode()
            status = 200
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


@contextmanager
def https_key_endpoint(issuer: Issuer, directory: Path) -> Iterator[KeyEndpoint]:
    """Serve a ``KeyEndpoint`` over HTTPS; ``ca_file`` is what a client passes as ``verify``."""
    material = make_tls_material()
    ca, cert, key = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    ca.write_bytes(material.ca_cert_pem)
    cert.write_bytes(material.server_cert_pem)
    key.write_bytes(material.server_key_pem)
    endpoint = KeyEndpoint(issuer)
    endpoint.ca_file = str(ca)
    with serve_in_thread(
        endpoint, lifespan="off", certfile=str(cert), keyfile=str(key), name="keys"
    ) as base:
        endpoint.base = base
        try:
            yield endpoint
        finally:
            endpoint.release.set()  # before the server stops: it waits for held answers
