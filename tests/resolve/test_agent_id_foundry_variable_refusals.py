"""``AgentIdentityOnBehalfOf.from_env()`` refusals name the variable that was read, or both the
library's and Foundry's when neither is set, and never point to the on-behalf-of app.

A missing ``FOUNDRY_AGENT_BLUEPRINT_CLIENT_ID`` / ``FOUNDRY_AGENT_TENANT_ID`` was reported as
``ENTRA_PASSTHROUGH_BLUEPRINT_CLIENT_ID`` / ``AZURE_TENANT_ID`` alone, with azure-identity's hint
to set ``ENTRA_PASSTHROUGH_CLIENT_ID`` (which makes ``from_env()`` build ``OnBehalfOf``, another
identity); a malformed ``FOUNDRY_AGENT_INSTANCE_CLIENT_ID`` was reported as
``ENTRA_PASSTHROUGH_AGENT_IDENTITY_ID`` and asked for an app registration's client id."""

from __future__ import annotations

import pytest

from entra_passthrough import AgentIdentityOnBehalfOf, ConfigurationError, TokenChain

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
BLUEPRINT = "11111111-2222-3333-4444-555555555555"
AGENT = "21111111-2222-3333-4444-555555555555"
MI = "31111111-2222-3333-4444-555555555555"
FOUNDRY = {
    "FOUNDRY_AGENT_BLUEPRINT_CLIENT_ID": BLUEPRINT,
    "FOUNDRY_AGENT_INSTANCE_CLIENT_ID": AGENT,
    "FOUNDRY_AGENT_TENANT_ID": TENANT,
    # The blueprint's federated credential: what made azure-identity's hint appear.
    "AZURE_CLIENT_ID": MI,
    "IDENTITY_ENDPOINT": "http://127.0.0.1:9/msi/token",
    "IDENTITY_HEADER": "header",
}


def _refusal(env: dict[str, str]) -> str:
    with pytest.raises(ConfigurationError) as info:
        AgentIdentityOnBehalfOf.from_env(env).close()
    text = str(info.value)
    # The same refusal through the chain, which picks Agent ID from the Foundry variables.
    with pytest.raises(ConfigurationError) as through_chain:
        TokenChain.from_env(env).close()
    assert str(through_chain.value) == text
    return text


@pytest.mark.parametrize(
    ("missing", "ours"),
    [
        ("FOUNDRY_AGENT_BLUEPRINT_CLIENT_ID", "ENTRA_PASSTHROUGH_BLUEPRINT_CLIENT_ID"),
        ("FOUNDRY_AGENT_TENANT_ID", "AZURE_TENANT_ID"),
    ],
)
def test_a_missing_variable_names_both_and_no_obo_hint(missing: str, ours: str) -> None:
    text = _refusal({k: v for k, v in FOUNDRY.items() if k != missing})
    assert missing in text
    assert ours in text
    assert "ENTRA_PASSTHROUGH_CLIENT_ID" not in text  # that builds OnBehalfOf instead
    assert "on-behalf-of app" not in text


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("FOUNDRY_AGENT_INSTANCE_CLIENT_ID", f"{AGENT[:8]} {AGENT[9:]}"),
        ("FOUNDRY_AGENT_BLUEPRINT_CLIENT_ID", f"{BLUEPRINT[:8]}\t{BLUEPRINT[9:]}"),
    ],
)
def test_a_malformed_foundry_value_is_named_as_read(variable: str, value: str) -> None:
    text = _refusal({**FOUNDRY, variable: value})
    assert variable in text
    assert "ENTRA_PASSTHROUGH_AGENT_IDENTITY_ID" not in text
    assert "ENTRA_PASSTHROUGH_BLUEPRINT_CLIENT_ID" not in text
    if variable == "FOUNDRY_AGENT_INSTANCE_CLIENT_ID":
        assert "app registration's Application (client) ID" not in text
        assert "agent identity's client id" in text


def test_the_library_variable_is_named_when_it_was_read() -> None:
    env = {**FOUNDRY, "ENTRA_PASSTHROUGH_AGENT_IDENTITY_ID": "bad id"}
    text = _refusal(env)
    assert "ENTRA_PASSTHROUGH_AGENT_IDENTITY_ID" in text
    assert "bad id" not in text
