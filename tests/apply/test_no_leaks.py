"""No token in a log line, a repr or an exception message, even at DEBUG."""

from __future__ import annotations

import logging

import httpx2
import pytest

from _support.tokens import unsigned_jwt
from entra_passthrough import EntraAuth, bind_caller, use_token
from entra_passthrough._auth import UnsafeTokenValue

from ._fakes import FakeChain

MCP = "https://mcp.contoso.com"


async def test_debug_logs_reprs_and_errors_carry_no_token(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    assertion = unsigned_jwt(oid="alice", tid="contoso")
    chain = FakeChain(headers={"x-agent-foundry-call-id": "call-9"})
    issued: list[str] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        issued.append(request.headers["authorization"].removeprefix("Bearer "))
        if len(issued) == 1:
            return httpx2.Response(
                401, headers={"www-authenticate": 'Bearer error="invalid_token"'}
            )
        return httpx2.Response(200)

    auth = EntraAuth(chain, scopes=["api://mcp/.default"], origins=[MCP], on_error="record")
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(answer), auth=auth) as c:
        with bind_caller(token=assertion) as caller:
            await c.get(f"{MCP}/")
            result = chain._make(caller, None)
            issued.append(result.token)
            texts = [repr(auth), repr(caller), repr(result), repr(use_token(result, scopes=["x"]))]
    bad = FakeChain(token_override="secret-token\r\nx: y")
    strict = EntraAuth(bad, scopes=["s"], origins=[MCP])
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(answer), auth=strict) as c:
        with bind_caller(token=assertion), pytest.raises(UnsafeTokenValue) as err:
            await c.get(f"{MCP}/")
    texts.append(str(err.value))
    texts += [r.getMessage() for r in caplog.records]
    assert any("attached" in t for t in texts)  # the DEBUG lines did run
    secrets = [assertion, "secret-token", *issued]
    for text in texts:
        for secret in secrets:
            assert secret not in text
