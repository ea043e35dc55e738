"""The server tests' stand-in MCP server (``_mcp_app.build_app``) on uvicorn."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from _support.servers import serve_in_thread

from ._mcp_app import build_app


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    """Its base URL (its RFC 9728 resource is its own ``/mcp``): one server per test module."""
    with serve_in_thread(make_app=lambda base: build_app(resource_url=f"{base}/mcp")) as url:
        yield url
