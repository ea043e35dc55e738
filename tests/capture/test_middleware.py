"""CallerMiddleware: binding, reset, lifespan pass-through, 401/403 shapes, verifier."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any

import pytest

from _support.tokens import unsigned_jwt
from entra_passthrough import (
    Caller,
    CallerMiddleware,
    InsufficientScope,
    SigningKeysUnavailable,
    TokenVerificationError,
    UserKey,
    bind_caller,
    current_caller,
)
from entra_passthrough._caller import set_current
from entra_passthrough._middleware import STATE_KEY


class Stub:
    """The JwtVerifier interface: ``await verify_async(token)`` -> object with ``.claims``."""

    def __init__(self, outcome: Exception | Mapping[str, Any]) -> None:
        self.outcome = outcome
        self.tokens: list[str] = []

    async def verify_async(self, token: str) -> Any:
        self.tokens.append(token)
        if isinstance(self.outcome, Exception):
            raise self.outcome

        class VT:
            claims = self.outcome

        return VT()


async def call(
    mw: CallerMiddleware,
    headers: list[tuple[bytes, bytes]],
    kind: str = "http",
    method: str = "GET",
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    scope: dict[str, Any] = {"type": kind, "headers": headers, "path": "/", "method": method}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await mw(scope, receive, send)
    return sent, scope


class App:
    def __init__(self) -> None:
        self.seen: list[Any] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        caller = current_caller()
        self.seen.append(caller)
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})


def status_and_challenge(sent: list[dict[str, Any]]) -> tuple[int, str | None, dict[str, Any]]:
    start = sent[0]
    headers = dict(start["headers"])
    challenge = headers.get(b"www-authenticate")
    body = json.loads(sent[1]["body"])
    return start["status"], challenge.decode() if challenge else None, body


async def test_binds_then_ends_and_resets() -> None:
    app = App()
    mw = CallerMiddleware(app)
    token = unsigned_jwt(oid="alice", tid="t")
    sent, scope = await call(mw, [(b"authorization", b"Bearer " + token.encode())])
    (caller,) = app.seen
    assert caller.assertion == token
    assert caller.claims.oid == "alice"
    assert not caller.active  # ended when the app returned
    assert current_caller() is None  # reset
    assert scope["state"][STATE_KEY] is caller
    assert sent[0]["status"] == 200


class _Unbinding:
    """Sends its answer (from ``sender``), then records what is bound afterwards."""

    def __init__(self, sender: str) -> None:
        self.sender = sender
        self.during: Any = "unset"
        self.after: Any = "unset"
        self.after_in_sender: Any = "unset"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.during = current_caller()

        async def answer() -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            self.after_in_sender = current_caller()

        if self.sender == "task":  # a task of its own: another context
            await asyncio.create_task(answer())
        else:
            await answer()
        if self.sender == "rebind":  # the app binds the ended Caller again, and leaves it
            set_current(self.during)
        self.after = current_caller()


@pytest.mark.parametrize("sender", ["app", "task", "rebind"])
async def test_unbound_at_the_last_chunk_and_reset_on_return(sender: str) -> None:
    """Unbound as the last chunk goes out, in the app's context (the variable reset there) or
    in a task of the app's own (``None`` there); the request's context is reset on return in
    every case, with no error, and what was bound before the request is bound again."""
    outer = Caller()
    app = _Unbinding(sender)
    token = unsigned_jwt(oid="alice", tid="t")
    with bind_caller(outer):
        sent, _ = await call(
            CallerMiddleware(app), [(b"authorization", b"Bearer " + token.encode())]
        )
        assert current_caller() is outer
    assert sent[-1]["body"] == b"ok"
    assert app.during is not None
    assert app.during.assertion == token
    assert not app.during.active
    assert app.after_in_sender is (None if sender == "task" else outer)
    # Sent from a task of its own: the app's context keeps the ended Caller until return.
    assert app.after is (outer if sender == "app" else app.during)
    assert current_caller() is None


async def test_lifespan_passes_through_untouched() -> None:
    app = App()
    mw = CallerMiddleware(app, require_caller=True)
    _, scope = await call(mw, [], kind="lifespan")
    assert app.seen == [None]
    assert "state" not in scope


async def test_require_caller_without_bearer_gets_401_challenge() -> None:
    app = App()
    mw = CallerMiddleware(
        app,
        require_caller=True,
        resource_metadata_url="https://api.contoso.com/.well-known/oauth-protected-resource",
        realm="api",
    )
    sent, _ = await call(mw, [(b"authorization", b"Basic dXNlcjpwYXNz")])
    status, challenge, body = status_and_challenge(sent)
    assert status == 401
    assert challenge == (
        'Bearer realm="api", resource_metadata='
        '"https://api.contoso.com/.well-known/oauth-protected-resource"'
    )
    assert "error=" not in challenge  # RFC 6750 3.1: no error code when no credentials
    assert body == {"error": "unauthorized"}
    assert app.seen == []


@pytest.mark.parametrize(
    "headers",
    [
        [(b"authorization", b"Bearer not-a-jwt")],
        [(b"authorization", b"Bearer " + b"a" * 70000)],
        [(b"authorization", b"Bearer a.b.c"), (b"authorization", b"Bearer a.b.c")],
        [(b"authorization", b"Bearer " + unsigned_jwt(exp=time.time() - 3600).encode())],
    ],
)
async def test_require_caller_invalid_token_401(headers: list[tuple[bytes, bytes]]) -> None:
    app = App()
    sent, _ = await call(CallerMiddleware(app, require_caller=True), headers)
    status, challenge, body = status_and_challenge(sent)
    assert status == 401
    assert challenge is not None
    assert 'error="invalid_token"' in challenge
    assert body["error"] == "invalid_token"
    assert app.seen == []


async def test_verifier_success_sets_verified_claims() -> None:
    app = App()
    stub = Stub({"oid": "alice-verified", "tid": "t"})
    token = unsigned_jwt(oid="alice", tid="t")
    await call(
        CallerMiddleware(app, verifier=stub), [(b"authorization", f"Bearer {token}".encode())]
    )
    (caller,) = app.seen
    assert stub.tokens == [token]
    assert caller.verified == {"oid": "alice-verified", "tid": "t"}
    assert UserKey.from_verified_claims(caller.verified) == UserKey.for_entra_user(
        "t", "alice-verified"
    )


async def test_verifier_failures_map_to_401_403_and_503() -> None:
    token = unsigned_jwt(oid="alice")
    headers = [(b"authorization", f"Bearer {token}".encode())]
    cases = [
        (TokenVerificationError("signature does not verify"), 401, 'error="invalid_token"'),
        (InsufficientScope("missing scope", required=["Mcp.Read"]), 403, 'scope="Mcp.Read"'),
    ]
    for error, status, needle in cases:
        app = App()
        sent, _ = await call(CallerMiddleware(app, verifier=Stub(error)), headers)
        got, challenge, _ = status_and_challenge(sent)
        assert got == status
        assert challenge is not None
        assert needle in challenge
        assert token not in challenge
        assert app.seen == []
    outages = [RuntimeError("jwks down"), SigningKeysUnavailable("the keys could not be fetched")]
    for outage in outages:  # the verifier failed, or could not fetch the keys: not the token's
        app = App()
        sent, _ = await call(CallerMiddleware(app, verifier=Stub(outage)), headers)
        assert sent[0]["status"] == 503
        answered = dict(sent[0]["headers"])
        assert answered[b"retry-after"] == b"5"
        assert b"www-authenticate" not in answered  # no Bearer error: clients keep the token
        assert app.seen == []


async def test_refusal_is_not_cached_and_head_gets_no_body() -> None:
    sent, _ = await call(CallerMiddleware(App(), require_caller=True), [], method="HEAD")
    headers = dict(sent[0]["headers"])
    assert sent[0]["status"] == 401
    assert headers[b"cache-control"] == b"no-store"
    assert int(headers[b"content-length"]) > 0  # the length a GET would get (RFC 9110 9.3.2)
    assert sent[1]["body"] == b""


async def test_verifier_without_bearer_and_not_required_passes() -> None:
    app = App()
    await call(CallerMiddleware(app, verifier=Stub(RuntimeError("unused"))), [])
    (caller,) = app.seen
    assert not caller.presented


async def test_extra_assertion_header_and_platform_headers() -> None:
    app = App()
    token = unsigned_jwt(oid="bob")
    mw = CallerMiddleware(app, assertion_headers=("x-ms-token-aad-access-token",))
    headers = [
        (b"X-MS-TOKEN-AAD-ACCESS-TOKEN", token.encode()),
        (b"x-agent-user-id", b"user-9"),
        (b"x-agent-foundry-call-id", b"call-3"),
    ]
    await call(mw, headers)
    (caller,) = app.seen
    assert caller.assertion == token
    assert (caller.user_id, caller.call_id) == ("user-9", "call-3")


async def test_websocket_refused_with_close() -> None:
    app = App()
    sent, _ = await call(CallerMiddleware(app, require_caller=True), [], kind="websocket")
    assert sent == [{"type": "websocket.close", "code": 1008}]
    assert app.seen == []


def test_repr_has_no_secret() -> None:
    text = repr(CallerMiddleware(App(), verifier=Stub({})))
    assert "Stub" in text


def test_caller_copy_has_its_own_lifetime_and_no_errors() -> None:
    from entra_passthrough import Caller

    original = Caller.from_token("not-a-jwt", user_id="platform-user")
    original.record(RuntimeError("boom"))
    copy = original.copy()
    assert copy is not original
    assert copy.assertion == original.assertion
    assert copy.user_id == "platform-user"
    assert copy.presented
    assert copy.errors == []
    assert original.errors  # the original keeps its own
    copy.end()
    assert not copy.active
    assert original.active


@pytest.mark.parametrize(
    "headers",
    [
        [(b"authorization", b"Bearer " + unsigned_jwt(oid="alice", tid="t").encode())],
        [(b"x-agent-user-id", b"u1"), (b"Authorization", b"Basic abc")],
        [(b"authorization", b"Bearer a"), (b"authorization", b"Bearer b")],
        [],
        None,  # a scope without headers
        [("authorization", "Bearer str-not-bytes")],  # junk: read on first use, fails closed
        5,  # junk that cannot even be copied: a malformed caller at once
    ],
)
async def test_middleware_builds_what_caller_from_asgi_builds(headers: Any) -> None:
    """The middleware builds its Caller inline (``caller_from_asgi``'s body, for speed): every
    slot must be what ``caller_from_asgi`` gives (``Caller()`` without headers, the malformed
    caller for headers that cannot be copied), before and after the headers are read."""
    from entra_passthrough._caller import Caller, caller_from_asgi, malformed_caller, wanted_headers

    app = App()
    mw = CallerMiddleware(app, assertion_headers=("authorization", "x-other"))
    await call(mw, headers)
    (built,) = app.seen
    if headers is None:
        expected = Caller()
    elif headers == 5:
        expected = malformed_caller("request headers could not be read")
    else:
        expected = caller_from_asgi(Caller, headers, wanted_headers(("authorization", "x-other")))
    expected.end()  # the middleware's has ended with its response

    def slots(caller: Caller) -> dict[str, Any]:
        out = {}
        for name in Caller.__slots__:
            try:
                out[name] = object.__getattribute__(caller, name)
            except AttributeError:
                out[name] = "<unset>"
        return out

    assert slots(built) == slots(expected)
    for caller in (built, expected):
        caller.read_headers()
    assert slots(built) == slots(expected)
    assert (built.presented, built.assertion, built.decode_error, built.user_id) == (
        expected.presented,
        expected.assertion,
        expected.decode_error,
        expected.user_id,
    )
    if headers == 5 or (headers and isinstance(headers[0][0], str)):
        assert built.presented  # fails closed
        assert built.decode_error
