"""Inside a Foundry hosted agent, setting the library's own
``ENTRA_PASSTHROUGH_BLUEPRINT_CLIENT_ID`` turns Foundry's platform credential off
(docs/configuration.md). The refusal that follows (no blueprint credential) says so, and that
leaving it unset is the way: it named only a user-assigned managed identity, which a
Foundry-created blueprint cannot be given."""

from __future__ import annotations

import pytest

from entra_passthrough import AgentIdentityOnBehalfOf, ConfigurationError
from entra_passthrough.testing import EntraEmulator, World


def test_the_refusal_names_the_variable_that_turned_foundrys_credential_off() -> None:
    world = World.default().with_foundry_platform_credential("blueprint")
    with EntraEmulator(world=world) as idp:
        env = {
            "AZURE_AUTHORITY_HOST": idp.url,
            "ENTRA_PASSTHROUGH_CA_FILE": idp.ca_file,
            "FOUNDRY_AGENT_INSTANCE_CLIENT_ID": idp.agent_identity.client_id,
            "FOUNDRY_AGENT_BLUEPRINT_CLIENT_ID": idp.blueprint.client_id,
            "FOUNDRY_AGENT_TENANT_ID": idp.tenant_id,
            **idp.mi_env(),
        }
        AgentIdentityOnBehalfOf.from_env(env).close()  # Foundry's platform credential
        own = {**env, "ENTRA_PASSTHROUGH_BLUEPRINT_CLIENT_ID": idp.blueprint.client_id}
        with pytest.raises(ConfigurationError) as info:
            AgentIdentityOnBehalfOf.from_env(own)
    fix = info.value.fix or ""
    assert "leave ENTRA_PASSTHROUGH_BLUEPRINT_CLIENT_ID unset" in fix
    assert "Foundry's platform credential" in fix
    assert str(info.value).count("Fix:") == 1
