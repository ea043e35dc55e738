"""A third party who sees a sign-in's state cannot cancel the sign-in.

The broker used to consume the state before checking the browser binding: anyone who saw the
link's state (a proxy log, a shoulder, a shared screen) could send it to the callback from
another browser, and the user's real callback then failed with ``state_used``. The state is now
consumed only after the binding checks pass.
"""

from __future__ import annotations

import time

from _support.consent import ConsentEnv, callback_url, code_and_state, consent_link, platform_caller
from entra_passthrough import Caller, UserKey


async def test_a_third_party_cannot_burn_the_state(consent_env: ConsentEnv) -> None:
    env = consent_env
    caller: Caller = platform_caller(
        f"burn-alice-{time.monotonic_ns()}", upn=env.idp.users["alice"].upn
    )
    source, _ = env.make()
    link = await consent_link(source, env, caller)
    async with env.browser() as victim:
        code, state = await code_and_state(victim, link)
        async with env.browser() as attacker:
            for params in (
                {"code": "attacker-code", "state": state},
                {"error": "access_denied", "state": state},
                {"state": state},
                {"code": code, "state": state},
            ):
                burnt = await attacker.get(callback_url(env, params))
                assert burnt.status_code == 400
                assert "<code>browser_mismatch</code>" in burnt.text
        answer = await victim.get(callback_url(env, {"code": code, "state": state}))
    assert answer.status_code == 200, answer.text
    key = UserKey.from_caller(caller)
    assert key is not None
    assert await source.grants.get_grant(key.hashed) is not None


async def test_the_state_is_still_single_use_after_the_checks(consent_env: ConsentEnv) -> None:
    env = consent_env
    caller = platform_caller(f"burn-bob-{time.monotonic_ns()}", upn=env.idp.users["alice"].upn)
    source, _ = env.make()
    link = await consent_link(source, env, caller)
    async with env.browser() as browser:
        code, state = await code_and_state(browser, link)
        first = await browser.get(callback_url(env, {"code": code, "state": state}))
        assert first.status_code == 200, first.text
        redeemed = env.idp.stats()["grants"]["authorization_code"]
        # The browser that completed it is told so (a reload); nothing is redeemed again.
        again = await browser.get(callback_url(env, {"code": code, "state": state}))
        assert again.status_code == 200, again.text
        assert "You are already signed in" in again.text
        assert env.idp.stats()["grants"]["authorization_code"] == redeemed
    async with env.browser() as other:
        elsewhere = await other.get(callback_url(env, {"code": code, "state": state}))
    assert elsewhere.status_code == 400
    assert "<code>state_used</code>" in elsewhere.text


async def test_a_page_elsewhere_cannot_post_a_state_from_the_users_browser(
    consent_env: ConsentEnv,
) -> None:
    """The binding cookie is SameSite=None (the form post is cross-site), so the user's own
    browser sends it with a post from any page: a post whose Origin is another site than the
    identity provider is refused before the state is consumed, and the real answer still
    completes the sign-in."""
    env = consent_env
    caller = platform_caller(f"csrf-carol-{time.monotonic_ns()}", upn=env.idp.users["alice"].upn)
    source, _ = env.make()
    link = await consent_link(source, env, caller)
    async with env.browser() as browser:
        code, state = await code_and_state(browser, link)
        for params in ({"error": "access_denied", "state": state}, {"code": code, "state": state}):
            forged = await browser.post(
                env.redirect_uri,
                data=params,
                headers={"Origin": "https://attacker.example"},
            )
            assert forged.status_code == 400
            assert "<code>cross_site_callback</code>" in forged.text
        answer = await browser.post(
            env.redirect_uri,
            data={"code": code, "state": state},
            headers={"Origin": env.idp.url},
        )
    assert answer.status_code == 200, answer.text
    key = UserKey.from_caller(caller)
    assert key is not None
    assert await source.grants.get_grant(key.hashed) is not None
