"""IMDS refuses a request that carries ``X-Forwarded-For`` (it came through a proxy): "Must not
contain an X-Forwarded-For header. Any request that doesn't meet both of these requirements are
rejected by the service." (https://learn.microsoft.com/azure/virtual-machines/
instance-metadata-service#security-and-authentication). So does the emulator's IMDS endpoint
(docs/emulator.md), and a token request sent that way through MSAL or this library gets no
token: the library raises a typed error carrying what the endpoint said."""

from __future__ import annotations

import msal
import pytest
import requests

from entra_passthrough import ManagedIdentity, TokenAcquisitionError, TokenRequest
from entra_passthrough.testing import EntraEmulator


def _imds(idp: EntraEmulator, headers: dict[str, str]) -> requests.Response:
    base = idp.mi_env("imds")["AZURE_POD_IDENTITY_AUTHORITY_HOST"]
    return requests.get(
        f"{base}/metadata/identity/oauth2/token",
        params={"api-version": "2018-02-01", "resource": idp.mcp.app_id_uri or ""},
        headers=headers,
        timeout=10,
    )


@pytest.mark.parametrize("forwarded", ["10.0.0.9", "", "203.0.113.7, 10.0.0.9"])
def test_a_request_with_x_forwarded_for_is_refused(idp: EntraEmulator, forwarded: str) -> None:
    refused = _imds(idp, {"Metadata": "true", "X-Forwarded-For": forwarded})
    assert refused.status_code == 400, refused.status_code
    body = refused.json()
    assert "access_token" not in body
    assert body["error"] == "invalid_request"
    assert "X-Forwarded-For" in body["error_description"]
    # The same request without the header is served.
    served = _imds(idp, {"Metadata": "true"})
    assert served.status_code == 200, served.text
    assert "access_token" in served.json()


@pytest.fixture
def imds_host(idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch) -> EntraEmulator:
    for variable in EntraEmulator.MI_HOST_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    for variable, value in idp.mi_env("imds").items():
        monkeypatch.setenv(variable, value)
    return idp


def _proxied_session() -> requests.Session:
    """A session whose requests carry X-Forwarded-For, as a proxy on the way adds it."""
    session = requests.Session()
    session.headers["X-Forwarded-For"] = "10.0.0.9"
    return session


def test_msal_gets_no_token_through_a_proxy(imds_host: EntraEmulator) -> None:
    with _proxied_session() as session:
        answer = msal.ManagedIdentityClient(
            msal.SystemAssignedManagedIdentity(), http_client=session
        ).acquire_token_for_client(resource=imds_host.mcp.app_id_uri or "")
    issued = "access_token" in answer  # a bool: a failure never prints a token
    assert not issued, sorted(answer)


def test_the_library_raises_a_typed_error_naming_the_refusal(imds_host: EntraEmulator) -> None:
    with _proxied_session() as session:
        source = ManagedIdentity(http_client=session)
        try:
            with pytest.raises(TokenAcquisitionError) as info:
                source.get_token(TokenRequest((f"{imds_host.mcp.app_id_uri}/.default",)))
        finally:
            source.close()
    message = str(info.value)
    assert "(imds)" in message, message
    assert "X-Forwarded-For" in message, message
    assert info.value.fix, message
    assert "NO_PROXY must name 169.254.169.254" in info.value.fix  # not only the identity's setup


def test_an_identity_not_found_is_not_blamed_on_a_proxy(imds_host: EntraEmulator) -> None:
    """IMDS's 400 "Identity not found" (no such identity assigned to the VM) is not a proxy's
    doing: its fix names the identity, not NO_PROXY."""
    source = ManagedIdentity(client_id="00000000-0000-0000-0000-00000000abcd")
    try:
        with pytest.raises(TokenAcquisitionError) as info:
            source.get_token(TokenRequest((f"{imds_host.mcp.app_id_uri}/.default",)))
    finally:
        source.close()
    assert "Identity not found" in str(info.value), str(info.value)
    assert info.value.fix
    assert "assigned" in info.value.fix
    assert "NO_PROXY" not in info.value.fix
