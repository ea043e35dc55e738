"""TokenChain.get_token_async (and EntraAuth through it) run by another event loop than
asyncio's (trio, anyio's trio backend): the acquisition's I/O is asyncio's, and it failed as
"source failed unexpectedly: TypeError", read as an Entra outage. It is a ConfigurationError
saying asyncio is needed and how to use the sync API under trio; a cached token is still
served (the hit needs no loop, and pays nothing for the check)."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

import pytest

from entra_passthrough import ConfigurationError, EntraAuth, TokenChain, bind_caller
from entra_passthrough.testing import EntraEmulator

from .conftest import make_obo, mcp_scope


def run_without_asyncio(coro: Coroutine[Any, Any, Any]) -> Any:
    """Step ``coro`` as a non-asyncio event loop would: no asyncio loop runs (bounded)."""
    try:
        for _ in range(1000):
            coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise AssertionError("the coroutine never finished")


def test_get_token_async_without_asyncio_is_a_configuration_error(idp: EntraEmulator) -> None:
    chain = TokenChain([make_obo(idp)])
    token = idp.user_token("alice", audience=idp.agent.client_id)
    try:
        with bind_caller(token=token), pytest.raises(ConfigurationError) as info:
            run_without_asyncio(chain.get_token_async(mcp_scope(idp)))
        assert "needs an asyncio event loop" in str(info.value)
        assert "trio.to_thread.run_sync" in (info.value.fix or "")
        with bind_caller(token=token):
            fresh = chain.get_token(mcp_scope(idp))  # the sync API, as the fix says
            # A cached token needs no loop: served as before.
            assert run_without_asyncio(chain.get_token_async(mcp_scope(idp))) == fresh
    finally:
        chain.close()


def test_entra_auth_under_trio_is_a_configuration_error(idp: EntraEmulator) -> None:
    trio = pytest.importorskip("trio")
    httpx2 = pytest.importorskip("httpx2")
    chain = TokenChain([make_obo(idp)])
    auth = EntraAuth(chain, scopes=mcp_scope(idp), origins=["https://api.example"])
    token = idp.user_token("alice", audience=idp.agent.client_id)
    seen: list[BaseException] = []

    async def main() -> None:
        with trio.fail_after(30):
            async with httpx2.AsyncClient() as client:
                auth.install(client)
                with bind_caller(token=token):
                    try:
                        await client.get("https://api.example/x")
                    except BaseException as exc:  # what reached the caller
                        seen.append(exc)

    try:
        trio.run(main)
    finally:
        chain.close()
    assert len(seen) == 1
    assert isinstance(seen[0], ConfigurationError), seen
    assert "needs an asyncio event loop" in str(seen[0])
