"""A managed identity host's error ``code`` (Service Fabric's documented ``SecretHeaderNotFound``)
is shown in the error, not ``[redacted]``: before, the redaction took every JSON ``code`` for an
OAuth authorization code. Authorization codes are still redacted wherever they appear: the
emulator's (issued by its real ``/authorize``) and Entra's shape (``1.A...``, long, with ``.``,
``-`` and digits inside).

Real parts: the emulator's Service Fabric endpoint (HTTPS pinned by ``IDENTITY_SERVER_THUMBPRINT``,
``Secret`` header; it answers 401 ``SecretHeaderNotFound`` in the documented body), the library's
``ManagedIdentity``, and the emulator's ``/authorize``."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from entra_passthrough import (
    ManagedIdentity,
    Policy,
    Timeouts,
    TokenAcquisitionError,
    TokenChain,
)
from entra_passthrough._http import SHARED_THROTTLE
from entra_passthrough._redact import REDACTED, redact
from entra_passthrough.testing import EntraEmulator

from .conftest import mcp_scope, session

ONCE = Timeouts(connect=2.0, read=2.0, deadline=5.0, retries=0, negative_ttl=0.0)
WRONG_SECRET = "wrong-Secret-header-value-0123456789"


@pytest.fixture
def fabric(idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    for name in idp.MI_HOST_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    env = idp.mi_env("service_fabric")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    SHARED_THROTTLE.clear()
    yield env
    SHARED_THROTTLE.clear()


def test_service_fabrics_error_code_is_shown(
    idp: EntraEmulator, fabric: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IDENTITY_HEADER", WRONG_SECRET)
    chain = TokenChain([ManagedIdentity(timeouts=ONCE)], policy=Policy.APP_ONLY)
    try:
        with pytest.raises(TokenAcquisitionError) as info:
            chain.get_token(mcp_scope(idp))
    finally:
        chain.close()
    text = str(info.value)
    assert "SecretHeaderNotFound" in text, text
    assert "The Secret header value is not valid." in text
    assert f'"code": "{REDACTED}"' not in text
    assert WRONG_SECRET not in text  # the header's value is a secret: never shown


def _issued_code(idp: EntraEmulator) -> str:
    """An authorization code the emulator issues at ``/authorize`` (its real shape)."""
    verifier = os.urandom(32).hex()
    digest = hashlib.sha256(verifier.encode()).digest()
    challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    query = {
        "client_id": idp.agent.client_id,
        "response_type": "code",
        "redirect_uri": "http://localhost/callback",
        "scope": f"{idp.mcp.app_id_uri}/access_as_user offline_access",
        "login_hint": "alice",
        "state": "s1",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    resp = session(idp).get(
        f"{idp.authority}/oauth2/v2.0/authorize?{urlencode(query)}", allow_redirects=False
    )
    assert resp.status_code == 302, resp.text
    return parse_qs(urlsplit(resp.headers["location"]).query)["code"][0]


#: Entra's shape: "1.A" or "0.A" and hundreds of base64url characters, with "." and "-".
ENTRA_SHAPED = (
    "1.AXEA" + "bW9ja0NvZGVfMTIz-YWJj_ZGVm" * 12 + ".AgABAAEAAAD--DLA3VO7QrddgJg7WevrAgDs"
)
SHORT_CODES = ("SplxlOBeZQQYbYS6WxSbIA", "e72e16c7e42f292c6912", "abc.def", "x-1")


def _shapes(code: str) -> list[str]:
    return [
        f'{{"code": "{code}", "state": "s1"}}',
        f"{{'grant_type': 'authorization_code', 'code': '{code}'}}",
        f'{{"code": "{code}',  # a body cut inside the value
        f"<code>{code}</code>",
        f"code: {code}",
        f"GET /callback?code={code}&state=s1 HTTP/1.1",
        f"grant_type=authorization_code&code={code}&redirect_uri=x",
    ]


@pytest.mark.parametrize("kind", ["emulator", "entra", *SHORT_CODES])
def test_authorization_codes_stay_redacted(idp: EntraEmulator, kind: str) -> None:
    code = {"emulator": None, "entra": ENTRA_SHAPED}.get(kind, kind) or _issued_code(idp)
    for text in _shapes(code):
        out = redact(text)
        assert code not in out, out
        assert REDACTED in out, out


@pytest.mark.parametrize(
    "name", ["SecretHeaderNotFound", "invalid_request", "IdentityNotFound", "AADSTS50011"]
)
def test_an_error_name_in_code_is_kept(name: str) -> None:
    for text in (
        f'{{"error": {{"code": "{name}", "message": "m"}}}}',
        f"{{'code': '{name}'}}",
        f"<Code>{name}</Code>",
        f"code: {name}",
    ):
        assert redact(text) == text
    # In a form or a query string every code= is an authorization code's place.
    assert name not in redact(f"/callback?code={name}&state=s")
