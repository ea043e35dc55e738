"""End to end on loopback, no mocks: a Starlette agent app with CallerMiddleware -> TokenChain
(OnBehalfOf, real MSAL against the Entra emulator) -> EntraAuth -> a protected API that
verifies the token (JwtVerifier: PyJWT against the emulator's JWKS) and echoes who called."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from _support.servers import serve_in_thread
from entra_passthrough import (
    CallerMiddleware,
    EntraAuth,
    JwtVerifier,
    OnBehalfOf,
    TokenAcquisitionError,
    TokenChain,
    bind_caller,
)
from entra_passthrough.httpx import EntraAuth as ClassicEntraAuth
from entra_passthrough.testing import FOUNDRY_AUDIENCE, EntraEmulator


@dataclass
class Stack:
    idp: EntraEmulator
    agent_url: str
    api_url: str


CAE_CLAIMS = '{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}'


def api_app(idp: EntraEmulator) -> CallerMiddleware:
    challenged: set[str] = set()

    async def whoami(request: Request) -> JSONResponse:
        verified = request.state.entra_caller.verified
        return JSONResponse({k: verified.get(k) for k in ("oid", "aud", "tid", "scp", "azp")})

    async def cae(request: Request) -> JSONResponse:
        # A CAE-style resource: the first token it sees for each user is "revoked".
        oid = request.state.entra_caller.verified["oid"]
        if oid not in challenged:
            challenged.add(oid)
            encoded = base64.b64encode(CAE_CLAIMS.encode()).decode()
            challenge = f'Bearer realm="", error="insufficient_claims", claims="{encoded}"'
            return JSONResponse({}, 401, headers={"www-authenticate": challenge})
        return await whoami(request)

    verifier = JwtVerifier(
        audiences=[idp.mcp.client_id, idp.mcp.app_id_uri],
        tenants=[idp.tenant_id],
        authority_host=idp.url,
        verify=idp.ca_file,
    )
    return CallerMiddleware(
        Starlette(routes=[Route("/whoami", whoami), Route("/cae", cae)]),
        require_caller=True,
        verifier=verifier,
    )


def agent_app(idp: EntraEmulator, api_url: str) -> CallerMiddleware:
    chain = TokenChain(
        [
            OnBehalfOf(
                client_id=idp.agent.client_id,
                tenant_id=idp.tenant_id,
                client_secret=idp.agent.secret,
                authority_host=idp.url,
                http_client=idp.msal_http_client(),
            )
        ]
    )
    auth = EntraAuth(
        chain,
        scopes=[f"{idp.mcp.app_id_uri}/.default"],
        origins=[api_url],
        client_capabilities=["CP1"],
    )

    async def ask_api(request: Request) -> JSONResponse:
        path = "cae" if request.query_params.get("path") == "cae" else "whoami"
        async with httpx2.AsyncClient() as client:
            auth.install(client)
            try:
                response = await client.get(f"{api_url}/{path}")
            except TokenAcquisitionError as exc:
                code = exc.code.code if exc.code is not None else None
                return JSONResponse({"error": type(exc).__name__, "aadsts": code}, 502)
        return JSONResponse({"status": response.status_code, "api_saw": response.json()})

    return CallerMiddleware(Starlette(routes=[Route("/ask", ask_api)]))


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with (
        EntraEmulator() as idp,
        serve_in_thread(api_app(idp), lifespan="off") as api_url,
        serve_in_thread(agent_app(idp, api_url), lifespan="off") as agent_url,
    ):
        yield Stack(idp, agent_url, api_url)


async def ask(
    client: httpx2.AsyncClient, stack: Stack, token: str, path: str = "whoami"
) -> httpx2.Response:
    return await client.get(
        f"{stack.agent_url}/ask?path={path}", headers={"authorization": f"Bearer {token}"}
    )


async def test_alice_and_bob_concurrently_each_reach_the_api_as_themselves(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    idp = stack.idp
    users = {name: idp.users[name] for name in ("alice", "bob")}
    tokens = {name: idp.user_token(name, audience=idp.agent.client_id) for name in users}
    before = idp.stats()["grants"]["on_behalf_of"]
    async with httpx2.AsyncClient(timeout=30) as client:
        order = [name for _ in range(8) for name in users]
        answers = await asyncio.gather(*(ask(client, stack, tokens[n]) for n in order))
    for name, answer in zip(order, answers, strict=True):
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["status"] == 200
        assert body["api_saw"]["oid"] == users[name].oid
        assert body["api_saw"]["aud"] == idp.mcp.client_id
        assert body["api_saw"]["azp"] == idp.agent.client_id  # the agent acted for the user
    # one OBO round trip per user, however many concurrent requests (cache + single-flight)
    assert idp.stats()["grants"]["on_behalf_of"] - before == 2
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret in idp.issued():
        assert secret not in logged


async def test_foundry_token_is_refused_without_a_token_round_trip(stack: Stack) -> None:
    idp = stack.idp
    token = idp.user_token("alice", audience=FOUNDRY_AUDIENCE)
    before = idp.stats()["endpoints"]["token"]
    async with httpx2.AsyncClient(timeout=30) as client:
        answer = await ask(client, stack, token)
    assert answer.status_code == 502
    assert answer.json() == {"error": "AssertionAudienceMismatch", "aadsts": 500131}
    assert idp.stats()["endpoints"]["token"] == before


async def test_missing_consent_is_a_typed_error(stack: Stack) -> None:
    idp = stack.idp
    token = idp.user_token("carol", audience=idp.agent.client_id)
    async with httpx2.AsyncClient(timeout=30) as client:
        answer = await ask(client, stack, token)
    assert answer.status_code == 502
    assert answer.json()["error"] == "ConsentRequired"


async def test_api_refuses_the_agent_audience_token_directly(stack: Stack) -> None:
    # The protected API (CallerMiddleware + the real JwtVerifier) refuses a token for another
    # audience: what plain token passthrough would have sent.
    idp = stack.idp
    token = idp.user_token("alice", audience=idp.agent.client_id)
    async with httpx2.AsyncClient(timeout=30) as client:
        answer = await client.get(
            f"{stack.api_url}/whoami", headers={"authorization": f"Bearer {token}"}
        )
        missing = await client.get(f"{stack.api_url}/whoami")
    assert answer.status_code == 401
    assert 'error="invalid_token"' in answer.headers["www-authenticate"]
    assert missing.status_code == 401
    assert "error=" not in missing.headers["www-authenticate"]


async def test_claims_challenge_gets_a_fresh_token_once_and_keeps_it(stack: Stack) -> None:
    idp = stack.idp
    dave = "bob"  # consented; the CAE route challenges each user's first token once
    token = idp.user_token(dave, audience=idp.agent.client_id, lifetime=1800)
    before = idp.stats()["grants"]["on_behalf_of"]
    async with httpx2.AsyncClient(timeout=30) as client:
        first = await ask(client, stack, token, path="cae")
        again = await ask(client, stack, token, path="cae")
        third = await ask(client, stack, token, path="cae")
    assert first.status_code == 200, first.text
    assert first.json()["status"] == 200  # retried once, after the challenge
    assert first.json()["api_saw"]["oid"] == idp.users[dave].oid
    assert again.json()["status"] == 200
    assert third.json()["status"] == 200
    # 1: the first token; 2: after the challenge, with the claims. The next calls carry
    # that token (it met the claims), cache hits: no third exchange.
    assert idp.stats()["grants"]["on_behalf_of"] - before == 2


def test_sync_classic_httpx_with_bind_caller(stack: Stack) -> None:
    idp = stack.idp
    chain = TokenChain(
        [
            OnBehalfOf(
                client_id=idp.agent.client_id,
                tenant_id=idp.tenant_id,
                client_secret=idp.agent.secret,
                authority_host=idp.url,
                http_client=idp.msal_http_client(),
            )
        ]
    )
    auth = ClassicEntraAuth(
        chain, scopes=[f"{idp.mcp.app_id_uri}/.default"], origins=[stack.api_url]
    )
    token = idp.user_token("alice", audience=idp.agent.client_id)
    with httpx.Client(auth=auth, timeout=30) as client:
        with bind_caller(token=token):
            answer = client.get(f"{stack.api_url}/whoami")
        outside = client.get(f"{stack.api_url}/whoami")  # no caller, user_only: no token
    assert answer.status_code == 200
    assert answer.json()["oid"] == idp.users["alice"].oid
    assert answer.json()["aud"] == idp.mcp.client_id
    assert outside.status_code == 401
