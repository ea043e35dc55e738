"""``AzureCredential`` bounds the expiry its credential reports as the MSAL-based sources bound
theirs: never past the token's own ``exp``, at most a day. A credential reporting milliseconds
(a common slip in a custom ``TokenCredential``), or a later expiry than its token's, had the
token served after its ``exp`` and cached for decades; ``expires_on=None`` failed "unexpectedly:
TypeError"."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from azure.core.credentials import AccessToken

from entra_passthrough import AzureCredential, SourceUnavailable, TokenChain, TokenRequest


def _jwt(exp: float) -> str:
    claims = {"aud": "api://x", "exp": int(exp), "iat": int(time.time()), "idtyp": "app"}
    return jwt.encode(claims, "k" * 32, algorithm="HS256")


class _Reporting:
    """A credential whose token lives ``lifetime`` s and that reports ``expires_on``."""

    def __init__(self, lifetime: float, expires_on: Any) -> None:
        self.lifetime = lifetime
        self.expires_on = expires_on

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        token = _jwt(time.time() + self.lifetime)
        value = self.expires_on(time.time()) if callable(self.expires_on) else self.expires_on
        return AccessToken(token, value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "reported",
    [
        lambda now: int(now * 1000) + 3_600_000,  # milliseconds
        lambda now: int(now) + 3_600,  # an hour, for a token of 60 s
        lambda now: str(int(now) + 3_600),  # the same, as text
    ],
    ids=["milliseconds", "later-than-exp", "text"],
)
def test_a_token_is_never_taken_past_its_own_exp(reported: Any) -> None:
    source = AzureCredential(_Reporting(60, reported))
    result = source.get_token(TokenRequest(scopes=("api://x/.default",)))
    assert result is not None
    exp = jwt.decode(result.token, options={"verify_signature": False})["exp"]
    assert result.expires_on <= exp


def test_an_opaque_token_is_bounded_by_a_day() -> None:
    class Opaque:
        def get_token(self, *scopes: str, **kwargs: Any) -> Any:
            return AccessToken("opaque-token", int(time.time() * 1000))

    result = AzureCredential(Opaque()).get_token(TokenRequest(scopes=("api://x/.default",)))
    assert result is not None
    assert result.expires_on <= time.time() + 86_400 + 1


@pytest.mark.parametrize("reported", [None, True, "soon"], ids=["none", "bool", "word"])
def test_an_expiry_that_is_not_a_number_is_a_typed_refusal(reported: Any) -> None:
    chain = TokenChain([AzureCredential(_Reporting(60, reported))], policy="app_only")
    with pytest.raises(SourceUnavailable) as raised:
        chain.get_token(["api://x/.default"])
    assert raised.value.failure == "malformed token answer"
    assert "expires_on" in str(raised.value)
    chain.close()
