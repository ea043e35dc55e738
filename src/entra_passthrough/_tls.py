"""One TLS context for the HTTP clients the library builds per connection.

httpx builds a new default ``ssl.SSLContext`` for every client made with ``verify=True``: 30 to
40 ms of CPU each, loading the CA store. The MCP tool builds a client per connection (one per
user in a per-user pool, and again at every reconnect): measured on this repository's MCP
integration and churn tests, 15 % of their CPU went there. ``verify=True`` therefore maps to one
context per process, built exactly as httpx builds it (``httpx2.create_ssl_context()``).
``SSL_CERT_FILE`` and ``SSL_CERT_DIR``, which httpx reads for it, are part of the cache key, so
setting them later still takes effect (a CA file rewritten in place is read at the next process
start). Sharing one client-side context between clients and threads is safe: it is what httpx
itself advises for many clients. Every client that shares it is built by ``mcp.http_client_for``
with the same settings (HTTP/1.1, so the ALPN list httpcore sets on it is always the same).
"""

from __future__ import annotations

import functools
import os
import ssl
from typing import Any

import httpx2


def shared_verify(verify: Any) -> Any:
    """``verify=True`` as the process's shared default context; anything else as given."""
    if verify is True:
        return _default_context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    return verify


@functools.lru_cache(maxsize=8)
def _default_context(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    # The arguments are the cache key: httpx reads the same variables itself.
    return httpx2.create_ssl_context(verify=True)
