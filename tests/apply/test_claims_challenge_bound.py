"""A resource that answers a claims challenge (401 ``insufficient_claims``) to every token,
including the one acquired with its claims: bounded like a resource that refuses every token,
and typed.

Before, each request cost one OBO POST (the token without the claims had been dropped, so a
new one was acquired, refused, and the claims token refused too) and ended in a bare 401.
Now the token with the claims refused with a claims challenge raises ``InteractionRequired``
(with the resource's claims, for ``step_up_challenge``), and that origin's claims challenges
to this caller are held for the refusal window: no token request per request. Still one retry
per request at most, and a challenge that is met (CAE) is met at once, every time.

End to end: the emulator (POSTs counted by its stats), real MSAL, EntraAuth on httpx2, a real
resource on 127.0.0.1. The unit cases: a user source in memory and a MockTransport.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from _support.servers import serve_in_thread
from _support.tokens import unsigned_jwt
from _support.users import Users
from entra_passthrough import (
    Caller,
    EntraAuth,
    InteractionRequired,
    OnBehalfOf,
    SourceUnavailable,
    TokenCache,
    TokenChain,
    TokenRequest,
    TokenResult,
    bind_caller,
    step_up_challenge,
)
from entra_passthrough.testing import EntraEmulator


def _claims(value: str) -> str:
    return json.dumps({"access_token": {"nbf": {"essential": True, "value": value}}})


def _challenge(claims: str) -> dict[str, str]:
    encoded = base64.b64encode(claims.encode()).decode()
    return {"www-authenticate": f'Bearer error="insufficient_claims", claims="{encoded}"'}


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


# -- end to end ------------------------------------------------------------------------------


class Resource:
    """Refuses every token it has seen (``revoke``: CAE) with a claims challenge naming the
    revocation, or every token at all (``always``)."""

    def __init__(self) -> None:
        self.always = False
        self.revocations = 0
        self.revoked: set[str] = set()
        self.seen: list[str] = []

    def revoke(self) -> None:
        self.revocations += 1
        self.revoked.update(self.seen)

    async def answer(self, request: Request) -> JSONResponse:
        token = request.headers.get("authorization", "")[len("Bearer ") :]
        self.seen.append(token)
        if self.always or token in self.revoked:
            claims = _claims(str(self.revocations))
            return JSONResponse({}, status_code=401, headers=_challenge(claims))
        return JSONResponse({"ok": True})


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[EntraEmulator, str, Resource]]:
    resource = Resource()
    app = Starlette(routes=[Route("/tools", resource.answer)])
    with EntraEmulator() as idp, serve_in_thread(app, name="claims-resource") as url:
        yield idp, url, resource


def _posts(idp: EntraEmulator) -> int:
    return int(idp.stats()["grants"]["on_behalf_of"])


def _chain(idp: EntraEmulator, clock: Clock) -> TokenChain:
    obo = OnBehalfOf(
        client_id=idp.agent.client_id,
        tenant_id=idp.tenant_id,
        client_secret=idp.agent.secret,
        authority_host=idp.url,
        http_client=idp.msal_http_client(),
    )
    return TokenChain([obo], cache=TokenCache(clock=clock))


async def test_a_resource_that_challenges_every_token_costs_no_post_per_request(
    world: tuple[EntraEmulator, str, Resource],
) -> None:
    idp, url, resource = world
    resource.always, resource.seen = True, []
    clock = Clock()
    chain = _chain(idp, clock)
    auth = EntraAuth(
        chain, scopes=[f"{idp.mcp.app_id_uri}/.default"], origins=[url], client_capabilities=["cp1"]
    )
    caller = Caller.from_token(idp.user_token("alice", audience=idp.agent.client_id))
    before = _posts(idp)
    errors: list[InteractionRequired] = []
    try:
        async with httpx2.AsyncClient(auth=auth) as client:
            with bind_caller(caller):
                for _ in range(20):
                    with pytest.raises(InteractionRequired) as info:
                        await client.get(f"{url}/tools")
                    errors.append(info.value)
                # the token without the claims, the one with them; then, the next request, one
                # more without them, refused within the window: held from then on
                assert _posts(idp) - before == 3
                assert len(resource.seen) == 21  # one retry in all: never two in one request

                # A new window: one retry with the claims (that token is cached), refused
                # again; then one token without them, held. One POST per window.
                clock.now += chain.cache.refusal_window + 1
                for _ in range(5):
                    with pytest.raises(InteractionRequired):
                        await client.get(f"{url}/tools")
                assert _posts(idp) - before == 4
                assert len(resource.seen) == 27
    finally:
        chain.close()
    for error in errors:
        assert error.claims == _claims("0")  # the resource's challenge, for the user's client
        assert url.split("//")[1] in str(error)
        assert error.fix
        assert "step_up_challenge" in error.fix
        assert not any(token and token in str(error) for token in resource.seen)
    status, header, _ = step_up_challenge(errors[0])
    assert status == 401
    assert 'error="insufficient_claims"' in header


async def test_a_challenge_that_is_met_is_met_at_once_every_time(
    world: tuple[EntraEmulator, str, Resource],
) -> None:
    # CAE: each revocation costs one POST with its claims, and the request succeeds, even
    # twice within the refusal window.
    idp, url, resource = world
    resource.always, resource.seen = False, []
    chain = _chain(idp, Clock())
    auth = EntraAuth(chain, scopes=[f"{idp.mcp.app_id_uri}/.default"], origins=[url])
    caller = Caller.from_token(idp.user_token("bob", audience=idp.agent.client_id))
    try:
        async with httpx2.AsyncClient(auth=auth) as client:
            with bind_caller(caller):
                assert (await client.get(f"{url}/tools")).status_code == 200
                before = _posts(idp)
                for revocation in range(1, 3):
                    resource.revoke()
                    statuses = [(await client.get(f"{url}/tools")).status_code for _ in range(3)]
                    assert statuses == [200] * 3
                    assert _posts(idp) - before == revocation
    finally:
        chain.close()


async def test_record_mode_records_the_typed_error_and_returns_the_401(
    world: tuple[EntraEmulator, str, Resource],
) -> None:
    idp, url, resource = world
    resource.always, resource.seen = True, []
    chain = _chain(idp, Clock())
    auth = EntraAuth(
        chain, scopes=[f"{idp.mcp.app_id_uri}/.default"], origins=[url], on_error="record"
    )
    caller = Caller.from_token(idp.user_token("alice", audience=idp.agent.client_id))
    before = _posts(idp)
    try:
        async with httpx2.AsyncClient(auth=auth) as client:
            with bind_caller(caller):
                statuses = [(await client.get(f"{url}/tools")).status_code for _ in range(8)]
    finally:
        chain.close()
    assert statuses == [401] * 8
    assert _posts(idp) - before == 3
    recorded = caller.take_errors()
    assert len(recorded) == 8
    assert all(isinstance(e, InteractionRequired) and e.claims for e in recorded)


# -- unit: what the window never holds back --------------------------------------------------

ORIGIN = "https://mcp.contoso.com"
SCOPES = ["api://mcp/.default"]


def _caller(oid: str) -> Caller:
    return Caller.from_token(unsigned_jwt(oid=oid, tid="contoso", aud="agent"))


class WithClaims(Users):
    """``user-<oid>-<n>``, with ``-claims`` when acquired for a claims challenge; the first
    ``fail`` acquisitions with claims fail (Entra unreachable)."""

    def __init__(self, fail: int = 0) -> None:
        super().__init__()
        self.fail = fail

    def get_token(self, request: TokenRequest) -> TokenResult | None:
        if request.claims and self.fail:
            self.fail -= 1
            raise SourceUnavailable("Entra unreachable (test)", source=self.name)
        result = super().get_token(request)
        if result is None or not request.claims:
            return result
        return TokenResult(
            token=result.token + "-claims",
            expires_on=result.expires_on,
            kind=result.kind,
            source=result.source,
        )


def _mock(answer: Any) -> httpx2.MockTransport:
    return httpx2.MockTransport(answer)


async def test_a_failed_claims_acquisition_does_not_hold_the_next_challenge() -> None:
    # Entra could not be reached for the token with the claims: the resource refused nothing
    # with them, and the next request meets the challenge at once.
    def answer(request: httpx2.Request) -> httpx2.Response:
        if request.headers.get("authorization", "").endswith("-claims"):
            return httpx2.Response(200)
        return httpx2.Response(401, headers=_challenge(_claims("1")))

    users = WithClaims(fail=1)
    auth = EntraAuth(TokenChain([users]), scopes=SCOPES, origins=[ORIGIN])
    async with httpx2.AsyncClient(transport=_mock(answer), auth=auth) as client:
        with bind_caller(_caller("a")):
            with pytest.raises(SourceUnavailable):
                await client.get(f"{ORIGIN}/tools")
            assert (await client.get(f"{ORIGIN}/tools")).status_code == 200


async def test_a_claims_challenge_to_a_bare_refusals_replacement_is_met_at_once() -> None:
    # The window of bare refusals never holds a claims challenge back (its own slot).
    def answer(request: httpx2.Request) -> httpx2.Response:
        token = request.headers.get("authorization", "")
        if token.endswith("-claims"):
            return httpx2.Response(200)
        if token.endswith("-1"):
            return httpx2.Response(
                401, headers={"www-authenticate": 'Bearer error="invalid_token"'}
            )
        return httpx2.Response(401, headers=_challenge(_claims("1")))

    users = WithClaims()
    auth = EntraAuth(TokenChain([users]), scopes=SCOPES, origins=[ORIGIN])
    async with httpx2.AsyncClient(transport=_mock(answer), auth=auth) as client:
        with bind_caller(_caller("a")):
            assert (await client.get(f"{ORIGIN}/tools")).status_code == 401  # 1, then 2
            assert (await client.get(f"{ORIGIN}/tools")).status_code == 200  # 2, then claims
    assert users.made == 3
