"""``ENTRA_PASSTHROUGH_CONSENT_BROKER_URL`` whose host cannot be a host name (a space, a tab, a
byte that is not text, an empty label) is a ``ConfigurationError`` naming the variable when
``DelegatedConsent.from_env()`` builds the source, as the same shapes in
``AZURE_AUTHORITY_HOST`` are: it was accepted, and every consent link made from it was
unusable. The value is never shown."""

from __future__ import annotations

import os

import pytest

from entra_passthrough import ConfigurationError, DelegatedConsent, MemoryStore

VARIABLE = "ENTRA_PASSTHROUGH_CONSENT_BROKER_URL"
BASE = {
    "AZURE_TENANT_ID": "979269af-69e0-5206-a3f3-b961c29811d3",
    "ENTRA_PASSTHROUGH_CONSENT_CLIENT_ID": "6cd0b7f2-2473-5d24-a86c-13c1e27b8228",
    "ENTRA_PASSTHROUGH_CONSENT_CLIENT_SECRET": "consent-secret",
    "ENTRA_PASSTHROUGH_CONSENT_KEYS": "k1:" + "A" * 43,
}
#: A label a message must not show (the value is not echoed).
LABEL = "zq7secretlabel"


@pytest.mark.parametrize(
    "url",
    [
        f"https://{LABEL} .example/consent",
        f"https://{LABEL}\t.example",
        os.fsdecode(b"https://" + LABEL.encode() + b"\xff.example"),
        f"https://{LABEL}_x..com",
        f"https://{LABEL}.example:port/consent",
        f"http://{LABEL}\u00e9.example",
    ],
    ids=["space", "tab", "not-utf8", "empty-label", "port", "non-ascii"],
)
def test_a_host_that_cannot_be_one_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        DelegatedConsent.from_env({**BASE, VARIABLE: url}, store=MemoryStore())
    text = f"{info.value} {info.value!r} {info.value.fix}"
    assert VARIABLE in str(info.value)
    assert "host" in str(info.value)
    assert LABEL not in text
    assert info.value.fix


@pytest.mark.parametrize(
    "url",
    [
        "https://consent.contoso.com/consent",
        "https://consent.contoso.com:8443",
        "https://my_app.azurecontainerapps.io/",
        "http://127.0.0.1:8080/consent",
        "http://[::1]:8080",
    ],
)
def test_a_host_name_or_address_is_accepted(url: str) -> None:
    source = DelegatedConsent.from_env({**BASE, VARIABLE: url}, store=MemoryStore())
    try:
        assert source.broker_url == url.rstrip("/")
    finally:
        source.close()


@pytest.mark.parametrize(
    "url",
    [f"https://{LABEL} .example/consent", f"https://{LABEL}_x..com"],
    ids=["space", "empty-label"],
)
def test_a_host_that_cannot_be_one_is_refused_in_code_too(url: str) -> None:
    """``DelegatedConsent(broker_url=...)`` checks the host as the variable's reading does."""
    from entra_passthrough import Keyring

    with pytest.raises(ConfigurationError) as info:
        DelegatedConsent(
            client_id=BASE["ENTRA_PASSTHROUGH_CONSENT_CLIENT_ID"],
            tenant_id=BASE["AZURE_TENANT_ID"],
            client_secret="consent-secret",
            store=MemoryStore(),
            keyring=Keyring.generate(),
            broker_url=url,
        )
    assert "broker_url" in str(info.value)
    assert "host" in str(info.value)
    assert LABEL not in f"{info.value} {info.value!r} {info.value.fix}"
