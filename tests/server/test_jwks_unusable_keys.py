"""A key document with one RSA key PyJWT cannot build (no ``n``, an ``n`` that is not
base64url, an ``x5c`` chain only) next to good keys: the bad key is skipped and the others verify,
on a cold start and after a rotation; a document with no usable key at all stays an error (503).
PyJWT raises ``InvalidKeyError`` (a ``PyJWTError``, not a ``PyJWKError``) for these: it used to
void the whole document."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jwt.algorithms import RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from _support.servers import serve_in_thread
from _support.tokens import API, API_URI, TENANT, USER_OID, Issuer
from entra_passthrough import JwtVerifier
from entra_passthrough._errors import SigningKeysUnavailable
from entra_passthrough._jwks import parse_jwks
from entra_passthrough.server import current_user, require_entra_auth

from ._https_keys import KeyEndpoint

UNUSABLE = {
    "no n": {"kty": "RSA", "use": "sig", "kid": "bad", "e": "AQAB"},
    "n not base64url": {"kty": "RSA", "use": "sig", "kid": "bad", "n": "!!!", "e": "AQAB"},
    "x5c only": {"kty": "RSA", "use": "sig", "kid": "bad", "x5c": ["MIIB"]},
}


def verifier_for(endpoint: KeyEndpoint) -> JwtVerifier:
    return JwtVerifier(
        audiences=[API, API_URI],
        tenants=[TENANT],
        jwks_uri=endpoint.keys_url,
        verify=endpoint.ca_file,
    )


def protected_api(verifier: JwtVerifier) -> Any:
    async def me(request: Request) -> JSONResponse:
        return JSONResponse({"oid": current_user().oid})

    return require_entra_auth(Starlette(routes=[Route("/me", me)]), verifier=verifier)


async def get_me(url: str, token: str) -> httpx2.Response:
    async with httpx2.AsyncClient() as http:
        return await http.get(f"{url}/me", headers={"Authorization": f"Bearer {token}"})


@pytest.mark.parametrize("bad", UNUSABLE.values(), ids=list(UNUSABLE))
async def test_an_unusable_key_is_skipped_and_the_good_one_verifies(
    issuer: Issuer, keys: KeyEndpoint, bad: dict[str, Any]
) -> None:
    keys.extra = [bad]
    verifier = verifier_for(keys)
    with serve_in_thread(protected_api(verifier), lifespan="off") as url:
        answer = await get_me(url, issuer.token())
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"oid": USER_OID}
    assert verifier_for(keys).verify(issuer.token()).oid == USER_OID  # the sync driver too


async def test_a_rotation_is_picked_up_next_to_an_unusable_key(
    issuer: Issuer, keys: KeyEndpoint
) -> None:
    verifier = verifier_for(keys)
    with serve_in_thread(protected_api(verifier), lifespan="off") as url:
        assert (await get_me(url, issuer.token())).status_code == 200
        # The issuer rolls its keys and its document now also carries a key PyJWT refuses:
        # the unknown kid's refetch installs the new key.
        issuer.rotate()
        keys.extra = [UNUSABLE["x5c only"]]
        answer = await get_me(url, issuer.token())
    assert answer.status_code == 200, answer.text
    assert keys.requests == 2


async def test_a_published_private_key_is_never_used(issuer: Issuer, keys: KeyEndpoint) -> None:
    """A JWK with private members (``d``...) is a leaked key: anyone who read the document can
    sign with it. It is skipped (fail closed); PyJWT built a private key of it, with which the
    signature check crashed (a 500)."""
    leaked = Issuer()
    kid, private = leaked.keys[0]
    jwk = json.loads(RSAAlgorithm.to_jwk(private))
    keys.extra = [{**jwk, "kid": kid, "use": "sig"}]
    verifier = verifier_for(keys)
    with serve_in_thread(protected_api(verifier), lifespan="off") as url:
        refused = await get_me(url, leaked.token())
        good = await get_me(url, issuer.token())
    assert refused.status_code == 401, refused.text
    assert "does not publish" in refused.json()["error_description"]
    assert good.status_code == 200, good.text


async def test_a_document_with_no_usable_key_is_still_an_error(
    issuer: Issuer, keys: KeyEndpoint
) -> None:
    issuer.keys = []
    keys.extra = list(UNUSABLE.values())
    verifier = verifier_for(keys)
    with serve_in_thread(protected_api(verifier), lifespan="off") as url:
        answer = await get_me(url, Issuer().token())
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "5"
    with pytest.raises(SigningKeysUnavailable):
        verifier_for(keys).verify(Issuer().token())


jwk_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.text(max_size=12),
    st.sampled_from(["AQAB", "!!!", "", "AA", "_w", "A" * 400]),
    st.lists(st.text(max_size=8), max_size=2),
)
junk_rsa_jwks = st.fixed_dictionaries(
    {"kty": st.just("RSA"), "kid": st.just("junk")},
    optional={
        name: jwk_values
        for name in ("use", "alg", "n", "e", "d", "p", "q", "dp", "dq", "qi", "x5c", "key_ops")
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(junk_rsa_jwks)
def test_no_junk_rsa_key_voids_the_good_one(junk: dict[str, Any]) -> None:
    good = _GOOD_DOC["keys"][0]
    kept = parse_jwks(json.dumps({"keys": [junk, good]}).encode())
    assert good["kid"] in kept


_GOOD_DOC = Issuer().jwks()
