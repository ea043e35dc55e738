"""Configuration that can never work is refused when the source is built, naming the variable
(or the argument), instead of failing every caller at the first request:

- a tenant compared with the callers' ``tid`` claims (``AZURE_TENANT_ID`` as the allow-list,
  ``ENTRA_PASSTHROUGH_ALLOWED_TENANTS`` / ``AZURE_ADDITIONALLY_ALLOWED_TENANTS`` entries,
  ``allowed_tenants=``) that is a domain, a GUID in braces or without dashes, a URL or a path;
  a domain stays accepted where only the authority uses it;
- ``ENTRA_PASSTHROUGH_CA_FILE`` missing, a folder, or with no certificate in it; a certificate
  the process does not trust is said to be that (not "connection failed ... transient"), is not
  retried, and does not fail another chain's request that trusts the right CA;
- ``ENTRA_PASSTHROUGH_CONSENT_REDIRECT_URI`` that Entra would refuse as a redirect URI;
- ``max_workers`` out of range (the value not echoed, the pool's own default named), an
  ``AZURE_AUTHORITY_HOST`` that cannot be a host name, ``authority_host=`` of another type, a
  client id wrapped in quotes or braces.

Real MSAL against the emulator over HTTPS.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import requests

from _support.certificates import rsa_key, self_signed
from entra_passthrough import (
    AgentIdentityOnBehalfOf,
    AppCredential,
    ConfigurationError,
    DelegatedConsent,
    Keyring,
    ManagedIdentity,
    MemoryStore,
    OnBehalfOf,
    SourceUnavailable,
    TokenChain,
    bind_caller,
)
from entra_passthrough._http import SHARED_THROTTLE
from entra_passthrough.testing import EntraEmulator

from .conftest import mcp_scope

GUID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
OTHER = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
CLIENT = "11111111-2222-3333-4444-555555555555"
SECRET = "Qx8Q~not-a-real-secret-0123456789abcdefgh"


def obo_env(idp: EntraEmulator, **over: str) -> dict[str, str]:
    return {
        "ENTRA_PASSTHROUGH_CLIENT_ID": idp.agent.client_id,
        "AZURE_TENANT_ID": idp.tenant_id,
        "ENTRA_PASSTHROUGH_CLIENT_SECRET": idp.agent.secret or "",
        "AZURE_AUTHORITY_HOST": idp.url,
        "ENTRA_PASSTHROUGH_CA_FILE": idp.ca_file,
        **over,
    }


def domain_of(idp: EntraEmulator) -> str:
    return next(t for t in idp.world.tenants if t.id == idp.tenant_id).domain


def _build_and_close(make: Any) -> None:
    make().close()


def refused(make: Any, *names: str, hidden: str | None = None) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as info:
        _build_and_close(make)
    text = str(info.value)
    for name in names:
        assert name in text, text
    assert info.value.fix, text
    if hidden is not None:
        assert hidden not in text, text
    return info.value


# -- F1: tenants compared with the callers' tid claims --------------------------------------------


def test_a_domain_as_the_only_allowed_tenant_is_refused_at_build(idp: EntraEmulator) -> None:
    domain = domain_of(idp)
    error = refused(
        lambda: TokenChain.from_env(obo_env(idp, AZURE_TENANT_ID=domain)),
        "AZURE_TENANT_ID",
        "domain",
        "tid",
        hidden=domain,
    )
    assert "GUID" in (error.fix or "")
    # The constructor: the same refusal, naming the argument.
    refused(
        lambda: OnBehalfOf(
            client_id=CLIENT, tenant_id="contoso.onmicrosoft.com", client_secret=SECRET
        ),
        "OnBehalfOf",
        "tenant_id",
    )


def test_a_domain_used_only_as_the_authority_keeps_working(idp: EntraEmulator) -> None:
    # With the allow-list given as GUIDs, the home tenant is only the authority (a domain works
    # there): the exchange goes to the caller's own tenant.
    env = obo_env(
        idp, AZURE_TENANT_ID=domain_of(idp), ENTRA_PASSTHROUGH_ALLOWED_TENANTS=idp.tenant_id
    )
    chain = TokenChain.from_env(env)
    try:
        with bind_caller(token=idp.user_token("alice", audience=idp.agent.client_id)):
            assert chain.get_token(mcp_scope(idp)).token
    finally:
        chain.close()


@pytest.mark.parametrize(
    "variable", ["ENTRA_PASSTHROUGH_ALLOWED_TENANTS", "AZURE_ADDITIONALLY_ALLOWED_TENANTS"]
)
@pytest.mark.parametrize(
    "entry",
    [
        "contoso.onmicrosoft.com",
        "{" + GUID + "}",
        "https://login.microsoftonline.com/" + GUID,
        GUID + "/v2.0",
        GUID.replace("-", ""),
        "organizations",
    ],
)
def test_an_allow_list_entry_no_tid_can_equal_is_refused_naming_its_variable(
    idp: EntraEmulator, variable: str, entry: str
) -> None:
    env = obo_env(idp, **{variable: f"{idp.tenant_id},{entry}"})
    shown = entry == "organizations"  # a tenant-less authority is named, as elsewhere
    refused(lambda: TokenChain.from_env(env), variable, "tid", hidden=None if shown else entry)


def test_the_home_tenant_joining_the_additional_tenants_must_be_a_guid(
    idp: EntraEmulator,
) -> None:
    env = obo_env(idp, AZURE_TENANT_ID=domain_of(idp), AZURE_ADDITIONALLY_ALLOWED_TENANTS=OTHER)
    refused(lambda: TokenChain.from_env(env), "AZURE_TENANT_ID", "domain")


@pytest.mark.parametrize("entry", ["contoso.onmicrosoft.com", "{" + GUID + "}", "a/b"])
def test_allowed_tenants_of_the_constructors_are_checked_too(entry: str) -> None:
    def obo() -> OnBehalfOf:
        return OnBehalfOf(
            client_id=CLIENT, tenant_id=GUID, client_secret=SECRET, allowed_tenants=[GUID, entry]
        )

    refused(obo, "OnBehalfOf", "allowed_tenants", hidden=entry)


def test_agent_id_names_the_tenant_variable_it_read() -> None:
    env = {
        "FOUNDRY_AGENT_BLUEPRINT_CLIENT_ID": CLIENT,
        "FOUNDRY_AGENT_INSTANCE_CLIENT_ID": OTHER,
        "FOUNDRY_AGENT_TENANT_ID": "contoso.onmicrosoft.com",
        "ENTRA_PASSTHROUGH_CLIENT_SECRET": SECRET,
    }
    refused(lambda: AgentIdentityOnBehalfOf.from_env(env), "FOUNDRY_AGENT_TENANT_ID", "domain")
    refused(
        lambda: AgentIdentityOnBehalfOf(
            agent_identity_id=OTHER,
            blueprint_client_id=CLIENT,
            tenant_id="contoso.onmicrosoft.com",
            client_secret=SECRET,
        ),
        "AgentIdentityOnBehalfOf",
        "tenant_id",
    )


def _consent(**over: Any) -> DelegatedConsent:
    return DelegatedConsent(
        **{
            "client_id": CLIENT,
            "tenant_id": GUID,
            "client_secret": SECRET,
            "store": MemoryStore(),
            "keyring": Keyring.generate(),
            "broker_url": "https://broker.contoso.com/consent",
            **over,
        }
    )


def test_the_consent_allow_list_keeps_domains_and_refuses_what_is_no_tenant() -> None:
    # The consent app's own tenant written as configured: matched through discovery's issuer.
    own = "contoso.onmicrosoft.com"
    _consent(tenant_id=own, allowed_tenants=[GUID, own.upper()]).close()
    # Another domain matches no caller's tid (a GUID): refused (tests/resolve/
    # test_delegated_allowed_tenant_domains.py says more).
    for entry in ("{" + GUID + "}", "https://contoso.com", "a/b", own):
        refused(lambda e=entry: _consent(allowed_tenants=[e]), "allowed_tenants", hidden=entry)


# -- F2 / F6: the CA file and TLS trust -----------------------------------------------------------


def _not_pem(tmp_path: Path) -> str:
    path = tmp_path / "bundle.json"
    path.write_text('{"not": "a certificate"}')
    return str(path)


@pytest.mark.parametrize("case", ["missing", "folder", "not PEM", "empty"])
def test_a_ca_file_that_cannot_be_used_is_refused_at_build(
    idp: EntraEmulator, tmp_path: Path, case: str
) -> None:
    empty = tmp_path / "empty.pem"
    empty.write_text("")
    path = {
        "missing": str(tmp_path / "nowhere" / "ca.pem"),
        "folder": str(tmp_path),
        "not PEM": _not_pem(tmp_path),
        "empty": str(empty),
    }[case]
    env = obo_env(idp, ENTRA_PASSTHROUGH_CA_FILE=path)
    error = refused(lambda: TokenChain.from_env(env), "ENTRA_PASSTHROUGH_CA_FILE")
    assert "ENTRA_PASSTHROUGH_CA_FILE" in (error.fix or "")
    # The workload identity and the consent app read the same variable, the same way.
    mi_env = {
        "AZURE_FEDERATED_TOKEN_FILE": str(empty),
        "AZURE_TENANT_ID": idp.tenant_id,
        "AZURE_CLIENT_ID": CLIENT,
        "AZURE_AUTHORITY_HOST": idp.url,
        "ENTRA_PASSTHROUGH_CA_FILE": path,
    }
    refused(lambda: ManagedIdentity.from_env(mi_env), "ENTRA_PASSTHROUGH_CA_FILE")
    consent_env = {
        "ENTRA_PASSTHROUGH_CONSENT_CLIENT_ID": CLIENT,
        "AZURE_TENANT_ID": GUID,
        "ENTRA_PASSTHROUGH_CONSENT_CLIENT_SECRET": SECRET,
        "ENTRA_PASSTHROUGH_CONSENT_KEYS": "k1:" + "A" * 43,
        "ENTRA_PASSTHROUGH_CONSENT_BROKER_URL": "https://agent.contoso.com/consent",
        "ENTRA_PASSTHROUGH_CA_FILE": path,
    }
    refused(lambda: DelegatedConsent.from_env(consent_env), "ENTRA_PASSTHROUGH_CA_FILE")


def _other_ca(tmp_path: Path) -> str:
    cert = self_signed(rsa_key(), days_from=-1, days_to=30, name="another-ca.example")
    from cryptography.hazmat.primitives import serialization

    path = tmp_path / "other-ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


def _get(chain: TokenChain, idp: EntraEmulator) -> Any:
    with bind_caller(token=idp.user_token("alice", audience=idp.agent.client_id)):
        return chain.get_token(mcp_scope(idp))


def test_an_untrusted_certificate_is_said_to_be_one_and_not_retried(
    idp: EntraEmulator, tmp_path: Path
) -> None:
    SHARED_THROTTLE.clear()
    env = obo_env(idp, ENTRA_PASSTHROUGH_CA_FILE=_other_ca(tmp_path))
    chain = TokenChain.from_env(env)  # a readable bundle: only the handshake can tell
    started = time.monotonic()
    try:
        with pytest.raises(SourceUnavailable) as info:
            _get(chain, idp)
    finally:
        chain.close()
    text = str(info.value)
    assert "certificate" in text, text
    assert "not signed by a CA this process trusts" in text, text
    assert "ENTRA_PASSTHROUGH_CA_FILE" in (info.value.fix or ""), text
    assert "REQUESTS_CA_BUNDLE" in (info.value.fix or ""), text
    assert "transient" not in text, text
    assert "attempts" not in text, text  # not retried
    assert info.value.failure == "TLS certificate not trusted"
    assert time.monotonic() - started < 2.0  # no backoff between retries


def test_a_ca_bundle_the_given_session_cannot_load_is_named(
    idp: EntraEmulator, tmp_path: Path
) -> None:
    SHARED_THROTTLE.clear()
    session = requests.Session()
    session.trust_env = False  # else REQUESTS_CA_BUNDLE wins over verify
    session.verify = str(tmp_path / "nowhere.pem")
    source = OnBehalfOf(
        client_id=idp.agent.client_id,
        tenant_id=idp.tenant_id,
        client_secret=idp.agent.secret,
        authority_host=idp.url,
        http_client=session,
    )
    try:
        with pytest.raises(SourceUnavailable) as info:
            _get(TokenChain([source]), idp)
    finally:
        source.close()
        session.close()
    assert info.value.failure == "CA bundle unreadable", str(info.value)
    assert "ENTRA_PASSTHROUGH_CA_FILE" in (info.value.fix or "")


def test_one_chains_untrusted_certificate_does_not_fail_another_chains_request(
    idp: EntraEmulator, tmp_path: Path
) -> None:
    """A config reload, doctor-then-serve, two chains for two CAs: the process-wide negative
    cache must not answer the right chain's first request with the wrong chain's failure."""
    SHARED_THROTTLE.clear()
    wrong = TokenChain.from_env(obo_env(idp, ENTRA_PASSTHROUGH_CA_FILE=_other_ca(tmp_path)))
    try:
        with pytest.raises(SourceUnavailable):
            _get(wrong, idp)
    finally:
        wrong.close()
    right = TokenChain.from_env(obo_env(idp))
    try:
        assert _get(right, idp).token
    finally:
        right.close()


# -- F5: the consent redirect URI ------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "not a url",
        "api://x",
        "http://agent.contoso.com/callback",
        "http://app.localhost:3000/cb",
        "https://agent.contoso.com/cb#frag",
        "https://user:pw@agent.contoso.com/cb",
        "/consent/callback",
        "https://agent.contoso.com/" + "x" * 260,
    ],
)
def test_a_redirect_uri_entra_would_refuse_is_refused_at_build(
    idp: EntraEmulator, value: str
) -> None:
    env = obo_env(idp, ENTRA_PASSTHROUGH_CONSENT_REDIRECT_URI=value)
    refused(lambda: TokenChain.from_env(env), "ENTRA_PASSTHROUGH_CONSENT_REDIRECT_URI")
    refused(
        lambda: OnBehalfOf(
            client_id=CLIENT, tenant_id=GUID, client_secret=SECRET, consent_redirect_uri=value
        ),
        "consent_redirect_uri",
    )


@pytest.mark.parametrize(
    "value",
    [
        "https://agent.contoso.com/consent/callback",
        "https://agent.contoso.com/cb?tenant=x",
        "http://localhost:8080/callback",
        "http://127.0.0.1/callback",
    ],
)
def test_a_redirect_uri_entra_takes_is_accepted(idp: EntraEmulator, value: str) -> None:
    TokenChain.from_env(obo_env(idp, ENTRA_PASSTHROUGH_CONSENT_REDIRECT_URI=value)).close()


# -- F8 / F4: messages and types ----------------------------------------------------------------


def test_max_workers_out_of_range_names_the_range_and_the_pools_own_default() -> None:
    value = "123456789012345"
    base = {
        "ENTRA_PASSTHROUGH_CLIENT_ID": CLIENT,
        "AZURE_TENANT_ID": GUID,
        "ENTRA_PASSTHROUGH_CLIENT_SECRET": SECRET,
        "ENTRA_PASSTHROUGH_MAX_WORKERS": value,
        "IDENTITY_ENDPOINT": "http://127.0.0.1:9/msi",
        "IDENTITY_HEADER": "h",
    }
    obo = refused(lambda: OnBehalfOf.from_env(base), "1024", hidden=value)
    assert "default 64" in (obo.fix or "")
    mi = refused(lambda: ManagedIdentity.from_env(base), "1024", hidden=value)
    assert "default 4" in (mi.fix or ""), str(mi)
    assert "default 64" not in str(mi)


@pytest.mark.parametrize(
    "host", ["{" + GUID + "}", "https://{host}", "-1", "https://-bad-.example"]
)
def test_an_authority_host_that_cannot_be_a_host_name_is_refused(
    idp: EntraEmulator, host: str
) -> None:
    env = obo_env(idp, AZURE_AUTHORITY_HOST=host)
    error = refused(lambda: TokenChain.from_env(env), "host name")
    assert "AZURE_AUTHORITY_HOST" in (error.fix or "")


@pytest.mark.parametrize(
    "host", ["https://my_emulator:8443", "https://[::1]:8443", "login.microsoftonline.us."]
)
def test_host_names_of_containers_ip_literals_and_fqdns_stay_accepted(host: str) -> None:
    AppCredential(client_id=CLIENT, tenant_id=GUID, client_secret=SECRET, authority_host=host)


@pytest.mark.parametrize(
    "value", [5, ["https://login.microsoftonline.com"], b"https://x", {}, True]
)
def test_an_authority_host_of_another_type_is_a_configuration_error(value: Any) -> None:
    for make in (
        lambda: OnBehalfOf(
            client_id=CLIENT, tenant_id=GUID, client_secret=SECRET, authority_host=value
        ),
        lambda: DelegatedConsent(
            client_id=CLIENT,
            tenant_id=GUID,
            client_secret=SECRET,
            store=MemoryStore(),
            keyring=Keyring.generate(),
            broker_url="https://broker.contoso.com/consent",
            authority_host=value,
        ),
        lambda: AppCredential(
            client_id=CLIENT, tenant_id=GUID, client_secret=SECRET, authority_host=value
        ),
    ):
        refused(make, "authority_host", "must be a string")
    refused(
        lambda: AppCredential(
            client_id=CLIENT,
            tenant_id=GUID,
            client_secret=SECRET,
            authority_host=None,  # type: ignore[arg-type]
        ),
        "authority_host",
    )


@pytest.mark.parametrize("value", [f'"{CLIENT}"', f"'{CLIENT}'", "{" + CLIENT + "}"])
def test_a_client_id_in_quotes_or_braces_is_refused_naming_the_variable(value: str) -> None:
    base = {"AZURE_TENANT_ID": GUID, "ENTRA_PASSTHROUGH_CLIENT_SECRET": SECRET}
    refused(
        lambda: OnBehalfOf.from_env({**base, "ENTRA_PASSTHROUGH_CLIENT_ID": value}),
        "ENTRA_PASSTHROUGH_CLIENT_ID",
    )
    agent = {**base, "ENTRA_PASSTHROUGH_AGENT_IDENTITY_ID": OTHER}
    refused(
        lambda: AgentIdentityOnBehalfOf.from_env(
            {**agent, "ENTRA_PASSTHROUGH_BLUEPRINT_CLIENT_ID": value}
        ),
        "ENTRA_PASSTHROUGH_BLUEPRINT_CLIENT_ID",
    )
    refused(
        lambda: AgentIdentityOnBehalfOf.from_env(
            {
                **agent,
                "ENTRA_PASSTHROUGH_BLUEPRINT_CLIENT_ID": CLIENT,
                "ENTRA_PASSTHROUGH_AGENT_IDENTITY_ID": value,
            }
        ),
        "ENTRA_PASSTHROUGH_AGENT_IDENTITY_ID",
    )


def test_additional_tenants_separated_as_azure_identity_writes_them() -> None:
    # azure-identity separates AZURE_ADDITIONALLY_ALLOWED_TENANTS with ';': read as one entry,
    # that list matched no caller of either tenant (and is now refused as no tenant id).
    base = {
        "ENTRA_PASSTHROUGH_CLIENT_ID": CLIENT,
        "AZURE_TENANT_ID": GUID,
        "ENTRA_PASSTHROUGH_CLIENT_SECRET": SECRET,
    }
    source = OnBehalfOf.from_env(
        {**base, "AZURE_ADDITIONALLY_ALLOWED_TENANTS": f"{OTHER};{CLIENT}"}
    )
    try:
        assert source.allowed_tenants == {GUID, OTHER, CLIENT}
    finally:
        source.close()
