"""AzureCli asked for a tenant its signed-in account is not in (AADSTS50020): the fix is about
the account and the tenant the CLI signs in to, not the generic one for an app of one's own
(multi-tenant, ENTRA_PASSTHROUGH_ALLOWED_TENANTS), which the CLI's Microsoft client cannot
follow. The ``az`` is the emulator's stand-in, talking to the emulator."""

from __future__ import annotations

import pytest

from entra_passthrough import AzureCli, EntraError, TokenRequest
from entra_passthrough.testing import EntraEmulator

from .conftest import mcp_scope


@pytest.mark.parametrize("tool", ["az", "azd"])
def test_a_tenant_the_account_is_not_in_gets_a_cli_fix(
    idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch, tool: str
) -> None:
    for name, value in idp.az_env("alice").items():
        monkeypatch.setenv(name, value)
    az = AzureCli(tool=tool, tenant_id=idp.second_tenant_id)
    try:
        with pytest.raises(EntraError) as info:
            az.get_token(TokenRequest(tuple(mcp_scope(idp)), None))
    finally:
        az.close()
    assert info.value.code is not None
    assert info.value.code.code == 50020
    fix = info.value.fix or ""
    assert "ENTRA_PASSTHROUGH_ALLOWED_TENANTS" not in fix
    assert "multi-tenant" not in fix
    login = "az login --tenant" if tool == "az" else "azd auth login --tenant-id"
    assert f"{login} {idp.second_tenant_id}" in fix
    assert "ENTRA_PASSTHROUGH_AZ_TENANT_ID" in fix
