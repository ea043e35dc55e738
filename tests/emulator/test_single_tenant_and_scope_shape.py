"""Two of Entra's refusals the emulator once granted, seen by unmodified MSAL and raw HTTPS
(docs/emulator.md, "Strict where Entra is strict"):

- a single-tenant app at ``common``/``organizations``: AADSTS50194 ("... is not configured as a
  multi-tenant application. Usage of the /common endpoint is not supported ...",
  ``invalid_request``) at ``/authorize`` (on the error page) and when it redeems a code or a
  refresh token there; its device code flow there is AADSTS50059 (no tenant named). Never a
  sign-in in the user's home tenant. Public reports of each are cited in
  ``testing/_errors.py`` (``single_tenant_at_common``) and ``testing/_device.py``;
- a scope naming only a resource (``api://<guid>``, no ``/.default``, no permission): client
  credentials get AADSTS1002012 ("... must have a scope value with /.default suffixed ..."),
  the delegated flows the format error AADSTS70011; no error names a resource ``api:/``.
"""

from __future__ import annotations

import html
import re
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import msal
import pytest

from entra_passthrough.testing import EntraEmulator, World

from .emu_helpers import aadsts, assert_entra_error, msal_app, no_http_cache, token_url

REDIRECT = "http://localhost/callback"
NOT_MULTI_TENANT = (
    "is not configured as a multi-tenant application. Usage of the /common endpoint is not "
    "supported for such applications created after '10/15/2018'. Use a tenant-specific "
    "endpoint or configure the application to be multi-tenant."
)
FORMAT = (
    "The scope format is invalid. Scope must be in a valid URI form <https://example/scope> or "
    "a valid Guid <guid/scope>."
)
SLASH_DEFAULT = (
    "Client credential flows must have a scope value with /.default suffixed to the resource "
    "identifier (application ID URI)."
)

pytestmark = pytest.mark.filterwarnings(
    "ignore:response_mode='form_post' is recommended:UserWarning"
)


@pytest.fixture(scope="module")
def world_idp() -> Iterator[EntraEmulator]:
    """The default world plus two single-tenant apps of contoso (the default for a registration):
    ``solo`` (confidential, a web app) and ``solo-cli`` (public, a command line tool)."""
    world = World.from_dict(
        {
            "apps": [
                {"name": "solo", "secret": True, "redirect_uris": [REDIRECT]},
                {"name": "solo-cli", "public_client": True, "redirect_uris": [REDIRECT]},
            ]
        }
    )
    with EntraEmulator(world=world) as emulator:
        yield emulator


def _solo(idp: EntraEmulator, segment: str) -> msal.ConfidentialClientApplication:
    app = idp.world.app("solo")
    assert app is not None
    assert not app.multi_tenant
    return msal_app(idp, app.client_id, app.secret, authority=f"{idp.url}/{segment}")


def _authorize(
    idp: EntraEmulator, app: msal.ClientApplication, scopes: list[str]
) -> tuple[dict[str, Any], httpx.Response]:
    """MSAL's auth code flow (PKCE) up to /authorize's answer, alice signing in headless."""
    flow = app.initiate_auth_code_flow(
        scopes, redirect_uri=REDIRECT, login_hint="alice@contoso.onmicrosoft.com"
    )
    with httpx.Client(verify=idp.ssl_context()) as http:
        return flow, http.get(flow["auth_uri"] + "&emulator_consent=accept")


def _query(resp: httpx.Response) -> dict[str, str]:
    assert resp.status_code == 302, resp.text
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(resp.headers["location"]).query))


def _mcp_scope(idp: EntraEmulator) -> list[str]:
    return [f"{idp.mcp.app_id_uri}/access_as_user"]


# ---- 1. a single-tenant app at common / organizations: AADSTS50194 ----------------------------


@pytest.mark.parametrize("segment", ["common", "organizations"])
def test_a_single_tenant_app_cannot_sign_in_at_a_tenantless_authority(
    world_idp: EntraEmulator, segment: str
) -> None:
    idp = world_idp
    solo = idp.world.app("solo")
    assert solo is not None
    _, resp = _authorize(idp, _solo(idp, segment), _mcp_scope(idp))
    # Entra's error page ("Sorry, but we're having trouble signing you in"), no code issued.
    assert resp.status_code == 400, resp.text
    assert "location" not in resp.headers
    page = html.unescape(resp.text)
    assert f"AADSTS50194: Application '{solo.client_id}'(solo) {NOT_MULTI_TENANT}" in page

    # At the tenant's own endpoint the same app signs alice in and gets its token.
    tenant_app = _solo(idp, idp.tenant_id)
    flow, ok = _authorize(idp, tenant_app, _mcp_scope(idp))
    result = tenant_app.acquire_token_by_auth_code_flow(flow, _query(ok))
    assert "access_token" in result, result


def test_a_multi_tenant_app_still_signs_in_at_common(world_idp: EntraEmulator) -> None:
    idp = world_idp
    app = msal_app(idp, authority=f"{idp.url}/common")  # the agent: multi-tenant
    flow, resp = _authorize(idp, app, _mcp_scope(idp))
    result = app.acquire_token_by_auth_code_flow(flow, _query(resp))
    assert "access_token" in result, result


@pytest.mark.parametrize("segment", ["common", "organizations"])
def test_a_single_tenant_app_cannot_redeem_at_a_tenantless_authority(
    world_idp: EntraEmulator, segment: str
) -> None:
    idp = world_idp
    solo = idp.world.app("solo")
    assert solo is not None
    # The code and the refresh token come from the tenant's own endpoint...
    tenant_app = _solo(idp, idp.tenant_id)
    flow, resp = _authorize(idp, tenant_app, _mcp_scope(idp))
    answer = _query(resp)
    # ...and are redeemed at common/organizations: AADSTS50194 (the web app that builds MSAL
    # without its tenant, microsoftgraph/msgraph-training-aspnetmvcapp#54).
    tenantless = _solo(idp, segment)
    refused = tenantless.acquire_token_by_auth_code_flow(dict(flow), answer)
    assert "access_token" not in refused, refused
    assert aadsts(refused) == 50194
    assert refused["error"] == "invalid_request"
    assert NOT_MULTI_TENANT in refused["error_description"]
    # The refusal did not spend the code: redeemed at the tenant, it gives the tokens.
    ok = tenant_app.acquire_token_by_auth_code_flow(dict(flow), answer)
    assert "refresh_token" in ok, ok
    # A refresh token at common/organizations: the same answer (a library that refreshes at
    # /common, robocorp/rpaframework#736); at the tenant it is redeemed.
    refresh = tenantless.acquire_token_by_refresh_token(ok["refresh_token"], _mcp_scope(idp))
    assert aadsts(refresh) == 50194, refresh
    again = tenant_app.acquire_token_by_refresh_token(ok["refresh_token"], _mcp_scope(idp))
    assert "access_token" in again, again


@pytest.mark.parametrize("segment", ["common", "organizations"])
def test_a_single_tenant_device_code_flow_at_a_tenantless_authority_is_50059(
    world_idp: EntraEmulator, segment: str
) -> None:
    idp = world_idp
    cli = idp.world.app("solo-cli")
    assert cli is not None
    assert cli.public_client
    assert not cli.multi_tenant

    def public(at: str) -> msal.PublicClientApplication:
        return msal.PublicClientApplication(
            cli.client_id,
            authority=f"{idp.url}/{at}",
            instance_discovery=False,
            http_client=idp.msal_http_client(),
            http_cache=no_http_cache(),
        )

    flow = public(segment).initiate_device_flow(scopes=_mcp_scope(idp))
    assert "user_code" not in flow, flow
    assert flow.get("error") == "invalid_request"
    assert aadsts(flow) == 50059
    # At the tenant's own endpoint the flow starts and completes.
    app = public(idp.tenant_id)
    flow = app.initiate_device_flow(scopes=_mcp_scope(idp))
    assert "user_code" in flow, flow
    idp.approve_device_code(flow["user_code"], "alice")  # signed in before the first poll
    result = app.acquire_token_by_device_flow(flow)
    assert "access_token" in result, result


# ---- 2. a scope naming only a resource ----------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", "/"])
def test_client_credentials_with_a_bare_resource_scope_is_1002012(
    world_idp: EntraEmulator, suffix: str
) -> None:
    idp = world_idp
    scope = idp.mcp.app_id_uri + suffix  # api://<guid>: the commonest client credentials mistake
    with httpx.Client(verify=idp.ssl_context()) as http:
        resp = http.post(
            token_url(idp),
            data={
                "grant_type": "client_credentials",
                "client_id": idp.agent.client_id,
                "client_secret": idp.agent.secret or "",
                "scope": scope,
            },
        )
    body = assert_entra_error(resp, 1002012, "invalid_scope")
    assert (
        f"The provided value for scope {scope} is not valid. {SLASH_DEFAULT}"
        in (body["error_description"])
    )
    assert "api:/ " not in body["error_description"]
    # Unmodified MSAL sends the same scope and gets the same answer.
    result = msal_app(idp).acquire_token_for_client([scope])
    assert aadsts(result) == 1002012, result
    # With /.default it is the token.
    assert "access_token" in msal_app(idp).acquire_token_for_client([f"{scope}/.default"])


def test_delegated_flows_with_a_bare_resource_scope_are_the_format_error(
    world_idp: EntraEmulator,
) -> None:
    idp = world_idp
    scope = str(idp.mcp.app_id_uri)
    # OBO (the agent for alice, the scope names the MCP API only).
    assertion = idp.user_token("alice", audience=idp.agent.client_id)
    obo = msal_app(idp).acquire_token_on_behalf_of(assertion, [scope])
    assert "access_token" not in obo, obo
    assert aadsts(obo) == 70011
    assert obo["error"] == "invalid_scope"
    assert FORMAT in obo["error_description"]
    assert "api:/ " not in obo["error_description"]
    # The authorization code flow: /authorize answers it to the redirect URI.
    _, resp = _authorize(idp, msal_app(idp), [scope])
    answer = _query(resp)
    assert answer["error"] == "invalid_scope"
    assert answer["error_description"].startswith("AADSTS70011: ")
    assert FORMAT in answer["error_description"]
    assert "code" not in answer
    # The same OBO with a permission named is the token.
    ok = msal_app(idp).acquire_token_on_behalf_of(assertion, [f"{scope}/access_as_user"])
    assert "access_token" in ok, ok
    assert re.search(r"api:/[^/]", obo["error_description"]) is None
