"""Two caller tokens on-behalf-of cannot use as sent, and what the pre-flight says of them
(nothing is sent): the client's ID token (its sign-in, not an access token; Entra answers
AADSTS240002) and a token for a custom Application ID URI of the OBO app that the source was not
told about (Entra accepts it; the fix is ``accepted_audiences``, which makes it work). Before,
the first was called "app-only" with the advice to use the app_only policy, and the second's fix
never named the setting."""

from __future__ import annotations

import dataclasses
import time

import httpx
import pytest

from _support.tokens import bare_jwt
from entra_passthrough import (
    AppOnlyAssertion,
    AssertionAudienceMismatch,
    IdTokenAssertion,
    TokenChain,
    bind_caller,
)
from entra_passthrough.testing import EntraEmulator, World

from .conftest import make_obo, obo_posts

CUSTOM_URI = "https://contoso.example/agent"


def _id_token(idp: EntraEmulator) -> str:
    """alice's ID token from a sign-in to the agent app (ROPC here; a browser sign-in's
    id_token has the same shape: no scp, no azp/appid)."""
    with httpx.Client(verify=idp.ssl_context()) as http:
        answer = http.post(
            f"{idp.authority}/oauth2/v2.0/token",
            data={
                "grant_type": "password",
                "client_id": idp.agent.client_id,
                "client_secret": idp.agent.secret,
                "username": idp.users["alice"].upn,
                "password": "alice-password",
                "scope": "openid profile",
            },
        )
    answer.raise_for_status()
    token = answer.json()["id_token"]
    assert isinstance(token, str)
    return token


def test_an_id_token_is_named_as_one_and_not_sent(idp: EntraEmulator) -> None:
    chain = TokenChain([make_obo(idp)])
    before = obo_posts(idp)
    try:
        with bind_caller(token=_id_token(idp)), pytest.raises(IdTokenAssertion) as info:
            chain.get_token([f"{idp.mcp.app_id_uri}/.default"])
    finally:
        chain.close()
    error = info.value
    assert obo_posts(idp) == before
    assert not isinstance(error, AppOnlyAssertion)
    assert error.code is not None
    assert error.code.code == 240002
    assert "ID token" in str(error)
    assert "app-only" not in str(error)
    assert error.fix is not None
    assert "access token" in error.fix
    assert "app_only" not in error.fix


def test_an_app_only_token_with_its_client_is_still_app_only(idp: EntraEmulator) -> None:
    token = idp.app_token(client_id=idp.frontend.client_id, audience=idp.agent.client_id)
    chain = TokenChain([make_obo(idp)])
    try:
        with bind_caller(token=token), pytest.raises(AppOnlyAssertion):
            chain.get_token([f"{idp.mcp.app_id_uri}/.default"])
    finally:
        chain.close()


def _custom_uri_world() -> World:
    world = World.default()
    apps = tuple(
        dataclasses.replace(app, app_id_uri=CUSTOM_URI) if app.name == "agent" else app
        for app in world.apps
    )
    return dataclasses.replace(world, apps=apps)


def test_a_custom_app_id_uri_audience_names_accepted_audiences_which_makes_it_work() -> None:
    with EntraEmulator(world=_custom_uri_world()) as idp:
        token = idp.user_token("alice", audience=CUSTOM_URI, version=1)
        scope = [f"{idp.mcp.app_id_uri}/.default"]
        chain = TokenChain([make_obo(idp)])
        try:
            with bind_caller(token=token), pytest.raises(AssertionAudienceMismatch) as info:
                chain.get_token(scope)
        finally:
            chain.close()
        error = info.value
        assert obo_posts(idp) == 0
        assert error.fix is not None
        assert "accepted_audiences" in error.fix
        assert "ENTRA_PASSTHROUGH_ACCEPTED_AUDIENCES" in error.fix
        assert error.fix.index("accepted_audiences") < error.fix.index("DelegatedConsent")
        # The fix it names works: Entra (the emulator) accepts the app's own URI.
        chain = TokenChain([make_obo(idp, accepted_audiences=[CUSTOM_URI])])
        try:
            with bind_caller(token=token):
                assert chain.get_token(scope).token
        finally:
            chain.close()
        assert obo_posts(idp) == 1


@pytest.mark.parametrize(
    "audience",
    [
        "https://graph.microsoft.com",
        "https://ai.azure.com",
        "mcp",
        "api://00000000-0000-0000-0000-0000000000aa",
        "https://graph.microsoft.us",
        "https://management.usgovcloudapi.net/",
        "https://microsoftgraph.chinacloudapi.cn",
        "https://contoso.sharepoint.com",
        "https://servicebus.azure.net",
        "https://analysis.windows.net/powerbi/api",
    ],
)
def test_microsofts_own_audiences_are_not_offered_as_the_apps_uri(
    idp: EntraEmulator, audience: str
) -> None:
    """Microsoft's resources, and another app's client id (a GUID is never an App ID URI)."""
    audience = idp.mcp.client_id if audience == "mcp" else audience
    chain = TokenChain([make_obo(idp)])
    try:
        token = bare_jwt(
            aud=audience,
            tid=idp.tenant_id,
            oid="00000000-0000-0000-0000-00000000a11c",
            azp=idp.frontend.client_id,
            scp="access_as_user",
            exp=time.time() + 3600,
        )
        with bind_caller(token=token), pytest.raises(AssertionAudienceMismatch) as info:
            chain.get_token([f"{idp.mcp.app_id_uri}/.default"])
    finally:
        chain.close()
    assert info.value.fix is not None
    assert "accepted_audiences" not in info.value.fix


def test_an_id_token_with_roles_and_no_name_is_still_an_id_token(idp: EntraEmulator) -> None:
    """An ``openid``-only sign-in's ID token (no ``name``, no ``preferred_username``) of a
    user who holds app roles: still an ID token, not "app-only" (an app's token names its
    client)."""
    token = bare_jwt(
        aud=idp.agent.client_id,
        iss=f"{idp.url}/{idp.tenant_id}/v2.0",
        tid=idp.tenant_id,
        oid="00000000-0000-0000-0000-00000000a11c",
        sub="s",
        ver="2.0",
        roles=["Task.Read"],
        exp=time.time() + 3600,
    )
    chain = TokenChain([make_obo(idp)])
    try:
        with bind_caller(token=token), pytest.raises(IdTokenAssertion):
            chain.get_token([f"{idp.mcp.app_id_uri}/.default"])
    finally:
        chain.close()
