"""The consent flow's URLs and durations are checked at construction, and a refusal shows a
URL's origin at most: a user name and password, a query or a fragment (where a key or password
may be) never reaches the message. ``broker_url`` with user info is refused: its password would
be in every consent link shown to users. ``state_lifetime="600"`` is a ``ConfigurationError``,
not a ``TypeError``."""

from __future__ import annotations

import math
import urllib.parse
from typing import Any

import pytest

from _support.consent import ConsentEnv, consent_link, platform_caller
from entra_passthrough import ConfigurationError, DelegatedConsent, Keyring, MemoryStore
from entra_passthrough.consent import ConsentBroker

SECRET = "S3cretPw0rdXYZ"


def refused(build: Any, *words: str) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as info:
        build()
    text = f"{info.value} {info.value!r} {info.value.fix}"
    assert SECRET not in text
    assert SECRET.lower() not in text.lower()
    assert info.value.fix, str(info.value)
    for word in words:
        assert word in str(info.value), str(info.value)
    return info.value


def _source(env: ConsentEnv, broker_url: str) -> DelegatedConsent:
    return DelegatedConsent(
        client_id=env.app.client_id,
        tenant_id=env.idp.tenant_id,
        client_secret=env.app.secret,
        store=MemoryStore(),
        keyring=Keyring.generate(),
        broker_url=broker_url,
        authority_host=env.idp.url,
        http_client=env.idp.msal_http_client(),
    )


def _broker(env: ConsentEnv, **options: Any) -> ConsentBroker:
    options.setdefault("redirect_uris", [env.redirect_uri])
    return ConsentBroker(
        client_id=env.app.client_id,
        tenant_id=env.idp.tenant_id,
        client_secret=env.app.secret,
        store=MemoryStore(),
        keyring=Keyring.generate(),
        authority_host=env.idp.url,
        **options,
    )


def _bad_urls(origin: str) -> list[str]:
    host = urllib.parse.urlsplit(origin).netloc
    return [
        f"https://admin:{SECRET}@{host}/consent",  # accepted before: the password in every link
        f"https://{SECRET}@{host}/consent",
        f"http://admin:{SECRET}@broker.contoso.com/consent",
        f"https://{host}/consent?code={SECRET}",
        f"https://{host}/consent?{SECRET}",
        f"https://{host}/consent#{SECRET}",
        f"ftp://{SECRET}/consent",
        SECRET,
    ]


def test_broker_url_refusals_quote_no_secret(consent_env: ConsentEnv) -> None:
    for url in _bad_urls(consent_env.base):
        refused(lambda url=url: _source(consent_env, url), "broker_url")


def test_broker_url_from_the_environment(consent_env: ConsentEnv) -> None:
    host = urllib.parse.urlsplit(consent_env.base).netloc
    environ = {
        "AZURE_TENANT_ID": consent_env.idp.tenant_id,
        "AZURE_AUTHORITY_HOST": consent_env.idp.url,
        "ENTRA_PASSTHROUGH_CONSENT_CLIENT_ID": consent_env.app.client_id,
        "ENTRA_PASSTHROUGH_CONSENT_CLIENT_SECRET": consent_env.app.secret,
        "ENTRA_PASSTHROUGH_CONSENT_KEYS": "k:" + "A" * 43,
        "ENTRA_PASSTHROUGH_CONSENT_BROKER_URL": f"https://admin:{SECRET}@{host}/consent",
    }
    error = refused(lambda: DelegatedConsent.from_env(environ), "broker_url", "password")
    assert "ENTRA_PASSTHROUGH_CONSENT_BROKER_URL" in (error.fix or "")
    assert f"https://{host}" in str(error)  # which URL: its origin


async def test_a_good_broker_url_makes_links_to_it(consent_env: ConsentEnv) -> None:
    source = _source(consent_env, consent_env.base + "/")
    try:
        link = await consent_link(source, consent_env, platform_caller("alice-links"))
    finally:
        source.close()
    assert link.startswith(consent_env.base + "/start?")
    assert "@" not in urllib.parse.urlsplit(link).netloc


def test_redirect_uri_refusals_quote_no_secret(consent_env: ConsentEnv) -> None:
    for url in _bad_urls(consent_env.base):
        refused(lambda url=url: _broker(consent_env, redirect_uris=[url]), "redirect URI")


def test_redirect_uris_as_one_string(consent_env: ConsentEnv) -> None:
    refused(lambda: _broker(consent_env, redirect_uris=consent_env.redirect_uri), "redirect_uris")


@pytest.mark.parametrize(
    "uri",
    [
        f"http://u:{SECRET}@broker.contoso.com/signed-out",
        f"https://u:{SECRET}@broker.contoso.com/signed-out",
        f"ftp://{SECRET}/signed-out",
        f"https://[::1/{SECRET}",
    ],
)
def test_post_logout_redirect_uri_refusals_quote_no_secret(
    consent_env: ConsentEnv, uri: str
) -> None:
    refused(lambda: _broker(consent_env, post_logout_redirect_uri=uri), "post_logout_redirect_uri")


@pytest.mark.parametrize("lifetime", ["600", None, math.nan, math.inf, 29, 3601, True])
def test_state_lifetime_is_a_number_in_range(consent_env: ConsentEnv, lifetime: Any) -> None:
    refused(lambda: _broker(consent_env, state_lifetime=lifetime), "state_lifetime")


def test_a_good_broker_is_built(consent_env: ConsentEnv) -> None:
    broker = _broker(
        consent_env,
        state_lifetime=30,
        post_logout_redirect_uri="https://agent.contoso.com/signed-out",
    )
    try:
        assert broker.state_lifetime == 30
    finally:
        broker.close()
