"""The private names of requests, urllib3 and http.client that ``_requests_tls`` touches to bound
every phase of a token request by its deadline are where it expects them. The module reads most of
them with ``getattr`` and a fallback (a moved name leaves the old, per-read bound in place rather
than breaking token requests), so without this test a move would go unnoticed. Each failure names
the package, its version, what moved, and the seam to update."""

from __future__ import annotations

import http.client
from importlib import metadata

import requests
import urllib3
import urllib3.connection
from requests.adapters import HTTPAdapter

from entra_passthrough._requests_tls import (
    WatchedConnection,
    _overrides_new_conn,
    watch_session,
    watched_connection,
)

URLLIB3 = f"urllib3 {metadata.version('urllib3')}"
REQUESTS = f"requests {metadata.version('requests')}"


def moved(package: str, name: str, seam: str) -> str:
    return f"{package} moved or changed `{name}`: update _requests_tls.py ({seam})."


def test_urllib3_connections_resolve_and_connect_where_the_watch_expects() -> None:
    conn = urllib3.connection.HTTPSConnection("login.microsoftonline.com", 443)
    assert getattr(conn, "_dns_host", None) == "login.microsoftonline.com", moved(
        URLLIB3, "HTTPConnection._dns_host", "_connect_within"
    )
    assert "_new_conn" in vars(urllib3.connection.HTTPConnection), moved(
        URLLIB3, "HTTPConnection._new_conn", "WatchedConnection._new_conn"
    )
    watched = watched_connection(urllib3.connection.HTTPSConnection)("login.microsoftonline.com")
    assert isinstance(watched, WatchedConnection)
    # urllib3's own _new_conn is the one the watched class wraps (not a SOCKS-like override)
    assert not _overrides_new_conn(watched), moved(
        URLLIB3, "HTTPSConnection._new_conn", "_overrides_new_conn"
    )
    for name in ("connect", "request", "getresponse"):
        assert callable(getattr(urllib3.connection.HTTPConnection, name, None)), moved(
            URLLIB3, f"HTTPConnection.{name}", "WatchedConnection"
        )
    assert urllib3.connection.HTTPConnection.response_class is http.client.HTTPResponse, moved(
        URLLIB3, "HTTPConnection.response_class", "_WatchedResponse"
    )


def test_http_client_response_reads_its_head_and_closes_where_the_watch_expects() -> None:
    for name in ("_read_status", "_close_conn"):
        assert callable(getattr(http.client.HTTPResponse, name, None)), moved(
            "http.client", f"HTTPResponse.{name}", "_WatchedResponse"
        )


def test_requests_adapters_hand_their_pools_to_the_watch() -> None:
    session = requests.Session()
    adapter = session.get_adapter("https://login.microsoftonline.com/")
    assert isinstance(adapter, HTTPAdapter)
    assert type(getattr(adapter, "proxy_manager", None)) is dict, moved(
        REQUESTS, "HTTPAdapter.proxy_manager", "watch_session"
    )
    manager = adapter.poolmanager
    assert isinstance(getattr(manager, "pool_classes_by_scheme", None), dict), moved(
        URLLIB3, "PoolManager.pool_classes_by_scheme", "watch_pool_manager"
    )
    assert hasattr(manager, "pools"), moved(URLLIB3, "PoolManager.pools", "watch_pool_manager")
    watch_session(session)
    pool = manager.connection_from_url("https://login.microsoftonline.com/")
    assert issubclass(pool.ConnectionCls, WatchedConnection), moved(
        URLLIB3, "HTTPConnectionPool.ConnectionCls", "watch_pool_manager"
    )
    session.close()


def test_urllib3_responses_keep_http_client_s_response() -> None:
    # watch_response reaches http.client's response through urllib3's: a response built over
    # no socket still names the attribute.
    response = urllib3.HTTPResponse(body=b"", preload_content=False)
    assert hasattr(response, "_original_response"), moved(
        URLLIB3, "HTTPResponse._original_response", "watch_response"
    )
