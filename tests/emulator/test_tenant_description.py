"""One description, two worlds: scripts/tenant.json is what scripts/tenant-setup.sh creates in a
real tenant, and it loads into the emulator unchanged (docs/tenant-setup.md)."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from entra_passthrough import (
    AzureCli,
    ManagedIdentity,
    OnBehalfOf,
    TokenChain,
    TokenRequest,
    bind_caller,
)
from entra_passthrough.testing import EntraEmulator, World

ROOT = Path(__file__).parents[2]
DESCRIPTION = ROOT / "scripts" / "tenant.json"


@pytest.fixture(scope="module")
def tenant() -> Iterator[EntraEmulator]:
    with EntraEmulator(world=World.from_file(DESCRIPTION)) as idp:
        yield idp


async def test_the_described_tenant_serves_every_path(
    tenant: EntraEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    idp = tenant
    mcp = idp.app("mcp")
    agent = idp.app("agent")
    scope = f"{mcp.app_id_uri}/access_as_user"
    for variable in EntraEmulator.MI_HOST_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    for variable, value in idp.mi_env("app_service").items():
        monkeypatch.setenv(variable, value)
    # OBO, secretless: the user-assigned identity of the description is the agent's credential.
    obo = OnBehalfOf(
        client_id=agent.client_id,
        tenant_id=idp.tenant_id,
        managed_identity=ManagedIdentity(client_id=idp.managed_identity.client_id),
        authority_host=idp.url,
        http_client=idp.msal_http_client(),
    )
    chain = TokenChain([obo])
    with bind_caller(token=idp.user_token("alice", audience=agent.client_id)):
        result = await chain.get_token_async([scope])
    assert result.kind.value == "user"
    chain.close()
    # The developer path: the description pre-authorizes the Azure CLI's client on the API.
    for name, value in idp.az_env("alice").items():
        monkeypatch.setenv(name, value)
    az = AzureCli()
    token = await az.get_token_async(TokenRequest((f"{mcp.app_id_uri}/.default",)))
    assert token is not None
    az.close()


def test_the_description_configures_what_the_script_configures(tenant: EntraEmulator) -> None:
    # The script gives the agent app (-> mcp) and the frontend (-> agent) their API permissions
    # (requiredResourceAccess); the description says the same ("required"), so that ".default"
    # for a user who has not consented yet consents those, as in the real tenant.
    import msal

    idp = tenant
    agent = idp.app("agent")
    script = (ROOT / "scripts" / "tenant-setup.sh").read_text()
    assert '\\"resourceAppId\\":\\"$MCP_APP_ID\\"' in script
    assert '\\"resourceAppId\\":\\"$AGENT_APP_ID\\"' in script
    assert agent.required == ("mcp/access_as_user",)
    assert idp.app("frontend").required == ("agent/access_as_user",)
    frontend = msal.PublicClientApplication(
        idp.app("frontend").client_id,
        authority=f"{idp.url}/{idp.tenant_id}",
        http_client=idp.msal_http_client(),
        instance_discovery=False,
    )
    flow = frontend.initiate_device_flow(scopes=[f"{agent.app_id_uri}/.default"])
    idp.approve_device_code(flow["user_code"], "bob")
    result = frontend.acquire_token_by_device_flow(flow)
    assert "access_token" in result, result


def test_the_setup_script_reads_the_same_description(tmp_path: Path) -> None:
    # --dry-run with a stand-in `az`: the script parses tenant.json and prints every variable.
    fake = tmp_path / "az"
    fake.write_text("#!/bin/sh\necho 11111111-1111-1111-1111-111111111111\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    out = subprocess.run(
        [
            str(ROOT / "scripts" / "tenant-setup.sh"),
            "--dry-run",
            "--resource-group",
            "rg",
            "--agent-id",
        ],
        env={**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for variable in (
        "AZURE_TENANT_ID",
        "ENTRA_PASSTHROUGH_CLIENT_ID",
        "ENTRA_PASSTHROUGH_CLIENT_SECRET",
        "AZURE_CLIENT_ID",
        "ENTRA_PASSTHROUGH_CLIENT_CREDENTIAL=managed_identity",
        "ENTRA_PASSTHROUGH_BLUEPRINT_CLIENT_ID",
        "MCP_SCOPE=api://",
    ):
        assert variable in out.stdout, variable
    assert "preAuthorizedApplications" in out.stderr
    assert "04b07795-8ddb-461a-bbee-02f9e1bf7b46" in out.stderr
    assert "federated-credential" in out.stderr
