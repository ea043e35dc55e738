"""``allowed_tenants`` of ``DelegatedConsent`` and the consent broker lists tenants whose
*verified* callers sign in at their own tenant; each entry is compared with the caller's ``tid``
claim, a GUID. Only the consent app's own tenant is also matched by its domain (its discovery
document's issuer names its GUID). Another tenant's domain matched no caller: a member of that
tenant got a link to the configured tenant's sign-in, refused AADSTS50020 every time, and at
``organizations`` the broker refused their id token. Such an entry is a ``ConfigurationError``
when the source is built, naming the setting, with the fix; the value is never echoed."""

from __future__ import annotations

from typing import Any

import pytest

from entra_passthrough import ConfigurationError, DelegatedConsent, Keyring, MemoryStore
from entra_passthrough.consent import ConsentBroker

CONTOSO = "72f988bf-86f1-41af-91ab-2d7cd011db47"
FABRIKAM = "0b1f3d5e-7a9c-4e2f-8d6b-1c3e5a7f9b2d"
CLIENT = "11111111-2222-3333-4444-555555555555"
SECRET = "Qx8Q~not-a-real-secret-0123456789abcdefgh"
KEYS = "k1:" + "A" * 43
DOMAIN = "fabrikam-unlisted.onmicrosoft.com"


def _consent(tenant_id: str, allowed: list[str]) -> DelegatedConsent:
    return DelegatedConsent(
        client_id=CLIENT,
        tenant_id=tenant_id,
        client_secret=SECRET,
        broker_url="https://agent.example/consent",
        store=MemoryStore(),
        keyring=Keyring.generate(),
        allowed_tenants=allowed,
    )


def _broker(tenant_id: str, allowed: list[str]) -> ConsentBroker:
    return ConsentBroker(
        store=MemoryStore(),
        keyring=Keyring.generate(),
        redirect_uris=["https://broker.example/callback"],
        client_id=CLIENT,
        tenant_id=tenant_id,
        client_secret=SECRET,
        allowed_tenants=allowed,
    )


def _refused(build: Any, *, names: str) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as info:
        build()
    error = info.value
    text = str(error)
    assert "allowed_tenants" in text
    assert names in text
    assert "domain name" in text
    assert "tid" in text
    assert error.fix
    assert "GUID" in error.fix
    assert DOMAIN not in text
    assert DOMAIN not in (error.fix or "")
    return error


@pytest.mark.parametrize("tenant_id", [CONTOSO, "organizations", "contoso.onmicrosoft.com"])
def test_another_tenants_domain_is_refused_when_the_source_is_built(tenant_id: str) -> None:
    error = _refused(lambda: _consent(tenant_id, [CONTOSO, DOMAIN]), names="DelegatedConsent")
    assert "ENTRA_PASSTHROUGH_ALLOWED_TENANTS" in str(error)


def test_the_broker_refuses_it_too() -> None:
    _refused(lambda: _broker(CONTOSO, [CONTOSO, DOMAIN.upper()]), names="ConsentBroker")


def test_from_env_refuses_it_naming_the_variable() -> None:
    env = {
        "ENTRA_PASSTHROUGH_CONSENT_CLIENT_ID": CLIENT,
        "AZURE_TENANT_ID": CONTOSO,
        "ENTRA_PASSTHROUGH_CONSENT_CLIENT_SECRET": SECRET,
        "ENTRA_PASSTHROUGH_CONSENT_BROKER_URL": "https://broker.contoso.com/consent",
        "ENTRA_PASSTHROUGH_CONSENT_KEYS": KEYS,
        "ENTRA_PASSTHROUGH_ALLOWED_TENANTS": f"{CONTOSO}, {DOMAIN}",
    }
    error = _refused(
        lambda: DelegatedConsent.from_env(env, store=MemoryStore()), names="DelegatedConsent"
    )
    assert "ENTRA_PASSTHROUGH_ALLOWED_TENANTS" in str(error)


def test_the_consent_apps_own_tenant_by_domain_and_other_tenants_by_guid_are_accepted() -> None:
    # The own tenant is matched through discovery's issuer (any case, surrounding blanks).
    source = _consent("contoso.onmicrosoft.com", [" CONTOSO.onmicrosoft.com ", FABRIKAM.upper()])
    try:
        assert source.client.allowed_tenants == ("contoso.onmicrosoft.com", FABRIKAM)
    finally:
        source.close()
    broker = _broker("contoso.onmicrosoft.com", ["contoso.onmicrosoft.com", FABRIKAM])
    broker.close()


def test_a_tenantless_authority_named_as_an_entry_is_still_refused() -> None:
    # "organizations" names no tenant: as an entry it matched no caller even when it is the
    # configured authority.
    with pytest.raises(ConfigurationError) as info:
        _consent("organizations", ["organizations", CONTOSO])
    assert "names no tenant" in str(info.value)
