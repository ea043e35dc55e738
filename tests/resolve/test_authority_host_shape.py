"""An authority host that is more or less than ``https://host[:port]`` is refused when the chain
is built (``ConfigurationError`` naming AZURE_AUTHORITY_HOST), not on every call with a bare
"ValueError."; an authority MSAL refuses at call time gets a fix naming it; and
``AzureCredential.from_env`` raises ``ConfigurationError``, never azure-identity's bare
``ValueError``. Real MSAL and azure-identity, the emulator over HTTPS."""

from __future__ import annotations

import pytest

from entra_passthrough import (
    AzureCredential,
    ConfigurationError,
    SourceUnavailable,
    TokenChain,
    bind_caller,
)
from entra_passthrough.testing import EntraEmulator

from .conftest import make_obo


def obo_env(idp: EntraEmulator, **over: str) -> dict[str, str]:
    return {
        "ENTRA_PASSTHROUGH_CLIENT_ID": idp.agent.client_id,
        "AZURE_TENANT_ID": idp.tenant_id,
        "ENTRA_PASSTHROUGH_CLIENT_SECRET": idp.agent.secret or "",
        "AZURE_AUTHORITY_HOST": idp.url,
        "ENTRA_PASSTHROUGH_CA_FILE": idp.ca_file,
        **over,
    }


BAD_HOSTS = [
    ("{url}/{tenant}", "path"),  # an MSAL *authority* where the host goes
    ("{url}/organizations", "path"),
    ("{url}?x=1", "query"),
    ("{url}/?x=1", "query"),
    ("{url}#frag", "fragment"),
    ("https://", "no host"),
    ("https:///{tenant}", "no host"),
    ("https://user:hunter2-password@{host}", "user info"),
    ("https://lögin.example", "ASCII"),
    ("https://login .example", "ASCII"),
]


@pytest.mark.parametrize(("template", "needle"), BAD_HOSTS)
def test_the_chain_refuses_an_authority_host_that_is_not_a_host(
    idp: EntraEmulator, template: str, needle: str
) -> None:
    host = template.format(url=idp.url, tenant=idp.tenant_id, host=idp.url.split("://", 1)[1])
    with pytest.raises(ConfigurationError) as info:
        TokenChain.from_env(obo_env(idp, AZURE_AUTHORITY_HOST=host))
    assert needle in str(info.value)
    assert info.value.fix is not None
    assert "AZURE_AUTHORITY_HOST" in info.value.fix
    assert "https://login.microsoftonline.com" in info.value.fix
    assert "hunter2" not in str(info.value)  # user info may be a password


def test_a_host_with_a_port_and_a_trailing_slash_still_works(idp: EntraEmulator) -> None:
    chain = TokenChain.from_env(obo_env(idp, AZURE_AUTHORITY_HOST=idp.url.upper() + "/"))
    # Upper-case host: still the emulator (hosts ignore case); the token flow works.
    with bind_caller(token=idp.user_token("alice", audience=idp.agent.client_id)):
        result = chain.get_token([f"{idp.mcp.app_id_uri}/access_as_user"])
    assert result.token
    chain.close()


def test_an_authority_msal_refuses_at_call_time_names_the_variables(idp: EntraEmulator) -> None:
    """The tenant's OpenID configuration answers 404 (a host that is not Entra's, a tenant the
    host does not know): MSAL raises a ValueError from its authority code; the error says what
    to check instead of "ValueError." with no fix."""
    chain = TokenChain([make_obo(idp)])
    idp.inject_fault("discovery", status=404, count=10)
    with (
        bind_caller(token=idp.user_token("alice", audience=idp.agent.client_id)),
        pytest.raises(SourceUnavailable) as info,
    ):
        chain.get_token([f"{idp.mcp.app_id_uri}/access_as_user"])
    assert info.value.fix is not None
    assert "AZURE_AUTHORITY_HOST" in info.value.fix
    assert "AZURE_TENANT_ID" in info.value.fix
    assert "OIDC Discovery" not in str(info.value)  # MSAL's text (with the answer) not shown
    chain.close()


AZURE_BASE = {
    "AZURE_TENANT_ID": "979269af-69e0-5206-a3f3-b961c29811d3",
    "AZURE_CLIENT_ID": "6cd0b7f2-2473-5d24-a86c-13c1e27b8228",
    "AZURE_CLIENT_SECRET": "x" * 40,
}


@pytest.mark.parametrize(
    ("over", "variable"),
    [
        ({"AZURE_AUTHORITY_HOST": "http://login.microsoftonline.com"}, "AZURE_AUTHORITY_HOST"),
        ({"AZURE_AUTHORITY_HOST": "https://login.microsoftonline.com/t"}, "AZURE_AUTHORITY_HOST"),
        ({"AZURE_AUTHORITY_HOST": "https://"}, "AZURE_AUTHORITY_HOST"),
        ({"AZURE_TENANT_ID": "contoso.onmicrosoft.com/x"}, "AZURE_TENANT_ID"),
        ({"AZURE_TENANT_ID": "tënant"}, "AZURE_TENANT_ID"),
    ],
)
def test_azure_credential_from_env_raises_configuration_error(
    over: dict[str, str], variable: str
) -> None:
    for credential in ("secret", "certificate"):
        env = {**AZURE_BASE, **over}
        if credential == "certificate":
            del env["AZURE_CLIENT_SECRET"]
            env["AZURE_CLIENT_CERTIFICATE_PATH"] = "/nonexistent/cert.pem"
        with pytest.raises(ConfigurationError) as info:
            AzureCredential.from_env(env)
        assert variable in str(info.value), (credential, str(info.value))
        assert "cannot be opened" not in str(info.value)  # not blamed on the certificate


def test_azure_credential_from_env_still_builds(idp: EntraEmulator) -> None:
    """The checks leave a good configuration alone (a trailing slash included)."""
    env = {
        "AZURE_TENANT_ID": idp.tenant_id,
        "AZURE_CLIENT_ID": idp.agent.client_id,
        "AZURE_CLIENT_SECRET": idp.agent.secret or "",
        "AZURE_AUTHORITY_HOST": idp.url + "/",
    }
    source = AzureCredential.from_env(env)
    assert source.credential is not None
    source.close()


def test_a_bad_boolean_is_not_reported_as_an_unreadable_certificate() -> None:
    env = {
        **AZURE_BASE,
        "AZURE_CLIENT_CERTIFICATE_PATH": "/nonexistent/cert.pem",
        "AZURE_CLIENT_SEND_CERTIFICATE_CHAIN": "maybe",
    }
    del env["AZURE_CLIENT_SECRET"]
    with pytest.raises(ConfigurationError, match="AZURE_CLIENT_SEND_CERTIFICATE_CHAIN"):
        AzureCredential.from_env(env)
