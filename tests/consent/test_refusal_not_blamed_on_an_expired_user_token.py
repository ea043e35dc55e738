"""A tool call refused (401) for a reason that has nothing to do with expiry, while the token
the user presented has passed its ``exp`` (a long run: the request's caller stays active to its
end). The call's tokens come from a stored consent grant (an hour each; a new one was acquired
and sent for the retry): the refusal must not be said as "the user's token has expired, sign in
again", which cannot fix a server that refuses the token for another reason. Real consent
through the broker, real MSAL against the emulator, a real mcp SDK server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from _support.consent import ConsentEnv, follow_link, platform_caller
from _support.mcp_world import read_json_request
from _support.servers import serve_in_thread
from entra_passthrough import (
    Caller,
    ConsentRequired,
    TokenChain,
    TokenRequest,
    TokenVerificationError,
    bind_caller,
)
from entra_passthrough._types import token_exp
from entra_passthrough._www_auth import challenge, send_challenge
from entra_passthrough.agent_framework import entra_mcp_tool


@contextmanager
def refusing_every_call(seen: list[float | None]) -> Iterator[str]:
    """An MCP endpoint that refuses every ``tools/call`` with 401 ``invalid_token`` (a revoked
    session, the tool's own check), whatever the token; ``seen``: each refused token's exp."""
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("refusing")

    @server.tool()
    async def whoami() -> str:
        return "ok"

    inner = server.streamable_http_app(stateless_http=True)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await inner(scope, receive, send)
            return
        body, replay = await read_json_request(receive)
        if not isinstance(body, dict) or body.get("method") != "tools/call":
            await inner(scope, replay, send)
            return
        bearer = dict(scope["headers"]).get(b"authorization", b"").decode()
        seen.append(token_exp(bearer.removeprefix("Bearer ")))
        status, header, payload = challenge(
            error=TokenVerificationError("the token was revoked"),
            resource_metadata="http://127.0.0.1/.well-known/oauth-protected-resource/mcp",
            scopes=["access_as_user"],
        )
        await send_challenge(send, status, header, payload)

    with serve_in_thread(app, lifespan="auto") as base:
        yield base


async def test_a_refusal_for_another_reason_is_not_said_as_the_users_token_expiry(
    consent_env: ConsentEnv,
) -> None:
    env = consent_env
    source, _ = env.make()
    bob = env.idp.users["bob"]
    request = TokenRequest(
        scopes=(env.mcp_scope,), caller=platform_caller("chat-bob-expired", upn=bob.upn)
    )
    with pytest.raises(ConsentRequired) as info:
        await source.get_token_async(request)
    assert info.value.link is not None
    assert (await follow_link(env, info.value.link)).status_code == 200
    # The platform user's request also carried a user token that has since expired.
    token = env.idp.user_token("bob", lifetime=1)
    time.sleep(1.5)
    caller = Caller.from_token(token, user_id="chat-bob-expired")
    assert caller.claims is not None
    assert caller.claims.exp is not None
    assert caller.claims.exp < time.time()
    seen: list[float | None] = []
    failure: BaseException | None = None
    with refusing_every_call(seen) as base:
        tool = entra_mcp_tool(
            "records", f"{base}/mcp", chain=TokenChain([source]), scopes=[env.mcp_scope]
        )
        try:
            with bind_caller(caller, cap_at_expiry=False):
                try:
                    await tool.call_tool("whoami")
                except Exception as exc:
                    failure = exc
        finally:
            await tool.close()
    assert len(seen) == 2  # the first token and the retry's new one, both refused
    assert all(exp is not None and exp - time.time() > 600 for exp in seen)
    assert type(failure) is TokenVerificationError, repr(failure)
    message = str(failure)
    assert "The user's token" not in message
    assert "does not accept the token" in message
