"""DelegatedConsent(allowed_tenants=5) or bytes: a bare TypeError / AttributeError from deep
inside; it is a ConfigurationError saying a list of tenant ids is expected."""

from __future__ import annotations

from typing import Any

import pytest

from entra_passthrough import ConfigurationError, DelegatedConsent, Keyring, MemoryStore

TENANT = "11111111-1111-1111-1111-111111111111"


@pytest.mark.parametrize("value", [5, b"contoso.com", {"a": 1}, 1.5])
def test_allowed_tenants_that_is_no_list_is_a_configuration_error(value: Any) -> None:
    with pytest.raises(ConfigurationError) as info:
        DelegatedConsent(
            client_id="22222222-2222-2222-2222-222222222222",
            tenant_id=TENANT,
            client_secret="s",
            broker_url="https://agent.example/consent",
            store=MemoryStore(),
            keyring=Keyring.generate(),
            allowed_tenants=value,
        )
    assert "allowed_tenants" in str(info.value)
    assert f"not {type(value).__name__}" in str(info.value)
    assert info.value.fix
