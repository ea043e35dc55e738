"""The classic httpx front runs the same decisions (spot checks; the flow is tested in full
through the httpx2 front)."""

from __future__ import annotations

import httpx
import pytest

from entra_passthrough import ConsentRequired, bind_caller
from entra_passthrough.httpx import EntraAuth

from ._fakes import FakeChain, app_result, user_caller

MCP = "https://api.contoso.com"
SCOPES = ["api://api/.default"]


def recorder(answer: object = None) -> tuple[list[dict[str, str]], httpx.MockTransport]:
    seen: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append({"url": str(request.url), **dict(request.headers)})
        if request.url.path == "/redirect":
            return httpx.Response(302, headers={"location": "https://evil.example/"})
        if request.headers.get("authorization") == "Bearer user-alice-1":
            return httpx.Response(401, headers={"www-authenticate": 'Bearer error="invalid_token"'})
        return httpx.Response(200)

    return seen, httpx.MockTransport(handler)


async def test_async_client_origins_retry_and_redirect() -> None:
    seen, transport = recorder()
    chain = FakeChain(headers={"x-agent-foundry-call-id": "c1"})
    auth = EntraAuth(chain, scopes=SCOPES, origins=[MCP])
    async with httpx.AsyncClient(transport=transport, follow_redirects=True) as c:
        auth.install(c)
        with bind_caller(user_caller("alice")):
            assert (await c.get(f"{MCP}/x")).status_code == 200
            await c.get("https://other.example/")
            await c.get(f"{MCP}/redirect")
    auths = [(s["url"], s.get("authorization"), s.get("x-agent-foundry-call-id")) for s in seen]
    assert auths == [
        (f"{MCP}/x", "Bearer user-alice-1", "c1"),
        (f"{MCP}/x", "Bearer user-alice-2", "c1"),
        ("https://other.example/", None, None),
        (f"{MCP}/redirect", "Bearer user-alice-3", "c1"),
        ("https://evil.example/", None, None),
    ]


def test_sync_client_lifecycle_and_raise() -> None:
    seen, transport = recorder()
    chain = FakeChain(lifecycle=app_result("app-tok"))
    auth = EntraAuth(chain, scopes=SCOPES, origins=[MCP])
    with httpx.Client(transport=transport, auth=auth) as c:
        c.get(f"{MCP}/no-caller")
        chain.error = ConsentRequired("consent needed", link=None)
        with bind_caller(user_caller("bob")), pytest.raises(ConsentRequired):
            c.get(f"{MCP}/bob")
    assert [s.get("authorization") for s in seen] == ["Bearer app-tok"]


def test_sync_record_mode() -> None:
    seen, transport = recorder()
    chain = FakeChain(error=ConsentRequired("consent needed", link=None))
    auth = EntraAuth(chain, scopes=SCOPES, origins=[MCP], on_error="record")
    with httpx.Client(transport=transport, auth=auth) as c, bind_caller(user_caller("b")) as who:
        assert c.get(f"{MCP}/").status_code == 200
        assert len(who.take_errors()) == 1
    assert [s.get("authorization") for s in seen] == [None]


@pytest.mark.parametrize("sync", [True, False])
async def test_installed_client_keeps_given_cookies_and_skips_the_jar_without_set_cookie(
    sync: bool,
) -> None:
    # install() stops the shared client storing cookies, and (classic httpx) hands the jar only
    # the responses that set one: the rest cost ~40 us each in httpx's cookie layer for nothing.
    cookies: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        cookies.append(request.headers.get("cookie"))
        if request.url.path == "/set":
            return httpx.Response(200, headers={"set-cookie": "session=alice; Path=/"})
        return httpx.Response(200)

    chain = FakeChain()
    auth = EntraAuth(chain, scopes=SCOPES, origins=[MCP])
    client_class = httpx.Client if sync else httpx.AsyncClient
    client = client_class(transport=httpx.MockTransport(handler), cookies={"affinity": "given"})
    auth.install(client)
    jar = client.cookies.jar
    extractions: list[str] = []
    extract = jar.extract_cookies

    def counting(response: object, request: object) -> None:
        extractions.append(str(getattr(request, "full_url", "")))
        extract(response, request)  # type: ignore[arg-type]

    jar.extract_cookies = counting  # type: ignore[method-assign]
    with bind_caller(user_caller("alice")):
        for path in ("/none", "/set", "/none"):
            if sync:
                client.get(f"{MCP}{path}")
            else:
                await client.get(f"{MCP}{path}")
    if sync:
        client.close()
    else:
        await client.aclose()
    assert cookies == ["affinity=given"] * 3  # the given cookie goes out, alice's never
    assert extractions == [f"{MCP}/set"]
