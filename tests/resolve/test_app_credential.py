"""``AppCredential``: one value for an app registration and its one client credential, taken by
every confidential client of the library (OBO, the Agent ID blueprint, the consent source and
broker); the simple path's keywords build the same value."""

from __future__ import annotations

import pytest

from entra_passthrough import (
    AgentIdentityOnBehalfOf,
    AppCredential,
    ConfigurationError,
    DelegatedConsent,
    Keyring,
    ManagedIdentity,
    MemoryStore,
    OnBehalfOf,
)
from entra_passthrough._msal import client_credential

SECRET = "s3cr3t-value-that-must-not-leak"
APP = {"client_id": "app-id", "tenant_id": "tenant-id"}
NOWHERE = "https://127.0.0.1:9"  # nothing listens: any request would fail


def test_exactly_one_credential_and_its_kind() -> None:
    assert AppCredential(**APP, client_secret=SECRET).kind == "secret"
    assert AppCredential(**APP, client_assertion=lambda: "x").kind == "client_assertion"
    assert AppCredential(**APP, federated_token_file="/t").kind == "federated_token_file"
    uami = ManagedIdentity(client_id="5f2b9c1e-8d3a-4c6b-9e7f-0a1b2c3d4e5f")
    try:
        assert AppCredential(**APP, managed_identity=uami).kind == "managed_identity"
    finally:
        uami.close()
    with pytest.raises(ConfigurationError, match="exactly one client credential, got 0"):
        AppCredential(**APP)
    with pytest.raises(ConfigurationError, match="exactly one client credential, got 2"):
        AppCredential(**APP, client_secret=SECRET, federated_token_file="/t")
    with pytest.raises(ConfigurationError, match="client_id and tenant_id"):
        AppCredential(client_id="", tenant_id="t", client_secret=SECRET)
    with pytest.raises(ConfigurationError, match="apply to a client_certificate"):
        AppCredential(**APP, client_secret=SECRET, certificate_password="pw")


def test_a_system_assigned_identity_is_no_federated_credential() -> None:
    system = ManagedIdentity()
    try:
        with pytest.raises(ConfigurationError, match="AZURE_CLIENT_ID"):
            AppCredential(**APP, managed_identity=system)
    finally:
        system.close()


def test_repr_names_the_kind_never_the_secret() -> None:
    credential = AppCredential(**APP, client_secret=SECRET, authority_host=NOWHERE)
    shown = repr(credential)
    assert SECRET not in shown
    assert "kind=secret" in shown
    assert credential.authority_host == NOWHERE
    source = OnBehalfOf(credential=credential)
    try:
        assert SECRET not in repr(source)
    finally:
        source.close()


def test_the_simple_path_builds_the_same_credential() -> None:
    given = AppCredential(**APP, client_secret=SECRET, authority_host=NOWHERE)
    built = OnBehalfOf(**APP, client_secret=SECRET, authority_host=NOWHERE)
    shared = OnBehalfOf(credential=given)
    try:
        assert built.credential == given
        assert shared.credential is given
        assert client_credential(built.credential) == client_credential(given) == SECRET
    finally:
        built.close()
        shared.close()


def test_credential_and_simple_keywords_are_not_mixed() -> None:
    credential = AppCredential(**APP, client_secret=SECRET)
    with pytest.raises(ConfigurationError, match="credential= and client_secret, tenant_id"):
        OnBehalfOf(credential=credential, tenant_id="other", client_secret="other")
    with pytest.raises(ConfigurationError, match="must be an AppCredential"):
        OnBehalfOf(credential=object())  # type: ignore[arg-type]


def test_errors_name_the_source_the_user_configured() -> None:
    with pytest.raises(ConfigurationError, match=r"^OnBehalfOf needs exactly one"):
        OnBehalfOf(**APP)
    with pytest.raises(ConfigurationError, match=r"^AgentIdentityOnBehalfOf \(the blueprint\)"):
        AgentIdentityOnBehalfOf(blueprint_client_id="bp", tenant_id="t", agent_identity_id="a")
    with pytest.raises(ConfigurationError, match=r"^DelegatedConsent needs exactly one"):
        DelegatedConsent(
            **APP,
            store=MemoryStore(),
            keyring=Keyring.generate(),
            broker_url="https://agent.contoso.com/consent",
        )


def test_one_credential_serves_the_consent_source() -> None:
    credential = AppCredential(**APP, client_secret=SECRET, authority_host=NOWHERE)
    source = DelegatedConsent(
        credential=credential,
        store=MemoryStore(),
        keyring=Keyring.generate(),
        broker_url="https://agent.contoso.com/consent",
    )
    try:
        assert source.client.credential is credential
        assert source.client.client_id == "app-id"
        assert source.client.authority_host == NOWHERE
    finally:
        source.close()
