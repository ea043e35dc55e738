"""``CallerMiddleware(verifier=...)``'s 403 ``scope=``: short scope names are qualified with the
verifier's App ID URI, but an app role the token lacks is not named as a scope (a client cannot
request a role: an app asks for ``<resource>/.default``, AADSTS1002012), and a verifier of one's
own whose ``audiences`` is one string is not read character by character."""

from __future__ import annotations

import re
from typing import Any

from entra_passthrough import CallerMiddleware, InsufficientScope, JwtVerifier
from entra_passthrough.testing import EntraEmulator


async def run(v: Any, token: str) -> tuple[int, str]:
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    mw = CallerMiddleware(app, verifier=v)
    await mw(
        {"type": "http", "headers": [(b"authorization", f"Bearer {token}".encode())]}, receive, send
    )
    return sent[0]["status"], dict(sent[0]["headers"]).get(b"www-authenticate", b"").decode()


async def test_missing_app_role_is_not_a_scope(entra_emulator: EntraEmulator) -> None:
    """An app-only caller lacking an app role: the 403 does not name the role as a scope."""
    idp = entra_emulator
    v = JwtVerifier(
        audiences=[idp.mcp.client_id, idp.mcp.app_id_uri],
        tenants=[idp.tenant_id],
        authority_host=idp.url,
        verify=idp.ca_file,
        allow_app_only=True,
        required_roles=["Notes.Write"],
    )
    token = idp.app_token(
        client_id=idp.agent.client_id, audience=idp.mcp.client_id, roles=["Notes.Read"]
    )
    status, challenge = await run(v, token)
    assert status == 403
    assert 'error="insufficient_scope"' in challenge
    scope = re.search(r'(?:^|[ ,])scope="([^"]*)"', challenge)
    assert "Notes.Write" not in (scope.group(1) if scope else "")


class StrAudiences:
    """A verifier of one's own whose audiences is one string (not a list)."""

    audiences = "api://notes-api"

    async def verify_async(self, token: str) -> Any:
        raise InsufficientScope("lacks access_as_user", required=("access_as_user",))


async def test_custom_verifier_with_a_string_audience(entra_emulator: EntraEmulator) -> None:
    idp = entra_emulator
    token = idp.user_token("alice", audience=idp.mcp.client_id)
    status, challenge = await run(StrAudiences(), token)
    assert status == 403
    assert 'scope="access_as_user"' in challenge  # as the verifier gave it
