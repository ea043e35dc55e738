"""Pages that used to tell the user something untrue or unhelpful.

- Reloading the success page (the browser sends the form post again; Back to the identity
  provider's page does too) said "Sign-in could not be completed ... Nothing was stored ... use
  the sign-in link again" while the grant was stored. Now the browser that completed the
  sign-in (its cookie proves it) is told it is already signed in, or that the access was
  revoked since; any other browser still gets ``state_used``, and nothing is redeemed again.
- A refused sign-out (an expired or damaged sign-out ticket, a cross-site post) showed the
  sign-in failure page. Now it says the sign-out did not happen, that the agent still has
  access, and how to revoke it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx2
import pytest

from _support.consent import (
    CHROMIUM,
    ConsentEnv,
    consent_link,
    form_post_fields,
    launch_chromium,
    platform_caller,
    revoke_ticket,
    server_pem,
    spki,
)
from entra_passthrough import Caller, UserKey
from entra_passthrough._grants import seal_revoke_ticket
from entra_passthrough._sources.delegated import DelegatedConsent


def _caller(env: ConsentEnv, name: str) -> Caller:
    return platform_caller(f"{name}-{time.monotonic_ns()}", upn=env.idp.users["alice"].upn)


async def _answer(
    browser: httpx2.AsyncClient, source: DelegatedConsent, env: ConsentEnv, caller: Caller
) -> tuple[str, dict[str, str]]:
    """The identity provider's form post for a sign-in started in ``browser`` (not sent)."""
    start = await browser.get(await consent_link(source, env, caller), follow_redirects=False)
    authorize = await browser.get(start.headers["location"], follow_redirects=False)
    return form_post_fields(authorize)


async def test_a_reload_of_the_success_page_says_already_signed_in(
    consent_env: ConsentEnv,
) -> None:
    env = consent_env
    source, _ = env.make()
    caller = _caller(env, "reload")
    key = UserKey.from_caller(caller)
    assert key is not None
    async with env.browser() as browser:
        action, fields = await _answer(browser, source, env, caller)
        first = await browser.post(action, data=fields)
        assert first.status_code == 200, first.text
        redeemed = env.idp.stats()["grants"]["authorization_code"]
        reload = await browser.post(action, data=fields)  # what a reload sends
        json_reload = await browser.post(
            action, data=fields, headers={"Accept": "application/json"}
        )
        assert env.idp.stats()["grants"]["authorization_code"] == redeemed  # not redeemed again
        async with env.browser() as other:
            elsewhere = await other.post(action, data=fields)
        # the reloaded page's sign-out works
        signed_out = await browser.post(
            f"{env.base}/revoke",
            data={"t": revoke_ticket(reload.text)},
            headers={"Accept": "application/json"},
        )
        after_sign_out = await browser.post(action, data=fields)
    assert reload.status_code == 200, reload.text
    assert "You are already signed in" in reload.text
    assert env.idp.users["alice"].upn in reload.text
    assert "could not be completed" not in reload.text
    assert json_reload.json() == {
        "status": "ok",
        "user": env.idp.users["alice"].upn,
        "already_signed_in": True,
    }
    # another browser proves nothing: told only what it was told before, and nothing of the user
    assert elsewhere.status_code == 400
    assert "<code>state_used</code>" in elsewhere.text
    assert "already signed in" not in elsewhere.text
    assert env.idp.users["alice"].upn not in elsewhere.text
    assert "that sign-in stands" in elsewhere.text  # not "nothing was stored, sign in again" alone
    assert signed_out.json() == {"status": "ok", "revoked": True}
    assert after_sign_out.status_code == 400
    assert "revoked since" in after_sign_out.text
    assert await source.grants.get_grant(key.hashed) is None


@pytest.mark.browser
@pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"{CHROMIUM} is missing (apt-get install chromium; CI installs it)",
)
async def test_reloading_the_success_page_in_a_real_browser(
    consent_env: ConsentEnv, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    env = consent_env
    source, _ = env.make()
    caller = _caller(env, "reload-chromium")
    link = await consent_link(source, env, caller)
    pins = ",".join(
        {spki(server_pem(env.idp.url)), spki(server_pem(f"https://127.0.0.1:{env.port}"))}
    )
    async with async_playwright() as pw:
        context = await launch_chromium(pw, tmp_path / "profile", pins)
        try:
            page = await context.new_page()
            await page.goto(link)
            await page.wait_for_selector("text=You are signed in", timeout=30_000)
            await page.reload(timeout=30_000)  # Chromium posts the form again
            await page.wait_for_selector("text=You are already signed in", timeout=30_000)
            body = await page.inner_text("body")
        finally:
            await context.close()
    assert "could not be completed" not in body
    key = UserKey.from_caller(caller)
    assert key is not None
    assert await source.grants.get_grant(key.hashed) is not None


def _sign_out_refused(page: httpx2.Response, code: str) -> None:
    assert page.status_code == 400, page.text
    assert "Sign-out could not be completed" in page.text
    assert f"<code>{code}</code>" in page.text
    assert "can still act on your behalf" in page.text
    assert "new sign-out link" in page.text
    assert "Sign-in could not be completed" not in page.text
    assert "sign-in link again" not in page.text


async def test_sign_out_refusals_say_the_access_stands_and_how_to_revoke_it(
    consent_env: ConsentEnv,
) -> None:
    env = consent_env
    source, _ = env.make()
    caller = _caller(env, "signout-pages")
    key = UserKey.from_caller(caller)
    assert key is not None
    expired = seal_revoke_ticket(source.keyring, key.hashed, lifetime=-1)  # an hour later
    own = {"Origin": f"https://127.0.0.1:{env.port}", "Sec-Fetch-Site": "same-origin"}
    async with env.browser() as browser:
        action, fields = await _answer(browser, source, env, caller)
        assert (await browser.post(action, data=fields)).status_code == 200
        post = await browser.post(
            f"{env.base}/revoke", data={"t": expired}, headers=own, follow_redirects=False
        )
        link = await browser.get(f"{env.base}/signout", params={"t": expired})
        forged = await browser.get(f"{env.base}/signout", params={"t": "forged"})
        cross = await browser.post(
            f"{env.base}/revoke",
            data={"t": source.signout_link(key).split("t=", 1)[1]},
            headers={"Sec-Fetch-Site": "cross-site"},
        )
        as_json = await browser.post(
            f"{env.base}/revoke", data={"t": expired}, headers={**own, "Accept": "application/json"}
        )
    _sign_out_refused(post, "expired_link")
    assert "This sign-out page has expired" in post.text
    _sign_out_refused(link, "expired_link")
    assert "This sign-out link has expired" in link.text
    _sign_out_refused(forged, "invalid_link")
    _sign_out_refused(cross, "csrf")
    assert as_json.status_code == 400
    assert as_json.json()["error"] == "expired_link"
    assert as_json.json()["revoked"] is False
    assert await source.grants.get_grant(key.hashed) is not None  # nothing was deleted
