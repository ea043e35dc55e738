"""Tokens and user keys with lone surrogates (json.loads accepts "\\ud800") hash, and a token
that carries them is a typed error, never a UnicodeEncodeError (from the security review)."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("token", ["eyJ\ud800.e30.sig", "\udcff", "a.\ud83d.b"])
async def test_a_token_with_lone_surrogates_is_a_typed_error(token: str) -> None:
    # Tokens bound from JSON bodies can carry lone surrogates (json.loads accepts "\\ud800").
    # Hashing them for the cache key must not raise UnicodeEncodeError (untyped, and its
    # ``.object`` attribute is the whole token).
    from entra_passthrough import AssertionMalformed, OnBehalfOf, TokenChain, bind_caller
    from entra_passthrough._jwt import fingerprint, sha256_hex

    assert fingerprint(token).startswith("sha256:")
    assert sha256_hex(token) != sha256_hex(token + "x")
    chain = TokenChain([OnBehalfOf(client_id="c", tenant_id="t", client_secret="s")])
    try:
        with bind_caller(token=token):
            with pytest.raises(AssertionMalformed):
                await chain.get_token_async(["api://x/.default"])
            with pytest.raises(AssertionMalformed):
                chain.get_token(["api://x/.default"])
    finally:
        chain.close()


def test_a_user_key_with_lone_surrogates_hashes() -> None:
    from entra_passthrough import UserKey

    first, second = UserKey.for_platform_user("\ud800"), UserKey.for_platform_user("\ud801")
    assert first.hashed != second.hashed
