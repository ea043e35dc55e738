"""A key endpoint that answers 200 and then sends its body slowly, endlessly or announces a huge
one: every fetch ends within ``FETCH_TIMEOUT`` and reads at most ``MAX_DOCUMENT_BYTES``, on the
async and the sync driver, for the discovery document too, and the protected request gets its
503 (``Retry-After``) in time. A client's own timeout is per read: a body trickling a byte at a
time never trips it.

The endpoint is a plain socket server on 127.0.0.1 (no HTTP library: it must misbehave in ways
a framework would not let it). The fetch deadline is set to 2 s; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import requests

from _support.servers import serve_in_thread
from _support.tokens import API, API_URI, TENANT, Issuer
from entra_passthrough import JwtVerifier, _jwks
from entra_passthrough._errors import SigningKeysUnavailable
from entra_passthrough._jwks import KeySet, KeySource
from entra_passthrough.server import require_entra_auth

DEADLINE = 2.0
#: How long past the deadline a refusal may come (generous: a loaded CI machine).
SLACK = 5.0
#: The endpoint stops trickling after this long whatever happens (the old code waited for it).
TRICKLE_FOR = 15.0
#: An endless body stops after this many bytes (the old code read all of them).
ENDLESS_CAP = 48 * 1024 * 1024


class BadKeyEndpoint:
    """Answers every request with a 200 whose body misbehaves (``mode``):

    * ``trickle``: the JWKS document (or discovery document) one byte every 0.5 s;
    * ``endless``: a chunked body of ``[`` as fast as it is read, up to ``ENDLESS_CAP``;
    * ``huge``: ``Content-Length`` of 2 MiB, then nothing (the connection held open).
    """

    def __init__(self, body: Callable[[str], bytes], mode: str) -> None:
        self.body = body
        self.mode = mode
        self.sent = 0
        self.requests = 0
        self.stop = threading.Event()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5.0)
            head = conn.recv(65536).decode("latin-1")
            self.requests += 1
            path = head.split(" ", 2)[1] if head.count(" ") >= 2 else "/"
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.mode == "trickle":
                body = self.body(path)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n" % len(body)
                )
                end = time.monotonic() + TRICKLE_FOR
                for byte in body:  # bounded: the body's length, and TRICKLE_FOR
                    if self.stop.is_set() or time.monotonic() > end:
                        return
                    conn.sendall(bytes([byte]))
                    self.sent += 1
                    time.sleep(0.5)
            elif self.mode == "endless":
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"transfer-encoding: chunked\r\n\r\n"
                )
                chunk = b"[" * (1 << 20)
                while not self.stop.is_set() and self.sent < ENDLESS_CAP:
                    conn.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                    self.sent += len(chunk)
            else:  # huge
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n" % (2 * 1024 * 1024)
                )
                self.stop.wait(TRICKLE_FOR)
        except OSError:
            pass
        finally:
            conn.close()

    def __enter__(self) -> BadKeyEndpoint:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.sock.close()
        self.thread.join(5)


@pytest.fixture(autouse=True)
def short_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_jwks, "FETCH_TIMEOUT", DEADLINE)


@pytest.fixture
def issuer() -> Issuer:
    return Issuer()


def jwks_body(issuer: Issuer) -> Callable[[str], bytes]:
    return lambda _path: json.dumps(issuer.jwks()).encode()


def verifier_for(**options: Any) -> JwtVerifier:
    return JwtVerifier(audiences=[API, API_URI], tenants=[TENANT], **options)


def endpoint(issuer: Issuer, mode: str) -> BadKeyEndpoint:
    return BadKeyEndpoint(jwks_body(issuer), mode)


async def timed_async(verifier: JwtVerifier, token: str) -> tuple[float, BaseException | None]:
    start = time.monotonic()
    try:
        # The outer bound only keeps a broken run short; the assertion is on the time taken.
        await asyncio.wait_for(verifier.verify_async(token), TRICKLE_FOR + 10)
    except (SigningKeysUnavailable, TimeoutError) as exc:
        return time.monotonic() - start, exc
    return time.monotonic() - start, None


def timed_sync(call: Callable[[], Any]) -> tuple[float, BaseException | None]:
    """``call()`` in a thread, waited for at most TRICKLE_FOR + 10 s."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # handed to the test
            outcome.append(exc)
        else:
            outcome.append(None)

    start = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(TRICKLE_FOR + 10)
    return time.monotonic() - start, (outcome[0] if outcome else TimeoutError("still waiting"))


async def test_async_fetch_of_a_trickling_body_ends_at_the_deadline(issuer: Issuer) -> None:
    with endpoint(issuer, "trickle") as keys:
        verifier = verifier_for(jwks_uri=f"{keys.url}/keys")
        took, error = await timed_async(verifier, issuer.token())
    assert isinstance(error, SigningKeysUnavailable), (took, error)
    assert error.status_code == 503
    assert "TimeoutError" in str(error)
    assert took < DEADLINE + SLACK, took


def test_sync_fetch_of_a_trickling_body_ends_at_the_deadline(issuer: Issuer) -> None:
    with endpoint(issuer, "trickle") as keys:
        verifier = verifier_for(jwks_uri=f"{keys.url}/keys")
        took, error = timed_sync(lambda: verifier.verify(issuer.token()))
    assert isinstance(error, SigningKeysUnavailable), (took, error)
    assert took < DEADLINE + SLACK, took


def test_the_consent_clients_requests_getter_is_bounded_too(issuer: Issuer) -> None:
    """The consent broker verifies id tokens with the same KeySet over ``requests``."""
    with endpoint(issuer, "trickle") as keys:
        key_set = KeySet(sync_http_client=requests)
        source = KeySource(f"{keys.url}/keys")
        took, error = timed_sync(lambda: key_set.get_key(source, "any-kid"))
    assert isinstance(error, SigningKeysUnavailable), (took, error)
    assert took < DEADLINE + SLACK, took


async def test_a_trickling_discovery_document_is_bounded(issuer: Issuer) -> None:
    with endpoint(issuer, "trickle") as keys:
        discovery = json.dumps({"jwks_uri": f"{keys.url}/keys"}).encode()
        keys.body = lambda _path: discovery
        verifier = verifier_for(discovery_url=f"{keys.url}/.well-known/openid")
        took, error = await timed_async(verifier, issuer.token())
        took_sync, error_sync = timed_sync(
            lambda: verifier_for(discovery_url=f"{keys.url}/.well-known/x").verify(issuer.token())
        )
    assert isinstance(error, SigningKeysUnavailable), (took, error)
    assert took < DEADLINE + SLACK, took
    assert isinstance(error_sync, SigningKeysUnavailable), (took_sync, error_sync)
    assert took_sync < DEADLINE + SLACK, took_sync


@pytest.mark.parametrize("driver", ["async", "sync", "requests"])
async def test_an_endless_body_is_not_read_past_the_size_cap(issuer: Issuer, driver: str) -> None:
    with endpoint(issuer, "endless") as keys:
        if driver == "async":
            verifier = verifier_for(jwks_uri=f"{keys.url}/keys")
            took, error = await timed_async(verifier, issuer.token())
        elif driver == "sync":
            verifier = verifier_for(jwks_uri=f"{keys.url}/keys")
            took, error = await asyncio.to_thread(
                timed_sync, lambda: verifier.verify(issuer.token())
            )
        else:
            key_set = KeySet(sync_http_client=requests)
            source = KeySource(f"{keys.url}/keys")
            took, error = await asyncio.to_thread(
                timed_sync, lambda: key_set.get_key(source, "any-kid")
            )
        sent = keys.sent
    assert isinstance(error, SigningKeysUnavailable), (took, error)
    assert "ValueError" in str(error)
    # Socket buffers hold a few MiB the client never read; the old code read all 48.
    assert sent < 16 * 1024 * 1024, sent


@pytest.mark.parametrize("driver", ["async", "sync"])
async def test_an_announced_oversized_body_is_refused_unread(issuer: Issuer, driver: str) -> None:
    with endpoint(issuer, "huge") as keys:
        verifier = verifier_for(jwks_uri=f"{keys.url}/keys")
        if driver == "async":
            took, error = await timed_async(verifier, issuer.token())
        else:
            took, error = await asyncio.to_thread(
                timed_sync, lambda: verifier.verify(issuer.token())
            )
    assert isinstance(error, SigningKeysUnavailable), (took, error)
    assert "ValueError" in str(error)
    assert took < DEADLINE, took  # refused on the header, not after waiting for the body


async def api(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def protected_api(issuer: Issuer) -> Iterator[tuple[str, BadKeyEndpoint]]:
    with endpoint(issuer, "trickle") as keys:
        verifier = verifier_for(jwks_uri=f"{keys.url}/keys")
        with serve_in_thread(require_entra_auth(api, verifier=verifier), lifespan="off") as url:
            yield url, keys


def test_the_protected_request_gets_its_503_in_time(
    issuer: Issuer, protected_api: tuple[str, BadKeyEndpoint]
) -> None:
    """End to end (docs/server.md): a real uvicorn server, the key endpoint trickling; the
    request is refused with 503 and Retry-After within the fetch deadline, and so is the next
    one (at once: the failed fetch is not repeated per request)."""
    url, _keys = protected_api
    headers = {"Authorization": "Bearer " + issuer.token()}
    start = time.monotonic()
    try:
        first = httpx.get(url + "/", headers=headers, timeout=TRICKLE_FOR + 10)
    except httpx.TimeoutException:
        pytest.fail(f"no answer after {time.monotonic() - start:.1f} s")
    took = time.monotonic() - start
    assert first.status_code == 503, first.text
    assert first.headers.get("retry-after")
    assert took < DEADLINE + SLACK, took
    second = httpx.get(url + "/", headers=headers, timeout=TRICKLE_FOR + 10)
    assert second.status_code == 503
    assert second.headers.get("retry-after")


def test_the_consent_clients_discovery_fetch_is_bounded(
    issuer: Issuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The consent broker's id-token check reads the tenant's discovery document first: one
    deadline for it too (its callback answers 503, not after the trickle ends)."""
    from entra_passthrough import _consent_client
    from entra_passthrough._credential import AppCredential

    monkeypatch.setattr(_consent_client, "HTTP_TIMEOUT", DEADLINE)
    with endpoint(issuer, "trickle") as keys:
        keys.body = lambda _path: json.dumps({"jwks_uri": f"{keys.url}/keys"}).encode()
        credential = AppCredential(client_id=API, tenant_id=TENANT, client_secret="not-used")
        client = _consent_client.ConsentClient(credential, http_client=None, max_workers=1)
        client.authority_host = keys.url  # plain HTTP: a test endpoint
        try:
            took, error = timed_sync(client._discovery)
        finally:
            client.pool.close()
    assert isinstance(error, TimeoutError), (took, error)
    assert took < DEADLINE + SLACK, took
