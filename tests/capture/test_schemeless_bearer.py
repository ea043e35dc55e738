"""The user's token behind a malformed scheme counts as presented: the app never stands in.

A client that sends its user's JWT without ``Bearer `` (the raw token, ``Bearer:<jwt>``,
``Token <jwt>``, DPoP) used to be a request with no assertion: under ``user_or_app`` the chain
served the agent's managed identity for a request that plainly came from a user, while
``Bearer junk`` failed closed. Such a header is now presented and unusable (``AssertionMalformed``,
nothing sent, 401 ``invalid_token`` with ``require_caller``); a scheme that carries no user
token (Basic, Negotiate) is still no assertion.

Real uvicorn, the emulator over HTTPS, real MSAL for on-behalf-of and the emulator's App
Service managed identity endpoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from _support.servers import serve_in_thread
from entra_passthrough import (
    CallerMiddleware,
    ManagedIdentity,
    OnBehalfOf,
    Policy,
    TokenChain,
    current_caller,
)
from entra_passthrough.testing import EntraEmulator


@pytest.fixture
def agent(entra_emulator: EntraEmulator) -> Iterator[tuple[str, str, EntraEmulator]]:
    """(URL of an agent app that resolves a token for the MCP scope, the URL of the same app
    behind ``require_caller=True``, the emulator)."""
    idp = entra_emulator
    env = idp.mi_env()
    chain = TokenChain(
        [
            OnBehalfOf(
                client_id=idp.agent.client_id,
                tenant_id=idp.tenant_id,
                client_secret=idp.agent.secret,
                authority_host=idp.url,
                http_client=idp.msal_http_client(),
            ),
            ManagedIdentity(
                client_id=idp.managed_identity.client_id,
                endpoint=env["IDENTITY_ENDPOINT"],
                header=env["IDENTITY_HEADER"],
            ),
        ],
        policy=Policy.USER_OR_APP,
    )
    scopes = [f"{idp.mcp.app_id_uri}/.default"]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        caller = current_caller()
        try:
            result = await chain.get_token_async(scopes)
            out = f"{caller is not None and caller.presented} {result.kind.value}"
        except Exception as exc:
            out = f"{caller is not None and caller.presented} {type(exc).__name__} {exc}"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": out.encode()})

    try:
        with (
            serve_in_thread(CallerMiddleware(app), lifespan="off") as url,
            serve_in_thread(CallerMiddleware(app, require_caller=True), lifespan="off") as strict,
        ):
            yield url, strict, idp
    finally:
        chain.close()


MALFORMED = {
    "raw token": "{jwt}",
    "colon": "Bearer:{jwt}",
    "equals": "Bearer={jwt}",
    "comma": "Bearer,{jwt}",
    "glued": "Bearer{jwt}",
    "Token scheme": "Token {jwt}",
    "JWT scheme": "JWT {jwt}",
    "DPoP": "DPoP {jwt}",
    "quoted": '"{jwt}"',
    "Token colon": "Token:{jwt}",
    "form field": "access_token={jwt}",
}


def test_a_users_token_behind_a_malformed_scheme_never_lets_the_app_act(
    agent: tuple[str, str, EntraEmulator],
) -> None:
    url, strict, idp = agent
    jwt = idp.user_token("alice", audience=idp.agent.client_id)
    idp.reset_stats()
    for label, shape in MALFORMED.items():
        header = shape.format(jwt=jwt)
        answer = httpx.get(url, headers={"authorization": header}, timeout=30).text
        assert answer.startswith("True AssertionMalformed"), (label, answer)
        assert "Authorization: Bearer <token>" in answer, (label, answer)
        assert jwt not in answer
        refused = httpx.get(strict, headers={"authorization": header}, timeout=30)
        assert refused.status_code == 401, (label, refused.status_code)
        assert 'error="invalid_token"' in refused.headers.get("www-authenticate", ""), label
    stats = idp.stats()["endpoints"]
    assert stats["msi"] == 0  # the app's identity was never asked
    assert stats["token"] == 0  # and nothing was sent to Entra as the user

    # The usual form is served as the user; schemes that carry no user token are no
    # assertion, and the policy lets the app act for them, as before.
    answer = httpx.get(url, headers={"authorization": f"Bearer {jwt}"}, timeout=30).text
    assert answer == "True user", answer
    for other in ("Basic dXNlcjpwdw==", "Negotiate YIIG", ""):
        answer = httpx.get(url, headers={"authorization": other}, timeout=30).text
        assert answer == "False app", (other, answer)
