"""``/authorize`` accepts one ``prompt`` value of Entra's list (login, none, consent,
select_account, create: msal-js-prompt-behavior, "Supported prompt values") and refuses any other
with AADSTS90023 "Unsupported 'prompt' value.", to the redirect URI as ``error=invalid_request``
with ``state``, never a code: OIDC's space-separated combination (``consent select_account``,
refused so for a v2 /authorize URL in opencloud-eu/desktop#871), v1's ``admin_consent`` (not a
v2 value: AzureAD/microsoft-authentication-library-for-java#581) and an unknown value. The
emulator issued a code for each, so a client combining prompts passed here and failed at Entra.
Seen by raw HTTPS and by unmodified MSAL."""

from __future__ import annotations

import urllib.parse
from typing import Any

import httpx
import msal
import pytest

from entra_passthrough.testing import EntraEmulator

from .emu_helpers import no_http_cache

REDIRECT = "http://localhost/callback"

pytestmark = pytest.mark.filterwarnings(
    "ignore:response_mode='form_post' is recommended:UserWarning"
)


def _authorize(
    browser: httpx.Client, idp: EntraEmulator, prompt: str | None, **extra: str
) -> httpx.Response:
    params = {
        "client_id": idp.agent.client_id,
        "response_type": "code",
        "redirect_uri": REDIRECT,
        "scope": f"openid {idp.mcp.app_id_uri}/access_as_user",
        "state": "st-42",
        "emulator_consent": "accept",
        **extra,
    }
    if prompt is not None:
        params["prompt"] = prompt
    return browser.get(f"{idp.authority}/oauth2/v2.0/authorize", params=params)


def _query(resp: httpx.Response) -> dict[str, str]:
    assert resp.status_code == 302, resp.text
    location = resp.headers["location"]
    assert location.startswith(REDIRECT + "?"), location
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))


@pytest.mark.parametrize(
    "prompt",
    [
        "consent select_account",
        "select_account consent",
        "login consent",
        "admin_consent",
        "bogus",
    ],
)
def test_an_unsupported_prompt_is_refused_to_the_redirect_uri(
    idp: EntraEmulator, prompt: str
) -> None:
    with httpx.Client(verify=idp.ssl_context()) as browser:
        query = _query(_authorize(browser, idp, prompt, login_hint="alice"))
    assert "code" not in query
    assert query["error"] == "invalid_request"
    assert query["error_description"].startswith("AADSTS90023: Unsupported 'prompt' value."), query
    assert "login, none, consent, select_account, create" in query["error_description"]
    assert query["error_uri"] == "https://login.microsoftonline.com/error?code=90023"
    assert query["state"] == "st-42"


def test_each_supported_prompt_still_works(entra_emulator_fresh: EntraEmulator) -> None:
    idp = entra_emulator_fresh
    with httpx.Client(verify=idp.ssl_context()) as browser:
        # consent first: it records the grant that prompt=none then needs (no UI possible).
        for prompt in ("consent", "login", "select_account", "create", "none", ""):
            query = _query(_authorize(browser, idp, prompt, login_hint="alice"))
            assert "code" in query, (prompt, query)
        # The browser now has a session: no prompt (or none) signs in from it; login,
        # select_account and create (a sign-up, which the emulator has not) show the sign-in form.
        assert "code" in _query(_authorize(browser, idp, None))
        assert "code" in _query(_authorize(browser, idp, "none"))
        for prompt in ("login", "select_account", "create"):
            page = _authorize(browser, idp, prompt)
            assert page.status_code == 200, (prompt, page.text)
            assert "<h1>Sign in</h1>" in page.text


def test_msal_with_a_combined_prompt_gets_the_error(idp: EntraEmulator) -> None:
    """Unmodified MSAL passes ``prompt`` through: its auth code flow gets AADSTS90023 back in the
    redirect and returns it, with no token."""
    app = msal.PublicClientApplication(
        idp.frontend.client_id,
        authority=idp.authority,
        instance_discovery=False,
        http_client=idp.msal_http_client(),
        http_cache=no_http_cache(),
    )
    flow = app.initiate_auth_code_flow(
        [f"{idp.mcp.app_id_uri}/access_as_user"],
        redirect_uri=REDIRECT,
        login_hint="alice",
        prompt="consent select_account",
    )
    with httpx.Client(verify=idp.ssl_context()) as browser:
        resp = browser.get(flow["auth_uri"] + "&emulator_consent=accept")
    assert resp.status_code == 302, resp.text
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(resp.headers["location"]).query))
    result: dict[str, Any] = app.acquire_token_by_auth_code_flow(flow, query)
    assert "access_token" not in result
    assert result["error"] == "invalid_request"
    assert result["error_description"].startswith("AADSTS90023: Unsupported 'prompt' value.")
