"""A bearer that is no base64url JWT is refused where it is read, not by Entra.

``base64.urlsafe_b64decode`` skips what is not in its alphabet, so a bearer with spaces, tabs or
punctuation in a segment decoded as a valid JWT: ``require_caller`` admitted it, its unverified
claims routed the request, and the chain sent it to Entra (which answers AADSTS50027).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from _support.asgi import asgi_get
from _support.tokens import unsigned_jwt
from entra_passthrough import (
    AssertionMalformed,
    Caller,
    CallerMiddleware,
    ConfigurationError,
    OnBehalfOf,
    Policy,
    TokenChain,
    current_caller,
)
from entra_passthrough._jwt import JwtDecodeError, decode_unverified

TID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
APP = "11111111-2222-3333-4444-555555555555"


def good() -> str:
    return unsigned_jwt(aud=APP, tid=TID, oid="alice", iss=f"https://sts.windows.net/{TID}/")


def spoil(token: str, segment: int, junk: str) -> str:
    parts = token.split(".")
    middle = len(parts[segment]) // 2
    parts[segment] = parts[segment][:middle] + junk + parts[segment][middle:]
    return ".".join(parts)


SPOILED = [
    pytest.param(0, "    ", id="spaces-in-header"),
    pytest.param(1, "    ", id="spaces-in-payload"),
    pytest.param(1, "\t\t\t\t", id="tabs-in-payload"),
    pytest.param(1, "****", id="stars-in-payload"),
    pytest.param(1, "+/+/", id="base64-not-base64url"),
    pytest.param(1, "====", id="padding-inside"),
    pytest.param(2, " ", id="space-in-signature"),
    pytest.param(2, "!", id="bang-in-signature"),
    pytest.param(2, "+", id="plus-in-signature"),
]


def test_a_well_formed_token_still_decodes() -> None:
    assert decode_unverified(good())["oid"] == "alice"


@pytest.mark.parametrize(("segment", "junk"), SPOILED)
def test_decode_refuses_what_is_not_base64url(segment: int, junk: str) -> None:
    with pytest.raises(JwtDecodeError, match="base64url"):
        decode_unverified(spoil(good(), segment, junk))


def test_every_segment_length_of_real_base64url_decodes() -> None:
    # the length check must not refuse a segment of any valid length (2 or 3 chars past a
    # multiple of 4 are the unpadded forms)
    import base64
    import json

    for size in range(1, 40):
        body = base64.urlsafe_b64encode(json.dumps({"a": "x" * size}).encode()).rstrip(b"=")
        header = base64.urlsafe_b64encode(b'{"alg":"RS256"}').rstrip(b"=")
        token = f"{header.decode()}.{body.decode()}.{'s' * (size % 7)}"
        assert decode_unverified(token) == {"a": "x" * size}


def _serve(token: str) -> tuple[int, Any]:
    """The status ``CallerMiddleware(require_caller=True)`` answers for ``token``, and the
    caller the app saw (``None``: the app never ran)."""
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(current_caller())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    headers = [(b"authorization", f"Bearer {token}".encode())]
    status, _ = asyncio.run(asgi_get(CallerMiddleware(app, require_caller=True), headers))
    return status, seen[0] if seen else None


@pytest.mark.parametrize(("segment", "junk"), SPOILED)
def test_require_caller_refuses_a_bearer_that_is_not_base64url(segment: int, junk: str) -> None:
    assert _serve(good())[0] == 200
    status, caller = _serve(spoil(good(), segment, junk))
    assert status == 401
    assert caller is None  # the app never ran


@pytest.mark.parametrize(("segment", "junk"), SPOILED)
def test_the_chain_refuses_it_before_any_request(segment: int, junk: str) -> None:
    # an authority nothing listens on: a request would fail as unreachable, not as malformed
    chain = TokenChain(
        [
            OnBehalfOf(
                client_id=APP,
                tenant_id=TID,
                client_secret="not-used",
                authority_host="https://127.0.0.1:9",
            )
        ],
        policy=Policy.USER_ONLY,
    )
    try:
        caller = Caller.from_token(spoil(good(), segment, junk))
        with pytest.raises(AssertionMalformed):
            chain.get_token(["api://mcp/.default"], caller=caller)
    finally:
        chain.close()


@pytest.mark.parametrize(
    "name",
    ["authörization", "x-ms-token-aad-access-token:", "x ms token", "x-to\nken", "auth\x00"],
)
def test_a_header_name_no_request_can_carry_is_refused(name: str) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    with pytest.raises(ConfigurationError) as raised:
        CallerMiddleware(app, assertion_headers=("authorization", name))
    assert "position 1" in str(raised.value)
    assert name.strip() not in str(raised.value)  # configured values are never echoed
    assert raised.value.fix


def test_usual_header_names_are_accepted() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    mw = CallerMiddleware(app, assertion_headers=("Authorization", " X-MS-TOKEN-AAD-ACCESS-TOKEN "))
    assert mw.assertion_headers == ("authorization", "x-ms-token-aad-access-token")
