"""A request object sent twice, and a token the resource refused: a send never keeps what an
earlier send applied for another caller, and a refused token is not sent again, nor does its
refusal evict the token that replaced it. The real TokenChain and TokenCache, a user source in
memory, httpx and httpx2 clients on a MockTransport (the auth flow's own unit tests)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import httpx2
import pytest

from _support.tokens import unsigned_jwt
from _support.users import Users
from entra_passthrough import (
    Caller,
    EntraAuth,
    TokenChain,
    TokenRequest,
    TokenResult,
    bind_caller,
)
from entra_passthrough.httpx import EntraAuth as ClassicEntraAuth

ORIGIN = "https://mcp.contoso.com"
SCOPES = ["api://mcp/.default"]
REFUSED = httpx2.Response(401, headers={"www-authenticate": 'Bearer error="invalid_token"'})


def _caller(oid: str) -> Caller:
    return Caller.from_token(unsigned_jwt(oid=oid, tid="contoso", aud="agent"))


@pytest.mark.parametrize("on_error", ["raise", "record"])
@pytest.mark.parametrize("lib", ["httpx", "httpx2"])
def test_a_request_sent_again_never_keeps_the_earlier_callers_token(
    lib: str, on_error: str
) -> None:
    module: Any = httpx if lib == "httpx" else httpx2
    front: Any = ClassicEntraAuth if lib == "httpx" else EntraAuth
    seen: list[str | None] = []

    def answer(request: Any) -> Any:
        seen.append(request.headers.get("authorization"))
        return module.Response(200)

    auth = front(TokenChain([Users()]), scopes=SCOPES, origins=[ORIGIN], on_error=on_error)
    with module.Client(transport=module.MockTransport(answer), auth=auth) as client:
        request = client.build_request("GET", f"{ORIGIN}/x")
        with bind_caller(_caller("alice")):
            client.send(request)
        client.send(request)  # no caller: user_only gives no token at all
        with bind_caller(_caller("bob")):
            client.send(request)
    assert seen[0] is not None
    assert seen[0].startswith("Bearer user-alice-")
    assert seen[1] is None
    assert seen[2] is not None
    assert seen[2].startswith("Bearer user-bob-")


async def test_a_refused_token_in_a_prefetch_block_is_not_sent_again() -> None:
    """Inside ``auth.prefetch()`` the refused token stops being handed out; its refusal, seen
    again on a request that still carried it, never evicts the token that replaced it."""
    refused: set[str] = set()
    sent: list[str] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        token = request.headers.get("authorization", "")[7:]
        sent.append(token)
        return REFUSED if token in refused else httpx2.Response(200)

    users = Users()
    chain = TokenChain([users])
    auth = EntraAuth(chain, scopes=SCOPES, origins=[ORIGIN])
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(answer)) as client:
        auth.install(client)
        async with bind_caller(_caller("alice")), auth.prefetch() as first:
            assert first is not None
            refused.add(first.token)
            statuses = [(await client.get(f"{ORIGIN}/{i}")).status_code for i in range(5)]
    assert statuses == [200] * 5
    assert sent.count(first.token) == 1  # refused once, never sent again
    assert users.made == 2  # the refused token and its one replacement


async def test_a_stale_refusal_does_not_evict_the_newer_token() -> None:
    users = Users()
    chain = TokenChain([users])
    caller = _caller("alice")
    with bind_caller(caller):
        old = await chain.get_token_async(SCOPES, caller=caller)
        chain.invalidate(old)  # the first 401: dropped
        new = await chain.get_token_async(SCOPES, caller=caller)
        assert new.token != old.token
        chain.invalidate(old)  # a second request that carried the old token: the new stays
        assert (await chain.get_token_async(SCOPES, caller=caller)).token == new.token
    assert users.made == 2


async def test_a_refused_token_on_a_stream_is_dropped_though_not_retried() -> None:
    refused: set[str] = set()
    sent: list[tuple[str, str]] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        token = request.headers.get("authorization", "")[7:]
        sent.append((request.url.path, token))
        return REFUSED if token in refused else httpx2.Response(200)

    async def body() -> AsyncIterator[bytes]:
        yield b"chunk"

    class Unread(httpx2.AsyncBaseTransport):
        """Answers without reading the body (MockTransport reads it, which makes it replayable)."""

        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
            return answer(request)

    auth = EntraAuth(TokenChain([Users()]), scopes=SCOPES, origins=[ORIGIN])
    async with httpx2.AsyncClient(transport=Unread()) as client:
        auth.install(client)
        async with bind_caller(_caller("alice")):
            await client.get(f"{ORIGIN}/a")
            refused.add(sent[-1][1])
            upload = await client.post(f"{ORIGIN}/upload", content=body())
            after = await client.get(f"{ORIGIN}/b")
    assert upload.status_code == 401  # a stream cannot be sent again
    assert after.status_code == 200
    assert [path for path, token in sent if token in refused] == ["/a", "/upload"]


@pytest.mark.parametrize("lib", ["httpx", "httpx2"])
def test_an_internationalised_origin_is_the_host_the_client_sends_to(lib: str) -> None:
    """``straße.de`` is ``xn--strae-oqa.de`` to httpx (IDNA 2008); Python's own codec (IDNA
    2003) made it ``strasse.de``, another domain, which then got the token."""
    module: Any = httpx if lib == "httpx" else httpx2
    front: Any = ClassicEntraAuth if lib == "httpx" else EntraAuth
    seen: dict[str, str | None] = {}

    def answer(request: Any) -> Any:
        seen[request.url.raw_host.decode("ascii")] = request.headers.get("authorization")
        return module.Response(200)

    auth = front(TokenChain([Users()]), scopes=SCOPES, origins=["https://straße.de"])
    assert auth.origins == ("https://xn--strae-oqa.de",)
    client = module.Client(transport=module.MockTransport(answer), auth=auth)
    with client, bind_caller(_caller("alice")):
        client.get("https://straße.de/x")
        client.get("https://strasse.de/x")
    assert seen["xn--strae-oqa.de"] is not None
    assert seen["strasse.de"] is None


async def test_after_a_claims_challenge_is_met_requests_carry_that_token() -> None:
    """A resource that requires claims (step-up, CAE): once the claims retry is accepted,
    later requests carry the token acquired with them, not one without them that the resource
    refuses again (one acquisition and one more 401 per request)."""
    import base64
    import json

    claims = base64.b64encode(
        json.dumps({"access_token": {"acrs": {"essential": True, "value": "c1"}}}).encode()
    ).decode()

    class WithClaims(Users):
        def get_token(self, request: TokenRequest) -> TokenResult | None:
            result = super().get_token(request)
            if result is None or not request.claims:
                return result
            return TokenResult(
                token=result.token + "-claims",
                expires_on=result.expires_on,
                kind=result.kind,
                source=result.source,
            )

    sent: list[str] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        token = request.headers.get("authorization", "")[7:]
        sent.append(token)
        if token.endswith("-claims"):
            return httpx2.Response(200)
        challenge = f'Bearer error="insufficient_claims", claims="{claims}"'
        return httpx2.Response(401, headers={"www-authenticate": challenge})

    users = WithClaims()
    auth = EntraAuth(TokenChain([users]), scopes=SCOPES, origins=[ORIGIN])
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(answer)) as client:
        auth.install(client)
        async with bind_caller(_caller("alice")):
            statuses = [(await client.get(f"{ORIGIN}/{i}")).status_code for i in range(5)]
    assert statuses == [200] * 5
    assert users.made == 2  # the token without the claims, then the one with them
    assert len(sent) == 6  # one refusal, then every request accepted at once
