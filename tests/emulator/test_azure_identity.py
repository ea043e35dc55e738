"""Unmodified azure-identity credentials obtain tokens from the emulator.

How they are pointed at it (docs/emulator.md): ``authority=idp.url`` (azure-identity appends the
tenant), ``disable_instance_discovery=True``, ``connection_verify=idp.ca_file``.
"""

from __future__ import annotations

import jwt
import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import (
    AzureCliCredential,
    CertificateCredential,
    ClientAssertionCredential,
    ClientSecretCredential,
    CredentialUnavailableError,
    ManagedIdentityCredential,
    OnBehalfOfCredential,
)
from azure.identity.aio import OnBehalfOfCredential as AioOnBehalfOfCredential

from entra_passthrough.testing import EntraEmulator

from .emu_helpers import verify_with_jwks


def _common(idp: EntraEmulator) -> dict:
    return {
        "authority": idp.url,
        "disable_instance_discovery": True,
        "connection_verify": idp.ca_file,
    }


def test_client_secret_credential(idp: EntraEmulator) -> None:
    cred = ClientSecretCredential(
        idp.tenant_id, idp.agent.client_id, idp.agent.secret, **_common(idp)
    )
    token = cred.get_token(f"{idp.mcp.app_id_uri}/.default")
    claims = verify_with_jwks(idp, token.token, audience=idp.mcp.client_id, issuer=idp.issuer())
    assert claims["azp"] == idp.agent.client_id
    assert token.expires_on > claims["iat"]


def test_client_secret_credential_wrong_secret(idp: EntraEmulator) -> None:
    cred = ClientSecretCredential(idp.tenant_id, idp.agent.client_id, "wrong", **_common(idp))
    with pytest.raises(ClientAuthenticationError, match="AADSTS7000215"):
        cred.get_token(f"{idp.mcp.app_id_uri}/.default")


def test_certificate_credential(idp: EntraEmulator) -> None:
    assert idp.agent.certificate_pem is not None
    cred = CertificateCredential(
        idp.tenant_id,
        idp.agent.client_id,
        certificate_data=idp.agent.certificate_pem,
        **_common(idp),
    )
    token = cred.get_token(f"{idp.mcp.app_id_uri}/.default")
    claims = jwt.decode(token.token, options={"verify_signature": False})
    assert claims["azpacr"] == "2"


def test_on_behalf_of_credential_sync(idp: EntraEmulator) -> None:
    assertion = idp.user_token("alice", audience=idp.agent.client_id)
    cred = OnBehalfOfCredential(
        idp.tenant_id,
        idp.agent.client_id,
        client_secret=idp.agent.secret,
        user_assertion=assertion,
        **_common(idp),
    )
    token = cred.get_token(f"{idp.mcp.app_id_uri}/.default")
    claims = verify_with_jwks(idp, token.token, audience=idp.mcp.client_id, issuer=idp.issuer())
    assert claims["oid"] == idp.users["alice"].oid


def test_on_behalf_of_credential_consent_error(idp: EntraEmulator) -> None:
    cred = OnBehalfOfCredential(
        idp.tenant_id,
        idp.agent.client_id,
        client_secret=idp.agent.secret,
        user_assertion=idp.user_token("carol", audience=idp.agent.client_id),
        **_common(idp),
    )
    with pytest.raises(ClientAuthenticationError, match="AADSTS65001"):
        cred.get_token(f"{idp.mcp.app_id_uri}/.default")


async def test_on_behalf_of_credential_aio(idp: EntraEmulator) -> None:
    assertion = idp.user_token("bob", audience=idp.agent.client_id)
    async with AioOnBehalfOfCredential(
        idp.tenant_id,
        idp.agent.client_id,
        client_secret=idp.agent.secret,
        user_assertion=assertion,
        **_common(idp),
    ) as cred:
        token = await cred.get_token(f"{idp.mcp.app_id_uri}/.default")
    claims = jwt.decode(token.token, options={"verify_signature": False})
    assert claims["oid"] == idp.users["bob"].oid


async def test_on_behalf_of_credential_aio_audience_error(idp: EntraEmulator) -> None:
    foundry = idp.user_token("bob", audience="https://ai.azure.com")
    async with AioOnBehalfOfCredential(
        idp.tenant_id,
        idp.agent.client_id,
        client_secret=idp.agent.secret,
        user_assertion=foundry,
        **_common(idp),
    ) as cred:
        with pytest.raises(ClientAuthenticationError, match="AADSTS50013"):
            await cred.get_token(f"{idp.mcp.app_id_uri}/.default")


def test_managed_identity_credential(idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in idp.mi_env().items():
        monkeypatch.setenv(name, value)
    cred = ManagedIdentityCredential(client_id=idp.managed_identity.client_id)
    token = cred.get_token("https://ai.azure.com/.default")
    claims = verify_with_jwks(
        idp, token.token, audience="https://ai.azure.com", issuer=idp.issuer(version="1.0")
    )
    assert claims["oid"] == idp.managed_identity.object_id
    assert claims["appid"] == idp.managed_identity.client_id
    assert "scp" not in claims


def test_managed_identity_wrong_header(idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    env = idp.mi_env()
    monkeypatch.setenv("IDENTITY_ENDPOINT", env["IDENTITY_ENDPOINT"])
    monkeypatch.setenv("IDENTITY_HEADER", "wrong")
    with pytest.raises(ClientAuthenticationError):
        ManagedIdentityCredential().get_token("https://ai.azure.com/.default")


def test_client_assertion_credential_with_managed_identity_fic(
    idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in idp.mi_env().items():
        monkeypatch.setenv(name, value)
    mi = ManagedIdentityCredential(client_id=idp.managed_identity.client_id)

    def assertion() -> str:
        return mi.get_token("api://AzureADTokenExchange/.default").token

    cred = ClientAssertionCredential(idp.tenant_id, idp.agent.client_id, assertion, **_common(idp))
    token = cred.get_token(f"{idp.mcp.app_id_uri}/.default")
    claims = jwt.decode(token.token, options={"verify_signature": False})
    assert claims["azp"] == idp.agent.client_id
    assert claims["azpacr"] == "2"
    # Secretless OBO: the same assertion as OnBehalfOfCredential's client credential.
    obo = OnBehalfOfCredential(
        idp.tenant_id,
        idp.agent.client_id,
        client_assertion_func=assertion,
        user_assertion=idp.user_token("alice", audience=idp.agent.client_id),
        **_common(idp),
    )
    user_token = obo.get_token(f"{idp.mcp.app_id_uri}/.default")
    user_claims = jwt.decode(user_token.token, options={"verify_signature": False})
    assert user_claims["oid"] == idp.users["alice"].oid


def test_azure_cli_credential(idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in idp.az_env(user="alice").items():
        monkeypatch.setenv(name, value)
    token = AzureCliCredential().get_token(f"{idp.mcp.app_id_uri}/.default")
    claims = verify_with_jwks(idp, token.token, audience=idp.mcp.client_id, issuer=idp.issuer())
    assert claims["oid"] == idp.users["alice"].oid
    assert claims["azp"] == "04b07795-8ddb-461a-bbee-02f9e1bf7b46"  # the Azure CLI's client id
    assert token.expires_on == claims["exp"]


def test_azure_cli_credential_with_tenant(
    idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in idp.az_env(user="guest").items():
        monkeypatch.setenv(name, value)
    cred = AzureCliCredential(tenant_id=idp.tenant_id)
    token = cred.get_token("https://ai.azure.com/.default")
    claims = jwt.decode(token.token, options={"verify_signature": False})
    assert claims["tid"] == idp.tenant_id
    assert claims["idp"] == idp.issuer(idp.second_tenant_id)  # a guest from fabrikam


def test_azure_cli_not_logged_in(idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in idp.az_env(user=None).items():
        monkeypatch.setenv(name, value)
    with pytest.raises(CredentialUnavailableError):
        AzureCliCredential().get_token("https://ai.azure.com/.default")


@pytest.mark.parametrize("selector", ["object_id", "resource_id"])
def test_msal_managed_identity_client_selectors(
    idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch, selector: str
) -> None:
    import msal
    import requests

    for name, value in idp.mi_env().items():
        monkeypatch.setenv(name, value)
    mi = idp.managed_identity
    identity = msal.UserAssignedManagedIdentity(**{selector: getattr(mi, selector)})
    with requests.Session() as session:
        client = msal.ManagedIdentityClient(identity, http_client=session)
        result = client.acquire_token_for_client(resource=idp.mcp.app_id_uri)
    assert "access_token" in result, result
    claims = jwt.decode(result["access_token"], options={"verify_signature": False})
    assert claims["oid"] == mi.object_id
    assert claims["roles"] == ["Tools.Call"]


def test_authorization_code_credential(idp: EntraEmulator) -> None:
    from urllib.parse import parse_qs, urlencode, urlsplit

    import httpx
    from azure.identity import AuthorizationCodeCredential

    redirect = "http://localhost/callback"
    query = urlencode(
        {
            "client_id": idp.agent.client_id,
            "response_type": "code",
            "redirect_uri": redirect,
            "scope": f"{idp.mcp.app_id_uri}/access_as_user offline_access",
            "login_hint": "alice",
            "state": "s1",
        }
    )
    with httpx.Client(verify=idp.ssl_context()) as http:
        location = http.get(f"{idp.authority}/oauth2/v2.0/authorize?{query}").headers["location"]
    code = parse_qs(urlsplit(location).query)["code"][0]
    cred = AuthorizationCodeCredential(
        idp.tenant_id,
        idp.agent.client_id,
        code,
        redirect,
        client_secret=idp.agent.secret,
        **_common(idp),
    )
    token = cred.get_token(f"{idp.mcp.app_id_uri}/access_as_user")
    claims = jwt.decode(token.token, options={"verify_signature": False})
    assert claims["oid"] == idp.users["alice"].oid
