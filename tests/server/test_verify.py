"""JwtVerifier unit tests with tokens signed by keys the test generates."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from _support.servers import serve_in_thread
from _support.tokens import API, API_URI, CLIENT, OTHER_TENANT, TENANT, USER_OID, Issuer, unsigned
from entra_passthrough import (
    ConfigurationError,
    InsufficientScope,
    JwtVerifier,
    TokenVerificationError,
    VerifiedToken,
)
from entra_passthrough._errors import SigningKeysUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def issuer() -> Issuer:
    return Issuer()


def make(issuer: Issuer, **options: Any) -> JwtVerifier:
    options.setdefault("audiences", [API, API_URI])
    options.setdefault("tenants", [TENANT])
    return JwtVerifier(
        http_client=issuer.async_client(), sync_http_client=issuer.sync_client(), **options
    )


async def test_v2_token_verifies(issuer: Issuer) -> None:
    vt = await make(issuer).verify_async(issuer.token())
    assert isinstance(vt, VerifiedToken)
    assert (vt.oid, vt.tid, vt.client_id, vt.version) == (USER_OID, TENANT, CLIENT, "2.0")
    assert vt.upn == "alice@contoso.com"
    assert vt.scopes == ("access_as_user",)
    assert vt.audience == API
    assert not vt.app_only
    assert vt.claims["oid"] == USER_OID


def test_v1_token_verifies_sync(issuer: Issuer) -> None:
    vt = make(issuer).verify(issuer.token(version="1.0"))
    assert (vt.version, vt.client_id, vt.audience) == ("1.0", CLIENT, API_URI)
    assert vt.issuer == f"https://sts.windows.net/{TENANT}/"
    assert vt.upn == "alice@contoso.com"


def test_repr_never_shows_the_token(issuer: Issuer) -> None:
    token = issuer.token()
    vt = make(issuer).verify(token)
    assert token not in repr(vt)
    assert vt.fingerprint.startswith("sha256:")


@pytest.mark.parametrize(
    ("claims", "needle"),
    [
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"nbf": int(time.time()) + 3600}, "not valid yet"),
        ({"iat": int(time.time()) + 3600}, "not valid yet"),
        ({"aud": "api://someone-else"}, "audience"),
        ({"aud": "https://ai.azure.com"}, "another resource"),
        ({"iss": f"https://login.microsoftonline.com/{OTHER_TENANT}/v2.0"}, "issuer"),
        ({"iss": f"https://sts.windows.net/{TENANT}/"}, "issuer"),  # v1 issuer on a v2 token
        ({"tenant": OTHER_TENANT}, "allow-list"),
        ({"tid": None}, "tid"),
        ({"azp": None}, "azp"),
        ({"oid": None}, "oid"),
        ({"ver": "3.0"}, "version"),
        ({"ver": None}, "version"),
        ({"exp": None}, "exp"),
        ({"scp": 5}, "scp"),
        ({"roles": "admin"}, "roles"),
    ],
)
async def test_rejected_claims(issuer: Issuer, claims: dict[str, Any], needle: str) -> None:
    token = issuer.token(**claims)
    verifier = make(issuer)
    with pytest.raises(TokenVerificationError) as info:
        await verifier.verify_async(token)
    assert not isinstance(info.value, InsufficientScope)
    assert needle in str(info.value)
    assert token not in str(info.value)
    with pytest.raises(TokenVerificationError):
        verifier.verify(token)


async def test_wrong_tenant_costs_no_key_fetch(issuer: Issuer) -> None:
    verifier = make(issuer)
    with pytest.raises(TokenVerificationError, match="allow-list"):
        await verifier.verify_async(issuer.token(tenant=OTHER_TENANT))
    assert issuer.jwks_requests == 0


async def test_v1_claims_on_v1_only(issuer: Issuer) -> None:
    # a v1 token carries appid, not azp, and the sts.windows.net issuer
    with pytest.raises(TokenVerificationError, match="appid"):
        await make(issuer).verify_async(issuer.token(version="1.0", appid=None, azp=CLIENT))


async def test_leeway_accepts_small_skew(issuer: Issuer) -> None:
    token = issuer.token(exp=int(time.time()) - 30)
    assert (await make(issuer, leeway=60).verify_async(token)).oid == USER_OID
    with pytest.raises(TokenVerificationError, match="expired"):
        await make(issuer, leeway=0).verify_async(token)


async def test_signature_from_another_key_is_rejected(issuer: Issuer) -> None:
    other = Issuer()
    kid = issuer.keys[0][0]
    forged = other.token(headers={"kid": kid})  # right kid, wrong key
    with pytest.raises(TokenVerificationError, match="signature"):
        await make(issuer).verify_async(forged)


async def test_alg_none_is_rejected(issuer: Issuer) -> None:
    token = unsigned({"alg": "none", "typ": "JWT", "kid": issuer.keys[0][0]}, issuer.claims())
    with pytest.raises(TokenVerificationError, match="algorithm"):
        await make(issuer).verify_async(token)
    assert issuer.jwks_requests == 0


async def test_hs256_with_public_key_as_secret_is_rejected(issuer: Issuer) -> None:
    kid, key = issuer.keys[0]
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    import hashlib
    import hmac

    # PyJWT itself refuses to HMAC-sign with a PEM key, so sign by hand.
    header_payload = unsigned({"alg": "HS256", "kid": kid}, issuer.claims()).rsplit(".", 1)[0]
    sig = hmac.new(pem, header_payload.encode(), hashlib.sha256).digest()
    token = header_payload + "." + jwt.utils.base64url_encode(sig).decode()
    with pytest.raises(TokenVerificationError, match="algorithm"):
        await make(issuer).verify_async(token)
    # and the RS256 check itself refuses it even if the header lied about alg
    lying = unsigned({"alg": "RS256", "kid": kid}, issuer.claims(), sig)
    with pytest.raises(TokenVerificationError, match="signature"):
        await make(issuer).verify_async(lying)


async def test_missing_kid_is_rejected(issuer: Issuer) -> None:
    _, key = issuer.keys[0]
    token = jwt.encode(issuer.claims(), key, algorithm="RS256")
    with pytest.raises(TokenVerificationError, match="kid"):
        await make(issuer).verify_async(token)


async def test_delegated_needs_all_required_scopes(issuer: Issuer) -> None:
    verifier = make(issuer, required_scopes=["access_as_user", "notes.read"])
    with pytest.raises(InsufficientScope, match=r"notes\.read") as info:
        await verifier.verify_async(issuer.token())
    assert info.value.status_code == 403
    assert info.value.error == "insufficient_scope"
    assert info.value.required == ("access_as_user", "notes.read")
    vt = await verifier.verify_async(issuer.token(scp="notes.read access_as_user"))
    assert set(vt.scopes) == {"access_as_user", "notes.read"}


async def test_missing_scp_is_app_only_and_refused_by_default(issuer: Issuer) -> None:
    token = issuer.token(scp=None, roles=["Notes.Read.All"], idtyp="app")
    with pytest.raises(InsufficientScope, match="app-only"):
        await make(issuer, required_scopes=["access_as_user"]).verify_async(token)


async def test_app_only_with_roles_when_allowed(issuer: Issuer) -> None:
    verifier = make(
        issuer,
        allow_app_only=True,
        required_roles=["Notes.Read.All"],
        required_scopes=["access_as_user"],
    )
    vt = await verifier.verify_async(issuer.token(scp=None, roles=["Notes.Read.All"]))
    assert vt.app_only
    assert vt.roles == ("Notes.Read.All",)
    with pytest.raises(InsufficientScope, match=r"Notes\.Read\.All"):
        await verifier.verify_async(issuer.token(scp=None, roles=["Other"]))


def test_allow_app_only_needs_roles() -> None:
    with pytest.raises(ConfigurationError, match="required_roles"):
        JwtVerifier(audiences=[API], tenants=[TENANT], allow_app_only=True)


def test_tenant_allow_list_is_required() -> None:
    with pytest.raises(ConfigurationError, match="tenant"):
        JwtVerifier(audiences=[API])
    with pytest.raises(ConfigurationError):
        JwtVerifier(audiences=[API], tenants=TENANT)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="audiences"):
        JwtVerifier(audiences=[], tenants=[TENANT])


async def test_any_tenant_checks_issuer_against_the_token_tenant(issuer: Issuer) -> None:
    verifier = make(issuer, tenants=None, any_tenant=True)
    vt = await verifier.verify_async(issuer.token(tenant=OTHER_TENANT))
    assert vt.tid == OTHER_TENANT
    forged_iss = issuer.token(
        tenant=OTHER_TENANT, iss=f"https://login.microsoftonline.com/{TENANT}/v2.0"
    )
    with pytest.raises(TokenVerificationError, match="issuer"):
        await verifier.verify_async(forged_iss)


async def test_explicit_issuers_override(issuer: Issuer) -> None:
    custom = f"https://issuer.example/{TENANT}/v2.0"
    verifier = make(issuer, issuers=[custom])
    assert (await verifier.verify_async(issuer.token(iss=custom))).issuer == custom
    with pytest.raises(TokenVerificationError, match="issuer"):
        await verifier.verify_async(issuer.token())
    # an explicit v2 issuer on a v1 token is a ver mismatch
    with pytest.raises(TokenVerificationError, match="issuer"):
        await verifier.verify_async(issuer.token(version="1.0", iss=custom))


async def test_unknown_kid_refetches_once_then_rate_limits(issuer: Issuer) -> None:
    clock = Clock()
    verifier = make(issuer, clock=clock, min_refetch_interval=60)
    await verifier.verify_async(issuer.token())
    assert issuer.jwks_requests == 1
    issuer.rotate()  # new key first; the old one still published
    vt = await verifier.verify_async(issuer.token())
    assert vt.oid == USER_OID
    assert issuer.jwks_requests == 2
    # a forged kid right after: no fetch (rate limited), typed error
    forged = Issuer().token()
    with pytest.raises(TokenVerificationError, match="does not publish"):
        await verifier.verify_async(forged)
    assert issuer.jwks_requests == 2
    clock.now += 61
    with pytest.raises(TokenVerificationError, match="does not publish"):
        await verifier.verify_async(forged)
    assert issuer.jwks_requests == 3
    # old key still accepted while published
    assert (await verifier.verify_async(issuer.token(key_index=1))).oid == USER_OID


async def test_retired_key_stops_verifying_after_refresh(issuer: Issuer) -> None:
    clock = Clock()
    verifier = make(issuer, clock=clock, jwks_ttl=100)
    old = issuer.token()
    await verifier.verify_async(old)
    issuer.rotate(retire_old=True)
    clock.now += 101  # past the TTL: served from the cache once, refreshed behind it
    await verifier.verify_async(old)
    for _ in range(200):  # bounded: the background refresh is one in-process round trip
        if issuer.jwks_requests >= 2:
            break
        await asyncio.sleep(0.005)
    await asyncio.sleep(0)
    with pytest.raises(TokenVerificationError, match="does not publish"):
        await verifier.verify_async(old)


async def test_concurrent_unknown_kid_single_flight(issuer: Issuer) -> None:
    verifier = make(issuer)
    await verifier.verify_async(issuer.token())
    issuer.rotate()
    tokens = [issuer.token() for _ in range(100)]
    results = await asyncio.gather(*(verifier.verify_async(t) for t in tokens))
    assert all(r.oid == USER_OID for r in results)
    assert issuer.jwks_requests == 2


async def test_concurrent_cold_cache_single_flight(issuer: Issuer) -> None:
    verifier = make(issuer)
    results = await asyncio.gather(*(verifier.verify_async(issuer.token()) for _ in range(50)))
    assert len(results) == 50
    assert issuer.jwks_requests == 1
    assert verifier.jwks_fetches == 1


def test_sync_unknown_kid_refetch(issuer: Issuer) -> None:
    verifier = make(issuer)
    verifier.verify(issuer.token())
    issuer.rotate()
    assert verifier.verify(issuer.token()).oid == USER_OID
    assert issuer.jwks_requests == 2


async def test_jwks_unreachable_fails_closed() -> None:
    import httpx2

    def down(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(503)

    verifier = JwtVerifier(
        audiences=[API],
        tenants=[TENANT],
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(down)),
    )
    with pytest.raises(SigningKeysUnavailable, match="signing keys could not be fetched") as e:
        await verifier.verify_async(Issuer().token())
    assert e.value.status_code == 503
    assert isinstance(e.value, TokenVerificationError)  # still a refusal everywhere


async def test_a_failing_jwks_endpoint_is_not_asked_again_per_request(issuer: Issuer) -> None:
    """No keys held and the endpoint failing: the requests after a failed fetch are refused at
    once (503), with no fetch of their own, until the retry time (5 s); then one fetch."""
    clock = Clock()
    verifier = make(issuer, clock=clock)
    token = issuer.token()
    keys, issuer.keys = issuer.keys, []  # an empty set: the fetch fails
    for _ in range(10):
        with pytest.raises(SigningKeysUnavailable):
            await verifier.verify_async(token)
        with pytest.raises(SigningKeysUnavailable):
            verifier.verify(token)
    assert issuer.jwks_requests == 1
    issuer.keys = keys
    clock.now += 5.1
    assert (await verifier.verify_async(token)).oid == USER_OID
    assert issuer.jwks_requests == 2


def test_sync_threads_share_one_failed_fetch() -> None:
    """Threads that queued behind a fetch that failed do not fetch again one after another."""
    import threading

    import httpx

    fetched = 0
    gate = threading.Lock()

    def down(request: httpx.Request) -> httpx.Response:
        nonlocal fetched
        with gate:
            fetched += 1
        time.sleep(0.2)  # every thread is waiting on the lock by then
        return httpx.Response(503)

    verifier = JwtVerifier(
        audiences=[API],
        tenants=[TENANT],
        sync_http_client=httpx.Client(transport=httpx.MockTransport(down)),
    )
    token = Issuer().token()
    failures: list[BaseException] = []

    def verify() -> None:
        try:
            verifier.verify(token)
        except SigningKeysUnavailable as exc:
            failures.append(exc)

    threads = [threading.Thread(target=verify) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(failures) == 6
    assert fetched == 1


async def test_stale_keys_survive_a_failed_refresh(issuer: Issuer) -> None:
    clock = Clock()
    verifier = make(issuer, clock=clock, jwks_ttl=100)
    token = issuer.token()
    await verifier.verify_async(token)
    issuer.keys = []  # the endpoint now serves an empty set: refresh fails
    clock.now += 101
    assert (await verifier.verify_async(token)).oid == USER_OID


def test_http_jwks_uri_refused_off_loopback() -> None:
    with pytest.raises(ConfigurationError, match="https"):
        JwtVerifier(audiences=[API], tenants=[TENANT], jwks_uri="http://example.com/keys")


def test_sync_threads_cold_cache_one_fetch(issuer: Issuer) -> None:
    from concurrent.futures import ThreadPoolExecutor

    verifier = make(issuer)
    tokens = [issuer.token() for _ in range(32)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(verifier.verify, tokens))
    assert {r.oid for r in results} == {USER_OID}
    assert issuer.jwks_requests == 1


async def test_cancelled_waiter_does_not_break_the_fetch(issuer: Issuer) -> None:
    verifier = make(issuer)
    first = asyncio.ensure_future(verifier.verify_async(issuer.token()))
    second = asyncio.ensure_future(verifier.verify_async(issuer.token()))
    await asyncio.sleep(0)  # let both start waiting on the single fetch
    first.cancel()
    assert (await second).oid == USER_OID
    with pytest.raises(asyncio.CancelledError):
        await first
    assert issuer.jwks_requests == 1


def test_sync_threads_unknown_kid_one_refetch(issuer: Issuer) -> None:
    from concurrent.futures import ThreadPoolExecutor

    verifier = make(issuer)
    verifier.verify(issuer.token())
    issuer.rotate()
    tokens = [issuer.token() for _ in range(32)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(verifier.verify, tokens))
    assert {r.oid for r in results} == {USER_OID}
    assert issuer.jwks_requests == 2


async def test_no_token_in_logs_or_errors(issuer: Issuer, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    import httpx2

    caplog.set_level(logging.DEBUG)
    tokens = [
        issuer.token(exp=int(time.time()) - 3600),
        issuer.token(aud="https://ai.azure.com"),
        Issuer().token(),  # unknown kid
        issuer.token(scp="x"),
    ]
    verifier = make(issuer, required_scopes=["access_as_user"])
    messages = []
    for token in tokens:
        with pytest.raises(TokenVerificationError) as info:
            await verifier.verify_async(token)
        messages.append(str(info.value))
        messages.append(repr(info.value))

    def down(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(500)

    broken = JwtVerifier(
        audiences=[API],
        tenants=[TENANT],
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(down)),
    )
    with pytest.raises(TokenVerificationError) as info:
        await broken.verify_async(tokens[0])
    messages.append(str(info.value))
    text = "\n".join(messages) + caplog.text
    assert "could not be fetched" in caplog.text or "could not be fetched" in text
    for token in tokens:
        assert token not in text
        for segment in token.split("."):
            assert segment not in text


def test_issuer_templates_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="tid"):
        JwtVerifier(audiences=[API], tenants=[TENANT], v2_issuer="https://x/v2.0")
    with pytest.raises(ConfigurationError, match="tid"):
        JwtVerifier(audiences=[API], tenants=[TENANT], v1_issuer="https://x/{tid}/{other}/")


async def test_upper_case_tenant_allow_list(issuer: Issuer) -> None:
    tenant = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
    verifier = make(issuer, tenants=[tenant.upper()])
    vt = await verifier.verify_async(issuer.token(tenant=tenant))
    assert vt.tid == tenant


class _HeldJwks:
    """A real JWKS endpoint (uvicorn, loopback) whose answers can be held: a refresh that
    hangs, as a slow or stalled identity provider does."""

    def __init__(self, issuer: Issuer) -> None:
        self.issuer = issuer
        self.requests = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.requests += 1
        self.entered.set()
        while not self.release.is_set():
            await asyncio.sleep(0.01)
        body = json.dumps(self.issuer.jwks()).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
def held_jwks(issuer: Issuer) -> Iterator[tuple[str, _HeldJwks]]:
    app = _HeldJwks(issuer)
    with serve_in_thread(app, lifespan="off") as url:
        yield f"{url}/keys", app
    app.release.set()


async def test_a_ttl_refresh_never_holds_a_request_whose_key_is_cached(
    issuer: Issuer, held_jwks: tuple[str, _HeldJwks]
) -> None:
    url, endpoint = held_jwks
    clock = Clock()
    verifier = make_real(url, clock=clock, jwks_ttl=100)
    token = issuer.token()
    assert (await verifier.verify_async(token)).oid == USER_OID
    endpoint.release.clear()
    endpoint.entered.clear()
    clock.now += 101
    # The refresh hangs at the endpoint; requests are answered from the cached keys meanwhile,
    # and the hanging refresh is the only one.
    for _ in range(5):
        assert (await verifier.verify_async(token)).oid == USER_OID
    assert await asyncio.to_thread(endpoint.entered.wait, 10)
    for _ in range(5):
        assert (await verifier.verify_async(token)).oid == USER_OID
    assert endpoint.requests == 2
    # Released, the one refresh completes (it did not time out for a request that waited on
    # it): the keys it brings are in place, and a key they retire is refused.
    issuer.rotate(retire_old=True)
    endpoint.release.set()
    for _ in range(200):  # bounded: the background refresh finishes once released
        try:
            await verifier.verify_async(token)
        except TokenVerificationError:
            break
        await asyncio.sleep(0.01)
    with pytest.raises(TokenVerificationError, match="does not publish"):
        await verifier.verify_async(token)
    assert (await verifier.verify_async(issuer.token())).oid == USER_OID


def test_a_sync_ttl_refresh_never_holds_a_request_whose_key_is_cached(
    issuer: Issuer, held_jwks: tuple[str, _HeldJwks]
) -> None:
    url, endpoint = held_jwks
    clock = Clock()
    verifier = make_real(url, clock=clock, jwks_ttl=100)
    token = issuer.token()
    assert verifier.verify(token).oid == USER_OID
    endpoint.release.clear()
    endpoint.entered.clear()
    clock.now += 101
    for _ in range(5):
        assert verifier.verify(token).oid == USER_OID
    assert endpoint.entered.wait(10)
    for _ in range(5):
        assert verifier.verify(token).oid == USER_OID
    assert endpoint.requests == 2
    issuer.rotate(retire_old=True)
    endpoint.release.set()
    for _ in range(200):  # bounded: the background refresh finishes once released
        try:
            verifier.verify(token)
        except TokenVerificationError:
            break
        time.sleep(0.01)
    with pytest.raises(TokenVerificationError, match="does not publish"):
        verifier.verify(token)  # the refreshed keys are in place: the retired key is gone


def make_real(jwks_uri: str, **options: Any) -> JwtVerifier:
    options.setdefault("audiences", [API, API_URI])
    options.setdefault("tenants", [TENANT])
    return JwtVerifier(jwks_uri=jwks_uri, **options)
