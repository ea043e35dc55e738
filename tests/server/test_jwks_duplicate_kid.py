"""A key document that publishes two different keys under one ``kid`` (a gateway that merges
key sets, a custom ``jwks_uri``): RFC 7517 section 4.5 says different keys "SHOULD" have
distinct ``kid`` values, not must. The verifier tries every key published under the token's
``kid``, in the document's order, as nimbus-jose-jwt and panva/jose do, and accepts a token any
of them verifies; one WARNING at the fetch names the ``kid``. Before, the last key under the
kid silently won: with the issuer's real key first, every valid token was refused as "the
token's signature is invalid", and nothing said why.

The keys are served over HTTPS on 127.0.0.1 (``_https_keys``); the verifier fetches them with
its own HTTP clients (httpx / httpx2), sync and async."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from _support.tokens import API, API_URI, TENANT, USER_OID, Issuer
from entra_passthrough import JwtVerifier, TokenVerificationError

from ._https_keys import KeyEndpoint, https_key_endpoint

KID = "merged-kid-0123"


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


REAL, OTHER, STRANGER = _key(), _key(), _key()


def _issuer(*keys: rsa.RSAPrivateKey) -> Issuer:
    """An issuer publishing ``keys`` in this order, all under ``KID``."""
    return Issuer(keys=[(KID, key) for key in keys])


def _signed(issuer: Issuer, key: rsa.RSAPrivateKey, **claims: object) -> str:
    index = next(i for i, (_, k) in enumerate(issuer.keys) if k is key)
    return issuer.token(key_index=index, **claims)


@pytest.fixture
def served(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[KeyEndpoint]:
    order: tuple[rsa.RSAPrivateKey, ...] = request.param
    with https_key_endpoint(_issuer(*order), tmp_path) as endpoint:
        yield endpoint


def _verifier(keys: KeyEndpoint) -> JwtVerifier:
    return JwtVerifier(
        audiences=[API, API_URI], tenants=[TENANT], jwks_uri=keys.keys_url, verify=keys.ca_file
    )


def _duplicate_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and "under one kid" in r.getMessage()
    ]


ORDERS = [
    pytest.param((REAL, OTHER), id="real-first"),
    pytest.param((OTHER, REAL), id="real-last"),
]


@pytest.mark.parametrize("served", ORDERS, indirect=True)
def test_a_token_any_key_under_its_kid_verifies_is_accepted(
    served: KeyEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="entra_passthrough.verify")
    issuer = served.issuer
    verifier = _verifier(served)
    for _ in range(3):
        assert verifier.verify(_signed(issuer, REAL)).oid == USER_OID
        assert verifier.verify(_signed(issuer, OTHER)).oid == USER_OID
    assert verifier.jwks_fetches == 1  # no refetch for a kid the keys have
    # One WARNING, at the fetch, naming the kid and nothing of the keys or their URL.
    (warning,) = _duplicate_warnings(caplog)
    text = warning.getMessage()
    assert repr(KID) in text
    assert served.base not in text
    doc = json.dumps(issuer.jwks())
    assert not [part for part in text.split() if len(part) > 40 and part in doc]


@pytest.mark.parametrize("served", ORDERS, indirect=True)
async def test_the_async_driver_tries_every_key_too(served: KeyEndpoint) -> None:
    issuer = served.issuer
    verifier = _verifier(served)
    assert (await verifier.verify_async(_signed(issuer, REAL))).oid == USER_OID
    assert (await verifier.verify_async(_signed(issuer, OTHER))).oid == USER_OID
    assert verifier.jwks_fetches == 1


@pytest.mark.parametrize("served", ORDERS, indirect=True)
async def test_a_key_outside_the_document_is_still_refused_without_a_refetch(
    served: KeyEndpoint,
) -> None:
    """A token under the shared kid that none of its keys verifies: 401, signature invalid, and
    no fetch (the kid is known); the claims of a token the right key verifies are still judged
    (an expired one is "expired", not "signature invalid")."""
    issuer = served.issuer
    verifier = _verifier(served)
    assert verifier.verify(_signed(issuer, REAL)).oid == USER_OID
    forged = Issuer(keys=[(KID, STRANGER)]).token()
    for _ in range(5):
        with pytest.raises(TokenVerificationError, match="signature is invalid") as info:
            verifier.verify(forged)
        assert info.value.status_code == 401
        with pytest.raises(TokenVerificationError, match="signature is invalid"):
            await verifier.verify_async(forged)
    expired = _signed(issuer, REAL, exp=1_000_000, iat=999_000, nbf=999_000)
    with pytest.raises(TokenVerificationError, match="expired"):
        verifier.verify(expired)
    assert verifier.jwks_fetches == 1
    assert served.requests == 1


@pytest.mark.parametrize("served", [pytest.param((REAL,), id="real")], indirect=True)
def test_the_refetch_limits_hold_with_a_shared_kid(
    served: KeyEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    """The document gains a second key under the kid (a JWK after the issuer's). A token signed
    with it is refused without a fetch while the cached keys lack it (a known kid never
    triggers one); the next refetch, rate limited as before (tokens with random kids: one per
    interval), brings it, with its WARNING, and then the token verifies."""
    caplog.set_level(logging.WARNING, logger="entra_passthrough.verify")
    issuer = served.issuer
    verifier = JwtVerifier(
        audiences=[API, API_URI],
        tenants=[TENANT],
        jwks_uri=served.keys_url,
        verify=served.ca_file,
        min_refetch_interval=3600.0,
    )
    assert verifier.verify(_signed(issuer, REAL)).oid == USER_OID
    assert not _duplicate_warnings(caplog)
    merged = Issuer(keys=[(KID, OTHER)])
    served.extra.append(merged.jwks()["keys"][0])
    for _ in range(3):
        with pytest.raises(TokenVerificationError, match="signature is invalid"):
            verifier.verify(merged.token())
    assert served.requests == 1
    for n in range(5):
        with pytest.raises(TokenVerificationError, match="does not publish"):
            verifier.verify(Issuer(keys=[(f"random-{n}", STRANGER)]).token())
    assert served.requests == 2  # the first unknown kid's refetch; the others rate limited
    assert len(_duplicate_warnings(caplog)) == 1  # at that fetch
    assert verifier.verify(merged.token()).oid == USER_OID
    assert verifier.verify(_signed(issuer, REAL)).oid == USER_OID
    assert served.requests == 2
    assert len(_duplicate_warnings(caplog)) == 1


def test_the_same_key_twice_is_one_key_and_no_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="entra_passthrough.verify")
    issuer = _issuer(REAL, REAL)
    with https_key_endpoint(issuer, tmp_path) as served:
        verifier = _verifier(served)
        assert verifier.verify(issuer.token()).oid == USER_OID
        with pytest.raises(TokenVerificationError, match="signature is invalid"):
            verifier.verify(Issuer(keys=[(KID, OTHER)]).token())
    assert not _duplicate_warnings(caplog)
