"""The consent client's id token check: keys come from the shared JWKS cache (``_jwks``)."""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from _support.consent import ConsentEnv
from entra_passthrough import AppCredential
from entra_passthrough._consent_client import ConsentClient, IdTokenError


def _forged_id_token(env: ConsentEnv, kid: str) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    claims = {
        "iss": env.idp.issuer(),
        "aud": env.app.client_id,
        "tid": env.idp.tenant_id,
        "oid": env.idp.users["alice"].oid,
        "nonce": "n",
        "iat": now,
        "exp": now + 600,
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


def test_an_id_token_signed_with_an_unpublished_key_is_refused_without_a_fetch_storm(
    consent_env: ConsentEnv,
) -> None:
    env = consent_env
    client = ConsentClient(
        AppCredential(
            client_id=env.app.client_id,
            tenant_id=env.idp.tenant_id,
            client_secret=env.app.secret,
            authority_host=env.idp.url,
        ),
        http_client=env.idp.msal_http_client(),
        max_workers=1,
    )
    try:
        for attempt in range(5):
            with pytest.raises(IdTokenError, match="signing key is not in the tenant's JWKS"):
                client.verify_id_token(_forged_id_token(env, f"forged-{attempt}"), flow_nonce="n")
        # One fetch to load the keys, one rate-limited refetch for an unknown kid; no more.
        assert client._keys.fetches <= 2
    finally:
        client.pool.close()
