"""One TLS context per CA bundle for the ``requests`` sessions the library builds (token requests).

requests hands urllib3 the CA bundle's *path* (``verify=True``: certifi's bundle; a string: that
file), and urllib3 builds a new ``ssl.SSLContext`` and loads the whole bundle into it for every
new connection. Loading certifi's ~150 certificates costs ~16 ms of CPU here (OpenSSL parses
every PEM block), paid again for each connection a burst of new users opens to the token
endpoint: 64 new connections, ~1 s of CPU, more than the token requests themselves
(bench/README.md, "Where the cold-start time goes"). ``SharedTlsAdapter`` gives every
connection of a bundle one context, built the way urllib3 builds it
(``create_urllib3_context`` with ``CERT_REQUIRED``: certificate and hostname checked).

A bundle is identified by its path and the file's size and modification time, so a bundle
rewritten in place is read for the next new connection, as before. Requests that carry a client
certificate, or that do not verify, are left exactly as requests sends them. Mounted only on
sessions the library creates (``_http.size_pool``), never on one the application passed.

The second half of the module bounds every phase of a token request by the acquisition's
deadline (``WatchedConnection``, ``watch_session``).
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import os
import socket
import ssl
import time
from collections.abc import Mapping
from typing import Any, cast

import urllib3.connection
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from requests.utils import DEFAULT_CA_BUNDLE_PATH
from urllib3.util.connection import allowed_gai_family
from urllib3.util.ssl_ import create_urllib3_context

from ._http import RequestWatch, current_watch


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None  # requests raises its own error for a missing bundle
    return st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=8)
def _context(
    ca_file: str | None, ca_dir: str | None, stamp: tuple[int, int] | None
) -> ssl.SSLContext:
    # ``stamp`` is part of the key only: a bundle rewritten in place gets a new context.
    context = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)
    context.load_verify_locations(cafile=ca_file, capath=ca_dir)
    return context


def shared_context(ca_file: str | None, ca_dir: str | None = None) -> ssl.SSLContext:
    """The process's context for this CA bundle (file or directory), loaded once."""
    path = ca_file if ca_file is not None else ca_dir
    return _context(ca_file, ca_dir, _stamp(path) if path is not None else None)


class SharedTlsAdapter(HTTPAdapter):
    """``HTTPAdapter`` whose verifying HTTPS connections share one context per CA bundle
    instead of loading the bundle again for each new connection.

    Uses requests' documented subclassing hooks (``build_connection_pool_key_attributes``,
    ``cert_verify``, ``init_poolmanager``, ``proxy_manager_for``); the checks are urllib3's own
    (the certificate chain against the same bundle, then the hostname). Its connections are
    watched (``WatchedConnection``): the acquisition's deadline bounds every phase."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        watch_pool_manager(self.poolmanager)
        self._pid = os.getpid()

    def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        if self._pid != os.getpid():
            # A forked child (gunicorn --preload) inherits the parent's open connections: two
            # processes writing and reading one connection could each read the answer to the
            # other's request (another user's token; over TLS both hold the same keys). The
            # child drops them unused (closing its copies only) and opens its own.
            self._pid = os.getpid()
            self.poolmanager.clear()
            for manager in self.proxy_manager.values():
                manager.clear()
        return super().send(request, *args, **kwargs)

    def proxy_manager_for(self, proxy: Any, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        watch_pool_manager(manager)
        return manager

    def build_connection_pool_key_attributes(
        self, request: Any, verify: Any, cert: Any = None
    ) -> tuple[Any, Any]:
        host_params, pool_kwargs = cast(
            "tuple[dict[str, Any], dict[str, Any]]",
            super().build_connection_pool_key_attributes(request, verify, cert),
        )
        if (
            host_params.get("scheme") == "https"
            and cert is None
            and pool_kwargs.get("cert_reqs") == "CERT_REQUIRED"
        ):
            ca_file = pool_kwargs.pop("ca_certs", None)
            ca_dir = pool_kwargs.pop("ca_cert_dir", None)
            if ca_file is None and ca_dir is None:
                ca_file = DEFAULT_CA_BUNDLE_PATH  # what requests uses for verify=True
            pool_kwargs["ssl_context"] = shared_context(ca_file, ca_dir)
        return host_params, pool_kwargs

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        super().cert_verify(conn, url, verify, cert)  # type: ignore[no-untyped-call]  # stubs
        # requests sets the bundle's path on the pool, which makes urllib3 load it into the
        # context for every new connection: a shared context already holds it.
        conn_kw = getattr(conn, "conn_kw", None)  # urllib3's keywords for each new connection
        if cert is None and isinstance(conn_kw, dict) and conn_kw.get("ssl_context") is not None:
            conn.ca_certs = None
            conn.ca_cert_dir = None


# -- the acquisition's deadline on every phase of a token request ----------------------------------
#
# The connect and read timeouts urllib3 applies are per socket operation: a peer that keeps every
# read or write within them (a status line, headers, a TLS record or a body trickled a byte at a
# time, a proxy that drains the request slowly) never times out. The guarded layer
# (``_http.GuardedHttpClient``) gives each attempt a ``RequestWatch``; the connection and response
# classes below hand it the attempt's socket from the moment it exists and name each phase, so the
# watchdog can end any phase at the deadline. Outside an attempt (no watch in the context) they
# behave exactly as urllib3's own classes.


class _WatchedResponse(http.client.HTTPResponse):
    """http.client's response, naming the status line and headers phases, and releasing the
    attempt's watch when the body has been read: ``_close_conn`` runs before urllib3 puts the
    connection back into its pool, so the deadline never acts on a connection another request
    took from it."""

    def __init__(self, sock: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        watch = current_watch()
        # The answer to the request (not a proxy's answer to CONNECT, read inside ``connect``:
        # the tunnel's socket stays watched through the TLS handshake that follows).
        self._ep_watch = watch if watch is not None and watch.phase == "status line" else None

    def _read_status(self) -> Any:
        watch = self._ep_watch
        if watch is not None:
            watch.enter("status line")
        status = super()._read_status()  # type: ignore[misc]
        if watch is not None:
            watch.enter("headers")
        return status

    def _close_conn(self) -> None:
        watch, self._ep_watch = self._ep_watch, None
        if watch is not None:
            watch.release()
        super()._close_conn()  # type: ignore[misc]


class WatchedConnection:
    """Mixed into a urllib3 connection class (``watched_connection``): every phase of a request
    sent inside a guarded attempt is under the attempt's deadline."""

    response_class = _WatchedResponse
    sock: Any
    timeout: Any

    def _new_conn(self) -> socket.socket:
        watch = current_watch()
        if watch is None:
            return super()._new_conn()  # type: ignore[misc, no-any-return]
        watch.enter("connect")
        sock = _connect_within(self, watch)
        if _is_https(self):
            # The TLS handshake runs on an SSLSocket that takes this socket's descriptor over:
            # the watch holds a duplicate of it (same connection) until ``connect`` returns.
            watch.hold(sock.dup(), own=True)
            watch.enter("TLS handshake")
        else:
            watch.hold(sock)
            watch.enter("sending the request")
        return sock

    def connect(self) -> None:
        watch = current_watch()
        super().connect()  # type: ignore[misc]
        # (a failure keeps the phase it failed in; the watch closes a duplicate when it ends)
        if watch is not None and isinstance(self.sock, socket.socket):
            watch.hold(self.sock)  # the TLS socket now (and the duplicate closed)
            watch.enter("sending the request")

    def request(self, *args: Any, **kwargs: Any) -> None:
        watch = current_watch()
        if watch is not None:
            watch.enter("sending the request")
            if isinstance(self.sock, socket.socket):
                watch.hold(self.sock)  # a connection from the pool, used again
        super().request(*args, **kwargs)  # type: ignore[misc]
        if watch is not None:
            watch.enter("status line")

    def getresponse(self) -> Any:
        watch = current_watch()
        response = super().getresponse()  # type: ignore[misc]
        if watch is not None:
            watch.enter("body")
        return response


def _is_https(conn: Any) -> bool:
    return isinstance(conn, urllib3.connection.HTTPSConnection)


def _connect_within(conn: Any, watch: RequestWatch) -> socket.socket:
    """Open the connection within the time left. urllib3 tries every address the host name
    resolves to, each with the whole connect timeout (a name with eight addresses and a
    firewall dropping the SYNs: eight timeouts); here each address gets at most what is left of
    the deadline. The name is resolved by the system's resolver (its own timeouts)."""
    base_new_conn = super(WatchedConnection, conn)._new_conn
    timeout = conn.timeout
    if not isinstance(timeout, (int, float)) or getattr(conn, "_dns_host", None) is None:
        return base_new_conn()  # type: ignore[no-any-return]
    if _overrides_new_conn(conn):
        # a connection class with its own way to connect (SOCKS): its timeout, clamped
        conn.timeout = max(min(timeout, watch.end - time.monotonic()), 0.001)
        try:
            return base_new_conn()  # type: ignore[no-any-return]
        finally:
            conn.timeout = timeout
    host = conn._dns_host
    try:
        addresses = [
            info[4][0]
            for info in socket.getaddrinfo(
                host.strip("[]"), conn.port, allowed_gai_family(), socket.SOCK_STREAM
            )
        ]
    except (OSError, UnicodeError):
        addresses = []
    if not addresses:
        addresses = [host]  # urllib3 resolves again, and names the failure its own way
    failure: Exception | None = None
    try:
        for address in addresses:
            left = watch.end - time.monotonic()
            if left <= 0 or watch.closed:  # (closed: its source was closed, no next address)
                break
            conn._dns_host = address
            conn.timeout = min(timeout, left)
            try:
                return base_new_conn()  # type: ignore[no-any-return]
            except (
                urllib3.exceptions.ConnectTimeoutError,
                urllib3.exceptions.NewConnectionError,
            ) as exc:
                failure = exc
    finally:
        conn._dns_host = host
        conn.timeout = timeout
    if failure is not None:
        raise failure
    raise urllib3.exceptions.ConnectTimeoutError(
        conn, "the acquisition's deadline passed while connecting"
    )


def _overrides_new_conn(conn: Any) -> bool:
    # The first class after the mixin in the MRO that defines _new_conn must be urllib3's own.
    for cls in type(conn).__mro__[1:]:
        if cls is WatchedConnection:
            continue
        if "_new_conn" in vars(cls):
            return cls is not urllib3.connection.HTTPConnection
    return True


def _watchable(cls: Any) -> bool:
    """A urllib3 connection class not watched yet (anything else is left as it is)."""
    return (
        isinstance(cls, type)
        and issubclass(cls, urllib3.connection.HTTPConnection)
        and not issubclass(cls, WatchedConnection)
    )


@functools.lru_cache(maxsize=64)
def watched_connection(cls: type) -> type:
    """``cls`` (a urllib3 connection class) with ``WatchedConnection`` mixed in."""
    if issubclass(cls, WatchedConnection):
        return cls
    return type(f"Watched{cls.__name__}", (WatchedConnection, cls), {})


@functools.lru_cache(maxsize=64)
def _watched_pool(cls: type) -> type:
    connection_cls = getattr(cls, "ConnectionCls", None)
    if not _watchable(connection_cls):
        return cls
    return type(cls.__name__, (cls,), {"ConnectionCls": watched_connection(connection_cls)})


def watch_pool_manager(manager: Any) -> None:
    """Make the pools of a urllib3 ``PoolManager`` (or ``ProxyManager``) build watched
    connections: the pools it creates from now on, and the new connections of those it has."""
    classes = getattr(manager, "pool_classes_by_scheme", None)
    if not isinstance(classes, dict):
        return
    manager.pool_classes_by_scheme = {scheme: _watched_pool(cls) for scheme, cls in classes.items()}
    pools = getattr(manager, "pools", None)
    if pools is None:
        return
    with contextlib.suppress(Exception):  # a container we do not know: new pools are enough
        for key in list(pools.keys()):
            pool = pools.get(key)
            connection_cls = getattr(pool, "ConnectionCls", None)
            if _watchable(connection_cls):
                pool.ConnectionCls = watched_connection(connection_cls)


def watch_session(session: Any) -> None:
    """Watch the connections of every ``HTTPAdapter`` mounted on a ``requests.Session`` the
    guarded layer sends token requests through (the library's or the application's). The
    connection classes are urllib3's own (or the adapter's) with the phases named; outside a
    token request they behave as before."""
    adapters = getattr(session, "adapters", None)
    if not isinstance(adapters, Mapping):
        return
    for adapter in list(adapters.values()):
        if not isinstance(adapter, HTTPAdapter):
            continue
        manager = getattr(adapter, "poolmanager", None)
        if manager is not None:
            watch_pool_manager(manager)
        proxy_managers = getattr(adapter, "proxy_manager", None)
        if type(proxy_managers) is dict:
            # requests keeps a manager per proxy URL in this dict, created at the first request
            # through that proxy: those are watched as they are added.
            adapter.proxy_manager = _WatchingManagers(proxy_managers)


class _WatchingManagers(dict[Any, Any]):
    """An ``HTTPAdapter``'s proxy managers, each watched (``watch_pool_manager``) as it is
    added."""

    def __init__(self, managers: Mapping[Any, Any]) -> None:
        super().__init__(managers)
        for manager in self.values():
            watch_pool_manager(manager)

    def __setitem__(self, key: Any, manager: Any) -> None:
        watch_pool_manager(manager)
        super().__setitem__(key, manager)


def watch_response(response: Any, watch: RequestWatch) -> None:
    """Watch the body of a streamed ``requests`` response whose connection is not watched (an
    adapter the layer could not reach): the watch holds its socket from here on and is
    released by http.client's response when the body has been read, before urllib3 puts the
    connection back into its pool. A response this cannot be arranged for (no socket, not
    urllib3's, read already) is left alone: each read is bounded by the read timeout."""
    raw = getattr(response, "raw", None)
    original = getattr(raw, "_original_response", None)  # urllib3 2: http.client's response
    connection = getattr(raw, "connection", None)
    sock = getattr(connection, "sock", None)
    close_conn = getattr(original, "_close_conn", None)
    if (
        not isinstance(original, http.client.HTTPResponse)
        or not isinstance(sock, socket.socket)
        or not callable(close_conn)
        or original.fp is None
    ):
        return

    def release_then_close() -> None:
        watch.release()  # before urllib3 returns the connection to its pool
        close_conn()

    original._close_conn = release_then_close  # type: ignore[attr-defined]
    watch.enter("body")
    watch.hold(sock)
