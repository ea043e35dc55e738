"""A resource that refuses every token of a caller (a wrong audience or issuer in its checks, a
key set it cannot fetch) must cost one token request per caller and window, not one per
request: before, every request met the 401, dropped the cached token, acquired a new one and
was refused again (one OBO POST per request, a storm that gets the tenant throttled for every
user). The auth flow's unit cases on a MockTransport, then end to end against the emulator and
a real verifying API that expects another audience."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
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
    CallerMiddleware,
    EntraAuth,
    JwtVerifier,
    OnBehalfOf,
    TokenCache,
    TokenChain,
    TokenRequest,
    TokenResult,
    bind_caller,
)
from entra_passthrough.httpx import EntraAuth as ClassicEntraAuth
from entra_passthrough.testing import EntraEmulator

ORIGIN = "https://mcp.contoso.com"
SCOPES = ["api://mcp/.default"]
CHALLENGE = {"www-authenticate": 'Bearer error="invalid_token"'}


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _caller(oid: str) -> Caller:
    return Caller.from_token(unsigned_jwt(oid=oid, tid="contoso", aud="agent"))


def _world(refuse: Any, module: Any = httpx2) -> tuple[Users, Clock, TokenChain, Any, list[str]]:
    """A user source, a fake clock for the cache, and a resource (a MockTransport) that
    answers 401 ``invalid_token`` to every bearer ``refuse`` says it refuses."""
    users, clock = Users(), Clock()
    chain = TokenChain([users], cache=TokenCache(clock=clock))
    seen: list[str] = []

    def answer(request: Any) -> Any:
        token = request.headers.get("authorization", "")
        seen.append(token)
        if refuse(token):
            return module.Response(401, headers=CHALLENGE)
        return module.Response(200)

    return users, clock, chain, module.MockTransport(answer), seen


@pytest.mark.parametrize("lib", ["httpx", "httpx2"])
def test_a_resource_refusing_every_token_costs_one_new_token_per_window(lib: str) -> None:
    module: Any = httpx if lib == "httpx" else httpx2
    front: Any = ClassicEntraAuth if lib == "httpx" else EntraAuth
    users, clock, chain, transport, seen = _world(lambda token: True, module)
    auth = front(chain, scopes=SCOPES, origins=[ORIGIN], on_error="raise")
    with module.Client(transport=transport, auth=auth) as client:
        with bind_caller(_caller("a")):
            statuses = [client.get(f"{ORIGIN}/tools").status_code for _ in range(10)]
            assert statuses == [401] * 10
            # the first token, then the one that replaced it; never a third within the window
            assert users.made == 2
            assert seen[:3] == ["Bearer user-a-1", "Bearer user-a-2", "Bearer user-a-2"]
            assert len(seen) == 11  # one retry in all, for the first refusal
            clock.now += chain.cache.refusal_window + 1
            assert client.get(f"{ORIGIN}/tools").status_code == 401
            assert users.made == 3  # a new window: one new token, one retry
        with bind_caller(_caller("b")):  # another caller is not held back by a's refusals
            assert client.get(f"{ORIGIN}/tools").status_code == 401
            assert users.made == 5
            assert seen[-2:] == ["Bearer user-b-4", "Bearer user-b-5"]


async def test_concurrent_requests_refused_together_cost_one_new_token() -> None:
    users, _clock, chain, transport, _seen = _world(lambda token: True)
    auth = EntraAuth(chain, scopes=SCOPES, origins=[ORIGIN], on_error="raise")
    async with httpx2.AsyncClient(transport=transport, auth=auth) as client:
        with bind_caller(_caller("a")):
            await client.get(f"{ORIGIN}/warm")  # token 1 refused, token 2 refused: the window
            first = users.made
            answers = await asyncio.gather(*(client.get(f"{ORIGIN}/tools") for _ in range(16)))
    assert first == 2
    assert [a.status_code for a in answers] == [401] * 16
    assert users.made == 2


async def test_a_token_refused_once_is_still_replaced_and_the_retry_accepted() -> None:
    # The refusal the retry exists for: an expired or revoked token, refused once.
    users, _clock, chain, transport, _seen = _world(lambda token: token == "Bearer user-a-1")
    auth = EntraAuth(chain, scopes=SCOPES, origins=[ORIGIN], on_error="raise")
    async with httpx2.AsyncClient(transport=transport, auth=auth) as client:
        with bind_caller(_caller("a")):
            assert (await client.get(f"{ORIGIN}/tools")).status_code == 200
            assert (await client.get(f"{ORIGIN}/tools")).status_code == 200
    assert users.made == 2


async def test_a_later_refusal_outside_the_window_is_retried() -> None:
    refused = {"Bearer user-a-1"}
    users, clock, chain, transport, _seen = _world(lambda token: token in refused)
    auth = EntraAuth(chain, scopes=SCOPES, origins=[ORIGIN], on_error="raise")
    async with httpx2.AsyncClient(transport=transport, auth=auth) as client:
        with bind_caller(_caller("a")):
            assert (await client.get(f"{ORIGIN}/tools")).status_code == 200  # 1 refused, 2 ok
            clock.now += chain.cache.refusal_window + 1
            refused.update({"Bearer user-a-2", "Bearer user-a-3"})  # revoked later
            assert (await client.get(f"{ORIGIN}/tools")).status_code == 401  # 2 -> 3, refused
            assert users.made == 3
            assert (await client.get(f"{ORIGIN}/tools")).status_code == 401
            assert users.made == 3  # 3 replaced 2 moments ago and is refused: no fourth
            refused.discard("Bearer user-a-3")  # the resource is fixed: 3 is accepted again
            assert (await client.get(f"{ORIGIN}/tools")).status_code == 200
            assert users.made == 3


@pytest.mark.parametrize("window", [-1, "30", True, float("nan")])
def test_the_refusal_window_is_checked(window: Any) -> None:
    with pytest.raises(ValueError, match="refusal_window"):
        TokenCache(refusal_window=window)


# -- end to end: the emulator, real MSAL, a real API whose verifier expects another audience --


@pytest.fixture(scope="module")
def refusing_api() -> Iterator[tuple[EntraEmulator, str]]:
    async def tools(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    with EntraEmulator() as idp:
        verifier = JwtVerifier(
            audiences=["api://some-other-api"],  # the misconfiguration: every token refused
            tenants=[idp.tenant_id],
            authority_host=idp.url,
            verify=idp.ca_file,
        )
        app = CallerMiddleware(
            Starlette(routes=[Route("/tools", tools)]), require_caller=True, verifier=verifier
        )
        with serve_in_thread(app, lifespan="off") as url:
            yield idp, url


def _obo_chain(idp: EntraEmulator, http: Any) -> TokenChain:
    return TokenChain(
        [
            OnBehalfOf(
                client_id=idp.agent.client_id,
                tenant_id=idp.tenant_id,
                client_secret=idp.agent.secret,
                authority_host=idp.url,
                http_client=http,
            )
        ]
    )


def _token_posts(idp: EntraEmulator) -> int:
    return idp.stats()["grants"]["on_behalf_of"]


async def test_end_to_end_a_misconfigured_api_gets_two_token_requests_not_one_per_call(
    refusing_api: tuple[EntraEmulator, str],
) -> None:
    idp, url = refusing_api
    http = idp.msal_http_client()
    chain = _obo_chain(idp, http)
    auth = EntraAuth(chain, scopes=[f"{idp.mcp.app_id_uri}/.default"], origins=[url])
    try:
        caller = Caller.from_token(idp.user_token("alice", audience=idp.agent.client_id))
        idp.reset_stats()
        async with httpx2.AsyncClient(auth=auth) as client:
            with bind_caller(caller):
                statuses = [(await client.get(f"{url}/tools")).status_code for _ in range(12)]
        assert statuses == [401] * 12
        assert _token_posts(idp) == 2, idp.stats()
    finally:
        chain.close()
        http.close()


# -- what the window must never hold back (a probe of the first version found each) ----------


class ClaimsUsers(Users):
    """``user-<oid>-<n>``, or ``user-<oid>-<n>-claims`` when asked with claims."""

    def get_token(self, request: TokenRequest) -> TokenResult | None:
        result = super().get_token(request)
        if result is not None and request.claims:
            result = TokenResult(
                token=result.token + "-claims",
                expires_on=result.expires_on,
                kind=result.kind,
                source=result.source,
            )
        return result


STEP_UP = {
    "www-authenticate": 'Bearer error="insufficient_claims", '
    'claims="eyJhY2Nlc3NfdG9rZW4iOnsiYWNycyI6eyJlc3NlbnRpYWwiOnRydWUsInZhbHVlIjoiYzEifX19"'
}


async def test_a_claims_challenge_within_the_window_is_still_met() -> None:
    users = ClaimsUsers()
    chain = TokenChain([users], cache=TokenCache(clock=Clock()))

    def answer(r: Any) -> Any:
        token = r.headers.get("authorization", "")
        if token == "Bearer user-a-1":
            return httpx2.Response(401, headers=CHALLENGE)  # expired: replaced by token 2
        if r.url.path == "/step-up" and not token.endswith("-claims"):
            return httpx2.Response(401, headers=STEP_UP)
        return httpx2.Response(200)

    auth = EntraAuth(chain, scopes=SCOPES, origins=[ORIGIN], on_error="raise")
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(answer), auth=auth) as client:
        with bind_caller(_caller("a")):
            assert (await client.get(f"{ORIGIN}/tools")).status_code == 200
            assert (await client.get(f"{ORIGIN}/step-up")).status_code == 200
    assert users.made == 3  # token 1, its replacement, and the one with the claims


async def test_a_replacement_the_resource_accepted_is_replaced_when_revoked() -> None:
    refused = {"Bearer user-a-1"}
    users, _clock, chain, transport, _seen = _world(lambda token: token in refused)
    auth = EntraAuth(chain, scopes=SCOPES, origins=[ORIGIN], on_error="raise")
    async with httpx2.AsyncClient(transport=transport, auth=auth) as client:
        with bind_caller(_caller("a")):
            for _ in range(3):  # 1 refused and replaced; 2 accepted, three times
                assert (await client.get(f"{ORIGIN}/tools")).status_code == 200
            refused.add("Bearer user-a-2")  # revoked moments later, within the window
            assert (await client.get(f"{ORIGIN}/tools")).status_code == 200
    assert users.made == 3


async def test_one_resource_refusing_every_token_does_not_hold_back_another() -> None:
    other = "https://other.contoso.com"
    users = Users()
    chain = TokenChain([users], cache=TokenCache(clock=Clock()))
    accepted_by_b = {"Bearer user-a-1"}  # B accepts only the first token...

    def answer(r: Any) -> Any:
        token = r.headers.get("authorization", "")
        if r.url.host == "mcp.contoso.com":  # A: misconfigured, refuses everything
            return httpx2.Response(401, headers=CHALLENGE)
        return httpx2.Response(200 if token in accepted_by_b else 401, headers=CHALLENGE)

    auth = EntraAuth(chain, scopes=SCOPES, origins=[ORIGIN, other], on_error="raise")
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(answer), auth=auth) as client:
        with bind_caller(_caller("a")):
            assert (await client.get(f"{other}/tools")).status_code == 200
            for _ in range(3):
                assert (await client.get(f"{ORIGIN}/tools")).status_code == 401
            made = users.made  # A's refusals: the first token and one replacement
            accepted_by_b.add(f"Bearer user-a-{made + 1}")  # ... and, revoking, the next one
            assert (await client.get(f"{other}/tools")).status_code == 200  # B's own retry
    assert users.made == made + 1


class OwnInvalidate(TokenChain):
    """A subclass that overrides ``invalidate`` with the signature of the releases before the
    window (``invalidate(self, result)``), as the ``Chain`` protocol still declares it."""

    dropped = 0

    def invalidate(self, result: TokenResult) -> bool:  # type: ignore[override]
        OwnInvalidate.dropped += 1
        return super().invalidate(result)


async def test_a_chain_whose_invalidate_takes_no_where_still_retries() -> None:
    users = Users()
    chain = OwnInvalidate([users], cache=TokenCache(clock=Clock()))
    refused = {"Bearer user-a-1"}
    transport = httpx2.MockTransport(
        lambda r: (
            httpx2.Response(401, headers=CHALLENGE)
            if r.headers.get("authorization") in refused
            else httpx2.Response(200)
        )
    )
    auth = EntraAuth(chain, scopes=SCOPES, origins=[ORIGIN], on_error="raise")
    async with httpx2.AsyncClient(transport=transport, auth=auth) as client:
        with bind_caller(_caller("a")):
            assert (await client.get(f"{ORIGIN}/tools")).status_code == 200
    assert OwnInvalidate.dropped == 1
    assert users.made == 2


class SameToken(Users):
    """A source that hands the same token back until it expires (azure-identity, a managed
    identity endpoint and az cache their own)."""

    def get_token(self, request: TokenRequest) -> TokenResult | None:
        result = super().get_token(request)
        if result is None:
            return None
        return TokenResult(
            token="app-token", expires_on=result.expires_on, kind=result.kind, source=self.name
        )


async def test_a_source_that_hands_the_refused_token_back_is_not_asked_again() -> None:
    users = SameToken()
    chain = TokenChain([users], cache=TokenCache(clock=Clock()))
    sent: list[str] = []

    def answer(r: Any) -> Any:
        sent.append(r.headers.get("authorization", ""))
        return httpx2.Response(401, headers=CHALLENGE)

    auth = EntraAuth(chain, scopes=SCOPES, origins=[ORIGIN], on_error="raise")
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(answer), auth=auth) as client:
        with bind_caller(_caller("a")):
            for _ in range(10):
                assert (await client.get(f"{ORIGIN}/tools")).status_code == 401
    assert users.made == 2  # the first, and the one retry that brought the same token back
    assert len(sent) == 11  # one retry in all, not one per request


async def test_end_to_end_streamed_requests_share_the_window(
    refusing_api: tuple[EntraEmulator, str],
) -> None:
    """A streamed body (over a real connection it is not kept) is never sent again, but its
    refusal still counts: the refused token is dropped once, and the token that replaced it
    stays while the window lasts, not a new token request for each request."""
    idp, url = refusing_api
    http = idp.msal_http_client()
    chain = _obo_chain(idp, http)
    auth = EntraAuth(chain, scopes=[f"{idp.mcp.app_id_uri}/.default"], origins=[url])

    async def body() -> Any:
        yield b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}'

    try:
        caller = Caller.from_token(idp.user_token("bob", audience=idp.agent.client_id))
        idp.reset_stats()
        async with httpx2.AsyncClient(auth=auth) as client:
            with bind_caller(caller):
                for _ in range(8):
                    answer = await client.post(f"{url}/tools", content=body())
                    assert answer.status_code == 401
        assert _token_posts(idp) == 2, idp.stats()
    finally:
        chain.close()
        http.close()


class ShortUsers(Users):
    """Users whose tokens live ``lifetime`` seconds on the cache's (fake) clock."""

    def __init__(self, clock: Clock, lifetime: float) -> None:
        super().__init__()
        self.clock, self.lifetime = clock, lifetime

    def get_token(self, request: TokenRequest) -> TokenResult | None:
        result = super().get_token(request)
        if result is None:
            return None
        return TokenResult(
            token=result.token,
            expires_on=self.clock() + self.lifetime,
            kind=result.kind,
            source=result.source,
        )


async def test_a_replacement_refused_once_it_expired_is_replaced_not_held() -> None:
    """A token refused at its expiry says nothing about the resource refusing every token. Token
    1 is refused (revoked, say); token 2 replaces it, and while the retry that carries it is
    still out, another request carries token 2 across its expiry and is refused. Before, that
    second refusal fell in the window (token 2 "replaced one refused moments ago, never
    accepted since"): not retried, and the call failed "the server does not accept the token"
    although a new token would have been accepted."""
    clock = Clock()
    users = ShortUsers(clock, lifetime=5)
    chain = TokenChain([users], cache=TokenCache(clock=clock))
    retry_out, second_done = asyncio.Event(), asyncio.Event()
    expiry: dict[str, float] = {}

    async def answer(request: httpx2.Request) -> httpx2.Response:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        expiry.setdefault(token, clock.now + users.lifetime)
        if token == "user-a-1":
            return httpx2.Response(401, headers=CHALLENGE)
        if request.url.path == "/first":  # the first request's retry: held until the second
            retry_out.set()
            await second_done.wait()
        elif token == "user-a-2":  # the second request reaches the resource after token 2 ends
            clock.now = expiry[token] + 0.1
        if clock.now >= expiry[token]:
            return httpx2.Response(401, headers=CHALLENGE)
        return httpx2.Response(200)

    auth = EntraAuth(chain, scopes=SCOPES, origins=[ORIGIN], on_error="raise")
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(answer), auth=auth) as client:
        with bind_caller(_caller("a")):
            first = asyncio.create_task(client.get(f"{ORIGIN}/first"))
            await retry_out.wait()
            try:
                second = await client.get(f"{ORIGIN}/second")
            finally:
                second_done.set()
            assert (await first).status_code == 401  # token 2 had expired when it was answered
    assert second.status_code == 200
    assert users.made == 3


def test_tokens_that_live_seconds_refused_by_a_resource_still_hit_the_window() -> None:
    """The expiry rule covers a token's last 2 s only: a source whose tokens live 3 s, behind
    a resource that refuses every token, still gets the window (two tokens, then the 401
    stands), not a token request per request over each token's life."""
    clock = Clock()
    users = ShortUsers(clock, lifetime=3)
    chain = TokenChain([users], cache=TokenCache(clock=clock))
    auth = EntraAuth(chain, scopes=SCOPES, origins=[ORIGIN], on_error="raise")
    transport = httpx2.MockTransport(lambda request: httpx2.Response(401, headers=CHALLENGE))
    with bind_caller(_caller("a")), httpx2.Client(transport=transport, auth=auth) as client:
        statuses = [client.get(f"{ORIGIN}/tools").status_code for _ in range(10)]
    assert statuses == [401] * 10
    assert users.made == 2
