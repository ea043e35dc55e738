"""The emulator's Cloud Shell host (``idp.mi_env("cloud_shell")``, ``MSI_ENDPOINT`` alone) serves
azure-identity's ``ManagedIdentityCredential``; MSAL's ``ManagedIdentityClient`` does not
implement Cloud Shell (its docstring: "Cloud Shell support is NOT implemented in this class"),
so the library uses azure-identity there (docs/configuration.md). docs/emulator.md says so,
rather than that MSAL's client runs on every host."""

from __future__ import annotations

import re
from pathlib import Path

import msal
import pytest
import requests
from azure.identity import ManagedIdentityCredential

from entra_passthrough.testing import EntraEmulator

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture
def cloud_shell(idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch) -> EntraEmulator:
    for name in EntraEmulator.MI_HOST_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in idp.mi_env("cloud_shell").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", idp.ca_file)
    monkeypatch.setenv("SSL_CERT_FILE", idp.ca_file)
    return idp


def test_azure_identity_gets_a_token_and_msal_does_not(cloud_shell: EntraEmulator) -> None:
    credential = ManagedIdentityCredential()
    try:
        token = credential.get_token(f"{cloud_shell.mcp.app_id_uri}/.default")
    finally:
        credential.close()
    assert token.token
    client = msal.ManagedIdentityClient(
        msal.SystemAssignedManagedIdentity(), http_client=requests.Session(), token_cache=None
    )
    try:
        answer = client.acquire_token_for_client(resource=cloud_shell.mcp.app_id_uri)
    except ValueError:  # MSAL reads the Cloud Shell endpoint's answer as another host's
        answer = {}
    assert "access_token" not in answer


def test_the_emulator_page_does_not_claim_msal_on_cloud_shell() -> None:
    page = " ".join((DOCS / "emulator.md").read_text(encoding="utf-8").split())
    assert not re.search(
        r"`cloud_shell` \(`MSI_ENDPOINT` alone\)\. MSAL's `ManagedIdentityClient` and "
        r"azure-identity's `ManagedIdentityCredential` run unmodified on each",
        page,
    )
    assert "MSAL's `ManagedIdentityClient` on each but `cloud_shell`" in page
    assert "azure-identity only" in (EntraEmulator.mi_env.__doc__ or "")
