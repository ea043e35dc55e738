"""The acquisition's deadline bounds every phase of a token request, not only the body.

The read and connect timeouts are per socket operation: an endpoint (or a proxy) that keeps
each read or write within them, a byte at a time, never times out. Before, only the body was
cut at the deadline (a watchdog armed after the headers had arrived); a status line, headers,
TLS handshake or request body trickled under the timeouts held a sync caller and its thread for
as long as the trickle lasted (each case here planned 60 s or more against a 2 s deadline).

Each phase is played by a raw socket server on loopback that trickles exactly that phase. The
bounds are loose on purpose (the machine is loaded): the call must end before half the
trickle's planned time (``BOUND``, 15x the deadline), and the server must see the connection
dropped before its planned end (counted, not timed).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from entra_passthrough import (
    Caller,
    ManagedIdentity,
    Policy,
    SourceUnavailable,
    Timeouts,
    TokenChain,
)
from entra_passthrough._http import GuardedHttpClient, Throttle, TransportFailure, size_pool
from entra_passthrough.testing import EntraEmulator

from .conftest import accept_each, get_token_as, mcp_scope, routed_obo_chain

DEADLINE = 2.0
INTERVAL = 0.2  # one byte (or one block, for the request write) per INTERVAL
PLANNED = 300  # units each trickle sends: 60 s in all
#: Not a timing target: the invariant is that the call is cut, not read to the trickle's end, so
#: the bound is half the trickle (the deadline is 2 s; a loaded machine may stretch it, never 15x).
BOUND = PLANNED * INTERVAL / 2
BLOCK = 32768  # "write": the server reads a block per INTERVAL ...
# ... of a 64 MiB request body (more than any kernel's send and receive buffers hold): minutes
WRITE_BYTES = 2048 * BLOCK
TIMEOUTS = Timeouts(connect=5.0, read=5.0, deadline=DEADLINE, retries=0)

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n"
#: the phase each mode trickles, as the error names it
PHASES = {
    "connect": "connect",
    "tls": "TLS handshake",
    "write": "sending the request",
    "status": "status line",
    "headers": "headers",
    "body": "body",
    "endless": "body",
    "chunked": "body",
}


class PhaseServer:
    """A loopback server that trickles one phase of an HTTP exchange (``mode``):

    ``tls``: a TLS record header at once, then the record a byte at a time (the client's
    handshake reads it whole before it can parse it); ``write``: reads the request a block at a
    time; ``status``/``headers``/``body``: that part of a 200 a byte at a time; ``endless``: a
    200 whose body (Content-Length 100000) stops after a few bytes, connection held open;
    ``chunked``: a chunked 200 whose chunks never end.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.listener = socket.create_server(
            ("127.0.0.1", 0), backlog=0 if mode == "connect" else 16
        )
        if mode == "write":
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.port = self.listener.getsockname()[1]
        self.units: list[int] = []  # per connection: units trickled before the client left
        self.connections = 0  # "ok": connections accepted
        self.done = threading.Event()
        self.release = threading.Event()  # ends every trickle (teardown)
        self.drain = threading.Event()  # "write": read what is left at once
        self.filler: socket.socket | None = None
        if mode == "connect":
            # Never accepted: one connection fills the backlog, and the kernel drops every
            # later SYN (the connect hangs, as behind a firewall that drops them).
            self.filler = socket.create_connection(("127.0.0.1", self.port), timeout=30)
            return
        accept_each(self.listener, self._answer)

    @property
    def url(self) -> str:
        scheme = "https" if self.mode == "tls" else "http"
        return f"{scheme}://127.0.0.1:{self.port}/tenant/oauth2/v2.0/token"

    def _trickle(self, conn: socket.socket, data: bytes) -> int:
        sent = 0
        for byte in data[:PLANNED]:  # bounded
            if self.release.wait(INTERVAL):
                break
            conn.sendall(bytes([byte]))
            sent += 1
        return sent

    def _read_request(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:  # bounded by the client's small request
            chunk = conn.recv(65536)
            if not chunk:
                raise OSError("closed")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                raise OSError("closed")
            body += chunk

    def _answer(self, conn: socket.socket) -> None:
        units = 0
        conn.settimeout(120)
        try:
            if self.mode == "tls":
                conn.recv(65536)  # the ClientHello
                conn.sendall(b"\x16\x03\x03\x40\x00")  # a handshake record of 16 KiB ...
                units = self._trickle(conn, bytes(PLANNED))  # ... that never completes
            elif self.mode == "write":
                for _ in range(WRITE_BYTES):  # bounded: each turn reads a byte or more
                    if not self.drain.is_set():
                        self.drain.wait(INTERVAL)  # a block per INTERVAL, until told to drain
                    chunk = conn.recv(BLOCK if not self.drain.is_set() else 1 << 20)
                    if not chunk:
                        break  # the client closed the connection (or sent everything)
                    units += len(chunk)
            elif self.mode == "ok":
                self.connections += 1
                for _ in range(1000):  # bounded: keep-alive, an answer per request
                    self._read_request(conn)
                    conn.sendall(HEAD.replace(b"Length: 2", b"Length: 13") + b'{"answer":1}\n')
                    units += 1
            else:
                self._read_request(conn)
                if self.mode == "status":
                    units = self._trickle(conn, HEAD * 10)
                elif self.mode == "headers":
                    conn.sendall(b"HTTP/1.1 200 OK\r\n")
                    units = self._trickle(conn, b"X-Slow: " + b"a" * 1000 + b"\r\n")
                elif self.mode == "body":
                    conn.sendall(HEAD.replace(b"Length: 2", b"Length: 100000"))
                    units = self._trickle(conn, b" " * PLANNED)
                elif self.mode == "endless":
                    conn.sendall(HEAD.replace(b"Length: 2", b"Length: 100000") + b"{ ")
                    conn.settimeout(PLANNED * INTERVAL)  # the rest never comes; the client's
                    units = 1 if conn.recv(1) == b"" else PLANNED  # close ends the wait (EOF)
                elif self.mode == "chunked":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    units = self._trickle(conn, b"1\r\n \r\n" * PLANNED)
        except OSError:
            pass  # the client dropped the connection
        finally:
            conn.close()
            self.units.append(units)
            self.done.set()

    def close(self) -> None:
        self.release.set()
        self.drain.set()
        self.listener.close()
        if self.filler is not None:
            self.filler.close()

    def dropped_early(self) -> bool:
        """The client dropped the connection before the trickle's planned end (bounded wait).
        For the request write: the server drains what the client's kernel still had buffered
        (it is sent after the client let go) and finds less than the whole body."""
        if self.mode == "connect":
            return True  # no connection was ever made
        if self.mode == "write":
            self.drain.set()
        assert self.done.wait(PLANNED * INTERVAL * 2), "the trickling answer never ended"
        return self.units[0] < (WRITE_BYTES if self.mode == "write" else PLANNED)


@pytest.fixture(params=list(PHASES))
def server(request: pytest.FixtureRequest) -> Iterator[PhaseServer]:
    srv = PhaseServer(request.param)
    yield srv
    srv.close()


def _session(kind: str) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    if kind == "library":
        size_pool(session)  # the adapters the library mounts on the sessions it builds
    return session


def _body(mode: str) -> Any:
    if mode == "write":
        # 64 MiB in blocks: each block's send completes within the timeouts, the whole write
        # lasts minutes (a form MSAL sends is a few KiB: this is a proxy that reads slowly)
        return (b"a" * BLOCK for _ in range(WRITE_BYTES // BLOCK))
    return {"client_id": "x", "grant_type": "client_credentials"}


@pytest.mark.parametrize("session_kind", ["library", "application"])
def test_every_phase_of_a_token_request_ends_at_the_deadline(
    server: PhaseServer, session_kind: str
) -> None:
    client = GuardedHttpClient(
        _session(session_kind), timeouts=TIMEOUTS, throttle=Throttle(), peer="Entra"
    )
    started = time.monotonic()
    try:
        with pytest.raises(TransportFailure) as info:
            client.post(server.url, data=_body(server.mode))
    finally:
        elapsed = time.monotonic() - started
        client.close()
    assert info.value.kind == "deadline", info.value
    assert info.value.phase == PHASES[server.mode]
    assert f"(phase: {PHASES[server.mode]})" in str(info.value)
    assert elapsed < BOUND, f"{server.mode}: the call lasted {elapsed:.1f} s"
    assert server.dropped_early()  # the connection was let go, not read to its end


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("phase", ["status", "headers"])
def test_a_token_endpoint_trickling_its_head_fails_the_call_at_its_deadline(
    idp: EntraEmulator, mode: str, phase: str
) -> None:
    """Through the public API: OBO with the application's session, the POST routed to a
    server trickling its status line or headers."""
    server = PhaseServer(phase)
    try:
        with routed_obo_chain(idp, server.port, TIMEOUTS) as chain:
            caller = Caller.from_token(
                idp.user_token("bob", audience=idp.agent.client_id, extra_claims={"uti": mode})
            )
            started = time.monotonic()
            with pytest.raises(
                SourceUnavailable, match=f"deadline passed .*phase: {PHASES[phase]}"
            ):
                get_token_as(mode, chain, mcp_scope(idp), caller=caller)
            elapsed = time.monotonic() - started
            assert elapsed < BOUND, f"the call lasted {elapsed:.1f} s"
            assert server.dropped_early()  # the worker let go of the connection
    finally:
        server.close()


def test_a_deadline_passing_after_the_answer_never_touches_the_pooled_connection() -> None:
    """The watch is bound to the response: released when the body has been read, before
    urllib3 puts the connection back into its pool. Before, the watchdog's entry was dropped
    only after ``response.content`` returned, so a deadline passing in between shut down the
    socket of a connection already back in the pool (in use by the next request, or dropped
    and opened again). Made deterministic: the pool's ``_put_conn`` holds the releasing thread
    until that attempt's deadline has passed and the watchdog has run."""
    from entra_passthrough import _http

    server = PhaseServer("ok")
    session = _session("library")
    # Long enough for a loopback answer on a loaded machine (the answer must be read before
    # the deadline for the case to arise); each second here is waited out once, in _put_conn.
    deadline = 3.0
    client = GuardedHttpClient(
        session, timeouts=Timeouts(deadline=deadline, retries=0), throttle=Throttle()
    )
    manager = session.get_adapter(server.url).poolmanager
    base = manager.pool_classes_by_scheme["http"]
    put_back: list[bool] = []

    def put_conn(pool: Any, conn: Any) -> None:
        base._put_conn(pool, conn)
        if put_back:
            return  # the first answer only
        limit = time.monotonic() + 60
        # bounded: the attempt's deadline (``deadline`` after it started) passes, and the
        # watchdog has dealt with every entry that came due (it pops each one when it acts on it)
        while time.monotonic() < limit and (
            time.monotonic() < started + deadline + 0.2
            or any(entry[0] <= time.monotonic() for entry in list(_http._WATCHDOG._heap))
        ):
            time.sleep(0.05)
        put_back.append(conn.sock is not None)

    manager.pool_classes_by_scheme = {
        **manager.pool_classes_by_scheme,
        "http": type("SpyPool", (base,), {"_put_conn": put_conn}),
    }
    started = time.monotonic()
    try:
        for _ in range(3):  # sequential, over one pooled connection
            response = client.post(server.url, data={"client_id": "x"})
            assert response.json() == {"answer": 1}
        # the application's own use of its session, outside a token request: as before
        assert session.post(server.url, data={"q": "1"}).json() == {"answer": 1}
    finally:
        client.close()
        session.close()
        server.close()
    assert put_back == [True]
    assert server.connections == 1  # the connection was never shut down and opened again


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("host", ["app_service", "imds"])
def test_the_managed_identity_endpoint_gets_the_same_deadline(
    host: str, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests to the managed identity endpoint (App Service's, and IMDS through MSAL's
    ``ManagedIdentityClient``) go through the same guarded layer: an endpoint trickling its
    headers fails the call at the deadline, naming the phase, for a sync and an async caller
    (before: the call, sync or async, was still running after 25 s for a 2 s deadline)."""
    for name in EntraEmulator.MI_HOST_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    server = PhaseServer("headers")
    base = f"http://127.0.0.1:{server.port}"
    client_id = "11111111-1111-1111-1111-111111111111"
    if host == "imds":
        monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", base)  # IMDS at this address
        mi = ManagedIdentity(client_id=client_id, timeouts=TIMEOUTS)
    else:
        mi = ManagedIdentity(
            client_id=client_id, endpoint=f"{base}/msi/token", header="h", timeouts=TIMEOUTS
        )
    chain = TokenChain([mi], policy=Policy.APP_ONLY)
    started = time.monotonic()
    try:
        with pytest.raises(SourceUnavailable, match=r"deadline passed .*phase: headers"):
            get_token_as(mode, chain, ["api://resource/.default"])
        elapsed = time.monotonic() - started
        assert elapsed < BOUND, f"the call lasted {elapsed:.1f} s"
        assert server.dropped_early()  # the worker let go of the connection
    finally:
        chain.close()
        server.close()


def test_an_adapter_the_layer_does_not_watch_still_has_its_body_cut() -> None:
    """An adapter mounted on the application's session after the layer wrapped it is not
    watched: its body is still cut at the deadline (the earlier bound), released by the
    response the same way."""
    from requests.adapters import HTTPAdapter

    server = PhaseServer("body")
    session = _session("application")
    client = GuardedHttpClient(session, timeouts=TIMEOUTS, throttle=Throttle())
    session.mount("http://", HTTPAdapter())  # after the layer wrapped the session
    try:
        with pytest.raises(TransportFailure) as info:
            client.post(server.url, data=_body("body"))
        assert info.value.kind == "deadline"
        assert info.value.phase == "body"
        assert server.dropped_early()  # before the teardown ends the trickle
    finally:
        client.close()
        server.close()


class ConnectProxy:
    """A loopback HTTP proxy that answers CONNECT and relays both ways (no inspection)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.tunnels = 0
        accept_each(self.listener, self._tunnel)

    def _tunnel(self, client: socket.socket) -> None:
        try:
            head = b""
            while b"\r\n\r\n" not in head:  # bounded by the client's CONNECT request
                chunk = client.recv(4096)
                if not chunk:
                    return
                head += chunk
            host, _, port = head.split()[1].decode().rpartition(":")
            upstream = socket.create_connection((host, int(port)), timeout=30)
        except OSError:
            client.close()
            return
        self.tunnels += 1
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_relay, args=(a, b), daemon=True).start()

    def close(self) -> None:
        self.listener.close()


def _relay(source: socket.socket, sink: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):  # ends when either side closes
            sink.sendall(chunk)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        source.close()  # each socket is the source of one relay: closed once


@pytest.mark.parametrize("session_kind", ["library", "application"])
def test_the_deadline_holds_through_a_proxy_tunnel(session_kind: str) -> None:
    """Through an HTTPS proxy's CONNECT tunnel (the proxy manager requests creates at the
    first request through that proxy): the TLS handshake trickled behind the tunnel is cut at
    the deadline and named."""
    proxy = ConnectProxy()
    server = PhaseServer("tls")
    session = _session(session_kind)
    session.proxies = {"https": f"http://127.0.0.1:{proxy.port}"}
    client = GuardedHttpClient(session, timeouts=TIMEOUTS, throttle=Throttle())
    started = time.monotonic()
    try:
        with pytest.raises(TransportFailure) as info:
            client.post(server.url, data=_body("tls"))
        elapsed = time.monotonic() - started
        assert proxy.tunnels == 1
        assert (info.value.kind, info.value.phase) == ("deadline", "TLS handshake")
        assert elapsed < BOUND, f"the call lasted {elapsed:.1f} s"
        assert server.dropped_early()
    finally:
        client.close()
        server.close()
        proxy.close()
