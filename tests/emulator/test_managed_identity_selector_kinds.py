"""Each managed identity selector names one kind of identifier, as on Azure's hosts
(docs/emulator.md, "Managed identity selection"): ``client_id`` the client id, ``object_id`` /
``principal_id`` the object id, ``mi_res_id`` / ``msi_res_id`` the ARM resource id. An id of
another kind, or the identity's name, gets the answer an unknown identity gets, so a
misconfigured ``AZURE_CLIENT_ID`` (an object id) fails against the emulator as it does in Azure.
"""

from __future__ import annotations

import jwt
import msal
import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import ManagedIdentityCredential

from entra_passthrough import EntraError, ManagedIdentity, TokenRequest
from entra_passthrough.testing import EntraEmulator

UNKNOWN = "00000000-0000-0000-0000-000000000000"


def _value(idp: EntraEmulator, field: str) -> str:
    return str(getattr(idp.managed_identity, field))


def _imds_url(idp: EntraEmulator) -> str:
    return (
        f"{idp.mi_env('imds')['AZURE_POD_IDENTITY_AUTHORITY_HOST']}/metadata/identity/oauth2/token"
    )


def _app_service(idp: EntraEmulator, param: str, value: str, version: str) -> requests.Response:
    env = idp.mi_env("app_service")
    header = "X-IDENTITY-HEADER" if version == "2019-08-01" else "secret"
    return requests.get(
        env["IDENTITY_ENDPOINT"],
        params={"api-version": version, "resource": idp.mcp.app_id_uri or "", param: value},
        headers={header: env["IDENTITY_HEADER"]},
        timeout=10,
    )


def _imds(idp: EntraEmulator, param: str, value: str) -> requests.Response:
    return requests.get(
        _imds_url(idp),
        params={"api-version": "2018-02-01", "resource": idp.mcp.app_id_uri or "", param: value},
        headers={"Metadata": "true"},
        timeout=10,
    )


def _azp(answer: requests.Response) -> str:
    return str(
        jwt.decode(answer.json()["access_token"], options={"verify_signature": False})["azp"]
    )


# (parameter, the identifier it carries, identifiers of other kinds)
APP_SERVICE = [
    ("client_id", "client_id", ["object_id", "resource_id", "name"]),
    ("principal_id", "object_id", ["client_id", "resource_id", "name"]),
    ("object_id", "object_id", ["client_id", "resource_id", "name"]),
    ("mi_res_id", "resource_id", ["client_id", "object_id", "name"]),
]
IMDS = [
    ("client_id", "client_id", ["object_id", "resource_id", "name"]),
    ("object_id", "object_id", ["client_id", "resource_id", "name"]),
    ("msi_res_id", "resource_id", ["client_id", "object_id", "name"]),
    ("mi_res_id", "resource_id", ["client_id", "object_id", "name"]),
]


@pytest.mark.parametrize(("param", "own", "others"), APP_SERVICE)
def test_app_service_matches_each_selector_against_its_own_identifier(
    idp: EntraEmulator, param: str, own: str, others: list[str]
) -> None:
    right = _app_service(idp, param, _value(idp, own), "2019-08-01")
    assert right.status_code == 200, right.text
    assert _azp(right) == idp.managed_identity.client_id
    unknown = _app_service(idp, param, UNKNOWN, "2019-08-01")
    assert unknown.status_code == 400
    for field in others:
        wrong = _app_service(idp, param, _value(idp, field), "2019-08-01")
        assert wrong.status_code == 400, (param, field)
        assert "access_token" not in set(wrong.json())
        assert wrong.json()["message"] == unknown.json()["message"], (param, field)


@pytest.mark.parametrize(("param", "own", "others"), IMDS)
def test_imds_matches_each_selector_against_its_own_identifier(
    idp: EntraEmulator, param: str, own: str, others: list[str]
) -> None:
    right = _imds(idp, param, _value(idp, own))
    assert right.status_code == 200, right.text
    assert _azp(right) == idp.managed_identity.client_id
    unknown = _imds(idp, param, UNKNOWN)
    assert unknown.status_code == 400
    for field in others:
        wrong = _imds(idp, param, _value(idp, field))
        assert wrong.status_code == 400, (param, field)
        assert wrong.json() == unknown.json(), (param, field)


@pytest.mark.parametrize("param", ["clientid", "client_id"])
def test_app_service_2017_clientid_is_the_client_id(idp: EntraEmulator, param: str) -> None:
    # 2017-09-01 (App Service, and Azure Machine Learning as MSAL and azure-identity reach it)
    # selects a user-assigned identity by its client id alone.
    right = _app_service(idp, param, _value(idp, "client_id"), "2017-09-01")
    assert right.status_code == 200, right.text
    assert _azp(right) == idp.managed_identity.client_id
    for field in ("object_id", "resource_id", "name"):
        wrong = _app_service(idp, param, _value(idp, field), "2017-09-01")
        assert wrong.status_code == 400, (param, field)
        assert "access_token" not in set(wrong.json())


@pytest.mark.parametrize("host", ["app_service", "imds"])
def test_an_object_id_given_as_client_id_is_refused_to_msal_azure_identity_and_the_library(
    idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    # The usual misconfiguration: AZURE_CLIENT_ID set to the identity's object (principal) id.
    for variable in EntraEmulator.MI_HOST_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    for variable, value in idp.mi_env(host).items():
        monkeypatch.setenv(variable, value)
    object_id = idp.managed_identity.object_id
    resource = idp.mcp.app_id_uri or ""
    with requests.Session() as session:
        answer = msal.ManagedIdentityClient(
            msal.UserAssignedManagedIdentity(client_id=object_id), http_client=session
        ).acquire_token_for_client(resource=resource)
        # Bound to a bool so that a failure does not print the token.
        issued = "access_token" in answer
        assert not issued, sorted(answer)
        # The same identity named by the right kind of id still works.
        by_object_id = msal.ManagedIdentityClient(
            msal.UserAssignedManagedIdentity(object_id=object_id), http_client=session
        ).acquire_token_for_client(resource=resource)
        assert "access_token" in by_object_id, by_object_id.get("error_description")
    with pytest.raises(ClientAuthenticationError):
        ManagedIdentityCredential(client_id=object_id).get_token(f"{resource}/.default")
    source = ManagedIdentity(client_id=object_id)
    try:
        with pytest.raises(EntraError) as info:
            source.get_token(TokenRequest((f"{resource}/.default",)))
        assert "No user-assigned managed identity matches the client_id" in str(info.value)
    finally:
        source.close()
