"""On-behalf-of refuses, before any request, the scopes Entra refuses whatever the token
(scopes-oidc): ``.default`` mixed with the same resource's named scopes (AADSTS70011), scopes of
two resources (AADSTS28000), the OBO app's own App ID URI (AADSTS90009). The GUID form of a
self-token is Entra's to answer."""

from __future__ import annotations

import pytest

from entra_passthrough import (
    ConsentRequired,
    EntraError,
    EntraPassthroughError,
    ManagedIdentity,
    Policy,
    TokenAcquisitionError,
    TokenChain,
    bind_caller,
)
from entra_passthrough.testing import EntraEmulator

from .conftest import make_obo, obo_posts


@pytest.mark.parametrize(
    ("code", "scopes"),
    [
        (70011, ["{mcp}/.default", "{mcp}/access_as_user"]),
        (70011, ["{mcp}/access_as_user", "{mcp_upper}/.default"]),
        (28000, ["{mcp}/access_as_user", "{legacy}/user_impersonation"]),
        (90009, ["{agent}/.default"]),
        (90009, ["{agent}/access_as_user", "offline_access"]),
        # A scope with no resource is Microsoft Graph's, however Graph is spelled beside it.
        (70011, ["https://graph.microsoft.com/.default", "User.Read"]),
        (70011, ["User.Read", "00000003-0000-0000-C000-000000000000/.default"]),
        (28000, ["User.Read", "{mcp}/access_as_user"]),
    ],
)
def test_scopes_entra_always_refuses_are_never_sent(
    idp: EntraEmulator, code: int, scopes: list[str]
) -> None:
    names = {
        "mcp": idp.mcp.app_id_uri,
        "mcp_upper": (idp.mcp.app_id_uri or "").upper().replace("API://", "api://"),
        "legacy": idp.legacy_api.app_id_uri,
        "agent": idp.agent.app_id_uri,
    }
    chain = TokenChain([make_obo(idp)])
    before = obo_posts(idp)
    alice = idp.user_token("alice", audience=idp.agent.client_id)
    with bind_caller(token=alice), pytest.raises(EntraError) as info:
        chain.get_token([s.format(**names) for s in scopes])
    chain.close()
    assert info.value.code is not None
    assert info.value.code.code == code
    assert "Nothing was sent" in str(info.value)
    assert info.value.fix
    assert obo_posts(idp) == before


def test_a_repeated_default_is_sent(idp: EntraEmulator) -> None:
    # The same '.default' twice is no mix of '.default' and named scopes.
    chain = TokenChain([make_obo(idp)])
    alice = idp.user_token("alice", audience=idp.agent.client_id)
    scope = f"{idp.mcp.app_id_uri}/.default"
    with bind_caller(token=alice):
        result = chain.get_token([scope, scope])
    chain.close()
    assert result.token


def test_the_guid_form_of_the_app_itself_is_sent(idp: EntraEmulator) -> None:
    # Entra accepts an app's token for itself by its client id GUID (AADSTS90009 names that
    # form); whether OBO makes sense there is the caller's business, not a scope error.
    chain = TokenChain([make_obo(idp)])
    before = obo_posts(idp)
    alice = idp.user_token("alice", audience=idp.agent.client_id)
    # Entra's answer here: nobody consented to the agent calling itself (AADSTS65001).
    with bind_caller(token=alice), pytest.raises(ConsentRequired):
        chain.get_token([f"{idp.agent.client_id}/.default"])
    chain.close()
    assert obo_posts(idp) == before + 1


@pytest.mark.parametrize("extra", ["offline_access", "openid", "Profile"])
def test_scopes_msal_adds_itself_are_a_typed_refusal(idp: EntraEmulator, extra: str) -> None:
    # MSAL refuses them with a bare ValueError, which read as an outage ("on-behalf-of request
    # to Entra failed: ValueError", no fix).
    chain = TokenChain([make_obo(idp)])
    before = obo_posts(idp)
    alice = idp.user_token("alice", audience=idp.agent.client_id)
    with bind_caller(token=alice), pytest.raises(TokenAcquisitionError) as info:
        chain.get_token([f"{idp.mcp.app_id_uri}/.default", extra])
    chain.close()
    assert type(info.value) is TokenAcquisitionError
    assert extra in str(info.value)
    assert "nothing was sent" in str(info.value)
    assert info.value.fix
    assert obo_posts(idp) == before


def test_a_managed_identity_asked_for_two_scopes_is_a_typed_refusal(idp: EntraEmulator) -> None:
    env = idp.mi_env()
    chain = TokenChain(
        [ManagedIdentity(endpoint=env["IDENTITY_ENDPOINT"], header=env["IDENTITY_HEADER"])],
        policy=Policy.APP_ONLY,
    )
    with pytest.raises(TokenAcquisitionError) as info:
        chain.get_token([f"{idp.mcp.app_id_uri}/.default", f"{idp.legacy_api.app_id_uri}/.default"])
    chain.close()
    assert not isinstance(info.value, EntraError)  # Entra said nothing: nothing was sent
    assert "nothing was sent" in str(info.value)
    assert info.value.fix


@pytest.mark.parametrize(
    "scopes",
    [
        ["User.Read", "Mail.Read"],
        ["https://graph.microsoft.com/User.Read", "User.Read"],
        # A national cloud's Graph beside a bare scope: Entra's to answer, not refused here.
        ["https://graph.microsoft.us/.default", "User.Read"],
    ],
)
def test_graph_scopes_entra_may_grant_are_sent(idp: EntraEmulator, scopes: list[str]) -> None:
    chain = TokenChain([make_obo(idp)])
    alice = idp.user_token("alice", audience=idp.agent.client_id)
    before = obo_posts(idp)
    refused = None
    with bind_caller(token=alice):
        try:
            chain.get_token(scopes)  # granted or refused: Entra's (the emulator's) to answer
        except EntraPassthroughError as exc:
            refused = str(exc)
    chain.close()
    assert refused is None or "Nothing was sent" not in refused
    assert obo_posts(idp) == before + 1
