"""Client authentication with a certificate past its end date: Entra refuses the assertion with
AADSTS700027 and "[Reason - The key used is expired., Thumbprint of key used by client: '...',
Found key 'Start=..., End=...']" (the key credential ends with the certificate); the emulator
issued a token. Judged with MSAL as an app builds it (both ways MSAL names the certificate)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import replace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from _support.certificates import pem as certificate_pem
from _support.certificates import rsa_key, self_signed
from entra_passthrough.testing import EntraEmulator, World

from .emu_helpers import aadsts, msal_app


def _registered(days_to: float) -> tuple[World, bytes, x509.Certificate]:
    """The default world whose agent app has a certificate ending ``days_to`` days from now."""
    key = rsa_key()
    cert = self_signed(key, days_from=-400, days_to=days_to)
    pem = certificate_pem(key, cert)
    world = World.default()
    agent = world.app("agent")
    assert agent is not None
    thumbprint = cert.fingerprint(hashes.SHA1()).hex()
    world = world.with_app(replace(agent, certificate_pem=pem, certificate_thumbprint=thumbprint))
    return world, pem, cert


@pytest.fixture(scope="module", params=[-1, 30], ids=["expired", "valid"])
def registered(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[EntraEmulator, bytes, x509.Certificate]]:
    world, pem, cert = _registered(request.param)
    with EntraEmulator(world=world) as emulator:
        yield emulator, pem, cert


@pytest.mark.parametrize("names_it_by", ["x5t", "x5t#S256"])
def test_a_certificate_past_its_end_date_is_aadsts700027_the_key_used_is_expired(
    registered: tuple[EntraEmulator, bytes, x509.Certificate], names_it_by: str
) -> None:
    idp, pem, cert = registered
    text = pem.decode()
    key_pem = text[: text.index("-----BEGIN CERTIFICATE-----")]
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    credential = (
        {"private_key": key_pem, "thumbprint": cert.fingerprint(hashes.SHA1()).hex()}
        if names_it_by == "x5t"  # RS256 + x5t (SHA-1)
        else {"private_key": key_pem, "public_certificate": cert_pem}  # PS256 + x5t#S256
    )
    app = msal_app(idp, credential=credential)
    result = app.acquire_token_for_client([f"{idp.mcp.app_id_uri}/.default"])
    expired = cert.not_valid_after_utc <= dt.datetime.now(dt.UTC)
    if not expired:
        assert "access_token" in result, result  # the same certificate, valid: accepted
        return
    assert "access_token" not in result
    assert result.get("error") == "invalid_client"
    assert aadsts(result) == 700027
    description = result["error_description"]
    assert "[Reason - The key used is expired." in description
    assert cert.fingerprint(hashes.SHA1()).hex().upper() in description
    assert f"End={cert.not_valid_after_utc:%m/%d/%Y %H:%M:%S}" in description
