"""Inside a Foundry hosted agent, ``TokenChain.from_env()`` works from what Foundry injects: the
``FOUNDRY_AGENT_*`` variables and the managed identity endpoint (Foundry's hosted-agent token
service). The blueprint's credential is the token service's token for
``api://AzureADTokenExchange`` with the blueprint's client id as the managed identity, which the
blueprint trusts as its platform-managed federated credential (Microsoft's pages; the emulator
models it with ``World.with_foundry_platform_credential``). ``from_env()`` refused to start:
it asked for a user-assigned managed identity (``AZURE_CLIENT_ID``) the developer cannot attach
to a blueprint Foundry created."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from entra_passthrough import (
    AgentIdentityOnBehalfOf,
    EntraError,
    IdentityKind,
    TokenChain,
    bind_caller,
)
from entra_passthrough._http import SHARED_THROTTLE
from entra_passthrough.testing import EntraEmulator, World

from .conftest import decode, mcp_scope


@pytest.fixture(autouse=True)
def _fresh_throttle() -> Iterator[None]:
    SHARED_THROTTLE.clear()
    yield
    SHARED_THROTTLE.clear()


def _foundry_env(idp: EntraEmulator) -> dict[str, str]:
    """What Foundry injects in a hosted agent's container (and the emulator's host and CA)."""
    return {
        "AZURE_AUTHORITY_HOST": idp.url,
        "ENTRA_PASSTHROUGH_CA_FILE": idp.ca_file,
        "FOUNDRY_AGENT_INSTANCE_CLIENT_ID": idp.agent_identity.client_id,
        "FOUNDRY_AGENT_BLUEPRINT_CLIENT_ID": idp.blueprint.client_id,
        "FOUNDRY_AGENT_TENANT_ID": idp.tenant_id,
        **idp.mi_env(),
    }


def _serve(idp: EntraEmulator, chain: TokenChain, user: str) -> dict[str, object]:
    with bind_caller(token=idp.user_token(user, audience=idp.blueprint.client_id)):
        result = chain.get_token(mcp_scope(idp))
    assert result.kind is IdentityKind.USER
    return decode(result.token)


def test_from_env_uses_the_token_service_as_the_blueprint_credential() -> None:
    world = World.default().with_foundry_platform_credential("blueprint")
    with EntraEmulator(world=world) as idp:
        chain = TokenChain.from_env(_foundry_env(idp))
        try:
            source = chain.sources[0]
            assert isinstance(source, AgentIdentityOnBehalfOf)
            msi = idp.stats()["endpoints"]["msi"]
            for user in ("alice", "bob"):
                claims = _serve(idp, chain, user)
                assert claims["oid"] == idp.users[user].oid
                assert claims["azp"] == idp.agent_identity.client_id
            # One token service request, one T1, for both users.
            assert idp.stats()["endpoints"]["msi"] - msi == 1
            assert idp.stats()["grants"]["client_credentials"] == 1
        finally:
            chain.close()


def test_a_blueprint_that_does_not_trust_the_token_service_is_refused() -> None:
    # The token service answers for the blueprint, but no federated credential of the blueprint
    # names it: Entra refuses the client assertion (AADSTS700213), typed, no app fallback.
    world = World.default().with_foundry_platform_credential("blueprint", trusted=False)
    with EntraEmulator(world=world) as idp:
        chain = TokenChain.from_env(_foundry_env(idp))
        try:
            with pytest.raises(EntraError) as info:
                _serve(idp, chain, "alice")
            assert info.value.code is not None
            assert info.value.code.code == 700213
        finally:
            chain.close()


def test_no_token_service_identity_for_the_blueprint_is_a_typed_error() -> None:
    # Outside the model (Foundry's variables copied to a host whose identity endpoint knows no
    # identity with the blueprint's client id): typed, and it says which path was taken. The
    # managed identity's own fix ("assign the user-assigned identity to this host") pointed at
    # the wrong thing: a blueprint is not a managed identity.
    with EntraEmulator() as idp:
        chain = TokenChain.from_env(_foundry_env(idp))
        try:
            with pytest.raises(EntraError) as info:
                _serve(idp, chain, "alice")
            error = info.value
            message = str(error)
            assert "FOUNDRY_AGENT_BLUEPRINT_CLIENT_ID" in message
            assert "HTTP 400" in message  # what the endpoint said is kept
            assert error.fix is not None
            assert "ENTRA_PASSTHROUGH_CLIENT_SECRET" in error.fix
            assert "User assigned" not in error.fix
        finally:
            chain.close()


def test_a_configured_blueprint_credential_wins() -> None:
    # AZURE_CLIENT_ID (a user-assigned identity as the blueprint's federated credential) or a
    # secret: the developer's credential, as before.
    with EntraEmulator() as idp:
        env = {**_foundry_env(idp), "AZURE_CLIENT_ID": idp.managed_identity.client_id}
        chain = TokenChain.from_env(env)
        try:
            assert _serve(idp, chain, "alice")["oid"] == idp.users["alice"].oid
        finally:
            chain.close()
