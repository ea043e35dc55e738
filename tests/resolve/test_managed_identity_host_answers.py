"""What ManagedIdentity says about its host's variables and about what a (stand-in) identity
endpoint answered: every error typed, naming what happened, with a fix that fits the host.

The endpoints are real HTTP servers on 127.0.0.1; the requests are MSAL's (azure-identity's on
Cloud Shell), as in production."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from _support.servers import serve_in_thread
from entra_passthrough import (
    ConfigurationError,
    EntraError,
    ManagedIdentity,
    Policy,
    SourceUnavailable,
    Timeouts,
    TokenAcquisitionError,
    TokenChain,
)
from entra_passthrough.testing import EntraEmulator

FAST = Timeouts(connect=2.0, read=5.0, deadline=30.0, retries=2, backoff=0.01, max_backoff=0.02)
SCOPE = ["api://x/.default"]

#: name -> (status, JSON body) a stand-in identity endpoint answers.
ANSWERS: dict[str, tuple[int, Any]] = {
    # Entra-style error body (IMDS's shape, also a sidecar's): MSAL's App Service parser reads
    # only statusCode/message from it ("None, None").
    "oauth_error": (400, {"error": "invalid_request", "error_description": "Identity not found"}),
    # A 404 with a JSON body that is neither a token nor an OAuth error.
    "not_found": (404, {"statusCode": 404, "message": "No managed identity found for it"}),
    # Bodies with none of the fields MSAL's App Service parser reads.
    "empty": (400, {}),
    "detail": (404, {"detail": "no such identity"}),
    "code": (401, {"code": "IdentityNotFound"}),
    "capitalised": (403, {"Message": "forbidden by policy"}),
    "token_only": (400, {"access_token": "opaque-token-value", "expires_on": "9999999999"}),
    # A token whose expiry is not a number (App Service: expires_on; IMDS: expires_in).
    "bad_expires_on": (
        200,
        {"access_token": "opaque-value", "expires_on": "soon", "resource": "api://x"},
    ),
    "bad_expires_in": (
        200,
        {"access_token": "opaque-value", "expires_in": "soon", "resource": "api://x"},
    ),
}


@pytest.fixture(scope="module")
def endpoint() -> Iterator[tuple[str, Counter[str]]]:
    seen: Counter[str] = Counter()

    async def answer(request: Request) -> Response:
        name = request.path_params["name"]
        seen[name] += 1
        status, body = ANSWERS[name]
        return Response(json.dumps(body), status_code=status, media_type="application/json")

    # IMDS's path is fixed (/metadata/identity/oauth2/token under its address); the others are
    # whatever URL the host's variable holds.
    app = Starlette(
        routes=[
            Route("/{name}/metadata/identity/oauth2/token", answer, methods=["GET"]),
            Route("/{name}/msi/token", answer, methods=["GET", "POST"]),
        ]
    )
    with serve_in_thread(app, name="mi-host-answers") as base:
        yield base, seen


@pytest.fixture
def bare_host(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No host's variables: each test sets the ones its host sets (MSAL reads os.environ)."""
    for name in (
        *EntraEmulator.MI_HOST_VARIABLES,
        "AZURE_CLIENT_ID",
        "AZURE_FEDERATED_TOKEN_FILE",
        "AZURE_POD_IDENTITY_AUTHORITY_HOST",
        "IMDS_ENDPOINT",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _refusal(mi: ManagedIdentity) -> TokenAcquisitionError:
    chain = TokenChain([mi], policy=Policy.APP_ONLY)
    try:
        with pytest.raises(TokenAcquisitionError) as info:
            chain.get_token(SCOPE)
    finally:
        chain.close()
    return info.value


def test_identity_header_without_its_endpoint_is_a_configuration_error(
    bare_host: pytest.MonkeyPatch,
) -> None:
    # Built before, it went to IMDS: "connection failed after 3 attempts", a fix about outages.
    with pytest.raises(ConfigurationError) as info:
        ManagedIdentity.from_env({"IDENTITY_HEADER": "header-value-1234"})
    assert "IDENTITY_ENDPOINT" in str(info.value)
    assert info.value.fix
    assert "IDENTITY_ENDPOINT" in info.value.fix
    assert "header-value-1234" not in f"{info.value} {info.value.fix}"  # a secret


def test_an_oauth_error_from_an_app_service_endpoint_says_what_it_said(
    endpoint: tuple[str, Counter[str]], bare_host: pytest.MonkeyPatch
) -> None:
    base, _ = endpoint
    mi = ManagedIdentity(endpoint=f"{base}/oauth_error/msi/token", header="h", timeouts=FAST)
    error = _refusal(mi)
    assert isinstance(error, EntraError), error
    text = str(error)
    assert "None, None" not in text
    assert "HTTP 400" in text
    assert "Identity not found" in text
    assert error.fix


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("empty", "no error message"),
        ("detail", "no such identity"),
        ("code", "IdentityNotFound"),
        ("capitalised", "forbidden by policy"),
        ("token_only", "no error message"),  # the token dropped from an error status
    ],
)
def test_an_app_service_error_body_without_the_usual_fields_names_the_status(
    endpoint: tuple[str, Counter[str]], bare_host: pytest.MonkeyPatch, name: str, said: str
) -> None:
    base, _ = endpoint
    mi = ManagedIdentity(endpoint=f"{base}/{name}/msi/token", header="h", timeouts=FAST)
    error = _refusal(mi)
    text = str(error)
    assert "None, None" not in text
    assert f"HTTP {ANSWERS[name][0]}" in text
    assert said in text
    assert "opaque-token-value" not in text


def test_an_imds_404_without_a_token_names_the_status_and_a_fix(
    endpoint: tuple[str, Counter[str]], bare_host: pytest.MonkeyPatch
) -> None:
    base, seen = endpoint
    bare_host.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", f"{base}/not_found")
    before = seen["not_found"]
    # IMDS's 404 is retried (it answers so while being updated) until the deadline: a short
    # one, so that the test does not wait 30 s for the same answer.
    error = _refusal(ManagedIdentity(timeouts=dataclasses.replace(FAST, deadline=3.0)))
    assert seen["not_found"] > before  # it went to the stand-in IMDS
    assert isinstance(error, SourceUnavailable), error
    assert "HTTP 404" in str(error)
    assert error.failure == "HTTP 404"
    assert error.fix
    assert "169.254.169.254" in error.fix


@pytest.mark.parametrize("host", ["app_service", "imds"])
def test_a_token_with_an_expiry_that_is_no_number_is_a_typed_error(
    endpoint: tuple[str, Counter[str]], bare_host: pytest.MonkeyPatch, host: str
) -> None:
    base, _ = endpoint
    if host == "imds":
        bare_host.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", f"{base}/bad_expires_in")
        mi = ManagedIdentity(timeouts=FAST)
    else:
        bare_host.setenv("IDENTITY_ENDPOINT", f"{base}/bad_expires_on/msi/token")
        bare_host.setenv("IDENTITY_HEADER", "h")
        mi = ManagedIdentity.from_env()
    error = _refusal(mi)
    assert isinstance(error, SourceUnavailable), error
    assert "ValueError" not in str(error)
    assert "expires_on / expires_in" in str(error)
    assert error.failure == "malformed token answer"
    assert error.fix
    assert "proxy" in error.fix
    assert "opaque-value" not in f"{error} {error!r} {error.fix}"


def test_a_cloud_shell_failure_does_not_suggest_selecting_an_identity(
    endpoint: tuple[str, Counter[str]], bare_host: pytest.MonkeyPatch
) -> None:
    base, seen = endpoint
    bare_host.setenv("MSI_ENDPOINT", f"{base}/oauth_error/msi/token")  # Cloud Shell: no secret
    mi = ManagedIdentity(timeouts=FAST)
    assert mi.host == "cloud_shell"
    before = seen["oauth_error"]
    error = _refusal(mi)
    assert seen["oauth_error"] > before
    assert isinstance(error, EntraError), error
    fix = error.fix or ""
    assert fix
    # Cloud Shell refuses a selector (check_host): the fix must not send the user there.
    assert "AZURE_CLIENT_ID" not in fix
    assert "user-assigned" not in fix
