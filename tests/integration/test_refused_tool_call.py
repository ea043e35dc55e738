"""A ``tools/call`` the MCP server refuses with 401 or 403: the tool fails with a typed error
(``InsufficientScope`` / ``TokenVerificationError``) that names the status and the challenge's
error code, never the SDK's bare "Server returned an error response", and never a token.

Real components: the emulator and MSAL behind ``EntraMCPTool``, a real MCP server behind an
ASGI wrapper that refuses ``tools/call`` with the library's own challenge."""

from __future__ import annotations

from typing import Any

import pytest

from _support.mcp_world import (
    Recorder,
    ServerThread,
    agent_token,
    build_mcp_app,
    make_chain,
    mcp_scopes,
    read_json_request,
    refusing_rpc,
    world_with_users,
)
from entra_passthrough import Caller, InsufficientScope, TokenVerificationError, bind_caller
from entra_passthrough.agent_framework import entra_mcp_tool
from entra_passthrough.testing import EntraEmulator
from entra_passthrough.testing._world import Lifetimes, User

#: The refusals: (what the wrapper answers with, the type the tool raises, what it names).
REFUSALS = {
    "403_insufficient_scope": (
        InsufficientScope("the token lacks Files.Write", required=["Files.Write"]),
        InsufficientScope,
        ("HTTP 403", 'error="insufficient_scope"'),
    ),
    "401_invalid_token": (
        TokenVerificationError("the token has expired"),
        TokenVerificationError,
        ("HTTP 401", 'error="invalid_token"'),
    ),
    "401_no_error": (None, TokenVerificationError, ("HTTP 401",)),
}


@pytest.mark.parametrize("refusal", list(REFUSALS))
async def test_a_refused_call_is_a_typed_error_naming_the_status_and_the_challenge(
    refusal: str, idp: EntraEmulator, users: list[User]
) -> None:
    answer, kind, named = REFUSALS[refusal]
    refused: list[str] = []
    executions: list[tuple[str, str]] = []
    server = ServerThread(
        lambda base: refusing_rpc(
            build_mcp_app(idp, base_url=base, recorder=Recorder(), executions=executions),
            base,
            "tools/call",
            refused,
            refusal=answer,
            scopes=("api://other-app/Files.Write",),
        ),
        name="mcp",
    ).start()
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    user = users[22]
    token = agent_token(idp, user)
    failure: BaseException | None = None
    try:
        with bind_caller(token=token):
            try:
                await tool.call_tool("whoami", who=user.oid)
            except Exception as exc:
                failure = exc
    finally:
        await tool.close()
        server.stop()
    assert refused, "the call never reached the refusing server"
    assert executions == []
    assert type(failure) is kind, repr(failure)
    message = str(failure)
    for part in named:
        assert part in message
    assert "'records'" in message
    assert "'whoami'" in message
    assert "Fix:" in message
    assert "eyJ" not in message  # no JWT (the user's, or the MCP token) in the message
    assert token not in message
    assert "other-app" not in message  # another API's scope in the challenge: never quoted


async def test_a_refused_call_names_the_scope_the_challenge_requires(
    idp: EntraEmulator, users: list[User]
) -> None:
    """A 403 whose challenge names a scope of the API the tool asks tokens for: the call's
    ``InsufficientScope`` carries it (``.required``) and its message and fix name it, as a
    refusal at the connect does (it said only "what the server requires")."""
    needed = f"{idp.mcp.app_id_uri}/Files.Write"
    refused: list[str] = []
    failure = await _refused_scope(
        idp,
        users[23],
        lambda base: refusing_rpc(
            build_mcp_app(idp, base_url=base, recorder=Recorder()),
            base,
            "tools/call",
            refused,
            refusal=InsufficientScope("the token lacks Files.Write"),
            scopes=(needed,),
        ),
    )
    assert failure.required == (needed,)
    assert f"it requires: {needed}" in str(failure)
    assert failure.fix is not None
    assert needed in failure.fix


async def _refused_scope(idp: EntraEmulator, user: User, app: Any) -> InsufficientScope:
    """The ``InsufficientScope`` a tool call of ``user`` gets from the MCP server ``app(base)``."""
    server = ServerThread(app, name="mcp").start()
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    try:
        with bind_caller(token=agent_token(idp, user)), pytest.raises(InsufficientScope) as info:
            await tool.call_tool("whoami", who=user.oid)
    finally:
        await tool.close()
        server.stop()
    return info.value


@pytest.mark.parametrize(
    "code", ["eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiJ4In0.c2ln", "AAD-secret-value", "Bearer"]
)
def test_a_challenge_error_the_library_does_not_know_is_never_quoted(code: str) -> None:
    """The error code is the server's free text: one that echoes the refused token (or any
    other value) is left out; only the RFC 6750 codes and Entra's claims challenge are named."""
    import httpx2

    from entra_passthrough.mcp import _challenge_error

    answer = httpx2.Response(401, headers={"www-authenticate": f'Bearer error="{code}"'})
    assert _challenge_error(answer) is None
    known = httpx2.Response(403, headers={"www-authenticate": 'Bearer error="insufficient_scope"'})
    assert _challenge_error(known) == "insufficient_scope"


async def test_a_refusal_once_the_users_token_expired_says_so_not_check_the_scopes(
    idp: EntraEmulator, users: list[User]
) -> None:
    """A foreground request's caller stays active to its end, past its token's expiry: a call
    refused then (the token acquired for it ended with the user's) is said as that expiry.
    Before, it was "the server does not accept the token; check the scopes"."""
    user = users[23]
    token = agent_token(idp, user, lifetime=3)
    exp = Caller.from_token(token).claims.exp  # type: ignore[union-attr]
    refused: list[str] = []
    server = ServerThread(
        lambda base: refusing_rpc(  # a server that refuses the token at its expiry
            build_mcp_app(idp, base_url=base, recorder=Recorder(), executions=[]),
            base,
            "tools/call",
            refused,
            hold=lambda _bearer_exp: exp,
        ),
        name="mcp",
    ).start()
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    failure: BaseException | None = None
    try:
        # (cap_at_expiry=False: as CallerMiddleware binds a request's caller)
        with bind_caller(Caller.from_token(token), cap_at_expiry=False):
            try:
                await tool.call_tool("whoami", who=user.oid)
            except Exception as exc:
                failure = exc
    finally:
        await tool.close()
        server.stop()
    assert refused
    assert type(failure) is TokenVerificationError, repr(failure)
    message = str(failure)
    assert "HTTP 401" in message
    assert "The user's token has expired" in message
    assert "signs in again" in message
    assert "check that the tool's scopes" not in message
    assert token not in message


@pytest.mark.parametrize("rpc", ["tools/call", "tools/list"])
async def test_a_token_that_ends_on_its_way_is_said_as_such(rpc: str) -> None:
    """The MCP server's tokens live 3 s, the user's an hour: the call's token (and the retry's)
    reaches the server after its end. Before, the call (or the connect) failed "the server
    does not accept the token; check the scopes", the operator sent to the wrong place."""
    world, users = world_with_users(4)
    with EntraEmulator(world=world.with_lifetimes(Lifetimes(access_token=3))) as short:
        seen: list[str] = []
        server = ServerThread(
            lambda base: refusing_rpc(  # each request held until its token has expired
                build_mcp_app(short, base_url=base, recorder=Recorder(), executions=[]),
                base,
                rpc,
                seen,
                hold=lambda bearer_exp: bearer_exp,
            ),
            name="mcp",
        ).start()
        tool = entra_mcp_tool(
            "records", f"{server.base}/mcp", chain=make_chain(short), scopes=mcp_scopes(short)
        )
        token = agent_token(short, users[1])
        failure: BaseException | None = None
        try:
            with bind_caller(token=token):
                try:
                    await tool.call_tool("whoami", who=users[1].oid)
                except Exception as exc:
                    failure = exc
        finally:
            await tool.close()
            server.stop()
    assert seen == [rpc, rpc]  # the one retry with a new token, refused the same way
    # (a connect's refusal reaches the caller in the tool failure agent-framework shows)
    assert "TokenVerificationError(" in repr(failure), repr(failure)
    message = str(failure)
    assert "HTTP 401" in message
    assert "had expired, or was about to, when the server read it" in message
    assert "check that the tool's scopes" not in message
    assert token not in message


def _echoing_403(app: Any, seen: dict[str, str]) -> Any:
    """The MCP app, except that a ``tools/call`` is refused 403 with a challenge whose scopes
    are the bearer it was sent, cut into scope-shaped pieces (with and without the tool's own
    API's prefix)."""

    async def wrapper(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await app(scope, receive, send)
            return
        body, replay = await read_json_request(receive)
        if not isinstance(body, dict) or body.get("method") != "tools/call":
            await app(scope, replay, send)
            return
        bearer = dict(scope["headers"]).get(b"authorization", b"").decode()[7:]
        seen["token"] = bearer
        pieces = [bearer[i : i + 40].lstrip(".-_") for i in range(0, len(bearer), 40)]
        scopes = [*pieces[:8], *(f"{seen['api']}/{p}" for p in pieces[8:16])]
        challenge = f'Bearer error="insufficient_scope", scope="{" ".join(scopes)}"'
        await send(
            {
                "type": "http.response.start",
                "status": 403,
                "headers": [(b"www-authenticate", challenge.encode())],
            }
        )
        await send({"type": "http.response.body", "body": b"{}"})

    return wrapper


async def test_a_challenge_that_echoes_the_token_in_its_scopes_is_not_quoted(
    idp: EntraEmulator, users: list[User]
) -> None:
    """A server that cuts the token it was sent into scope-shaped pieces (no "eyJ" in them)
    gets none of them quoted in the refusal's message or fix."""
    seen: dict[str, str] = {"api": idp.mcp.app_id_uri}
    failure = await _refused_scope(
        idp,
        users[24],
        lambda base: _echoing_403(build_mcp_app(idp, base_url=base, recorder=Recorder()), seen),
    )
    shown = f"{failure} {failure.fix} {failure.required}"
    token = seen["token"]
    assert not any(token[i : i + 12] in shown for i in range(len(token) - 12))
