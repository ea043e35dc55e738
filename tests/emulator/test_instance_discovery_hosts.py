"""MSAL's instance discovery refuses an authority on a host the emulator does not serve.

Entra answers ``/common/discovery/instance?authorization_endpoint=<unknown host>`` with HTTP 400
``invalid_instance``, AADSTS50049 "Unknown or invalid instance."
(https://learn.microsoft.com/entra/msal/dotnet/advanced/custom-authority-aliases, "Instance
validation"); that answer is what makes MSAL's ``validate_authority`` refuse a mistyped or
foreign authority. The emulator approved every host and pointed MSAL back at itself, so such an
authority got a token. It serves only itself: its own host (``127.0.0.1``, or ``localhost``,
which its certificate names) on its port, or with no port (MSAL drops the authority's port when
it asks).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import httpx
import msal
import pytest

from entra_passthrough.testing import EntraEmulator

from .emu_helpers import no_http_cache


def _msal(idp: EntraEmulator, authority: str) -> msal.ConfidentialClientApplication:
    """MSAL with authority validation on, asking the emulator's instance discovery."""
    return msal.ConfidentialClientApplication(
        idp.agent.client_id,
        client_credential=idp.agent.secret,
        authority=authority,
        validate_authority=True,
        instance_discovery=f"{idp.url}/common/discovery/instance",
        http_client=idp.msal_http_client(),
        http_cache=no_http_cache(),
    )


def _ask(idp: EntraEmulator, endpoint: str | None) -> httpx.Response:
    params = {"api-version": "1.1"}
    if endpoint is not None:
        params["authorization_endpoint"] = endpoint
    with httpx.Client(verify=idp.ssl_context()) as http:
        return http.get(
            f"{idp.url}/common/discovery/instance",
            params=params,
            headers={"client-request-id": "0f6c4a3e-5b1d-4c8e-9a7f-2d3e4f5a6b7c"},
        )


@pytest.mark.parametrize("host", ["login.typo-example.invalid", "evil.example"])
def test_msal_refuses_an_authority_on_a_host_the_emulator_does_not_serve(
    idp: EntraEmulator, host: str
) -> None:
    with pytest.raises(ValueError, match="invalid_instance"):
        _msal(idp, f"https://{host}/{idp.tenant_id}")


@pytest.mark.parametrize("host", ["own", "localhost"])
def test_msal_validates_the_emulators_own_authority_and_gets_tokens(
    idp: EntraEmulator, host: str
) -> None:
    port = urlsplit(idp.url).port
    authority = idp.authority if host == "own" else f"https://localhost:{port}/{idp.tenant_id}"
    app = _msal(idp, authority)
    scopes = [f"{idp.mcp.app_id_uri}/.default"]
    assert "access_token" in app.acquire_token_for_client(scopes)
    assertion = idp.user_token("alice", audience=idp.agent.client_id)
    assert "access_token" in app.acquire_token_on_behalf_of(assertion, scopes)


def test_an_unknown_instance_is_entras_400_invalid_instance(idp: EntraEmulator) -> None:
    resp = _ask(idp, f"https://evil.example/{idp.tenant_id}/oauth2/v2.0/authorize")
    assert resp.status_code == 400
    body = resp.json()
    assert body["error"] == "invalid_instance"
    assert body["error_codes"] == [50049]
    assert re.match(
        r"AADSTS50049: Unknown or invalid instance\.\r\nTrace ID: ", body["error_description"]
    )
    assert body["error_uri"] == "https://login.microsoftonline.com/error?code=50049"
    assert body["correlation_id"] == "0f6c4a3e-5b1d-4c8e-9a7f-2d3e4f5a6b7c"
    assert "tenant_discovery_endpoint" not in body


def test_only_https_on_the_emulators_own_port_is_its_instance(idp: EntraEmulator) -> None:
    port = urlsplit(idp.url).port
    tail = f"{idp.tenant_id}/oauth2/v2.0/authorize"
    refused = [
        f"http://127.0.0.1:{port}/{tail}",  # it serves HTTPS only
        f"https://127.0.0.1:{port + 1 if port < 65535 else port - 1}/{tail}",  # another server
        f"https://127.0.0.1:notaport/{tail}",
        f"https://[::1/{tail}",  # malformed: refused, never a 500
        "not a url",
    ]
    for endpoint in refused:
        resp = _ask(idp, endpoint)
        assert (resp.status_code, resp.json()["error_codes"]) == (400, [50049]), endpoint
    for endpoint in (f"{idp.url}/{tail}", f"https://127.0.0.1/{tail}", f"https://LOCALHOST/{tail}"):
        resp = _ask(idp, endpoint)
        assert resp.status_code == 200, endpoint
        assert resp.json()["tenant_discovery_endpoint"] == (
            f"{idp.url}/{idp.tenant_id}/v2.0/.well-known/openid-configuration"
        )


def test_without_an_authorization_endpoint_it_describes_itself(idp: EntraEmulator) -> None:
    resp = _ask(idp, None)
    assert resp.status_code == 200
    assert resp.json()["tenant_discovery_endpoint"] == (
        f"{idp.url}/common/v2.0/.well-known/openid-configuration"
    )
