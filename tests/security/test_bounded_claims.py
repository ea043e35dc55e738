"""Claims are parsed with bounds: numbers, sizes and nesting beyond them are a typed refusal.

A token whose ``exp`` has a few hundred digits once made ``float()`` raise ``OverflowError``
inside capture (HTTP 500), ``bind_caller``, the chain and the server verifier. Each surface
here gets every out-of-bounds shape and must answer with a typed error (or a 401), never a
crash, and never accept.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import jwt
import pytest

from _support.tokens import API, TENANT, Issuer
from entra_passthrough import (
    AssertionMalformed,
    Caller,
    CallerMiddleware,
    EntraPassthroughError,
    JwtVerifier,
    OnBehalfOf,
    TokenChain,
    TokenVerificationError,
    bind_caller,
)
from entra_passthrough._jwt import JwtDecodeError, UnverifiedClaims, decode_unverified


def _seg(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode()


def _payload(exp_json: str) -> str:
    now = int(time.time())
    return (
        f'{{"aud": "api://mcp", "tid": "{TENANT}", "oid": "o", "scp": "access_as_user", '
        f'"ver": "2.0", "iat": {now}, "exp": {exp_json}}}'
    )


def _unsigned(payload_json: str) -> str:
    return (
        f"{_seg(json.dumps({'alg': 'RS256', 'typ': 'JWT', 'kid': 'k'}))}.{_seg(payload_json)}.c2ln"
    )


HUGE = "9" * 400
#: Raw JSON texts for ``exp`` beyond any bound (each was a crash or a silent pass before).
BAD_EXP = {
    "huge-int": HUGE,
    "huge-negative": "-" + HUGE,
    "over-4300-digits": "1" * 5000,
    "float-overflow": "1e999",
    "nan": "NaN",
    "infinity": "Infinity",
    "minus-infinity": "-Infinity",
    "year-after-9999": str(10**13),
    "negative": "-5",
    "string": '"tomorrow"',
    "bool": "true",
    "nested": "[" * 5000 + "]" * 5000,
}
#: Elsewhere in the payload: bounds apply to every number and all nesting, not only exp.
BAD_ELSEWHERE = {
    "huge-int-claim": f'{{"tid": "t", "x": {HUGE}}}',
    "deep": '{"tid": "t", "x": %s}' % ("[" * 40 + "]" * 40),
    "nan-claim": '{"tid": "t", "x": NaN}',
}


def _all_bad() -> list[tuple[str, str]]:
    cases = [(name, _unsigned(_payload(v))) for name, v in BAD_EXP.items()]
    cases += [(name, _unsigned(p)) for name, p in BAD_ELSEWHERE.items()]
    return cases


BAD = _all_bad()
IDS = [name for name, _ in BAD]
TOKENS = [token for _, token in BAD]


@pytest.mark.parametrize("token", TOKENS, ids=IDS)
def test_decoder_refuses_with_a_typed_error(token: str) -> None:
    with pytest.raises(JwtDecodeError) as info:
        decode_unverified(token)
    assert HUGE[:20] not in str(info.value)
    with pytest.raises(JwtDecodeError):
        UnverifiedClaims.from_token(token)


def test_from_payload_refuses_an_out_of_range_time() -> None:
    with pytest.raises(JwtDecodeError):
        UnverifiedClaims.from_payload({"exp": 10**400})
    with pytest.raises(JwtDecodeError):
        UnverifiedClaims.from_payload({"nbf": float("nan")})
    assert UnverifiedClaims.from_payload({"exp": 1.5e9}).exp == 1.5e9


def test_in_range_claims_still_decode() -> None:
    now = int(time.time())
    claims = UnverifiedClaims.from_token(_unsigned(_payload(str(now + 60))))
    assert claims.exp == now + 60
    assert claims.tid == TENANT


def _asgi(token: str, **mw: Any) -> tuple[int, list[Any]]:
    seen: list[Any] = []
    statuses: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    headers = [(b"authorization", b"Bearer " + token.encode())]
    asyncio.run(CallerMiddleware(app, **mw)({"type": "http", "headers": headers}, receive, send))
    return statuses[0], seen


class _RejectAll:
    async def verify_async(self, token: str) -> Any:
        raise TokenVerificationError("signature does not verify")


@pytest.mark.parametrize("token", TOKENS, ids=IDS)
def test_capture_answers_401_never_500(token: str) -> None:
    status, seen = _asgi(token, require_caller=True)
    assert (status, seen) == (401, [])
    status, seen = _asgi(token, verifier=_RejectAll())
    assert (status, seen) == (401, [])


@pytest.mark.parametrize("token", TOKENS, ids=IDS)
def test_bind_caller_and_chain_raise_typed(token: str) -> None:
    with bind_caller(token=token) as caller:
        assert caller.presented
        assert caller.claims is None
        assert caller.decode_error is not None
    chain = TokenChain(
        [
            OnBehalfOf(
                client_id="11111111-1111-1111-1111-111111111111",
                tenant_id=TENANT,
                client_secret="not-used-no-request-goes-out",
            )
        ]
    )
    caller = Caller.from_token(token)
    with pytest.raises(AssertionMalformed):
        asyncio.run(chain.get_token_async(["api://mcp/.default"], caller=caller))
    with pytest.raises(EntraPassthroughError):
        chain.get_token(["api://mcp/.default"], caller=Caller.from_token(token))


def test_background_copy_of_a_bad_caller_is_typed() -> None:
    token = _unsigned(_payload(HUGE))
    caller = Caller.from_token(token)
    copy = caller.copy()
    assert copy.claims is None
    assert copy.presented


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer()


@pytest.mark.parametrize(
    "exp",
    [10**400, -(10**400), 10**13, -5, "soon", True],
    ids=["huge", "huge-negative", "year-after-9999", "negative", "string", "bool"],
)
def test_verifier_refuses_a_signed_token_with_an_out_of_range_time(
    issuer: Issuer, exp: Any
) -> None:
    kid, key = issuer.keys[0]
    claims = issuer.claims(exp=exp)
    token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})
    verifier = JwtVerifier(audiences=[API], tenants=[TENANT], sync_http_client=issuer.sync_client())
    with pytest.raises(TokenVerificationError):
        verifier.verify(token)


def test_verifier_still_accepts_a_good_token(issuer: Issuer) -> None:
    verifier = JwtVerifier(audiences=[API], tenants=[TENANT], sync_http_client=issuer.sync_client())
    assert verifier.verify(issuer.token()).tid == TENANT


@pytest.mark.parametrize("token", TOKENS, ids=IDS)
def test_pool_key_is_none_not_a_crash(token: str) -> None:
    from entra_passthrough import IdentityKind, TokenResult
    from entra_passthrough.agent_framework import issued_pool_key

    result = TokenResult(token, time.time() + 600, IdentityKind.USER, "obo")
    with bind_caller(token=token) as caller:
        assert issued_pool_key(result, caller) is None


@pytest.mark.parametrize("token", [b"abc.def.ghi", 123, ["a.b.c"]], ids=["bytes", "int", "list"])
def test_bind_caller_with_a_token_that_is_not_a_str_says_so(token: Any) -> None:
    """A bytes token (straight from a raw header) failed deep in the decoder with "a bytes-like
    object is required, not 'str'"; a list with an AttributeError."""
    with pytest.raises(TypeError, match="must be the bearer token as a str"):
        bind_caller(token=token)
    with pytest.raises(TypeError, match="must be the bearer token as a str"):
        Caller.from_token(token)
