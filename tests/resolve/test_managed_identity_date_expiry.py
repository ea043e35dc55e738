"""A managed identity endpoint that answers ``expires_on`` as a UTC date string.

App Service's 2017-09-01 API (``MSI_ENDPOINT`` + ``MSI_SECRET``) sends ``expires_on`` as
"1/16/2027 5:24:12 AM +00:00" (Windows) or "06/20/2027 02:57:58 +00:00" (Linux), as
azure-identity documents and parses (``azure/identity/_credentials/azure_ml.py``,
``_parse_expires_on``). MSAL takes ``int(expires_on)``: before, every request of such a host
failed with ``SourceUnavailable`` saying no platform sends that. A real HTTP endpoint on
127.0.0.1, MSAL's requests, the chain's cache.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from _support.servers import serve_in_thread
from entra_passthrough import (
    ManagedIdentity,
    Policy,
    SourceUnavailable,
    TokenAcquisitionError,
    TokenChain,
)
from entra_passthrough.testing import EntraEmulator

SCOPE = ["https://vault.azure.net/.default"]
LIFETIME = 3600


def _windows(moment: dt.datetime) -> str:
    hour = int(moment.strftime("%I"))
    return f"{moment.month}/{moment.day}/{moment.year} {hour}:{moment:%M:%S %p} +00:00"


def _linux(moment: dt.datetime) -> str:
    return f"{moment:%m/%d/%Y %H:%M:%S} +00:00"


SHAPES = {
    "windows": _windows,
    "linux": _linux,
    "garbled": lambda moment: "tomorrow +00:00",
    "past-windows": _windows,
    "past-epoch": lambda moment: str(int(moment.timestamp())),
    "boolean": lambda moment: True,
}


@pytest.fixture(scope="module")
def endpoint() -> Iterator[tuple[str, dict[str, Any]]]:
    state: dict[str, Any] = {"gets": 0, "expires_at": 0}

    async def answer(request: Request) -> Response:
        state["gets"] += 1
        lifetime = -LIFETIME if request.path_params["shape"].startswith("past-") else LIFETIME
        expires_at = int(time.time()) + lifetime
        state["expires_at"] = expires_at
        moment = dt.datetime.fromtimestamp(expires_at, dt.UTC)
        body = {
            "access_token": f"opaque-mi-token-{state['gets']}",
            "expires_on": SHAPES[request.path_params["shape"]](moment),
            "resource": request.query_params.get("resource"),
            "token_type": "Bearer",
        }
        if request.path_params["shape"] == "boolean":  # IMDS's and Arc's field too
            body["expires_in"] = True
        return Response(json.dumps(body), media_type="application/json")

    app = Starlette(routes=[Route("/{shape}/msi/token", answer, methods=["GET"])])
    with serve_in_thread(app, name="mi-date-expiry") as base:
        yield base, state


@pytest.fixture
def bare_host(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (*EntraEmulator.MI_HOST_VARIABLES, "AZURE_CLIENT_ID", "IMDS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _set_host(monkeypatch: pytest.MonkeyPatch, host: str, url: str) -> None:
    if host == "machine_learning":  # App Service's 2017-09-01 API, as MSAL sends it
        monkeypatch.setenv("MSI_ENDPOINT", url)
        monkeypatch.setenv("MSI_SECRET", "secret")
    else:
        monkeypatch.setenv("IDENTITY_ENDPOINT", url)
        monkeypatch.setenv("IDENTITY_HEADER", "header")


@pytest.mark.parametrize("host", ["machine_learning", "app_service"])
@pytest.mark.parametrize("shape", ["windows", "linux"])
def test_a_date_string_expiry_is_read_as_the_date(
    endpoint: tuple[str, dict[str, Any]], bare_host: pytest.MonkeyPatch, host: str, shape: str
) -> None:
    base, state = endpoint
    _set_host(bare_host, host, f"{base}/{shape}/msi/token")
    chain = TokenChain([ManagedIdentity.from_env()], policy=Policy.APP_ONLY)
    try:
        gets = state["gets"]
        first = chain.get_token(SCOPE)
        assert first.token.startswith("opaque-mi-token-")
        # The date's instant (whole seconds), less at most the wire time and rounding.
        assert state["expires_at"] - 5 <= first.expires_on <= state["expires_at"]
        for _ in range(20):  # cached: an hour's token is not fetched again
            assert chain.get_token(SCOPE).token == first.token
        assert state["gets"] - gets == 1
    finally:
        chain.close()


def test_an_expiry_neither_a_number_nor_that_date_is_refused_saying_so(
    endpoint: tuple[str, dict[str, Any]], bare_host: pytest.MonkeyPatch
) -> None:
    base, _ = endpoint
    _set_host(bare_host, "machine_learning", f"{base}/garbled/msi/token")
    chain = TokenChain([ManagedIdentity.from_env()], policy=Policy.APP_ONLY)
    try:
        with pytest.raises(SourceUnavailable) as info:
            chain.get_token(SCOPE)
    finally:
        chain.close()
    error = info.value
    assert error.failure == "malformed token answer"
    assert "2017-09-01" in str(error)
    assert "not an answer the platform" not in str(error)
    assert "opaque-mi-token" not in f"{error} {error!r} {error.fix}"


@pytest.mark.parametrize("shape", ["past-windows", "past-epoch"])
def test_an_opaque_token_that_expired_already_is_never_served(
    endpoint: tuple[str, dict[str, Any]], bare_host: pytest.MonkeyPatch, shape: str
) -> None:
    """``expires_on`` an hour in the past (MSAL's negative ``expires_in``) on a token that is
    not a JWT (no ``exp`` to bound it): refused as expired, not served for an unknown lifetime
    of 300 s."""
    base, _ = endpoint
    _set_host(bare_host, "machine_learning", f"{base}/{shape}/msi/token")
    chain = TokenChain([ManagedIdentity.from_env()], policy=Policy.APP_ONLY)
    try:
        with pytest.raises(TokenAcquisitionError) as info:
            chain.get_token(SCOPE)
    finally:
        chain.close()
    assert "already expired" in str(info.value)
    assert "opaque-mi-token" not in f"{info.value} {info.value!r}"


@pytest.mark.parametrize("host", ["machine_learning", "app_service"])
def test_a_boolean_expiry_is_a_malformed_answer_not_one_second_or_1970(
    endpoint: tuple[str, dict[str, Any]], bare_host: pytest.MonkeyPatch, host: str
) -> None:
    """``"expires_on": true`` / ``"expires_in": true`` (a broken endpoint or proxy): MSAL's
    ``int()`` reads 1, a token that expired in 1970 ("check this host's clock") or one good for
    a second, asked for again on every call. Refused as the malformed answer it is, once."""
    base, state = endpoint
    _set_host(bare_host, host, f"{base}/boolean/msi/token")
    chain = TokenChain([ManagedIdentity.from_env()], policy=Policy.APP_ONLY)
    try:
        gets = state["gets"]
        with pytest.raises(SourceUnavailable) as info:
            chain.get_token(SCOPE)
    finally:
        chain.close()
    error = info.value
    assert error.failure == "malformed token answer"
    assert "neither a number nor" in str(error)
    assert "clock" not in str(error)
    assert state["gets"] - gets == 1
    assert "opaque-mi-token" not in f"{error} {error!r} {error.fix}"
