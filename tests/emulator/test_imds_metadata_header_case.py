"""IMDS's ``Metadata`` header "must be set to "true", in all lower case" (how-to-use-vm-token,
request parameters); missing or formatted otherwise, IMDS answers 400 ``bad_request_102``
"Required metadata header not specified" (how-to-use-vm-token, "Error handling"). The
emulator's IMDS endpoint refuses ``True``/``TRUE`` as IMDS does, so a hand-written client that
real IMDS would refuse is refused in tests too; MSAL and azure-identity send ``true`` and get
their token. Azure Arc's agent, served at the same path, is not IMDS: Microsoft's own example
sends ``Metadata: True`` (azure-arc/servers/managed-identity-authentication)."""

from __future__ import annotations

import msal
import pytest
import requests

from entra_passthrough.testing import EntraEmulator


def _get(idp: EntraEmulator, api_version: str, headers: dict[str, str]) -> requests.Response:
    base = idp.mi_env("imds")["AZURE_POD_IDENTITY_AUTHORITY_HOST"]
    return requests.get(
        f"{base}/metadata/identity/oauth2/token",
        params={"api-version": api_version, "resource": idp.mcp.app_id_uri or ""},
        headers=headers,
        timeout=10,
    )


@pytest.mark.parametrize(
    "headers",
    [{"Metadata": "True"}, {"Metadata": "TRUE"}, {"Metadata": "yes"}, {}],
    ids=["True", "TRUE", "yes", "missing"],
)
def test_imds_refuses_a_metadata_header_not_lower_case_true(
    idp: EntraEmulator, headers: dict[str, str]
) -> None:
    before = len(idp.issued())
    answer = _get(idp, "2018-02-01", headers)
    assert answer.status_code == 400, answer.status_code
    assert answer.json() == {
        "error": "bad_request_102",
        "error_description": "Required metadata header not specified",
    }
    assert len(idp.issued()) == before  # no token minted


def test_imds_serves_metadata_true(idp: EntraEmulator) -> None:
    answer = _get(idp, "2018-02-01", {"Metadata": "true"})
    assert answer.status_code == 200, answer.text
    assert "access_token" in answer.json()


def test_msal_sends_what_imds_requires(idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in EntraEmulator.MI_HOST_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    for variable, value in idp.mi_env("imds").items():
        monkeypatch.setenv(variable, value)
    with requests.Session() as session:
        answer = msal.ManagedIdentityClient(
            msal.SystemAssignedManagedIdentity(), http_client=session
        ).acquire_token_for_client(resource=idp.mcp.app_id_uri or "")
    assert "access_token" in answer, sorted(answer)


@pytest.mark.parametrize("value", ["True", "true"])
def test_azure_arc_takes_the_header_in_any_case(idp: EntraEmulator, value: str) -> None:
    """Arc (api-version 2020-06-01) answers its challenge, not a header refusal."""
    answer = _get(idp, "2020-06-01", {"Metadata": value})
    assert answer.status_code != 400, answer.text
    assert "metadata" not in answer.text.lower()
