"""The variants ``bench._mw_floor`` counts do what its table says they do: each answers the
request, binds the caller from ``bind`` on, ends it from ``end`` on, and the ``inlined`` one
behaves as ``CallerMiddleware`` does (so its count is the floor of the same behaviour)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from _support.tokens import unsigned_jwt
from entra_passthrough import Caller
from entra_passthrough._caller import caller_var
from entra_passthrough._middleware import STATE_KEY

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def user_token() -> str:
    return unsigned_jwt(oid="user-1", tid="tenant-1", aud="api://agent")


@pytest.fixture
def floor(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(ROOT))
    import bench._mw_floor as floor

    return floor


async def _call(app: Any, token: str) -> tuple[bytes, dict[str, Any], list[bool]]:
    """Run one GET; the body, the scope's state, and whether the caller was active when each
    message reached the server."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test"), (b"authorization", f"Bearer {token}".encode())],
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 5000),
        "state": {},
    }
    body = b""
    active: list[bool] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal body
        caller = scope["state"].get(STATE_KEY)
        active.append(caller is not None and caller.active)
        body += message.get("body", b"")

    await app(scope, receive, send)
    return body, scope["state"], active


@pytest.mark.parametrize(
    "kind", ["plain", "layer", "wrapper", "caller", "state", "bind", "end", "inlined", "capture"]
)
async def test_variant(floor: Any, kind: str, user_token: str) -> None:
    assert list(floor.STEPS) == [
        "plain", "layer", "wrapper", "caller", "state", "bind", "end", "inlined", "capture"
    ]  # fmt: skip
    app = floor.build(kind)
    body, state, active = await _call(app, user_token)
    bound = kind in ("bind", "end", "inlined", "capture")
    assert body == (b"user" if bound else b"anon")
    caller = state.get(STATE_KEY)
    if kind in ("state", "bind", "end", "inlined", "capture"):
        assert isinstance(caller, Caller)
        assert caller.assertion == user_token  # read from the headers on first use
    if kind in ("end", "inlined", "capture"):
        # ended as the last chunk goes out (not only on return), as CallerMiddleware does
        assert active == [True, False]
        assert not caller.active
    elif bound:
        assert active == [True, True]
    assert caller_var.get() is None  # unbound after the request in every variant


async def test_inlined_matches_the_middleware(floor: Any, user_token: str) -> None:
    """Every field of the inlined variant's Caller equals the middleware's, read or not."""
    _, inlined, _ = await _call(floor.build("inlined"), user_token)
    _, library, _ = await _call(floor.build("capture"), user_token)
    ours, theirs = inlined[STATE_KEY], library[STATE_KEY]
    for name in ("assertion", "presented", "user_id", "call_id", "not_after", "verified"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.assertion_sha256 == theirs.assertion_sha256
    assert ours.claims == theirs.claims
