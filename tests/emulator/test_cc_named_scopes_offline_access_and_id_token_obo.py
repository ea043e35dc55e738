"""Three answers the emulator gave differently from Entra, seen by unmodified MSAL and raw HTTPS
(docs/emulator.md, "Strict where Entra is strict"):

- client credentials naming any scope without ``/.default`` (an app role such as Graph's
  ``User.Read.All`` or the mcp API's ``Tools.Call``, a bare name, a delegated scope) get
  AADSTS1002012 ("... must have a scope value with /.default suffixed ..."), as Entra answers
  (microsoftgraph/microsoft-graph-docs#14323, databricks/databricks-sql-nodejs#226,
  MicrosoftDocs/azure-docs#99862), not AADSTS70011; the delegated flows keep 70011;
- a request whose only scope is ``offline_access`` (OBO, ROPC, refresh) is answered as
  for ``openid`` alone: a Microsoft Graph access token and the refresh token, never a 200
  without ``access_token`` (RFC 6749 section 5.1 makes it required); ``/authorize`` issues no
  code for it;
- an ID token as the OBO assertion is AADSTS240002 "Input id_token cannot be used as
  'urn:ietf:params:oauth:grant-type:jwt-bearer' grant." (``invalid_request``, as quoted in
  microsoft/azure-spring-boot#333), not the app-only AADSTS7000114, which stays the answer to
  an app's own access token.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import httpx
import jwt
import msal
import pytest

from entra_passthrough._aadsts import AADSTS, is_answer
from entra_passthrough.testing import EntraEmulator
from entra_passthrough.testing._tokens import Subject, id_token_claims, sign

from .emu_helpers import (
    aadsts,
    assert_entra_error,
    msal_app,
    no_http_cache,
    obo_form,
    post_token,
    verify_with_jwks,
)

SLASH_DEFAULT = (
    "Client credential flows must have a scope value with /.default suffixed to the resource "
    "identifier (application ID URI)."
)
ID_TOKEN_REFUSED = (
    "Input id_token cannot be used as 'urn:ietf:params:oauth:grant-type:jwt-bearer' grant."
)
GRAPH = "https://graph.microsoft.com"
REDIRECT = "http://localhost/callback"

pytestmark = pytest.mark.filterwarnings(
    "ignore:response_mode='form_post' is recommended:UserWarning"
)


def _claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})  # type: ignore[no-any-return]


def _cc_form(idp: EntraEmulator, scope: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_id": idp.agent.client_id,
        "client_secret": idp.agent.secret or "",
        "scope": scope,
    }


# ---- 1. client credentials: every scope without /.default is AADSTS1002012 --------------------


NAMED_SCOPES = {
    # Graph's application permission, by URI and bare (the commonest mistake)
    "graph-app-role": f"{GRAPH}/User.Read.All",
    "bare-app-role": "User.Read.All",
    # the mcp API's own app role, which the agent holds (it is in its client credentials token)
    "own-app-role": "{mcp}/Tools.Call",
    # a name that is no permission of anything (databricks-sql-nodejs#226)
    "bare-unknown": "all-apis",
    # delegated scopes (answered 1002012 before too)
    "graph-delegated": f"{GRAPH}/User.Read",
    "mcp-delegated": "{mcp}/access_as_user",
    # a named permission of a resource that does not exist: refused on its shape first
    "unknown-resource": "api://00000000-0000-0000-0000-00000000beef/Tools.Call",
    # one scope lacks /.default beside one that has it
    "beside-default": "{mcp}/.default {mcp}/Tools.Call",
}


@pytest.mark.parametrize("name", sorted(NAMED_SCOPES))
def test_client_credentials_without_dot_default_is_1002012_whatever_the_scope_names(
    idp: EntraEmulator, name: str
) -> None:
    scope = NAMED_SCOPES[name].format(mcp=idp.mcp.app_id_uri)
    body = assert_entra_error(post_token(idp, _cc_form(idp, scope)), 1002012, "invalid_scope")
    assert (
        f"The provided value for scope {scope} is not valid. {SLASH_DEFAULT}"
        in (body["error_description"])
    )
    # Unmodified MSAL sends the same request and gets the same code.
    result = msal_app(idp).acquire_token_for_client(scope.split())
    assert "access_token" not in result
    assert (result["error"], aadsts(result)) == ("invalid_scope", 1002012), result


def test_client_credentials_with_dot_default_still_get_the_token_and_the_other_codes(
    idp: EntraEmulator,
) -> None:
    app = msal_app(idp)
    ok = app.acquire_token_for_client([f"{idp.mcp.app_id_uri}/.default"])
    assert "Tools.Call" in _claims(ok["access_token"])["roles"], ok.get("error_description")
    # The app role named above is what `.default` gives: the fix the answer names works.
    unknown = app.acquire_token_for_client(["api://00000000-0000-0000-0000-00000000beef/.default"])
    assert aadsts(unknown) == 500011, unknown
    two = app.acquire_token_for_client([f"{idp.mcp.app_id_uri}/.default", f"{GRAPH}/.default"])
    assert aadsts(two) == 28000, two


def test_delegated_flows_keep_70011_for_a_scope_the_resource_does_not_expose(
    idp: EntraEmulator,
) -> None:
    assertion = idp.user_token("alice", audience=idp.agent.client_id)
    obo = msal_app(idp).acquire_token_on_behalf_of(assertion, [f"{idp.mcp.app_id_uri}/Tools.Call"])
    assert (obo.get("error"), aadsts(obo)) == ("invalid_scope", 70011), obo


# ---- 2. offline_access alone: a Graph token and the refresh token -----------------------------


def _assert_graph_token_with_refresh(idp: EntraEmulator, resp: httpx.Response) -> str:
    """The answer to ``scope=offline_access``: as for ``openid`` alone, a Graph access token
    (verifiable with the published keys, a delegated token: non-empty ``scp``), the refresh
    token, no ID token (``openid`` was not asked for). Returns the refresh token."""
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "offline_access"
    assert "id_token" not in body
    claims = verify_with_jwks(
        idp, body["access_token"], audience=GRAPH, issuer=idp.issuer(version="1.0")
    )
    assert claims["scp"] == "offline_access"
    assert claims["oid"] == idp.users["alice"].oid
    assert isinstance(body["refresh_token"], str)
    assert body["refresh_token"]
    return str(body["refresh_token"])


def test_obo_with_offline_access_alone_answers_a_graph_token(idp: EntraEmulator) -> None:
    form = obo_form(idp, idp.user_token("alice", audience=idp.agent.client_id))
    form["scope"] = "offline_access"
    _assert_graph_token_with_refresh(idp, post_token(idp, form))


def test_ropc_and_refresh_with_offline_access_alone_answer_a_graph_token(
    idp: EntraEmulator,
) -> None:
    form = {
        "grant_type": "password",
        "client_id": idp.frontend.client_id,
        "username": idp.users["alice"].upn,
        "password": "alice-password",
        "scope": "offline_access",
    }
    refresh = _assert_graph_token_with_refresh(idp, post_token(idp, form))
    # Redeeming that refresh token, with the same scope or none (what was asked is kept).
    for scope in ({"scope": "offline_access"}, {}):
        resp = post_token(
            idp,
            {
                "grant_type": "refresh_token",
                "client_id": idp.frontend.client_id,
                "refresh_token": refresh,
                **scope,
            },
        )
        refresh = _assert_graph_token_with_refresh(idp, resp)


def test_auth_code_never_issues_a_code_for_offline_access_alone(idp: EntraEmulator) -> None:
    # /authorize asks for `openid` or a resource's scope (AADSTS900144 naming `scope`, to the
    # redirect URI): no code exists whose redemption could answer without an access token.
    query = urllib.parse.urlencode(
        {
            "client_id": idp.frontend.client_id,
            "response_type": "code",
            "redirect_uri": REDIRECT,
            "scope": "offline_access",
            "login_hint": idp.users["alice"].upn,
            "emulator_consent": "accept",
        }
    )
    with httpx.Client(verify=idp.ssl_context()) as http:
        resp = http.get(f"{idp.authority}/oauth2/v2.0/authorize?{query}")
    assert resp.status_code == 302, resp.text
    answer = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(resp.headers["location"]).query))
    assert "code" not in answer
    assert answer["error"] == "invalid_request", answer


# ---- 3. an ID token as the OBO assertion: AADSTS240002 ----------------------------------------


def _id_token_by_ropc(idp: EntraEmulator) -> str:
    """The agent signs alice in: its ID token has aud = the agent, no scp, roles, azp or appid."""
    body = post_token(
        idp,
        {
            "grant_type": "password",
            "client_id": idp.agent.client_id,
            "client_secret": idp.agent.secret or "",
            "username": idp.users["alice"].upn,
            "password": "alice-password",
            "scope": "openid profile",
        },
    ).json()
    return str(body["id_token"])


def _id_token_by_msal_auth_code(idp: EntraEmulator) -> str:
    """The agent signs alice in with MSAL's auth code flow (PKCE): MSAL's own id_token."""
    app = msal_app(idp)
    flow = app.initiate_auth_code_flow(
        [f"{idp.mcp.app_id_uri}/access_as_user"],
        redirect_uri=REDIRECT,
        login_hint=idp.users["alice"].upn,
    )
    with httpx.Client(verify=idp.ssl_context()) as http:
        resp = http.get(flow["auth_uri"] + "&emulator_consent=accept")
    assert resp.status_code == 302, resp.text
    params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(resp.headers["location"]).query))
    result = app.acquire_token_by_auth_code_flow(flow, params)
    assert "id_token" in result, result.get("error_description")
    return str(result["id_token"])


@pytest.mark.parametrize("how", ["ropc", "msal-auth-code"])
def test_an_id_token_as_the_obo_assertion_is_240002(idp: EntraEmulator, how: str) -> None:
    id_token = _id_token_by_ropc(idp) if how == "ropc" else _id_token_by_msal_auth_code(idp)
    claims = _claims(id_token)
    assert claims["aud"] == idp.agent.client_id  # for the OBO app: the audience check passes
    assert not {"scp", "roles", "azp", "appid"} & set(claims)
    # Raw HTTPS: Entra's body, HTTP 400.
    body = assert_entra_error(post_token(idp, obo_form(idp, id_token)), 240002, "invalid_request")
    assert body["error_description"].startswith(f"AADSTS240002: {ID_TOKEN_REFUSED}\r\n")
    assert id_token not in body["error_description"]
    # Unmodified MSAL sends it and gets the same answer.
    result = msal.ConfidentialClientApplication(
        idp.agent.client_id,
        client_credential=idp.agent.secret,
        authority=idp.authority,
        instance_discovery=False,
        http_client=idp.msal_http_client(),
        http_cache=no_http_cache(),
    ).acquire_token_on_behalf_of(id_token, [f"{idp.mcp.app_id_uri}/.default"])
    assert "access_token" not in result
    assert (result["error"], aadsts(result)) == ("invalid_request", 240002), result


def test_an_id_token_with_the_users_app_roles_is_still_240002(idp: EntraEmulator) -> None:
    # An ID token carries the signed-in user's app roles of the client app when it defines
    # some (id-token-claims-reference, "roles"): still no client claim, still an ID token.
    alice = idp.users["alice"]
    claims = id_token_claims(
        issuer=idp.issuer(),
        client_id=idp.agent.client_id,
        subject=Subject(oid=alice.oid, tid=idp.tenant_id, upn=alice.upn, name="Alice"),
        nonce=None,
    )
    id_token = sign(idp._rt.keys, {**claims, "roles": ["Agent.Admin"]})
    result = msal_app(idp).acquire_token_on_behalf_of(id_token, [f"{idp.mcp.app_id_uri}/.default"])
    assert (result["error"], aadsts(result)) == ("invalid_request", 240002), result


def test_an_apps_own_access_token_as_the_obo_assertion_stays_7000114(idp: EntraEmulator) -> None:
    # A real app-only access token for the agent (azp, roles, no scp): the app-only code.
    token = idp.app_token(client_id=idp.frontend.client_id, audience=idp.agent.client_id)
    claims = _claims(token)
    assert "scp" not in claims
    assert {"azp", "appid"} & set(claims)
    result = msal_app(idp).acquire_token_on_behalf_of(token, [f"{idp.mcp.app_id_uri}/.default"])
    assert (result["error"], aadsts(result)) == ("unauthorized_client", 7000114), result
    # A user's access token for the agent is still exchanged.
    ok = msal_app(idp).acquire_token_on_behalf_of(
        idp.user_token("alice", audience=idp.agent.client_id),
        [f"{idp.mcp.app_id_uri}/.default"],
    )
    assert "access_token" in ok, ok.get("error_description")


def test_the_library_decodes_240002() -> None:
    entry = AADSTS[240002]
    assert is_answer(240002)
    assert "ID token" in entry.meaning
    assert "access token" in entry.fix
    assert "id_token" in entry.fix
