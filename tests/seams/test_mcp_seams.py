"""The private names of the mcp SDK (and httpx2) that ``_mcp_seams``/``_httpx2_seams`` touch are
where they expect them. Each failure names the package, its version, what moved, and the seam
to update."""

from __future__ import annotations

import inspect
from importlib import metadata
from typing import Any

import anyio
import httpx2
import pytest
from mcp import ClientSession

from entra_passthrough._httpx2_seams import wrap_transports
from entra_passthrough._mcp_seams import set_elicitation_callback

MCP = f"mcp {metadata.version('mcp')}"
HTTPX2 = f"httpx2 {metadata.version('httpx2')}"


def moved(package: str, name: str, seam: str) -> str:
    module = "_httpx2_seams.py" if package.startswith("httpx2") else "_mcp_seams.py"
    return f"{package} moved or changed `{name}`: update {module} ({seam})."


async def test_set_elicitation_callback_replaces_the_sessions_callback() -> None:
    async def callback(context: Any, params: Any) -> Any:
        return None

    send, receive = anyio.create_memory_object_stream[Any](1)
    with send, receive:
        session = ClientSession(receive, send)
        assert set_elicitation_callback(session, callback), moved(
            MCP, "ClientSession._elicitation_callback", "set_elicitation_callback"
        )
        assert session._elicitation_callback is callback
    # The session answers elicitation/create through that slot (read on each request).
    source = inspect.getsource(ClientSession)
    assert "await self._elicitation_callback(" in source, moved(
        MCP, "ClientSession's call of _elicitation_callback", "set_elicitation_callback"
    )
    assert set_elicitation_callback(object(), callback) is False


class _Recording(httpx2.AsyncBaseTransport):
    def __init__(self, inner: httpx2.AsyncBaseTransport, seen: list[str]) -> None:
        self.inner = inner
        self.seen = seen

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.seen.append(str(request.url))
        return await self.inner.handle_async_request(request)


async def test_wrap_transports_wraps_the_transport_a_request_goes_through() -> None:
    seen: list[str] = []
    mock = httpx2.MockTransport(lambda request: httpx2.Response(204))
    async with httpx2.AsyncClient(transport=mock) as client:
        wrap_transports(client, lambda inner: _Recording(inner, seen))
        response = await client.get("https://api.contoso.com/x")
    assert response.status_code == 204
    assert seen == ["https://api.contoso.com/x"], moved(
        HTTPX2, "AsyncClient._transport", "wrap_transports"
    )


def test_wrap_transports_wraps_the_proxy_mounts_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    client = httpx2.AsyncClient()
    mounts = getattr(client, "_mounts", None)
    assert isinstance(mounts, dict), moved(HTTPX2, "AsyncClient._mounts", "wrap_transports")
    assert mounts, moved(HTTPX2, "AsyncClient._mounts (proxies from the environment)", "")
    wrap_transports(client, lambda inner: _Recording(inner, []))
    assert all(isinstance(t, _Recording) for t in client._mounts.values() if t is not None)
    assert isinstance(client._transport, _Recording)
    # A request to a proxied URL picks its transport from those mounts.
    picked = client._transport_for_url(httpx2.URL("https://api.contoso.com/"))
    assert isinstance(picked, _Recording), moved(
        HTTPX2, "AsyncClient._transport_for_url (reads _mounts)", "wrap_transports"
    )
