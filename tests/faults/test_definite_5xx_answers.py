"""A 5xx whose body names a definite AADSTS answer is an answer, not an outage.

App Service's managed identity endpoint answers a resource that does not exist with HTTP 500 and
AADSTS500011 in its message (MSAL: "Empirically, wrong resource ends up with a vague
statusCode=500"). Retrying cannot change that answer: the request is sent once, the error is
the decoded AADSTS500011 with its fix (the App ID URI, the API missing in the tenant), and the
endpoint is not paused for other requests. A 5xx without a code, with a transient one
(AADSTS90033) or with a code the library does not decode is still retried.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from _support.servers import serve_in_thread
from entra_passthrough import (
    EntraError,
    ManagedIdentity,
    Policy,
    SourceUnavailable,
    Timeouts,
    TokenAcquisitionError,
    TokenChain,
)
from entra_passthrough._http import GuardedHttpClient, Throttle, TransportFailure
from entra_passthrough.testing import EntraEmulator

from .conftest import mcp_scope

FAST = Timeouts(connect=2.0, read=5.0, deadline=30.0, retries=2, backoff=0.01, max_backoff=0.02)

#: Every host whose endpoint the emulator serves without root (Azure Arc needs its token folder).
HOSTS = ("app_service_explicit", "app_service", "app_service_2017", "imds", "cloud_shell")


def msi_requests(idp: EntraEmulator) -> int:
    return int(idp.stats()["endpoints"]["msi"])


@pytest.fixture(params=[*HOSTS, "service_fabric"])
def chain(
    request: pytest.FixtureRequest, idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TokenChain]:
    """A chain on the system-assigned managed identity of one host, selected as the host does
    (its variables), or an App Service endpoint given explicitly."""
    host = str(request.param)
    for name in idp.MI_HOST_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    if host == "app_service_explicit":
        env = idp.mi_env("app_service")
        mi = ManagedIdentity(
            endpoint=env["IDENTITY_ENDPOINT"], header=env["IDENTITY_HEADER"], timeouts=FAST
        )
    else:
        for name, value in idp.mi_env(host).items():
            monkeypatch.setenv(name, value)
        mi = ManagedIdentity(timeouts=FAST)
    made = TokenChain([mi], policy=Policy.APP_ONLY)
    yield made
    made.close()


def test_unknown_resource_is_one_request_and_the_decoded_500011(
    idp: EntraEmulator, chain: TokenChain
) -> None:
    before = msi_requests(idp)
    with pytest.raises(EntraError) as info:
        chain.get_token(["api://no-such-api/.default"])
    err = info.value
    assert err.code is not None
    assert err.code.code == 500011, str(err)
    assert "App ID URI" in str(err.fix)
    assert "retry" not in str(err).split("Fix:")[0].lower()  # not told it was an outage
    assert msi_requests(idp) - before == 1  # an answer: not retried
    # The endpoint is not paused: a resource that exists is served right after.
    assert chain.get_token(mcp_scope(idp)).token
    assert msi_requests(idp) - before == 2


def test_transient_500_is_still_retried(
    idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The injected fault answers HTTP 500 with AADSTS90033 ("a transient error has occurred").
    env = idp.mi_env("app_service")
    for name in idp.MI_HOST_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    made = TokenChain(
        [
            ManagedIdentity(
                endpoint=env["IDENTITY_ENDPOINT"], header=env["IDENTITY_HEADER"], timeouts=FAST
            )
        ],
        policy=Policy.APP_ONLY,
    )
    try:
        idp.inject_fault("msi", status=500, count=100)
        before = msi_requests(idp)
        with pytest.raises(SourceUnavailable) as info:
            made.get_token(mcp_scope(idp))
        assert "HTTP 500" in str(info.value)
        assert msi_requests(idp) - before == 1 + FAST.retries
    finally:
        made.close()


# ---- the guarded HTTP layer, for any endpoint (Entra's token endpoint too) ----------------

BODIES: dict[str, tuple[int, object, dict[str, str]]] = {
    # Entra's shape, a definite answer.
    "entra_invalid_scope": (500, {"error": "invalid_scope", "error_codes": [70011]}, {}),
    # App Service's shape (statusCode + message).
    "app_service_not_found": (
        500,
        {
            "statusCode": 500,
            "message": "AADSTS500011: The resource principal named x was not found in the tenant.",
        },
        {},
    ),
    # Service Fabric's shape.
    "fabric_not_found": (
        502,
        {"error": {"code": "x", "message": "AADSTS500011: The resource principal was not found."}},
        {},
    ),
    "transient_90033": (
        500,
        {"error": "temporarily_unavailable", "error_codes": [90033]},
        {},
    ),
    "undecoded_code": (500, {"error": "server_error", "error_codes": [9999999]}, {}),
    "no_code": (500, {"error": "server_error", "error_description": "try later"}, {}),
    "not_json": (500, "<html>Bad gateway</html>", {}),
    # Retry-After says when to come back: throttling, whatever the body.
    "asks_to_retry_later": (503, {"error_codes": [500011]}, {"Retry-After": "30"}),
}
ANSWERS = {"entra_invalid_scope", "app_service_not_found", "fabric_not_found"}


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, Counter[str]]]:
    seen: Counter[str] = Counter()

    async def answer(request: Request) -> Response:
        name = request.path_params["name"]
        seen[name] += 1
        status, body, headers = BODIES[name]
        text = body if isinstance(body, str) else json.dumps(body)
        return Response(text, status_code=status, headers=headers, media_type="application/json")

    app = Starlette(routes=[Route("/{name}", answer, methods=["GET", "POST"])])
    with serve_in_thread(app, name="definite-5xx") as base:
        yield base, seen


@pytest.mark.parametrize("name", sorted(BODIES))
def test_guarded_client_returns_definite_answers_and_retries_the_rest(
    server: tuple[str, Counter[str]], name: str
) -> None:
    base, seen = server
    client = GuardedHttpClient(None, timeouts=FAST, throttle=Throttle(), sleep=lambda _s: None)
    try:
        before = seen[name]
        if name in ANSWERS:
            response = client.post(f"{base}/{name}", data={"client_id": "c"})
            assert response.status_code == BODIES[name][0]
            assert seen[name] - before == 1
        else:
            with pytest.raises(TransportFailure) as info:
                client.post(f"{base}/{name}", data={"client_id": "c"})
            if name == "asks_to_retry_later":
                assert info.value.kind == "throttled"
                assert seen[name] - before == 1  # 30 s is too long to wait inside a call
            else:
                assert info.value.kind == "status"
                assert seen[name] - before == 1 + FAST.retries
    finally:
        client.close()


# ---- an error status never yields a token ------------------------------------------------

#: A token beside an error: no answer of Entra's or of a managed identity endpoint carries one,
#: but MSAL's App Service client returns ``access_token`` whatever the status.
TOKEN_BESIDE = {
    "access_token": "eyJhbGciOiJub25lIn0.eyJ4IjoxfQ.bm90LWEtdG9rZW4",
    "token_type": "Bearer",
    "resource": "api://x",
}


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (400, "AADSTS500011: The resource principal named api://x was not found."),
        (500, "AADSTS500011: The resource principal named api://x was not found."),
        (501, "AADSTS500011: The resource principal named api://x was not found."),
        (403, "the identity is not assigned to this resource"),
    ],
)
def test_managed_identity_error_status_with_a_token_beside_it_is_never_served(
    status: int, message: str
) -> None:
    hits: Counter[str] = Counter()
    body = {
        "statusCode": status,
        "message": message,
        "expires_on": "9999999999",
        **TOKEN_BESIDE,
    }

    async def answer(_request: Request) -> Response:
        hits["msi"] += 1
        return Response(json.dumps(body), status_code=status, media_type="application/json")

    app = Starlette(routes=[Route("/msi/token", answer, methods=["GET"])])
    with serve_in_thread(app, name="msi-token-beside") as base:
        mi = ManagedIdentity(endpoint=f"{base}/msi/token", header="not-a-secret", timeouts=FAST)
        made = TokenChain([mi], policy=Policy.APP_ONLY)
        try:
            with pytest.raises(TokenAcquisitionError) as info:
                made.get_token(["api://x/.default"])
        finally:
            made.close()
    assert TOKEN_BESIDE["access_token"] not in f"{info.value} {info.value!r}"
    if "AADSTS" in message:
        assert isinstance(info.value, EntraError), info.value
        assert hits["msi"] == 1  # a definite answer: not retried


# ---- an answer that is not the endpoint's JSON ------------------------------------------

PAGE = "<html><body>Welcome to nginx</body></html>"


@pytest.mark.parametrize(
    ("status", "text", "failure", "requests"),
    [
        # An error status with a page: an answer (another server, a proxy), not retried.
        (404, PAGE, "HTTP 404 page", 1),
        # A 401 with a challenge that is not Azure Arc's (which names its key file): a page.
        (401, PAGE, "HTTP 401 page", 1),
        (403, "", "HTTP 403 page", 1),
        (400, "[1, 2]", "HTTP 400 page", 1),
        # A success that is no JSON object: retried as a reset, then "not JSON".
        (200, PAGE, "not JSON", 1 + FAST.retries),
        (200, '["eyJ.e30.x"]', "not JSON", 1 + FAST.retries),
    ],
)
def test_managed_identity_answer_that_is_no_json_object_is_typed_with_a_fix(
    status: int, text: str, failure: str, requests: int
) -> None:
    # MSAL's json.loads raised JSONDecodeError (or AttributeError on a list): an error named
    # after an exception type, with no status and no fix.
    hits: Counter[str] = Counter()

    async def answer(_request: Request) -> Response:
        hits["msi"] += 1
        challenge = {"WWW-Authenticate": 'Bearer realm="gateway"'} if status == 401 else {}
        return Response(text, status_code=status, media_type="text/html", headers=challenge)

    app = Starlette(routes=[Route("/msi/token", answer, methods=["GET"])])
    with serve_in_thread(app, name="msi-page") as base:
        mi = ManagedIdentity(endpoint=f"{base}/msi/token", header="not-a-secret", timeouts=FAST)
        made = TokenChain([mi], policy=Policy.APP_ONLY)
        try:
            with pytest.raises(SourceUnavailable) as info:
                made.get_token(["api://x/.default"])
        finally:
            made.close()
    error = info.value
    assert error.failure == failure, str(error)
    assert "IDENTITY_ENDPOINT" in str(error.fix)
    assert hits["msi"] == requests
    assert "eyJ.e30.x" not in f"{error} {error!r}"
