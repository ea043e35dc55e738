"""CallerMiddleware with the real JwtVerifier against the Entra emulator's JWKS."""

from __future__ import annotations

from typing import Any

import pytest

from entra_passthrough import CallerMiddleware, JwtVerifier, UserKey, current_caller
from entra_passthrough.testing import EntraEmulator


def verifier(idp: EntraEmulator, **options: Any) -> JwtVerifier:
    return JwtVerifier(
        audiences=[idp.mcp.client_id, idp.mcp.app_id_uri],
        tenants=[idp.tenant_id],
        authority_host=idp.url,
        verify=idp.ca_file,
        **options,
    )


async def run(v: JwtVerifier, token: str | None) -> tuple[int, dict[bytes, bytes], Any]:
    seen: list[Any] = []
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(current_caller())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    mw = CallerMiddleware(app, verifier=v)
    await mw({"type": "http", "headers": headers}, receive, send)
    return sent[0]["status"], dict(sent[0]["headers"]), seen[0] if seen else None


async def test_verified_claims_on_the_caller(entra_emulator: EntraEmulator) -> None:
    idp = entra_emulator
    token = idp.user_token("alice", audience=idp.mcp.client_id)
    status, _, caller = await run(verifier(idp), token)
    assert status == 200
    assert caller.verified["oid"] == idp.users["alice"].oid
    key = UserKey.from_verified_claims(caller.verified)
    assert key is not None
    assert key.value == f"{idp.tenant_id}:{idp.users['alice'].oid}"


@pytest.mark.parametrize(
    ("make", "status", "needle"),
    [
        (lambda idp: idp.user_token("alice", audience=idp.agent.client_id), 401, "invalid_token"),
        (
            lambda idp: idp.user_token("alice", audience=idp.mcp.client_id, lifetime=-600),
            401,
            "invalid_token",
        ),
        (
            lambda idp: idp.user_token(
                "guest", audience=idp.mcp.client_id, tenant_id=idp.second_tenant_id
            ),
            401,
            "invalid_token",
        ),
    ],
)
async def test_refusals(entra_emulator: EntraEmulator, make: Any, status: int, needle: str) -> None:
    idp = entra_emulator
    token = make(idp)
    got, headers, caller = await run(verifier(idp), token)
    assert got == status
    assert needle in headers[b"www-authenticate"].decode()
    assert token not in headers[b"www-authenticate"].decode()
    assert caller is None


async def test_missing_scope_is_403(entra_emulator: EntraEmulator) -> None:
    idp = entra_emulator
    token = idp.user_token("alice", audience=idp.mcp.client_id)
    v = verifier(idp, required_scopes=["Notes.Admin"])
    status, headers, caller = await run(v, token)
    assert status == 403
    challenge = headers[b"www-authenticate"].decode()
    assert 'error="insufficient_scope"' in challenge
    # qualified with the API's App ID URI (a bare scope is Microsoft Graph's to Entra)
    assert f'scope="{idp.mcp.app_id_uri}/Notes.Admin"' in challenge
    assert caller is None
