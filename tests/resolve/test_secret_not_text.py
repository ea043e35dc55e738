"""A client secret holding bytes that are not text (a ``.env`` saved as Latin-1: Python keeps
the bytes as surrogates) is a ``ConfigurationError`` naming its variable when the source is
built, never showing the value. It was sent to the token request, could not be encoded, and
failed as "the connection to Entra failed after 3 attempts" (retried), at run time and in
``doctor``."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from entra_passthrough import (
    AzureCredential,
    ConfigurationError,
    DelegatedConsent,
    MemoryStore,
    TokenChain,
)
from entra_passthrough._doctor import FAIL, run, table
from entra_passthrough._http import SHARED_THROTTLE
from entra_passthrough.testing import EntraEmulator

#: The text part of the secret: no message may show it.
TAIL = "Zq7-secret-tail-of-the-value"
NOT_TEXT = os.fsdecode(b"\xe9" + TAIL.encode())


@pytest.fixture(scope="module")
def idp() -> Iterator[EntraEmulator]:
    with EntraEmulator() as emulator:
        yield emulator


def _obo(idp: EntraEmulator, secret: str) -> dict[str, str]:
    return {
        "AZURE_TENANT_ID": idp.tenant_id,
        "AZURE_AUTHORITY_HOST": idp.url,
        "ENTRA_PASSTHROUGH_CA_FILE": idp.ca_file,
        "ENTRA_PASSTHROUGH_CLIENT_ID": idp.agent.client_id,
        "ENTRA_PASSTHROUGH_CLIENT_SECRET": secret,
    }


def _refused(info: pytest.ExceptionInfo[ConfigurationError], variable: str) -> None:
    text = f"{info.value} {info.value!r} {info.value.fix}"
    assert variable in str(info.value)
    assert "not text" in str(info.value)
    assert TAIL not in text
    assert "\\xe9" not in text
    assert "\\udce9" not in text


def test_the_chain_refuses_it_at_start_up(idp: EntraEmulator) -> None:
    with pytest.raises(ConfigurationError) as info:
        TokenChain.from_env(_obo(idp, NOT_TEXT))
    _refused(info, "ENTRA_PASSTHROUGH_CLIENT_SECRET")


def test_the_consent_app_and_azure_credential_refuse_it(idp: EntraEmulator) -> None:
    env = {
        "AZURE_TENANT_ID": idp.tenant_id,
        "AZURE_AUTHORITY_HOST": idp.url,
        "ENTRA_PASSTHROUGH_CA_FILE": idp.ca_file,
        "ENTRA_PASSTHROUGH_CONSENT_CLIENT_ID": idp.agent.client_id,
        "ENTRA_PASSTHROUGH_CONSENT_CLIENT_SECRET": NOT_TEXT,
        "ENTRA_PASSTHROUGH_CONSENT_KEYS": "k1:" + "A" * 43,
        "ENTRA_PASSTHROUGH_CONSENT_BROKER_URL": "https://consent.contoso.com",
    }
    with pytest.raises(ConfigurationError) as info:
        DelegatedConsent.from_env(env, store=MemoryStore())
    _refused(info, "ENTRA_PASSTHROUGH_CONSENT_CLIENT_SECRET")
    with pytest.raises(ConfigurationError) as info:
        AzureCredential.from_env(
            {
                "AZURE_TENANT_ID": idp.tenant_id,
                "AZURE_CLIENT_ID": "c",
                "AZURE_CLIENT_SECRET": NOT_TEXT,
            }
        )
    _refused(info, "AZURE_CLIENT_SECRET")


def test_doctor_says_configuration_not_transport(idp: EntraEmulator) -> None:
    checks = run(_obo(idp, NOT_TEXT))
    failed = {c.name: c for c in checks if c.status == FAIL}
    assert "configuration" in failed, table(checks)
    assert "ENTRA_PASSTHROUGH_CLIENT_SECRET" in failed["configuration"].detail
    assert "client credential" not in failed, table(checks)
    text = table(checks)
    assert "Transport" not in text
    assert "connection to Entra failed" not in text
    assert TAIL not in text


def test_a_text_secret_still_gets_tokens(idp: EntraEmulator) -> None:
    SHARED_THROTTLE.clear()  # a failure an earlier test provoked must not answer for Entra
    checks = run(_obo(idp, idp.agent.secret))
    assert not [c for c in checks if c.status == FAIL], table(checks)


def test_a_secret_that_is_not_text_is_refused_in_code_too() -> None:
    """``OnBehalfOf(client_secret=...)``: the same refusal as the variable's, naming the
    argument, never the value."""
    from entra_passthrough import OnBehalfOf

    with pytest.raises(ConfigurationError) as info:
        OnBehalfOf(
            client_id="6cd0b7f2-2473-5d24-a86c-13c1e27b8228",
            tenant_id="979269af-69e0-5206-a3f3-b961c29811d3",
            client_secret=NOT_TEXT,
        )
    assert "client_secret" in str(info.value)
    assert "not text" in str(info.value)
    assert TAIL not in f"{info.value} {info.value!r} {info.value.fix}"
