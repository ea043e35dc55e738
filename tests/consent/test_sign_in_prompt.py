"""A consent link without a sign-in hint asks the identity provider to show its account picker
(``prompt=select_account``), so a browser's single sign-on session cannot complete someone
else's link unseen.

Before, the authorize request carried no ``prompt``: Entra completes such a sign-in silently
from the browser's session. An attacker with a new platform id (no token naming them, so no
hint and no expected identity in their link) only had to get a victim who had signed in before
to open a page that navigates to that link: the attacker's platform id was bound to the victim,
and the attacker's chat got the victim's tokens. Now the sign-in stops at the account picker.
With a hint, no ``prompt`` is sent: Entra's single sign-on then completes only for the hinted
account, and Entra refuses ``select_account`` together with an account hint (docs/consent.md,
"Limits").
"""

from __future__ import annotations

import html
import os
import re
import time
import urllib.parse
from pathlib import Path

import httpx2
import pytest

from _support.consent import (
    CHROMIUM,
    ConsentEnv,
    consent_link,
    follow_link,
    launch_chromium,
    platform_caller,
    server_pem,
    spki,
    submit_form_post,
)
from entra_passthrough import UserKey
from entra_passthrough._sources.delegated import DelegatedConsent

_HIDDEN = re.compile(r"<input type='hidden' name='([^']*)' value='([^']*)'>")
_SIGN_IN_PAGE = "<title>Sign in - Entra emulator</title>"


def _query(location: str) -> dict[str, list[str]]:
    return urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)


async def test_a_link_without_a_hint_asks_for_the_account(consent_env: ConsentEnv) -> None:
    env = consent_env
    source, _ = env.make()
    unhinted = platform_caller(f"prompt-none-{time.monotonic_ns()}")
    hinted = platform_caller(f"prompt-hint-{time.monotonic_ns()}", upn=env.idp.users["bob"].upn)
    async with env.browser() as browser:
        plain = await browser.get(await consent_link(source, env, unhinted), follow_redirects=False)
        hint = await browser.get(await consent_link(source, env, hinted), follow_redirects=False)
    assert plain.status_code == hint.status_code == 302
    assert _query(plain.headers["location"])["prompt"] == ["select_account"]
    assert "login_hint" not in _query(plain.headers["location"])
    assert _query(hint.headers["location"])["login_hint"] == [env.idp.users["bob"].upn]
    assert "prompt" not in _query(hint.headers["location"])


async def _signed_in_browser(
    env: ConsentEnv, source: DelegatedConsent, browser: httpx2.AsyncClient, who: str
) -> None:
    """``who`` consents for their own chat in ``browser``: the identity provider's session
    cookie is now in it (what any user of the agent has)."""
    own = platform_caller(f"prompt-own-{time.monotonic_ns()}", upn=env.idp.users[who].upn)
    page = await browser.get(await consent_link(source, env, own))
    done = await submit_form_post(browser, page)
    assert done.status_code == 200, done.text


async def test_a_visit_to_someone_elses_link_stops_at_the_account_picker(
    consent_env: ConsentEnv,
) -> None:
    env = consent_env
    bob = env.idp.users["bob"]
    source, _ = env.make()
    attacker = platform_caller(f"prompt-attacker-{time.monotonic_ns()}")  # no token: no hint
    key = UserKey.from_caller(attacker)
    assert key is not None
    evil = await consent_link(source, env, attacker)
    async with env.browser() as browser:
        await _signed_in_browser(env, source, browser, "bob")
        # bob's browser is led to the attacker's link (a page that navigates there)
        page = await browser.get(evil)
        assert str(page.url).startswith(env.idp.url + "/")
        assert _SIGN_IN_PAGE in page.text, page.text[:300]
        assert "document.forms[0].submit()" not in page.text  # no answer posted to the broker
        assert await source.grants.get_grant(key.hashed) is None
        assert await source.grants.get_binding(key.hashed) is None

        # What remains (docs/consent.md, "Limits"): a user who deliberately picks their account
        # on someone else's link consents for that link's chat user.
        fields = {html.unescape(k): html.unescape(v) for k, v in _HIDDEN.findall(page.text)}
        fields.update({"username": bob.upn, "password": bob.password})
        answer = await browser.post(str(page.url), data=fields)
        done = await submit_form_post(browser, answer)
    assert done.status_code == 200, done.text
    assert await source.grants.get_binding(key.hashed) == (bob.tenant_id, bob.oid)


async def test_a_hinted_link_still_signs_in_without_a_picker(consent_env: ConsentEnv) -> None:
    """The emulator signs the hinted user in without UI (docs/emulator.md): the hinted path is
    unchanged, the link's own user completes it."""
    env = consent_env
    source, _ = env.make()
    caller = platform_caller(f"prompt-hinted-{time.monotonic_ns()}", upn=env.idp.users["bob"].upn)
    done = await follow_link(env, await consent_link(source, env, caller))
    assert done.status_code == 200, done.text
    assert "You are signed in" in done.text


@pytest.mark.browser
@pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"{CHROMIUM} is missing (apt-get install chromium; CI installs it)",
)
async def test_a_drive_by_navigation_in_a_real_browser_binds_nothing(
    consent_env: ConsentEnv, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    env = consent_env
    source, _ = env.make()
    bob = env.idp.users["bob"]
    own = platform_caller(f"drive-by-bob-{time.monotonic_ns()}", upn=bob.upn)
    attacker = platform_caller(f"drive-by-attacker-{time.monotonic_ns()}")
    key = UserKey.from_caller(attacker)
    assert key is not None
    own_link = await consent_link(source, env, own)
    evil = await consent_link(source, env, attacker)
    pins = ",".join(
        {spki(server_pem(env.idp.url)), spki(server_pem(f"https://127.0.0.1:{env.port}"))}
    )
    async with async_playwright() as pw:
        context = await launch_chromium(pw, tmp_path / "profile", pins)
        try:
            page = await context.new_page()
            await page.goto(own_link)  # bob consented earlier: a session is in his browser
            await page.wait_for_selector("text=You are signed in", timeout=30_000)
            page = await context.new_page()
            await page.set_content(f"<p>Loading...</p><script>location.href = {evil!r};</script>")
            await page.wait_for_selector("#username", timeout=30_000)  # the account picker
            assert page.url.startswith(env.idp.url + "/")
            assert "Sign in" in await page.title()
        finally:
            await context.close()
    assert await source.grants.get_grant(key.hashed) is None
    assert await source.grants.get_binding(key.hashed) is None
