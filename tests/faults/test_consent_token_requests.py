"""The consent app's token requests (``DelegatedConsent``'s refreshes, through
``_http.OAuthBodies``) under throttling, stalls and broken answers.

- A 429 (or a 5xx with ``Retry-After``) is ``Throttled`` with ``retry_after``, and closes the
  consent app's token endpoint for every user of the app until it lapses (it was an
  ``EntraError`` claiming a retry that never happened, and every other user POSTed into it).
- The consent layer's bound is a deadline over the whole exchange: a status line trickled a
  byte at a time no longer holds the call past it (the timeout was per read).
- Async callers queued behind the consent client's workers give up at their deadline, and their
  jobs send nothing when they come up (they waited a second round).
- A hang, a reset, a page or a success without a token is said as what it is, with a fix (it
  was "JSONDecodeError.", "ReadTimeout.", "refused: unknown error").

Real MSAL and the real source against the emulator (discovery) and a raw socket server on
loopback that answers the token POSTs.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from entra_passthrough import (
    Caller,
    EntraError,
    SourceUnavailable,
    Throttled,
    TokenRequest,
    _consent_client,
)
from entra_passthrough._grants import StoredGrant
from entra_passthrough._http import SHARED_THROTTLE
from entra_passthrough._sources import delegated
from entra_passthrough._sources.delegated import DelegatedConsent
from entra_passthrough._store import Keyring, MemoryStore
from entra_passthrough._user_key import UserKey
from entra_passthrough.testing import EntraEmulator

THROTTLED_BODY = (
    b'{"error":"temporarily_unavailable","error_description":"AADSTS90033: busy",'
    b'"error_codes":[90033]}'
)


class TokenEndpoint:
    """A plain-HTTP server on loopback answering every request the way ``mode`` says; it
    counts the requests it accepted (and when)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.accepted: list[float] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self._conns.append(conn)
            self.accepted.append(time.monotonic())
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _send(self, conn: socket.socket, status: str, body: bytes, *extra: str) -> None:
        head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        head += "".join(f"{h}\r\n" for h in extra)
        head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        conn.sendall(head.encode() + body)

    def _answer(self, conn: socket.socket) -> None:
        try:
            conn.recv(65536)
            mode = self.mode
            if mode == "429":
                self._send(conn, "429 Too Many Requests", THROTTLED_BODY, "Retry-After: 30")
            elif mode == "503-retry-after":
                self._send(conn, "503 Service Unavailable", THROTTLED_BODY, "Retry-After: 20")
            elif mode == "hang":
                time.sleep(20)
            elif mode == "drip":
                for byte in b"HTTP/1.1 200 OK" + b" " * 200:  # bounded: ~30 s in all
                    conn.sendall(bytes([byte]))
                    time.sleep(0.15)
            elif mode == "html":
                self._send(conn, "200 OK", b"<html>portal</html>")
            elif mode == "503-html":
                self._send(conn, "503 Service Unavailable", b"<html>down</html>")
            elif mode == "reset":
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b'Content-Length: 500\r\n\r\n{"access_token": "x'
                )
                linger = struct.pack("ii", 1, 0)  # close with an RST: the body is cut short
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            elif mode == "no-token":
                self._send(conn, "200 OK", b'{"token_type":"Bearer","expires_in":3600}')
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.listener.close()
        for conn in self._conns:
            conn.close()


class RoutedSession(requests.Session):
    """The emulator's session; once ``route`` is set, token POSTs go to the test server."""

    def __init__(self, idp: EntraEmulator, port: int) -> None:
        super().__init__()
        self.verify = idp.ca_file
        self.trust_env = False
        self.port = port
        self.route = False

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if self.route and "/oauth2/" in url and "token" in url:
            url = f"http://127.0.0.1:{self.port}/t/oauth2/v2.0/token"
        return super().request(method, url, *args, **kwargs)


class Rig:
    def __init__(self, idp: EntraEmulator, mode: str, users: int, max_workers: int = 8) -> None:
        self.endpoint = TokenEndpoint(mode)
        self.http = RoutedSession(idp, self.endpoint.port)
        self.source = DelegatedConsent(
            client_id=idp.agent.client_id,
            tenant_id=idp.tenant_id,
            client_secret=idp.agent.secret,
            store=MemoryStore(),
            keyring=Keyring.generate(),
            broker_url="https://127.0.0.1:9/consent",
            authority_host=idp.url,
            http_client=self.http,
            max_workers=max_workers,
        )
        self.scope = f"{idp.mcp.app_id_uri}/access_as_user"
        self.callers = []
        for _ in range(users):
            oid = str(uuid.uuid4())
            now = time.time()
            grant = StoredGrant(
                refresh_token=f"rt-{uuid.uuid4().hex}",
                scopes=(self.scope,),
                tid=idp.tenant_id,
                oid=oid,
                upn=None,
                key_kind="entra",
                created=now,
                updated=now,
            )
            key = UserKey.for_entra_user(idp.tenant_id, oid)
            asyncio.run(self.source.grants.put_grant(key.hashed, grant))
            self.callers.append(Caller(verified={"tid": idp.tenant_id, "oid": oid}))
        self.source.client.app()  # discovery, from the emulator
        self.http.route = True

    def request(self, user: int) -> TokenRequest:
        return TokenRequest(scopes=(self.scope,), caller=self.callers[user])

    def close(self) -> None:
        self.source.close()
        self.http.close()
        self.endpoint.close()


@pytest.fixture
def rig(entra_emulator: EntraEmulator) -> Iterator[Any]:
    SHARED_THROTTLE.clear()
    made: list[Rig] = []

    def make(mode: str, users: int = 1, max_workers: int = 8) -> Rig:
        made.append(Rig(entra_emulator, mode, users, max_workers))
        return made[-1]

    yield make
    for one in made:
        one.close()
    SHARED_THROTTLE.clear()


@pytest.fixture
def short_deadline(monkeypatch: pytest.MonkeyPatch) -> float:
    seconds = 2.0
    monkeypatch.setattr(_consent_client, "HTTP_TIMEOUT", seconds)
    monkeypatch.setattr(delegated, "HTTP_TIMEOUT", seconds, raising=False)
    return seconds


@pytest.mark.parametrize(
    ("mode", "status", "retry_after"), [("429", 429, 30.0), ("503-retry-after", 503, 20.0)]
)
def test_a_throttling_answer_is_throttled_and_closes_the_endpoint_for_every_user(
    rig: Any, mode: str, status: int, retry_after: float
) -> None:
    r = rig(mode, users=4)
    errors = []
    for user in range(4):
        with pytest.raises(Throttled) as raised:
            r.source.get_token(r.request(user))
        errors.append(raised.value)
    first = errors[0]
    assert first.status == status
    assert first.retry_after is not None
    assert retry_after - 2 <= first.retry_after <= retry_after
    assert first.code is not None
    assert first.code.code == 90033
    assert "retries 429/5xx with backoff" not in str(first)
    assert first.fix
    # The other users were told the same, without a request: one POST for four users.
    assert len(r.endpoint.accepted) == 1
    assert all(e.retry_after is not None and e.retry_after > retry_after - 5 for e in errors)


def test_a_trickling_answer_is_cut_at_the_deadline(rig: Any, short_deadline: float) -> None:
    r = rig("drip")
    started = time.monotonic()
    with pytest.raises(SourceUnavailable) as raised:
        r.source.get_token(r.request(0))
    took = time.monotonic() - started
    assert took < short_deadline + 2.0, took
    text = str(raised.value)
    assert f"did not answer within {short_deadline:g} s" in text, text
    assert raised.value.fix


def test_queued_async_callers_give_up_at_their_deadline(rig: Any, short_deadline: float) -> None:
    users = 6
    r = rig("hang", users=users, max_workers=1)

    async def all_users() -> list[tuple[float, BaseException | None]]:
        async def one(user: int) -> tuple[float, BaseException | None]:
            started = time.monotonic()
            try:
                await r.source.get_token_async(r.request(user))
            except Exception as exc:
                return time.monotonic() - started, exc
            return time.monotonic() - started, None

        return await asyncio.gather(*(one(u) for u in range(users)))

    outcomes = asyncio.run(all_users())
    returned = time.monotonic()
    for took, exc in outcomes:
        assert isinstance(exc, SourceUnavailable), exc
        assert exc.fix
        # Each bounded by its own deadline (plus the pool's pacing), never a second round.
        assert took < short_deadline + 1.5, [round(t, 2) for t, _ in outcomes]
    sent = len(r.endpoint.accepted)
    # A job whose caller has gone sends nothing when a worker frees up.
    time.sleep(short_deadline + 1.0)
    assert all(at <= returned for at in r.endpoint.accepted)
    assert len(r.endpoint.accepted) == sent
    assert any("no worker of the consent client" in str(exc) for _, exc in outcomes)


@pytest.mark.parametrize(
    ("mode", "said", "kind"),
    [
        ("html", "not a token endpoint's JSON", SourceUnavailable),
        ("503-html", "HTTP 503", SourceUnavailable),
        ("reset", "connection to Entra failed or was lost", SourceUnavailable),
        ("hang", "did not answer within", SourceUnavailable),
        ("no-token", "without an access token and without an error", EntraError),
    ],
)
def test_a_failed_refresh_says_what_happened(
    rig: Any, short_deadline: float, mode: str, said: str, kind: type[Exception]
) -> None:
    r = rig(mode)
    with pytest.raises(kind) as raised:
        r.source.get_token(r.request(0))
    text = str(raised.value)
    assert said in text, text
    assert getattr(raised.value, "fix", None), text
    for bare in ("JSONDecodeError", "ReadTimeout", "ChunkedEncodingError", "unknown error"):
        assert bare not in text, text
    assert "refused the token request" not in text, text
