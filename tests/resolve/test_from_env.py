"""from_env() of the chain and each source: variable names, choices, errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from _support.tokens import encrypted_pem_with_chain
from entra_passthrough import (
    AgentIdentityOnBehalfOf,
    AzureCli,
    ConfigurationError,
    ManagedIdentity,
    OnBehalfOf,
    Policy,
    TokenChain,
)
from entra_passthrough._env import VARIABLES

BASE = {
    "ENTRA_PASSTHROUGH_CLIENT_ID": "app-id",
    "AZURE_TENANT_ID": "tenant-a",
    "ENTRA_PASSTHROUGH_CLIENT_SECRET": "s3cret-value",
}

#: A user-assigned identity's client id.
UAMI = "5f2b9c1e-8d3a-4c6b-9e7f-0a1b2c3d4e5f"
#: A user-assigned identity's resource id, as ARM writes it.
RID = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/"
    "Microsoft.ManagedIdentity/userAssignedIdentities/uami"
)


def test_obo_from_env_secret_and_lists() -> None:
    env = {
        **BASE,
        "ENTRA_PASSTHROUGH_ALLOWED_TENANTS": "tenant-a, tenant-b",
        "ENTRA_PASSTHROUGH_ACCEPTED_AUDIENCES": "api://contoso/agent",
        "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.us",
    }
    obo = OnBehalfOf.from_env(env)
    assert obo.client_id == "app-id"
    assert obo.allowed_tenants == {"tenant-a", "tenant-b"}
    assert "api://contoso/agent" in obo.accepted_audiences
    assert obo.authority_host == "https://login.microsoftonline.us"
    assert "s3cret-value" not in repr(obo)


def test_obo_from_env_credential_choice() -> None:
    env = {k: v for k, v in BASE.items() if k != "ENTRA_PASSTHROUGH_CLIENT_SECRET"}
    with pytest.raises(ConfigurationError) as info:
        OnBehalfOf.from_env(env)
    assert "ENTRA_PASSTHROUGH_CLIENT_SECRET" in str(info.value)
    host = {"IDENTITY_ENDPOINT": "http://127.0.0.1:1/msi", "IDENTITY_HEADER": "h"}
    mi = OnBehalfOf.from_env({**env, **host, "AZURE_CLIENT_ID": UAMI})
    assert "credential=managed_identity" in repr(mi)
    fic = OnBehalfOf.from_env({**env, "AZURE_FEDERATED_TOKEN_FILE": "/var/run/token"})
    assert "credential=federated_token_file" in repr(fic)
    with pytest.raises(ConfigurationError):
        OnBehalfOf.from_env({**BASE, "ENTRA_PASSTHROUGH_CLIENT_CREDENTIAL": "certificate"})


def test_missing_required() -> None:
    with pytest.raises(ConfigurationError) as info:
        OnBehalfOf.from_env({"AZURE_TENANT_ID": "t"})
    assert "ENTRA_PASSTHROUGH_CLIENT_ID" in str(info.value)


def test_managed_identity_from_env() -> None:
    mi = ManagedIdentity.from_env(
        {
            "AZURE_CLIENT_ID": UAMI,
            "IDENTITY_ENDPOINT": "http://x",
            "IDENTITY_HEADER": "h",
        }
    )
    assert mi.client_id == UAMI
    assert mi.endpoint == "http://x"
    with pytest.raises(ConfigurationError):
        ManagedIdentity.from_env({"IDENTITY_ENDPOINT": "http://x"})


H = "hdr-s3cret-4141x"


@pytest.mark.parametrize(
    ("endpoint", "header", "said"),
    [
        ("localhost:4141/msi/token", H, "not an http"),
        ("ftp://localhost/msi/token", H, "not an http"),
        ("::::", H, "not an http"),
        ("http://localhost:port/msi/token", H, "port that is not a number"),
        ("http:///msi/token", H, "names no host"),
        ("http://localhost:4141/msi/token", H + "\r\nX-Injected: 1", "control characters"),
        ("http://localhost:4141/msi/token", "  ", "IDENTITY_HEADER"),
    ],
)
def test_a_malformed_managed_identity_endpoint_is_refused_at_build(
    endpoint: str, header: str, said: str
) -> None:
    # Built, each would fail every token request as "the endpoint failed ... nothing to
    # configure if it is transient", after three retries.
    with pytest.raises(ConfigurationError) as info:
        ManagedIdentity.from_env({"IDENTITY_ENDPOINT": endpoint, "IDENTITY_HEADER": header})
    assert said in str(info.value)
    assert info.value.fix
    assert H not in f"{info.value}{info.value!r}"  # the header is a secret


def test_managed_identity_reads_the_reliability_variables() -> None:
    mi_env = {"IDENTITY_ENDPOINT": "http://127.0.0.1:9/msi/token", "IDENTITY_HEADER": H}
    tuned = {
        **mi_env,
        "ENTRA_PASSTHROUGH_TOKEN_DEADLINE": "3",
        "ENTRA_PASSTHROUGH_TOKEN_RETRIES": "0",
        "ENTRA_PASSTHROUGH_MAX_WORKERS": "100",
    }
    chain = TokenChain.from_env({**BASE, **tuned, "ENTRA_PASSTHROUGH_POLICY": "user_or_app"})
    for mi in (ManagedIdentity.from_env(tuned), chain.sources[-1]):
        assert isinstance(mi, ManagedIdentity)
        assert (mi.timeouts.deadline, mi.timeouts.retries) == (3.0, 0)
        assert mi._pool.max_workers == 100
    plain = ManagedIdentity.from_env(mi_env)  # none set: the managed identity's own defaults
    assert (
        plain.timeouts == ManagedIdentity(endpoint=mi_env["IDENTITY_ENDPOINT"], header=H).timeouts
    )
    assert plain._pool.max_workers == 4


def test_chain_from_env_policies() -> None:
    chain = TokenChain.from_env(BASE)
    assert chain.policy is Policy.USER_ONLY
    assert [s.name for s in chain.sources] == ["obo"]
    mi_env = {**BASE, "IDENTITY_ENDPOINT": "http://x", "IDENTITY_HEADER": "h"}
    assert [s.name for s in TokenChain.from_env(mi_env).sources] == ["obo"]  # user_only: no MI
    chain = TokenChain.from_env({**mi_env, "ENTRA_PASSTHROUGH_POLICY": "user_or_app"})
    assert [s.name for s in chain.sources] == ["obo", "managed_identity"]
    chain = TokenChain.from_env({**mi_env, "ENTRA_PASSTHROUGH_LIFECYCLE_APP": "true"})
    assert chain.policy is Policy.USER_ONLY
    assert chain.lifecycle_app
    assert [s.name for s in chain.sources] == ["obo", "managed_identity"]
    dev = TokenChain.from_env({**BASE, "ENTRA_PASSTHROUGH_POLICY": "developer"})
    assert isinstance(dev.sources[-1], AzureCli)
    assert (
        TokenChain.from_env({**BASE, "ENTRA_PASSTHROUGH_CACHE_MAX_ENTRIES": "7"}).cache.max_entries
        == 7
    )
    with pytest.raises(ConfigurationError):
        TokenChain.from_env({**BASE, "ENTRA_PASSTHROUGH_POLICY": "anything"})
    with pytest.raises(ConfigurationError):
        TokenChain.from_env({})
    with pytest.raises(ConfigurationError):
        TokenChain.from_env({**BASE, "ENTRA_PASSTHROUGH_LIFECYCLE_APP": "maybe"})


def test_agent_identity_from_env() -> None:
    env = {
        "ENTRA_PASSTHROUGH_BLUEPRINT_CLIENT_ID": "bp",
        "ENTRA_PASSTHROUGH_AGENT_IDENTITY_ID": "agent",
        "AZURE_TENANT_ID": "t",
        "ENTRA_PASSTHROUGH_CLIENT_SECRET": "bp-secret",
    }
    source = AgentIdentityOnBehalfOf.from_env(env)
    assert source.agent_identity_id == "agent"
    assert "bp-secret" not in repr(source)
    chain = TokenChain.from_env(env)
    assert isinstance(chain.sources[0], AgentIdentityOnBehalfOf)


def test_every_variable_is_documented() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"`((?:AZURE|IDENTITY|ENTRA_PASSTHROUGH|FOUNDRY)_[A-Z_]+)`", doc))
    assert set(VARIABLES) <= documented, set(VARIABLES) - documented


def test_azure_credential_and_foundry_route_from_env() -> None:
    from entra_passthrough import AzureCredential, FoundryToolboxRoute, IdentityKind

    env = {"AZURE_TENANT_ID": "t", "AZURE_CLIENT_ID": "c", "AZURE_CLIENT_SECRET": "cs-123456"}
    cred = AzureCredential.from_env(env)
    assert cred.kind is IdentityKind.APP
    assert type(cred.credential).__name__ == "ClientSecretCredential"
    assert "cs-123456" not in repr(cred)
    with pytest.raises(ConfigurationError):
        AzureCredential.from_env({"AZURE_TENANT_ID": "t", "AZURE_CLIENT_ID": "c"})
    route = FoundryToolboxRoute.from_env(
        {
            "AZURE_CLIENT_ID": UAMI,
            "IDENTITY_ENDPOINT": "http://x",
            "IDENTITY_HEADER": "h",
        }
    )
    assert route.inner.name == "managed_identity"


@pytest.mark.parametrize("source_class", [OnBehalfOf, AgentIdentityOnBehalfOf])
def test_from_env_closes_the_ca_session_it_created(
    source_class: type[OnBehalfOf] | type[AgentIdentityOnBehalfOf],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    import requests

    closed: list[requests.Session] = []
    monkeypatch.setattr(requests.Session, "close", lambda self: closed.append(self))
    import certifi

    # A CA file that holds a certificate (one that does not is refused at build).
    (tmp_path / "ca.pem").write_bytes(Path(certifi.where()).read_bytes())
    env = {
        **BASE,
        "ENTRA_PASSTHROUGH_BLUEPRINT_CLIENT_ID": "bp",
        "ENTRA_PASSTHROUGH_AGENT_IDENTITY_ID": "agent",
        "ENTRA_PASSTHROUGH_CA_FILE": str(tmp_path / "ca.pem"),
    }
    source = source_class.from_env(env)
    source.close()
    assert [session.verify for session in closed] == [str(tmp_path / "ca.pem")]


@pytest.mark.parametrize("source_class", [OnBehalfOf, AgentIdentityOnBehalfOf])
def test_managed_identity_credential_must_be_user_assigned(
    source_class: type[OnBehalfOf] | type[AgentIdentityOnBehalfOf],
) -> None:
    # Only a user-assigned identity can be a federated credential; with no selector the host
    # answers with its system-assigned identity. Refused at construction: no request is made
    # (the endpoint is a closed port).
    env = {
        "ENTRA_PASSTHROUGH_CLIENT_ID": "app-id",
        "ENTRA_PASSTHROUGH_BLUEPRINT_CLIENT_ID": "bp",
        "ENTRA_PASSTHROUGH_AGENT_IDENTITY_ID": "agent",
        "AZURE_TENANT_ID": "tenant-a",
        "ENTRA_PASSTHROUGH_CLIENT_CREDENTIAL": "managed_identity",
        "IDENTITY_ENDPOINT": "http://127.0.0.1:1/msi",
        "IDENTITY_HEADER": "h",
    }
    with pytest.raises(ConfigurationError) as info:
        source_class.from_env(env)
    assert "AZURE_CLIENT_ID" in str(info.value)
    assert "user-assigned" in str(info.value)
    # It names the source being built and why a managed identity was chosen.
    assert str(info.value).startswith(f"{source_class.__name__}.from_env()")
    assert "ENTRA_PASSTHROUGH_CLIENT_CREDENTIAL=managed_identity" in str(info.value)
    assert "AADSTS700213" in str(info.value)  # what Entra would answer
    with pytest.raises(ConfigurationError, match="user-assigned"):
        OnBehalfOf(client_id="a", tenant_id="t", managed_identity=ManagedIdentity())
    source_class.from_env({**env, "AZURE_CLIENT_ID": UAMI}).close()


def test_managed_identity_selectors_and_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    from entra_passthrough._sources.managed_identity import detect_host

    with pytest.raises(ConfigurationError, match="exactly one"):
        ManagedIdentity(client_id="a", object_id="b")
    assert ManagedIdentity(resource_id=RID).selector == (
        "resource_id",
        RID,
    )
    assert not ManagedIdentity().user_assigned
    # The order MSAL's ManagedIdentityClient (and azure-identity) detect the host in.
    assert detect_host({}) == "imds"
    assert detect_host({"IDENTITY_ENDPOINT": "x", "IDENTITY_HEADER": "h"}) == "app_service"
    sf = {"IDENTITY_ENDPOINT": "x", "IDENTITY_HEADER": "h", "IDENTITY_SERVER_THUMBPRINT": "t"}
    assert detect_host(sf) == "service_fabric"
    assert detect_host({"IDENTITY_ENDPOINT": "x", "IMDS_ENDPOINT": "y"}) == "azure_arc"
    assert detect_host({"MSI_ENDPOINT": "x"}) == "cloud_shell"
    assert detect_host({"MSI_ENDPOINT": "x", "MSI_SECRET": "s"}) == "machine_learning"
    # from_env on a host other than App Service leaves detection to MSAL (process environment).
    for name in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "IMDS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    arc = ManagedIdentity.from_env({"IDENTITY_ENDPOINT": "http://x", "IMDS_ENDPOINT": "http://y"})
    assert arc.endpoint is None
    assert "host=imds" in repr(arc)  # the process environment here is no Arc machine


def test_azure_identity_app_variables_are_named_in_the_error() -> None:
    env = {"AZURE_TENANT_ID": "t", "AZURE_CLIENT_ID": "c", "AZURE_CLIENT_SECRET": "cs-secret-1"}
    for build in (OnBehalfOf.from_env, TokenChain.from_env):
        with pytest.raises(ConfigurationError) as info:
            build(env)
        text = str(info.value)
        assert "AZURE_CLIENT_ID, AZURE_CLIENT_SECRET" in text
        assert "ENTRA_PASSTHROUGH_CLIENT_ID" in text
        assert "cs-secret-1" not in text  # names, never values
    with pytest.raises(ConfigurationError) as info:
        OnBehalfOf.from_env({**env, "ENTRA_PASSTHROUGH_CLIENT_ID": "app"})
    assert "ENTRA_PASSTHROUGH_CLIENT_SECRET" in str(info.value)


def test_azure_identity_credential_variables_are_named_with_our_client_id_set() -> None:
    # The client id is right (ENTRA_PASSTHROUGH_CLIENT_ID) but the credential is in
    # azure-identity's variable: the error names what it saw and the variable to set instead.
    env = {
        "AZURE_TENANT_ID": "t",
        "ENTRA_PASSTHROUGH_CLIENT_ID": "app",
        "AZURE_CLIENT_CERTIFICATE_PATH": "/secret/path.pem",
    }
    with pytest.raises(ConfigurationError) as info:
        OnBehalfOf.from_env(env)
    text = str(info.value)
    assert "The environment sets AZURE_CLIENT_CERTIFICATE_PATH" in text
    assert "set ENTRA_PASSTHROUGH_CLIENT_CERTIFICATE_PATH" in text
    assert "/secret/path.pem" not in text
    with pytest.raises(ConfigurationError) as info:
        OnBehalfOf.from_env(
            {**env, "AZURE_CLIENT_CERTIFICATE_PATH": "", "AZURE_CLIENT_SECRET": "s3cr3t-value"}
        )
    text = str(info.value)
    assert "The environment sets AZURE_CLIENT_SECRET" in text
    assert "set ENTRA_PASSTHROUGH_CLIENT_SECRET" in text
    assert "s3cr3t-value" not in text


def test_foundry_agent_variables_feed_agent_identity() -> None:
    foundry = {
        "FOUNDRY_AGENT_BLUEPRINT_CLIENT_ID": "bp-from-foundry",
        "FOUNDRY_AGENT_INSTANCE_CLIENT_ID": "agent-from-foundry",
        "FOUNDRY_AGENT_TENANT_ID": "tenant-from-foundry",
        "ENTRA_PASSTHROUGH_CLIENT_SECRET": "bp-secret",
    }
    source = AgentIdentityOnBehalfOf.from_env(foundry)
    assert source.blueprint_client_id == "bp-from-foundry"
    assert source.agent_identity_id == "agent-from-foundry"
    assert source._obo.tenant_id == "tenant-from-foundry"
    source.close()
    chain = TokenChain.from_env(foundry)
    assert isinstance(chain.sources[0], AgentIdentityOnBehalfOf)
    own = AgentIdentityOnBehalfOf.from_env(
        {**foundry, "ENTRA_PASSTHROUGH_AGENT_IDENTITY_ID": "mine"}
    )
    assert own.agent_identity_id == "mine"
    own.close()


def test_additionally_allowed_tenants_and_certificate_variables(tmp_path: Path) -> None:
    obo = OnBehalfOf.from_env({**BASE, "AZURE_ADDITIONALLY_ALLOWED_TENANTS": "tenant-b;tenant-c"})
    assert "tenant-a" in obo.allowed_tenants  # the home tenant stays
    obo.close()
    obo = OnBehalfOf.from_env({**BASE, "AZURE_ADDITIONALLY_ALLOWED_TENANTS": "tenant-b, tenant-c"})
    assert obo.allowed_tenants == {"tenant-a", "tenant-b", "tenant-c"}
    obo.close()
    with pytest.raises(ConfigurationError, match="any tenant"):
        OnBehalfOf.from_env({**BASE, "AZURE_ADDITIONALLY_ALLOWED_TENANTS": "*"})
    key_and_chain, password = encrypted_pem_with_chain()
    path = tmp_path / "client.pem"
    path.write_bytes(key_and_chain)
    env = {
        "ENTRA_PASSTHROUGH_CLIENT_ID": "app-id",
        "AZURE_TENANT_ID": "tenant-a",
        "ENTRA_PASSTHROUGH_CLIENT_CERTIFICATE_PATH": str(path),
    }
    with pytest.raises(ConfigurationError, match="AZURE_CLIENT_CERTIFICATE_PASSWORD"):
        OnBehalfOf.from_env(env)  # encrypted key, no password: refused before any request
    with pytest.raises(ConfigurationError, match="password"):
        OnBehalfOf.from_env({**env, "AZURE_CLIENT_CERTIFICATE_PASSWORD": "wrong"})
    obo = OnBehalfOf.from_env({**env, "AZURE_CLIENT_CERTIFICATE_PASSWORD": password})
    assert obo._credential["public_certificate"].count("BEGIN CERTIFICATE") == 1
    assert password not in repr(obo)
    obo.close()
    chained = OnBehalfOf.from_env(
        {
            **env,
            "AZURE_CLIENT_CERTIFICATE_PASSWORD": password,
            "AZURE_CLIENT_SEND_CERTIFICATE_CHAIN": "true",
        }
    )
    assert chained._credential["public_certificate"].count("BEGIN CERTIFICATE") == 2
    chained.close()


def test_chain_adds_the_managed_identity_on_every_host_that_sets_variables() -> None:
    for host in (
        {"MSI_ENDPOINT": "http://x"},
        {"IDENTITY_ENDPOINT": "http://x", "IMDS_ENDPOINT": "y"},
    ):
        chain = TokenChain.from_env({**BASE, **host, "ENTRA_PASSTHROUGH_POLICY": "user_or_app"})
        assert [s.name for s in chain.sources] == ["obo", "managed_identity"], host
        chain.close()
    chain = TokenChain.from_env({**BASE, "ENTRA_PASSTHROUGH_POLICY": "user_or_app"})
    assert [s.name for s in chain.sources] == ["obo"]  # IMDS sets nothing: not guessed
    chain.close()


def test_azure_cli_from_env_picks_the_cli() -> None:
    assert AzureCli.from_env({}).tool == "az"
    azd = AzureCli.from_env({"ENTRA_PASSTHROUGH_DEVELOPER_CLI": "azd"})
    assert azd.tool == "azd"
    assert azd.name == "azure_developer_cli"
    with pytest.raises(ConfigurationError):
        AzureCli.from_env({"ENTRA_PASSTHROUGH_DEVELOPER_CLI": "powershell"})


def test_azure_credential_from_env_certificate_password_chain_and_tenants(tmp_path: Path) -> None:
    from entra_passthrough import AzureCredential

    pem, password = encrypted_pem_with_chain()
    path = tmp_path / "app.pem"
    path.write_bytes(pem)
    env = {
        "AZURE_TENANT_ID": "t",
        "AZURE_CLIENT_ID": "c",
        "AZURE_CLIENT_CERTIFICATE_PATH": str(path),
        "AZURE_CLIENT_CERTIFICATE_PASSWORD": password,
        "AZURE_CLIENT_SEND_CERTIFICATE_CHAIN": "true",
        "AZURE_ADDITIONALLY_ALLOWED_TENANTS": "t2",
    }
    cred = AzureCredential.from_env(env)
    assert type(cred.credential).__name__ == "CertificateCredential"
    assert password not in repr(cred)
    # azure-identity opens the key now. A wrong password is a typed error whatever cryptography
    # says (bad decrypt, or an ASN.1 error when the wrong key's output happens to unpad); several
    # wrong passwords so the rarer path is walked too.
    for n in range(8):
        with pytest.raises(ConfigurationError, match="password") as caught:
            AzureCredential.from_env({**env, "AZURE_CLIENT_CERTIFICATE_PASSWORD": f"wrong-{n}"})
        assert f"wrong-{n}" not in str(caught.value)


@pytest.mark.parametrize(
    "blueprint", ["ENTRA_PASSTHROUGH_BLUEPRINT_CLIENT_ID", "FOUNDRY_AGENT_BLUEPRINT_CLIENT_ID"]
)
def test_a_blueprint_without_an_agent_identity_names_the_missing_variable(blueprint: str) -> None:
    env = {blueprint: "5fa4fd49-7f65-5b31-ba73-1a56afa629dd", "AZURE_TENANT_ID": "tenant-a"}
    with pytest.raises(ConfigurationError) as info:
        TokenChain.from_env(env)
    text = str(info.value)
    assert blueprint in text
    assert "ENTRA_PASSTHROUGH_AGENT_IDENTITY_ID" in text
    assert "FOUNDRY_AGENT_INSTANCE_CLIENT_ID" in text
    assert info.value.fix is not None
    assert "ENTRA_PASSTHROUGH_AGENT_IDENTITY_ID" in info.value.fix


def test_a_blueprint_without_a_credential_is_named_as_the_blueprint() -> None:
    env = {
        "ENTRA_PASSTHROUGH_BLUEPRINT_CLIENT_ID": "5fa4fd49-7f65-5b31-ba73-1a56afa629dd",
        "ENTRA_PASSTHROUGH_AGENT_IDENTITY_ID": "3ae650bf-1a89-558e-b852-f6946a922169",
        "AZURE_TENANT_ID": "979269af-69e0-5206-a3f3-b961c29811d3",
    }
    with pytest.raises(ConfigurationError) as info:
        AgentIdentityOnBehalfOf.from_env(env)
    text = str(info.value)
    assert "no client credential for the agent identity blueprint" in text
    assert "OBO app" not in text


def test_a_blueprint_beside_a_managed_identity_without_an_agent_identity_is_warned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = {
        "FOUNDRY_AGENT_BLUEPRINT_CLIENT_ID": "5fa4fd49-7f65-5b31-ba73-1a56afa629dd",
        "AZURE_CLIENT_ID": "7f3e44cc-413a-56ff-b570-68f048922b41",
        "ENTRA_PASSTHROUGH_POLICY": "user_or_app",
    }
    with caplog.at_level("WARNING", logger="entra_passthrough"):
        chain = TokenChain.from_env(env)
    chain.close()
    assert [type(s) for s in chain.sources] == [ManagedIdentity]
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("FOUNDRY_AGENT_BLUEPRINT_CLIENT_ID" in m and "not used" in m for m in warned)
