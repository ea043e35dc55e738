"""The private names of httpx2 and httpx that ``_httpx_seams`` touches are where it expects
them. Each failure names the package, its version, what moved, and the seam to update."""

from __future__ import annotations

from importlib import metadata
from typing import Any

import httpx
import httpx2
import pytest

from entra_passthrough._httpx_seams import has_authorization, wrap_transports

HTTPX2 = f"httpx2 {metadata.version('httpx2')}"


def moved(package: str, name: str, seam: str) -> str:
    return f"{package} moved or changed `{name}`: update _httpx_seams.py ({seam})."


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


@pytest.mark.parametrize("module", [httpx, httpx2])
def test_headers_keep_raw_lower_value_triples(module: Any) -> None:
    # has_authorization reads these; a new layout still answers right (the public path) but
    # costs ~1 us more per request on the hit path.
    package = f"{module.__name__} {metadata.version(module.__name__)}"
    headers = module.Headers({"Authorization": "Bearer x", "X-Other": "1"})
    triples = getattr(headers, "_list", None)
    assert isinstance(triples, list), moved(package, "Headers._list", "has_authorization")
    assert triples[0] == (b"Authorization", b"authorization", b"Bearer x"), moved(
        package, "Headers._list's (raw, lower, value) triples", "has_authorization"
    )
    assert has_authorization(headers) is True
