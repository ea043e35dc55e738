"""The consent broker's id-token check with a key document that publishes two keys under one
``kid`` (a gateway merging key sets): every key under the kid is tried, in the document's order,
as the access-token verifier does; a token none of them verifies is still refused. Before, the
check used one key per kid, and with the signer's key second every sign-in was refused."""

from __future__ import annotations

import hashlib
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from _support.tokens import AUTHORITY, TENANT, Issuer
from entra_passthrough import AppCredential
from entra_passthrough._consent_client import ConsentClient, IdTokenError

CLIENT = "44444444-4444-4444-4444-444444444444"
KID = "merged-kid"


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


SIGNER, OTHER, STRANGER = _key(), _key(), _key()


def _id_token(issuer: Issuer, key: rsa.RSAPrivateKey) -> str:
    now = int(time.time())
    index = next(i for i, (_, k) in enumerate(issuer.keys) if k is key)
    return issuer.token(
        key_index=index,
        aud=CLIENT,
        iss=f"{AUTHORITY}/{TENANT}/v2.0",
        tid=TENANT,
        oid="alice-oid",
        nonce=hashlib.sha256(b"n").hexdigest(),
        iat=now,
        exp=now + 600,
    )


def _client(issuer: Issuer) -> ConsentClient:
    client = ConsentClient(
        AppCredential(client_id=CLIENT, tenant_id=TENANT, client_secret="not-used"),
        http_client=issuer.sync_client(),
        max_workers=1,
    )
    # The tenant's discovery document, as read: its jwks_uri is the issuer's key document.
    client._oidc = {
        "jwks_uri": f"{AUTHORITY}/{TENANT}/discovery/v2.0/keys",
        "issuer": f"{AUTHORITY}/{TENANT}/v2.0",
    }
    return client


@pytest.mark.parametrize("order", ["signer-first", "signer-last"])
def test_any_key_under_the_kid_verifies_the_id_token(order: str) -> None:
    keys = [SIGNER, OTHER] if order == "signer-first" else [OTHER, SIGNER]
    issuer = Issuer(keys=[(KID, key) for key in keys])
    client = _client(issuer)
    try:
        claims = client.verify_id_token(_id_token(issuer, SIGNER), flow_nonce="n")
    finally:
        client.pool.close()
    assert claims["oid"] == "alice-oid"


def test_a_token_no_key_under_the_kid_verifies_is_refused() -> None:
    issuer = Issuer(keys=[(KID, SIGNER), (KID, OTHER)])
    forged = Issuer(keys=[(KID, STRANGER)])
    client = _client(issuer)
    try:
        with pytest.raises(IdTokenError, match="does not verify"):
            client.verify_id_token(_id_token(forged, STRANGER), flow_nonce="n")
    finally:
        client.pool.close()
