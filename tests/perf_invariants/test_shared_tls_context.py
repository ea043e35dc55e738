"""The MCP client's TLS context is built once per process, not once per connection (httpx
builds a new default context per client: 30-40 ms of CPU loading the CA store, and the MCP tool
builds a client per connection). Counted, not timed."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpcore2
import pytest

from entra_passthrough import TokenChain
from entra_passthrough._tls import _default_context
from entra_passthrough.mcp import entra_http_client

ORIGIN = "https://mcp.contoso.com"


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str | None]]:
    """Every default context httpx builds, named by the SSL_CERT_FILE it read."""
    import os

    seen: list[str | None] = []
    real = httpcore2.default_ssl_context

    def counting(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        seen.append(os.environ.get("SSL_CERT_FILE"))
        return real(*args, **kwargs)

    monkeypatch.setattr(httpcore2, "default_ssl_context", counting)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    _default_context.cache_clear()
    yield seen
    _default_context.cache_clear()


async def _clients(n: int, **kw: Any) -> None:
    chain = TokenChain([])
    for _ in range(n):
        client = entra_http_client(
            chain=chain, scopes=["api://mcp/.default"], origins=[ORIGIN], **kw
        )
        await client.aclose()


async def test_many_mcp_clients_build_one_default_context(built: list[str | None]) -> None:
    await _clients(5)
    assert built == [None]  # one, not five


async def test_the_ca_file_variable_still_takes_effect(
    built: list[str | None], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from entra_passthrough.testing._ca import make_tls_material

    await _clients(2)
    ca = tmp_path / "ca.pem"
    ca.write_bytes(make_tls_material().ca_cert_pem)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    await _clients(2)
    assert built == [None, str(ca)]  # a context for the new CA file, then shared again


async def test_an_explicit_verify_is_passed_through(built: list[str | None]) -> None:
    context = ssl.create_default_context()
    await _clients(2, verify=context)
    await _clients(1, verify=False)
    assert built == []
