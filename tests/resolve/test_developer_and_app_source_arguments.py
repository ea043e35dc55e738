"""``AzureCli(tenant_id=)`` of the wrong type is a ``ConfigurationError`` naming it (a number or
bytes was a bare ``TypeError`` from a regular expression), and ``AzureCredential.from_env``
without ``AZURE_CLIENT_ID`` / ``AZURE_TENANT_ID`` says to set that variable, without the hint
(meant for the on-behalf-of app) that this library reads ``AZURE_CLIENT_ID`` only as the
managed identity: for this source it is the app registration."""

from __future__ import annotations

from typing import Any

import pytest

from entra_passthrough import AzureCli, AzureCredential, ConfigurationError

TENANT = "22222222-2222-2222-2222-222222222222"


@pytest.mark.parametrize(
    "value", [5, b"contoso", [TENANT], "contoso onmicrosoft"], ids=["int", "bytes", "list", "space"]
)
def test_azure_cli_tenant_of_the_wrong_type(value: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"AzureCli\(tenant_id=\)") as info:
        AzureCli(tenant_id=value)
    assert "ENTRA_PASSTHROUGH_AZ_TENANT_ID" in (info.value.fix or "")
    assert info.value.__cause__ is None


@pytest.mark.parametrize("value", [TENANT, "contoso.onmicrosoft.com", None])
def test_azure_cli_good_tenants(value: str | None) -> None:
    assert AzureCli(tenant_id=value).tenant_id == value


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({"AZURE_TENANT_ID": TENANT, "AZURE_CLIENT_SECRET": "abcdefghijkl"}, "AZURE_CLIENT_ID"),
        (
            {
                "AZURE_CLIENT_ID": "11111111-1111-1111-1111-111111111111",
                "AZURE_CLIENT_SECRET": "x1",
            },
            "AZURE_TENANT_ID",
        ),
    ],
    ids=["client-id", "tenant-id"],
)
def test_azure_credential_names_its_own_variables(env: dict[str, str], missing: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        AzureCredential.from_env(env)
    text = str(info.value)
    assert text.startswith(f"{missing} is not set"), text
    assert "only as the managed identity" not in text
    assert "ENTRA_PASSTHROUGH_CLIENT_ID" not in text
    assert info.value.fix == f"set {missing}."
    assert "abcdefghijkl" not in text
