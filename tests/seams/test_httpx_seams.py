"""The private names of httpx2 and httpx that ``_httpx_seams`` touches are where it expects
them. Each failure names the package, its version, what moved, and the seam to update."""

from __future__ import annotations

from http.cookiejar import CookieJar
from importlib import metadata
from typing import Any

import httpx
import httpx2
import pytest

from entra_passthrough._httpx_seams import (
    append_authorization,
    has_authorization,
    skip_cookie_extraction_without_set_cookie,
    wrap_transports,
)

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


@pytest.mark.parametrize("module", [httpx, httpx2])
@pytest.mark.parametrize(
    "initial", [{}, {"X-Other": "1"}, {"Accept": "*/*", "X-Trace": b"\xe9t\xe9"}]
)
def test_append_authorization_leaves_what_setitem_leaves(module: Any, initial: Any) -> None:
    # The hit path appends the Authorization triple itself (no second scan, no name encoding):
    # the headers must then be exactly what ``headers["Authorization"] = value`` gives.
    package = f"{module.__name__} {metadata.version(module.__name__)}"
    ours, theirs = module.Headers(initial), module.Headers(initial)
    append_authorization(ours, "Bearer abc.def")
    theirs["Authorization"] = "Bearer abc.def"
    assert ours._list == theirs._list, moved(
        package,
        "Headers.__setitem__ (appends a (raw, lower, value) triple)",
        "append_authorization",
    )
    assert ours.raw == theirs.raw
    assert ours["authorization"] == "Bearer abc.def"
    assert has_authorization(ours) is True


def test_append_authorization_takes_the_public_path_for_another_layout() -> None:
    class Other(dict[str, str]):
        """Headers kept some other way (a mapping, or triples of another shape)."""

        def __init__(self, items: list[Any]) -> None:
            super().__init__()
            self._list = items

    for items in ([("a", "b")], [(b"A", "a", b"1")], [[b"A", b"a", b"1"]]):
        headers = Other(list(items))
        append_authorization(headers, "Bearer x")
        assert headers == {"Authorization": "Bearer x"}
        assert headers._list == items  # not touched


class _CountingJar(CookieJar):
    def __init__(self) -> None:
        super().__init__()
        self.extractions = 0

    def extract_cookies(self, response: Any, request: Any) -> None:
        self.extractions += 1
        super().extract_cookies(response, request)


def _cookie_setting(request: httpx.Request) -> httpx.Response:
    headers = {"set-cookie": "s=1; Path=/"} if request.url.path == "/set" else {}
    return httpx.Response(200, headers=headers)


@pytest.mark.parametrize("client_class", [httpx.Client, httpx.AsyncClient])
async def test_classic_httpx_keeps_its_cookies_where_the_seam_replaces_them(
    client_class: Any,
) -> None:
    # skip_cookie_extraction_without_set_cookie swaps the client's private ``_cookies`` (what
    # the public property returns) for a subclass whose ``extract_cookies`` httpx must call on
    # every response; if httpx moves either, the ~40 us a request it saves is silently lost.
    package = f"httpx {metadata.version('httpx')}"
    jar = _CountingJar()
    client = client_class(transport=httpx.MockTransport(_cookie_setting), cookies=jar)
    assert getattr(client, "_cookies", None) is client.cookies, moved(
        package, "Client._cookies", "skip_cookie_extraction_without_set_cookie"
    )
    skip_cookie_extraction_without_set_cookie(client)
    assert type(client.cookies) is not httpx.Cookies, moved(
        package, "Client._cookies", "skip_cookie_extraction_without_set_cookie"
    )
    assert isinstance(client.cookies, httpx.Cookies)
    assert client.cookies.jar is jar  # the same jar, policy and cookies
    for path in ("/none", "/set", "/none"):
        if client_class is httpx.Client:
            client.get(f"https://api.contoso.com{path}")
        else:
            await client.get(f"https://api.contoso.com{path}")
    assert jar.extractions == 1, moved(
        package,
        "Client._send_single_request (calls self.cookies.extract_cookies per response)",
        "skip_cookie_extraction_without_set_cookie",
    )
    assert client.cookies.get("s") == "1"  # a response that sets one still goes to the jar
    if client_class is httpx.AsyncClient:
        await client.aclose()
    else:
        client.close()


def test_the_cookie_seam_leaves_other_clients_alone() -> None:
    with httpx2.Client() as modern:
        before = modern.cookies
        skip_cookie_extraction_without_set_cookie(modern)  # httpx2 skips by itself
        assert modern.cookies is before
    with httpx.Client() as classic:

        class Own(httpx.Cookies):
            pass

        own = Own()
        classic._cookies = own
        skip_cookie_extraction_without_set_cookie(classic)
        assert classic.cookies is own  # a user's own Cookies class is theirs
