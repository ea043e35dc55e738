"""Three small rules where the emulator answered otherwise than Entra (docs/emulator.md):

- scope names are compared ignoring case and answered in the registered case, in ``scope`` and
  ``scp`` ("AAD itself treats scopes as case insensitive ... AAD will return it back in a
  'corrected' case", AzureAD/microsoft-authentication-library-for-go#214): ``user.read`` is
  Graph's ``User.Read``, ``.DEFAULT`` is ``.default``;
- a public client that presents a client secret or assertion is AADSTS700025 (``invalid_client``,
  "Client is public so neither 'client_assertion' nor 'client_secret' should be presented."),
  before the credential is checked, and the library decodes that code with its own fix;
- ROPC's ``username`` is the user's sign-in name (UPN, v2-oauth-ropc): the emulator's short names
  and object ids, which ``login_hint`` accepts, are unknown users (AADSTS50034).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import jwt
import msal
import pytest

from entra_passthrough import EntraError, OnBehalfOf, TokenChain, bind_caller
from entra_passthrough.testing import EntraEmulator

from .emu_helpers import assert_entra_error, obo_form, post_token


def _claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def _public(idp: EntraEmulator) -> msal.PublicClientApplication:
    return msal.PublicClientApplication(
        idp.frontend.client_id,
        authority=idp.authority,
        instance_discovery=False,
        http_client=idp.msal_http_client(),
    )


# ---- scope names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "registered"),
    [
        (lambda idp: "user.read", lambda idp: "User.Read"),
        (
            lambda idp: "https://graph.microsoft.com/USER.READ",
            lambda idp: "https://graph.microsoft.com/User.Read",
        ),
        (
            lambda idp: f"{idp.mcp.app_id_uri}/ACCESS_AS_USER",
            lambda idp: f"{idp.mcp.app_id_uri}/access_as_user",
        ),
        (
            lambda idp: f"{idp.mcp.app_id_uri}/.DEFAULT",
            lambda idp: f"{idp.mcp.app_id_uri}/.default",
        ),
        (
            lambda idp: f"{idp.mcp.app_id_uri}/Access_As_User OpenID",
            lambda idp: f"{idp.mcp.app_id_uri}/access_as_user openid",
        ),
    ],
    ids=["bare-graph", "graph", "named", "default", "with-oidc"],
)
def test_scope_names_are_matched_ignoring_case_and_answered_as_registered(
    idp: EntraEmulator, asked: Callable[..., str], registered: Callable[..., str]
) -> None:
    assertion = idp.user_token("alice", audience=idp.agent.client_id)
    want = post_token(idp, {**obo_form(idp, assertion), "scope": registered(idp)})
    assert want.status_code == 200, want.text
    got = post_token(idp, {**obo_form(idp, assertion), "scope": asked(idp)})
    assert got.status_code == 200, got.text
    assert got.json()["scope"] == want.json()["scope"]
    assert _claims(got.json()["access_token"])["scp"] == _claims(want.json()["access_token"])["scp"]


def test_ropc_scope_in_another_case(idp: EntraEmulator) -> None:
    alice = idp.users["alice"]
    result = _public(idp).acquire_token_by_username_password(
        alice.upn, alice.password, ["user.read"]
    )
    assert "access_token" in result, result.get("error_description")
    # MSAL adds openid and profile, which a Graph token carries too.
    assert "User.Read" in _claims(result["access_token"])["scp"].split()
    assert "user.read" not in result["scope"].split()


def test_a_grant_in_another_case_is_the_registered_scope(
    entra_emulator_fresh: EntraEmulator,
) -> None:
    idp = entra_emulator_fresh
    # carol has not consented to the agent; her consent is recorded in another case.
    assertion = idp.user_token("carol", audience=idp.agent.client_id)
    form = {**obo_form(idp, assertion), "scope": f"{idp.mcp.app_id_uri}/access_as_user"}
    assert_entra_error(post_token(idp, form), 65001, "invalid_grant")
    idp.grant_consent("carol", idp.agent.client_id, ["ACCESS_AS_USER"])
    resp = post_token(idp, form)
    assert resp.status_code == 200, resp.text
    assert _claims(resp.json()["access_token"])["scp"] == "access_as_user"


# ---- a public client with a credential --------------------------------------------------------


def _ropc(idp: EntraEmulator, **extra: str) -> dict[str, str]:
    alice = idp.users["alice"]
    return {
        "grant_type": "password",
        "client_id": idp.frontend.client_id,  # a public client (no secret registered)
        "username": alice.upn,
        "password": alice.password,
        "scope": f"{idp.mcp.app_id_uri}/access_as_user",
        **extra,
    }


def test_a_public_client_presenting_a_secret_is_700025(idp: EntraEmulator) -> None:
    for credential in (
        {"client_secret": "anything"},
        {
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": idp.app_token(
                client_id=idp.managed_identity.client_id, audience="api://AzureADTokenExchange"
            ),
        },
    ):
        body = assert_entra_error(
            post_token(idp, _ropc(idp, **credential)), 700025, "invalid_client", status=401
        )
        assert (
            "Client is public so neither 'client_assertion' nor 'client_secret'"
            in (body["error_description"])
        )
    # Without one, the public client signs the user in; a confidential client's wrong secret
    # is still AADSTS7000215.
    assert post_token(idp, _ropc(idp)).status_code == 200
    wrong = {**obo_form(idp, idp.user_token("alice", audience=idp.agent.client_id))}
    wrong["client_secret"] = "not-the-secret"
    assert_entra_error(post_token(idp, wrong), 7000215, "invalid_client", status=401)


async def test_the_library_decodes_700025_with_a_fix(idp: EntraEmulator) -> None:
    # An app registered as a public client, configured as OnBehalfOf's confidential client.
    source = OnBehalfOf(
        client_id=idp.frontend.client_id,
        tenant_id=idp.tenant_id,
        authority_host=idp.url,
        client_secret="a-secret-the-public-client-does-not-have",
        http_client=idp.msal_http_client(),
    )
    chain = TokenChain([source])
    try:
        with (
            bind_caller(token=idp.user_token("alice", audience=idp.frontend.client_id)),
            pytest.raises(EntraError) as info,
        ):
            await chain.get_token_async([f"{idp.mcp.app_id_uri}/.default"])
    finally:
        chain.close()
    err = info.value
    assert err.code is not None
    assert err.code.code == 700025
    assert err.code.name == "InvalidClientPublicClientWithCredential"
    assert err.fix is not None
    assert "Allow public client flows" in err.fix
    assert "#aadsts700025" in err.fix


# ---- ROPC user names --------------------------------------------------------------------------


def test_ropc_names_users_by_upn_only(idp: EntraEmulator) -> None:
    alice = idp.users["alice"]
    for username in ("alice", alice.oid):
        assert_entra_error(post_token(idp, _ropc(idp, username=username)), 50034, "invalid_grant")
    assert post_token(idp, _ropc(idp, username=alice.upn.upper())).status_code == 200


def test_ropc_refuses_a_name_lower_folds_into_a_users(idp: EntraEmulator) -> None:
    # Entra's sign-in names are ASCII: the Kelvin sign (U+212A), which str.lower() folds into
    # "k", names no user (it signed in guest@fabrikam as "guest@fabri\u212aam...").
    guest = next(u for u in idp.world.users if u.upn.startswith("guest@fabrikam"))
    form = {
        "grant_type": "password",
        "client_id": idp.agent.client_id,
        "client_secret": idp.agent.secret or "",
        "password": guest.password or "",
        "scope": f"{idp.mcp.app_id_uri}/access_as_user",
    }
    url = f"{idp.url}/organizations/oauth2/v2.0/token"
    with httpx.Client(verify=idp.ssl_context(), timeout=30) as http:
        assert http.post(url, data={**form, "username": guest.upn}).status_code == 200
        lookalike = guest.upn.replace("k", "\u212a", 1)
        answer = http.post(url, data={**form, "username": lookalike})
    assert_entra_error(answer, 50034, "invalid_grant")
