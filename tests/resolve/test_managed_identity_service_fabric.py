"""``ManagedIdentity`` on Service Fabric: the request goes through the guarded HTTP layer on
MSAL's certificate-pinning session, against the emulator's Service Fabric endpoint (HTTPS,
``Secret`` header, api-version 2019-07-01-preview, pinned by ``IDENTITY_SERVER_THUMBPRINT``)."""

from __future__ import annotations

from collections.abc import Iterator

import jwt
import pytest
import requests

from entra_passthrough import (
    ConfigurationError,
    ManagedIdentity,
    Policy,
    SourceUnavailable,
    Timeouts,
    TokenChain,
)
from entra_passthrough._http import SHARED_THROTTLE, GuardedHttpClient
from entra_passthrough.testing import EntraEmulator

from .conftest import mcp_scope

#: No retry and no negative entry: a refused endpoint must not close it for the next test.
ONCE = Timeouts(connect=2.0, read=2.0, deadline=5.0, retries=0, negative_ttl=0.0)


def msi_requests(idp: EntraEmulator) -> int:
    return int(idp.stats()["endpoints"].get("msi", 0))


@pytest.fixture
def fabric(idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    for name in idp.MI_HOST_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    env = idp.mi_env("service_fabric")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    SHARED_THROTTLE.clear()
    yield env
    SHARED_THROTTLE.clear()


def test_service_fabric_token_through_the_guarded_pinned_session(
    idp: EntraEmulator, fabric: dict[str, str]
) -> None:
    mi = ManagedIdentity(timeouts=ONCE)
    chain = TokenChain([mi], policy=Policy.APP_ONLY)
    try:
        assert "host=service_fabric" in repr(mi)
        before = msi_requests(idp)
        result = chain.get_token(mcp_scope(idp))
        claims = jwt.decode(result.token, options={"verify_signature": False})
        assert claims["azp"] == idp.system_identity.client_id  # the cluster's identity
        assert result.expires_on > 0
        assert msi_requests(idp) - before == 1
        guarded = mi._fabric[1] if mi._fabric is not None else None
        assert isinstance(guarded, GuardedHttpClient)
        assert isinstance(guarded.inner, requests.Session)
        # the session that sent it is MSAL's pinning one (no CA trusts the emulator here)
        assert type(guarded.inner.get_adapter(fabric["IDENTITY_ENDPOINT"])).__name__ == (
            "_ServiceFabricHTTPAdapter"
        )
    finally:
        chain.close()
    assert mi._fabric is None  # closed with the source


def test_a_wrong_thumbprint_never_sends_the_secret(
    idp: EntraEmulator, fabric: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another certificate than the pinned one: the connection is refused before any request
    (the emulator sees none, so the ``Secret`` header never left); a typed error."""
    monkeypatch.setenv("IDENTITY_SERVER_THUMBPRINT", "ab" * 20)
    mi = ManagedIdentity(timeouts=ONCE)
    try:
        before = msi_requests(idp)
        with pytest.raises(SourceUnavailable) as info:
            TokenChain([mi], policy=Policy.APP_ONLY).get_token(mcp_scope(idp))
        assert "service_fabric" in str(info.value)
        assert fabric["IDENTITY_HEADER"] not in str(info.value)
        assert msi_requests(idp) == before
    finally:
        mi.close()


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("IDENTITY_SERVER_THUMBPRINT", "not-a-thumbprint", "IDENTITY_SERVER_THUMBPRINT"),
        ("IDENTITY_ENDPOINT", "http://127.0.0.1:9/servicefabric/token", "https://"),
    ],
)
def test_bad_service_fabric_variables_are_configuration_errors(
    idp: EntraEmulator,
    fabric: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    named: str,
) -> None:
    monkeypatch.setenv(variable, value)
    mi = ManagedIdentity(timeouts=ONCE)
    try:
        before = msi_requests(idp)
        with pytest.raises(ConfigurationError) as info:
            mi.token_for_resource(idp.mcp.app_id_uri or "")
        assert named in str(info.value)
        assert info.value.fix
        assert msi_requests(idp) == before
    finally:
        mi.close()


def test_service_fabric_needs_a_requests_session(
    idp: EntraEmulator, fabric: dict[str, str]
) -> None:
    class NotASession:
        def get(self, *args: object, **kwargs: object) -> None:
            raise AssertionError("never called")

        def close(self) -> None:
            return None

    mi = ManagedIdentity(http_client=NotASession(), timeouts=ONCE)
    try:
        with pytest.raises(ConfigurationError, match=r"requests\.Session"):
            mi.token_for_resource(idp.mcp.app_id_uri or "")
    finally:
        mi.close()


def test_a_given_session_is_derived_from_and_left_open(
    idp: EntraEmulator, fabric: dict[str, str]
) -> None:
    """An application's ``requests.Session`` is the template (proxies, pool size): the pinned
    session is derived from it, and closing the source does not close the application's."""
    closed: list[bool] = []

    class AppSession(requests.Session):
        def close(self) -> None:
            closed.append(True)
            super().close()

    given = AppSession()
    given.headers["X-App"] = "kept"
    mi = ManagedIdentity(http_client=given, timeouts=ONCE)
    try:
        assert mi.token_for_resource(idp.mcp.app_id_uri or "")
        assert mi._fabric is not None
        pinned = mi._fabric[1].inner
        assert pinned is not given
        assert pinned.headers["X-App"] == "kept"
    finally:
        mi.close()
    assert closed == []  # the application's session is the application's to close
    given.close()
