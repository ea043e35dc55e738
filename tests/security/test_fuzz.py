"""Property tests (hypothesis) with hostile shapes: numbers of any size, NaN/Infinity, deep
nesting, control characters. For every input: never a crash, never a 500, never an acceptance
of what should not be accepted, always a typed error.

Sizes: ``HYPOTHESIS_PROFILE=soak`` runs ten times as many examples.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from typing import Any

import httpx2
import jwt
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from _support.tokens import API, TENANT, Issuer
from _support.tokens import b64url as _seg
from entra_passthrough import (
    Caller,
    CallerMiddleware,
    JwtVerifier,
    TokenVerificationError,
    VerifiedToken,
)
from entra_passthrough._jwt import MAX_TIMESTAMP, TIME_CLAIMS, JwtDecodeError, decode_unverified
from entra_passthrough.testing import EntraEmulator

SCALE = 10 if os.environ.get("HYPOTHESIS_PROFILE") == "soak" else 1


def examples(n: int) -> Any:
    return settings(
        max_examples=n * SCALE,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


# -- hostile JSON, as raw text (json.dumps cannot write NaN-free huge/deep shapes on purpose) --

numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400).map(str),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1" * 4400, "-0"]),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)


def _raw(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


scalars = st.one_of(
    numbers.map(_raw),
    st.text(max_size=30).map(json.dumps),
    st.sampled_from(["true", "false", "null"]),
)
raw_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]"),
        st.dictionaries(st.text(max_size=6), inner, max_size=4).map(
            lambda d: "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in d.items()) + "}"
        ),
    ),
    max_leaves=12,
)
deep = st.integers(1, 1200).map(lambda n: "[" * n + "]" * n)
CLAIM_NAMES = ["aud", "iss", "tid", "oid", "exp", "nbf", "iat", "ver", "scp", "roles", "azp", "x"]
raw_payloads = st.dictionaries(
    st.sampled_from(CLAIM_NAMES), st.one_of(raw_values, deep), max_size=8
).map(lambda d: "{" + ",".join(f'"{k}":{v}' for k, v in d.items()) + "}")


def unsigned_raw(payload: str) -> str:
    header = _seg(json.dumps({"alg": "RS256", "kid": "k", "typ": "JWT"}).encode())
    return f"{header}.{_seg(payload.encode())}.c2ln"


@examples(400)
@given(raw_payloads)
def test_unverified_claims_parser_is_total_and_bounded(payload: str) -> None:
    try:
        claims = decode_unverified(unsigned_raw(payload))
    except JwtDecodeError as exc:
        message = str(exc)
        claims = {}
    else:
        message = ""
    assert len(payload) < 8 or payload[:40] not in message
    for name in TIME_CLAIMS:
        if name in claims:
            value = claims[name]
            assert isinstance(value, int | float)
            assert not isinstance(value, bool)
            assert 0 <= value <= MAX_TIMESTAMP


# -- the verifier, with correctly signed tokens carrying hostile claims -----------------------

ISSUER = Issuer()
VERIFIER = JwtVerifier(audiences=[API], tenants=[TENANT], sync_http_client=ISSUER.sync_client())


def signed_raw(overrides: dict[str, str]) -> str:
    """A token signed by the trusted issuer whose claims are the good ones with ``overrides``
    spliced in as raw JSON text (PyJWT would refuse to encode NaN or a 5000-digit number)."""
    claims = {k: json.dumps(v) for k, v in ISSUER.claims().items()}
    claims.update(overrides)
    payload = "{" + ",".join(f'"{k}":{v}' for k, v in claims.items()) + "}"
    kid, key = ISSUER.keys[0]
    header = _seg(json.dumps({"alg": "RS256", "kid": kid, "typ": "JWT"}).encode())
    body = _seg(payload.encode())
    signing_input = f"{header}.{body}".encode()
    signature = jwt.algorithms.RSAAlgorithm(jwt.algorithms.RSAAlgorithm.SHA256).sign(
        signing_input, key
    )
    return f"{header}.{body}.{_seg(signature)}"


time_overrides = st.dictionaries(
    st.sampled_from(["exp", "nbf", "iat"]), st.one_of(numbers.map(_raw), raw_values), min_size=1
)
other_overrides = st.dictionaries(
    st.sampled_from(CLAIM_NAMES), st.one_of(raw_values, deep), max_size=4
)


@examples(150)
@given(st.one_of(time_overrides, other_overrides))
def test_verifier_on_signed_hostile_claims_is_typed_and_never_accepts_bad_times(
    overrides: dict[str, str],
) -> None:
    token = signed_raw(overrides)
    try:
        verified = VERIFIER.verify(token)
    except TokenVerificationError as exc:
        refused = str(exc)
    else:
        refused = ""
    if refused:
        assert token not in refused
        return
    assert isinstance(verified, VerifiedToken)
    assert verified.tid == TENANT
    assert verified.audience == API
    assert time.time() - 120 < verified.expires_at <= MAX_TIMESTAMP


def test_signed_raw_builds_an_acceptable_token() -> None:
    assert VERIFIER.verify(signed_raw({})).tid == TENANT  # the generator itself is sound


# -- header parsing in CallerMiddleware ----------------------------------------------------------


class _AsyncVerifier:
    """The real JwtVerifier, driven sync (no event-loop-bound client across asyncio.run)."""

    async def verify_async(self, token: str) -> VerifiedToken:
        return VERIFIER.verify(token)


def _run(mw_kwargs: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> tuple[int, Any]:
    seen: list[Any] = []
    statuses: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["state"]["entra_caller"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    mw = CallerMiddleware(app, **mw_kwargs)
    asyncio.run(mw({"type": "http", "headers": headers}, receive, send))
    return statuses[0], (seen[0] if seen else None)


header_tokens = st.one_of(
    raw_payloads.map(unsigned_raw),
    st.dictionaries(st.sampled_from(CLAIM_NAMES), raw_values, max_size=3).map(signed_raw),
    st.just("GOOD"),
    st.text(max_size=60),
)
header_values = st.one_of(
    header_tokens.map(lambda t: ("Bearer " + t).encode("utf-8", "surrogatepass")),
    st.binary(max_size=80),
    st.sampled_from([b"Bearer", b"bearer\tabc", b"Basic x", b"Bearer \r\nX: y"]),
)


@examples(250)
@given(
    st.lists(
        st.tuples(st.sampled_from([b"authorization", b"x-agent-user-id", b"x"]), header_values),
        max_size=4,
    ),
    st.booleans(),
)
def test_capture_with_a_verifier_never_crashes_and_never_passes_a_forgery(
    headers: list[tuple[bytes, bytes]], require: bool
) -> None:
    good = ISSUER.token()
    headers = [(n, v.replace(b"GOOD", good.encode())) for n, v in headers]
    try:
        status, caller = _run({"verifier": _AsyncVerifier(), "require_caller": require}, headers)
    except Exception as exc:  # pragma: no cover - the property's failure
        pytest.fail(f"CallerMiddleware raised {type(exc).__name__}")
    assert status in (200, 401, 403)
    if status == 200 and isinstance(caller, Caller) and caller.presented:
        assert caller.verified is not None  # nothing unverified got through
        assert VERIFIER.verify(caller.assertion or "").tid == TENANT


@examples(250)
@given(st.lists(st.tuples(st.just(b"authorization"), header_values), max_size=3))
def test_capture_require_caller_without_verifier_is_401_or_passes_a_decodable_token(
    headers: list[tuple[bytes, bytes]],
) -> None:
    status, caller = _run({"require_caller": True}, headers)
    assert status in (200, 401)
    if status == 200:
        assert isinstance(caller, Caller)
        assert caller.decode_error is None
        assert caller.claims is not None


# -- the emulator's endpoints: Entra's typed errors, never a 500 ---------------------------------

#: Small hostile payloads for HTTP forms (a deep one would make hypothesis's reprs huge).
small_scalars = st.one_of(
    st.integers().map(json.dumps),
    st.sampled_from(["NaN", "Infinity", "1e999", "9" * 30, "[[[[[[[[[[]]]]]]]]]]"]),
    st.text(max_size=20).map(json.dumps),
)
small_payloads = st.dictionaries(st.sampled_from(CLAIM_NAMES), small_scalars, max_size=4).map(
    lambda d: "{" + ",".join(f'"{k}":{v}' for k, v in d.items()) + "}"
)
form_values = st.one_of(
    st.text(max_size=40),
    small_payloads.map(unsigned_raw),
    st.sampled_from(["", "openid", "api://x/.default offline_access", "\x00", "%ZZ"]),
)
GRANTS = [
    "client_credentials",
    "urn:ietf:params:oauth:grant-type:jwt-bearer",
    "authorization_code",
    "refresh_token",
    "password",
    "urn:ietf:params:oauth:grant-type:token-exchange",
    "nonsense",
]
FIELDS = [
    "client_id",
    "client_secret",
    "scope",
    "assertion",
    "requested_token_use",
    "code",
    "redirect_uri",
    "code_verifier",
    "refresh_token",
    "client_assertion",
    "client_assertion_type",
    "username",
    "password",
    "resource",
    "claims",
    "fmi_path",
]


@pytest.fixture(scope="module")
def idp() -> Any:
    with EntraEmulator() as emulator:
        yield emulator


@pytest.fixture(scope="module")
def idp_http(idp: EntraEmulator) -> Any:
    """One client for every example (a client per example cost more than the request: ~3 ms
    with the emulator's TLS context, ~30 ms with the default one, which loads the CA bundle)."""
    with httpx2.Client(verify=idp.ssl_context(), timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def mi_http() -> Any:
    """For the managed identity endpoint (plain HTTP on 127.0.0.1)."""
    with httpx2.Client(timeout=30) as http:
        yield http


@examples(120)
@given(
    st.sampled_from(GRANTS),
    st.dictionaries(st.sampled_from(FIELDS), form_values, max_size=6),
    st.sampled_from(["{tenant}", "common", "organizations", "x", "%00"]),
    st.booleans(),
)
def test_emulator_token_endpoint_answers_typed_errors(
    idp: EntraEmulator,
    idp_http: httpx2.Client,
    grant: str,
    form: dict[str, str],
    tenant: str,
    client_ok: bool,
) -> None:
    data = {"grant_type": grant, **form}
    if client_ok:
        data.setdefault("client_id", idp.agent.client_id)
        data.setdefault("client_secret", idp.agent.secret)
    try:
        data = {k: v.encode("utf-8").decode("utf-8") for k, v in data.items()}
    except UnicodeEncodeError:
        assume(False)
    path = f"/{tenant.format(tenant=idp.tenant_id)}/oauth2/v2.0/token"
    answer = idp_http.post(idp.url + path, data=data)
    assert answer.status_code < 500, answer.text[:300]
    if answer.status_code >= 400:
        body = answer.json()
        assert isinstance(body.get("error"), str)
        assert isinstance(body.get("error_codes", [0]), list)


AUTHORIZE_FIELDS = [
    "client_id",
    "response_type",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    "response_mode",
    "login_hint",
    "prompt",
    "claims",
]


@examples(80)
@given(st.dictionaries(st.sampled_from(AUTHORIZE_FIELDS), form_values, max_size=8))
def test_emulator_authorize_endpoint_never_500(
    idp: EntraEmulator, idp_http: httpx2.Client, query: dict[str, str]
) -> None:
    try:
        query = {k: v.encode("utf-8").decode("utf-8") for k, v in query.items()}
    except UnicodeEncodeError:
        assume(False)
    answer = idp_http.get(f"{idp.url}/{idp.tenant_id}/oauth2/v2.0/authorize", params=query)
    assert answer.status_code < 500, answer.text[:300]


@examples(60)
@given(
    st.dictionaries(
        st.sampled_from(["resource", "api-version", "client_id", "object_id", "mi_res_id", "x"]),
        st.text(max_size=40),
        max_size=4,
    ),
    st.booleans(),
)
def test_emulator_managed_identity_endpoint_never_500(
    idp: EntraEmulator, mi_http: httpx2.Client, query: dict[str, str], with_header: bool
) -> None:
    try:
        query = {k: v.encode("utf-8").decode("utf-8") for k, v in query.items()}
    except UnicodeEncodeError:
        assume(False)
    env = idp.mi_env()
    headers = {"X-IDENTITY-HEADER": env["IDENTITY_HEADER"]} if with_header else {}
    answer = mi_http.get(env["IDENTITY_ENDPOINT"], params=query, headers=headers)
    assert answer.status_code < 500, answer.text[:300]


# -- an error body from the token endpoint (or a gateway in front of it) -------------------------

_ECHO_SECRET = "Qx8~fuzzSECRETvalue0123456789abcdef"
_ECHO_JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJmdXp6In0.c2lnbmF0dXJlLWZ1enotc2lnbmF0dXJl"
echoes = st.sampled_from(
    [
        f"client_secret={_ECHO_SECRET}",
        f"assertion={_ECHO_JWT}&grant_type=x",
        f'{{"client_secret": "{_ECHO_SECRET}"}}',
        f"token {_ECHO_JWT}",
        f"password={_ECHO_SECRET}",
    ]
)
# No "~" in free text: the secret's fragments cannot appear by chance (a bare short secret in
# free text is the documented limit of pattern-based redaction, docs/security.md).
free_text = st.text(alphabet=st.characters(blacklist_characters="~"), max_size=40)
body_values = st.one_of(
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(),
    st.booleans(),
    st.none(),
    free_text,
    echoes,
    st.lists(st.one_of(st.integers(min_value=-(10**400), max_value=10**400), echoes), max_size=3),
    st.builds(lambda e, n: f"AADSTS{n}: {e}", echoes, st.integers(0, 10**30)),
)
ERROR_FIELDS = [
    "error",
    "error_description",
    "error_codes",
    "correlation_id",
    "trace_id",
    "suberror",
    "claims",
    "timestamp",
]


@examples(300)
@given(st.dictionaries(st.sampled_from(ERROR_FIELDS), body_values, max_size=8))
def test_error_body_is_typed_bounded_and_never_echoes_a_secret(body: dict[str, Any]) -> None:
    """Whatever an error body holds, the typed error's message is bounded and shows no secret
    and no huge number (a 400-digit ``error_codes`` once went whole into it)."""
    from entra_passthrough import TokenAcquisitionError
    from entra_passthrough._errors import error_from_entra

    err = error_from_entra(body, source="obo", scopes=["api://x/.default"])
    assert isinstance(err, TokenAcquisitionError)
    text = str(err) + repr(err)
    assert _ECHO_SECRET[:16] not in text
    assert _ECHO_JWT[12:28] not in text
    assert re.search(r"\d{65}", text) is None  # no huge number (identifiers: 64 at most)
    assert len(str(err)) < 2000


@pytest.mark.parametrize(
    "claims",
    [
        [30602925404859710002935438188301205577443252464, f"assertion={_ECHO_JWT}&grant_type=x"],
        f"assertion={_ECHO_JWT}&grant_type=x",
        f'{{"access_token": {{"echo": "{_ECHO_JWT}"}}}}',
        "not json",
        12345,
    ],
)
def test_an_interaction_required_keeps_only_a_claims_challenge(claims: Any) -> None:
    """``claims`` of an ``interaction_required`` body was kept as its ``str``, whatever it was:
    a gateway's echo of the request (the caller's assertion) sat on ``.claims`` for the
    application to read and hand to its client (found by this file's fuzzing under the hygiene
    run). Only a JSON object with nothing secret-shaped is kept."""
    from entra_passthrough import InteractionRequired
    from entra_passthrough._errors import error_from_entra

    err = error_from_entra({"error": "interaction_required", "claims": claims}, source="obo")
    assert isinstance(err, InteractionRequired)
    assert err.claims is None
    assert _ECHO_JWT[:20] not in f"{err}{err!r}{vars(err)!r}"
    challenge = '{"access_token":{"capolids":{"essential":true,"values":["c1"]}}}'
    kept = error_from_entra({"error": "interaction_required", "claims": challenge}, source="obo")
    assert isinstance(kept, InteractionRequired)
    assert kept.claims == challenge
