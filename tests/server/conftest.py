"""The server tests' stand-in MCP server (``_mcp_app.build_app``) on uvicorn, and an issuer
with its HTTPS key endpoint (``_https_keys``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from _support.servers import serve_in_thread
from _support.tokens import Issuer

from ._https_keys import KeyEndpoint, https_key_endpoint
from ._mcp_app import build_app


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    """Its base URL (its RFC 9728 resource is its own ``/mcp``): one server per test module."""
    with serve_in_thread(make_app=lambda base: build_app(resource_url=f"{base}/mcp")) as url:
        yield url


@pytest.fixture
def issuer() -> Issuer:
    """A token issuer of its own (a module may define its own ``issuer``)."""
    return Issuer()


@pytest.fixture
def keys(issuer: Issuer, tmp_path: Path) -> Iterator[KeyEndpoint]:
    """``issuer``'s key document served over HTTPS on loopback."""
    with https_key_endpoint(issuer, tmp_path) as endpoint:
        yield endpoint
