"""What on-behalf-of's pre-flight says before anything is sent: one resource spelled as its
client id GUID and as ``api://<GUID>`` is one resource (Entra and the emulator answer
AADSTS70011 for ``.default`` mixed with its named scopes, not AADSTS28000); an App ID URI of
another form beside a GUID is Entra's to judge; and an app-only caller token is described
truly whether it carries ``roles`` or not."""

from __future__ import annotations

import msal
import pytest

from entra_passthrough import AppOnlyAssertion, EntraError, TokenChain, bind_caller
from entra_passthrough.testing import EntraEmulator

from .conftest import make_obo, obo_posts, session


def _raw_obo_codes(idp: EntraEmulator, scopes: list[str]) -> list[int]:
    """The emulator's own answer to these scopes, sent by MSAL without the library."""
    app = msal.ConfidentialClientApplication(
        idp.agent.client_id,
        client_credential=idp.agent.secret,
        authority=idp.authority,
        instance_discovery=False,
        http_client=session(idp),
    )
    answer = app.acquire_token_on_behalf_of(
        idp.user_token("bob", audience=idp.agent.client_id), scopes
    )
    return list(answer.get("error_codes") or [])


@pytest.mark.parametrize(
    "scopes",
    [
        ["{guid}/.default", "{uri}/access_as_user"],
        ["{uri}/.default", "{guid}/access_as_user"],
        ["{guid}/access_as_user", "{upper_uri}/.default"],
    ],
    ids=["guid-default", "uri-default", "upper-case-uri"],
)
def test_one_resource_spelled_two_ways_is_refused_as_entra_refuses_it(
    idp: EntraEmulator, scopes: list[str]
) -> None:
    names = {
        "guid": idp.mcp.client_id,
        "uri": idp.mcp.app_id_uri,
        "upper_uri": f"api://{idp.mcp.client_id.upper()}",
    }
    asked = [s.format(**names) for s in scopes]
    assert _raw_obo_codes(idp, asked) == [70011]  # what the emulator (and Entra) answer
    chain = TokenChain([make_obo(idp)])
    before = obo_posts(idp)
    with (
        bind_caller(token=idp.user_token("alice", audience=idp.agent.client_id)),
        pytest.raises(EntraError) as info,
    ):
        chain.get_token(asked)
    chain.close()
    assert info.value.code is not None
    assert info.value.code.code == 70011
    assert "Nothing was sent" in str(info.value)
    assert obo_posts(idp) == before


def test_named_scopes_of_one_resource_in_both_spellings_are_sent(idp: EntraEmulator) -> None:
    chain = TokenChain([make_obo(idp)])
    before = obo_posts(idp)
    with bind_caller(token=idp.user_token("alice", audience=idp.agent.client_id)):
        result = chain.get_token(
            [f"{idp.mcp.client_id}/access_as_user", f"{idp.mcp.app_id_uri}/access_as_user"]
        )
    chain.close()
    assert result.token
    assert obo_posts(idp) == before + 1


def test_two_apps_by_guid_and_uri_are_still_two_resources(idp: EntraEmulator) -> None:
    chain = TokenChain([make_obo(idp)])
    before = obo_posts(idp)
    with (
        bind_caller(token=idp.user_token("alice", audience=idp.agent.client_id)),
        pytest.raises(EntraError) as info,
    ):
        chain.get_token(
            [f"{idp.mcp.client_id}/access_as_user", f"{idp.legacy_api.app_id_uri}/.default"]
        )
    chain.close()
    assert info.value.code is not None
    assert info.value.code.code == 28000
    assert obo_posts(idp) == before


def test_a_guid_beside_an_app_id_uri_of_another_form_is_entras_to_judge(
    idp: EntraEmulator,
) -> None:
    # https://ai.azure.com could be the App ID URI of the GUID's app: only the tenant knows.
    chain = TokenChain([make_obo(idp)])
    before = obo_posts(idp)
    with (
        bind_caller(token=idp.user_token("alice", audience=idp.agent.client_id)),
        pytest.raises(EntraError) as info,
    ):
        chain.get_token([f"{idp.mcp.client_id}/access_as_user", "https://ai.azure.com/.default"])
    chain.close()
    assert obo_posts(idp) == before + 1  # sent
    assert info.value.code is not None
    assert info.value.code.code == 28000  # the emulator's answer: two apps
    assert "Nothing was sent" not in str(info.value)


@pytest.mark.parametrize("roles", [(), ("Tools.Invoke",)], ids=["no-roles", "roles"])
def test_an_app_only_caller_token_is_described_truly(
    idp: EntraEmulator, roles: tuple[str, ...]
) -> None:
    token = idp.app_token(
        client_id=idp.frontend.client_id, audience=idp.agent.client_id, roles=roles
    )
    chain = TokenChain([make_obo(idp)])
    with bind_caller(token=token), pytest.raises(AppOnlyAssertion) as info:
        chain.get_token([f"{idp.mcp.app_id_uri}/.default"])
    chain.close()
    text = str(info.value)
    assert "'roles' but" not in text  # no claim about roles, which only some such tokens have
    assert "'scp'" in text
    assert "app-only" in text
