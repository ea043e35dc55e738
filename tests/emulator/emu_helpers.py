"""Helpers for the emulator's tests (imported by module name: tests/ is not a package)."""

from __future__ import annotations

from typing import Any

import jwt

from entra_passthrough.testing import EntraEmulator


def no_http_cache() -> dict[str, Any]:
    """MSAL caches 400s for 60 s keyed on the POST (FACTS.md): a dict that keeps nothing."""

    class Nothing(dict[str, Any]):
        def __setitem__(self, key: str, value: Any) -> None:
            return None

    return Nothing()


def verify_with_jwks(
    idp: EntraEmulator, token: str, *, audience: str, issuer: str
) -> dict[str, Any]:
    """Verify a token the way a third-party resource would: PyJWT + the published JWKS."""
    client = jwt.PyJWKClient(idp.jwks_uri(), cache_keys=False, ssl_context=idp.ssl_context())
    key = client.get_signing_key_from_jwt(token)
    claims: dict[str, Any] = jwt.decode(
        token, key.key, algorithms=["RS256"], audience=audience, issuer=issuer
    )
    return claims


def aadsts(result: dict[str, Any]) -> int | None:
    codes = result.get("error_codes") or [None]
    return codes[0]  # type: ignore[no-any-return]
