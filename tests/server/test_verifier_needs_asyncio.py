"""JwtVerifier.verify_async and CallerMiddleware's verification run by another event loop than
asyncio's (trio: ``hypercorn -k trio``): an untyped RuntimeError, and from the middleware a 503
for every valid token (clients retry forever). It is a ConfigurationError saying asyncio is
needed and how to use the sync API under trio; the middleware lets it reach the server."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

import pytest

from entra_passthrough import CallerMiddleware, ConfigurationError, JwtVerifier
from entra_passthrough.testing import EntraEmulator


def run_without_asyncio(coro: Coroutine[Any, Any, Any]) -> Any:
    """Step ``coro`` as a non-asyncio event loop would: no asyncio loop runs (bounded)."""
    try:
        for _ in range(1000):
            coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise AssertionError("the coroutine never finished")


def _verifier(idp: EntraEmulator) -> JwtVerifier:
    return JwtVerifier(
        audiences=[idp.mcp.client_id],
        tenants=[idp.tenant_id],
        authority_host=idp.url,
        verify=idp.ca_file,
    )


def _token(idp: EntraEmulator) -> str:
    return idp.user_token(user="alice", audience=idp.mcp.client_id, scopes=("access_as_user",))


def test_verify_async_without_asyncio_is_a_configuration_error(
    entra_emulator: EntraEmulator,
) -> None:
    verifier = _verifier(entra_emulator)
    token = _token(entra_emulator)
    with pytest.raises(ConfigurationError) as info:
        run_without_asyncio(verifier.verify_async(token))
    assert "JwtVerifier.verify_async needs an asyncio event loop" in str(info.value)
    assert "JwtVerifier.verify" in (info.value.fix or "")
    assert verifier.verify(token).oid == entra_emulator.users["alice"].oid  # the sync API


def test_the_middleware_raises_it_rather_than_answer_503(entra_emulator: EntraEmulator) -> None:
    reached: list[str] = []
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append("app")

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    middleware = CallerMiddleware(app, verifier=_verifier(entra_emulator), require_caller=True)
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/mcp",
        "headers": [(b"authorization", f"Bearer {_token(entra_emulator)}".encode())],
    }
    with pytest.raises(ConfigurationError, match="needs an asyncio event loop"):
        run_without_asyncio(middleware(scope, receive, send))
    assert reached == []  # never the app unverified
    assert sent == []  # and no 503


def test_verify_async_under_trio(entra_emulator: EntraEmulator) -> None:
    trio = pytest.importorskip("trio")
    verifier = _verifier(entra_emulator)
    token = _token(entra_emulator)

    async def main() -> None:
        with pytest.raises(ConfigurationError, match="needs an asyncio event loop"):
            await verifier.verify_async(token)
        # The fix: the sync API from a worker thread.
        verified = await trio.to_thread.run_sync(verifier.verify, token)
        assert verified.oid == entra_emulator.users["alice"].oid

    trio.run(main)
