"""A redirect URI is matched as Entra matches it (https://learn.microsoft.com/entra/identity-platform/
reply-url): the registered string exactly, except that an ``http://localhost`` or
``http://127.0.0.1`` URI may name any port ("Localhost exceptions"). Its query must be the
registered one, a fragment is never accepted (RFC 6749 section 3.1.2: "MUST NOT include a
fragment component") and neither is user info. Anything else is AADSTS50011 on the error page,
never a redirect. The emulator matched a loopback URI on its scheme, host and path only, and sent
codes to ``...callback?next=https://evil.example``, ``...callback#frag`` (the code ending up in
the fragment) and ``http://attacker@localhost/callback``. ``post_logout_redirect_uri`` is matched
the same way (it must be a redirect URI of the app): a URI that does not match gets the
signed-out page, no redirect."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator

import httpx
import pytest

from entra_passthrough.testing import EntraEmulator, World

#: The ``portal`` app's redirect URIs: a loopback one with a query, a web one.
LOOPBACK_WITH_QUERY = "http://localhost/cb?tenant=a"
WEB = "https://portal.contoso.example/signin"


@pytest.fixture(scope="module")
def world_idp() -> Iterator[EntraEmulator]:
    """The default world (``agent``: ``http://localhost/callback``, ``http://127.0.0.1/callback``)
    plus ``portal``, with a loopback redirect URI that has a query and a web one."""
    world = World.from_dict(
        {
            "apps": [
                {
                    "name": "portal",
                    "secret": True,
                    "multi_tenant": True,
                    "redirect_uris": [LOOPBACK_WITH_QUERY, WEB],
                }
            ]
        }
    )
    with EntraEmulator(world=world) as emulator:
        yield emulator


def _client_id(idp: EntraEmulator, name: str) -> str:
    app = idp.world.app(name)
    assert app is not None
    return app.client_id


def _authorize(idp: EntraEmulator, client: str, redirect_uri: str) -> httpx.Response:
    with httpx.Client(verify=idp.ssl_context()) as browser:
        return browser.get(
            f"{idp.authority}/oauth2/v2.0/authorize",
            params={
                "client_id": _client_id(idp, client),
                "response_type": "code",
                "redirect_uri": redirect_uri,
                "scope": "openid profile",
                "login_hint": "alice",
                "emulator_consent": "accept",
            },
        )


@pytest.mark.parametrize(
    ("client", "redirect_uri"),
    [
        ("agent", "http://localhost/callback"),
        ("agent", "http://localhost:5000/callback"),
        ("agent", "http://127.0.0.1:8400/callback"),
        ("portal", LOOPBACK_WITH_QUERY),
        ("portal", "http://localhost:7000/cb?tenant=a"),
        ("portal", WEB),
    ],
)
def test_a_registered_uri_gets_the_code(
    world_idp: EntraEmulator, client: str, redirect_uri: str
) -> None:
    resp = _authorize(world_idp, client, redirect_uri)
    assert resp.status_code == 302, resp.text
    location = resp.headers["location"]
    assert location.startswith(redirect_uri + ("&" if "?" in redirect_uri else "?")), location
    assert "code" in dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))


@pytest.mark.parametrize(
    ("client", "redirect_uri"),
    [
        ("agent", "http://localhost/callback?next=https://evil.example"),
        ("agent", "http://localhost:5000/callback?next=https://evil.example"),
        ("agent", "http://localhost/callback#frag"),
        ("agent", "http://localhost/callback#"),
        ("agent", "http://attacker@localhost/callback"),
        ("agent", "http://user:pw@localhost:5000/callback"),
        ("agent", "http://localhost:notaport/callback"),
        ("agent", "http://localhost:99999/callback"),
        ("agent", "http://localhost/Callback"),
        ("agent", "https://localhost/callback"),
        ("portal", "http://localhost/cb"),
        ("portal", "http://localhost/cb?tenant=b"),
        ("portal", "http://localhost/cb?tenant=a&next=x"),
        ("portal", f"{WEB}?next=x"),
        ("portal", f"{WEB}#frag"),
        ("portal", "https://portal.contoso.example:8443/signin"),
    ],
)
def test_anything_else_is_aadsts50011_on_the_error_page(
    world_idp: EntraEmulator, client: str, redirect_uri: str
) -> None:
    resp = _authorize(world_idp, client, redirect_uri)
    assert resp.status_code == 400, resp.text
    assert "location" not in resp.headers
    assert "AADSTS50011: The redirect URI" in resp.text
    assert "code=" not in resp.text


@pytest.mark.parametrize(
    ("target", "followed"),
    [
        ("http://localhost/callback", True),
        ("http://localhost:5000/callback", True),
        ("http://localhost/callback?next=https://evil.example", False),
        ("http://localhost/callback#frag", False),
        ("http://attacker@localhost/callback", False),
    ],
)
def test_sign_out_follows_the_same_rule(
    world_idp: EntraEmulator, target: str, followed: bool
) -> None:
    idp = world_idp
    with httpx.Client(verify=idp.ssl_context()) as browser:
        for params in (
            {"post_logout_redirect_uri": target, "client_id": idp.agent.client_id},
            {"post_logout_redirect_uri": target},  # no client named: any app of the world
        ):
            out = browser.get(f"{idp.authority}/oauth2/v2.0/logout", params=params)
            if followed:
                assert out.status_code == 302, out.text
                assert out.headers["location"] == target
            else:
                assert out.status_code == 200
                assert "location" not in out.headers
                assert "signed out" in out.text
