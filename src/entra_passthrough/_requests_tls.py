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
"""

from __future__ import annotations

import functools
import os
import ssl
from typing import Any, cast

from requests.adapters import HTTPAdapter
from requests.utils import DEFAULT_CA_BUNDLE_PATH
from urllib3.util.ssl_ import create_urllib3_context


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
    ``cert_verify``); the checks are urllib3's own (the certificate chain against the same
    bundle, then the hostname)."""

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
