"""A claims challenge handed back to the client, end to end.

Entra refuses dave's on-behalf-of exchange for the MCP API until his sign-in performed MFA
(AADSTS50076 with a claims challenge). An agent (uvicorn, ``CallerMiddleware``, the chain)
answers with ``step_up_challenge``: the client reads the challenge from ``WWW-Authenticate``,
signs dave in again with those claims (MSAL's device code flow against the emulator), and the
same call then succeeds for dave. A block no sign-in can meet (erin, AADSTS53003) is a 403 with
no challenge. Neither answer carries the assertion, the scopes or the error's message.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import msal
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from _support.servers import serve_in_thread
from entra_passthrough import (
    CallerMiddleware,
    InteractionRequired,
    TokenChain,
    current_caller,
    step_up_challenge,
)
from entra_passthrough._challenge import parse_bearer_challenges
from entra_passthrough.testing import EntraEmulator

from .conftest import decode, make_obo, mcp_scope


@pytest.fixture
def agent(idp: EntraEmulator) -> Iterator[str]:
    chain = TokenChain([make_obo(idp)])

    async def ask(request: Request) -> Response:
        assert current_caller() is not None
        result = await chain.get_token_async(mcp_scope(idp))
        return JSONResponse({"oid": decode(result.token)["oid"]})

    async def step_up(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, InteractionRequired)
        status, header, body = step_up_challenge(exc)
        headers = {"WWW-Authenticate": header} if header else {}
        return Response(body, status_code=status, headers=headers, media_type="application/json")

    app = Starlette(routes=[Route("/ask", ask)], exception_handlers={InteractionRequired: step_up})
    try:
        with serve_in_thread(CallerMiddleware(app), name="step-up-agent") as base:
            yield base
    finally:
        chain.close()


def _sign_in(idp: EntraEmulator, user: str, claims: str | None = None) -> str:
    """The client app signs ``user`` in (device code flow), with a claims challenge if given."""
    app = msal.PublicClientApplication(
        idp.frontend.client_id,
        authority=f"{idp.url}/{idp.tenant_id}",
        http_client=idp.msal_http_client(),
        instance_discovery=False,
    )
    started = app.initiate_device_flow(
        scopes=[f"{idp.agent.app_id_uri}/access_as_user"], claims_challenge=claims
    )
    idp.approve_device_code(started["user_code"], user)
    result = app.acquire_token_by_device_flow(started)
    assert "access_token" in result, result.get("error_description")
    return str(result["access_token"])


def test_mfa_challenge_reaches_the_client_which_meets_it(idp: EntraEmulator, agent: str) -> None:
    first = _sign_in(idp, "dave")
    with httpx.Client() as client:
        answer = client.get(f"{agent}/ask", headers={"Authorization": f"Bearer {first}"})
        assert answer.status_code == 401, answer.text
        challenge = parse_bearer_challenges(answer.headers.get_list("www-authenticate"))
        assert challenge is not None
        assert challenge.error == "insufficient_claims"
        assert challenge.claims is not None
        assert "capolids" in challenge.claims
        assert answer.json()["error"] == "insufficient_claims"
        for secret in (first, first[-40:], "access_as_user", mcp_scope(idp)[0], "AADSTS"):
            assert secret not in answer.text
            assert secret not in answer.headers["www-authenticate"]

        again = _sign_in(idp, "dave", claims=challenge.claims)
        answer = client.get(f"{agent}/ask", headers={"Authorization": f"Bearer {again}"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["oid"] == idp.users["dave"].oid


def test_a_block_no_sign_in_can_meet_is_403_without_a_challenge(
    idp: EntraEmulator, agent: str
) -> None:
    token = idp.user_token("erin", audience=idp.agent.client_id)
    with httpx.Client() as client:
        answer = client.get(f"{agent}/ask", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 403, answer.text
    assert "www-authenticate" not in answer.headers
    assert answer.json()["error"] == "interaction_required"
    assert token[-40:] not in answer.text


@pytest.mark.parametrize(
    "claims",
    [
        None,
        "",
        "not json",
        "[1, 2]",
        '{"access_token":' + '"x"' * 4000 + "}",
        # 6k characters, 18k bytes: its base64 is more than a client reads back.
        '{"access_token":{"x":"' + "\u20ac" * 6000 + '"}}',
    ],
)
def test_a_challenge_no_client_could_use_is_not_sent(claims: str | None) -> None:
    error = InteractionRequired("refused", claims=claims)
    status, header, body = step_up_challenge(error)
    assert (status, header) == (403, "")
    assert b"refused" not in body


def test_the_challenge_is_base64_of_the_claims_and_names_the_resource_metadata() -> None:
    import base64

    claims = '{"access_token":{"acrs":{"essential":true,"value":"c1"}}}'
    status, header, _ = step_up_challenge(
        InteractionRequired("x", claims=claims),
        resource_metadata="https://agent.contoso.com/.well-known/oauth-protected-resource",
    )
    assert status == 401
    assert f'claims="{base64.b64encode(claims.encode()).decode()}"' in header
    assert 'resource_metadata="https://agent.contoso.com/' in header
    parsed = parse_bearer_challenges([header])
    assert parsed is not None
    assert parsed.claims == claims
