"""Attacks on the broker: each is refused with a clear 400 and nothing is stored."""

from __future__ import annotations

import json
import time
import urllib.parse

import httpx2
import pytest

from _support.consent import (
    ConsentEnv,
    callback_url,
    code_and_state,
    consent_link,
    follow_link,
    platform_caller,
    submit_form_post,
    verified_caller,
    with_login_hint,
)
from entra_passthrough import Caller, UserKey
from entra_passthrough._sources.delegated import DelegatedConsent
from entra_passthrough._store import Keyring
from entra_passthrough.consent._state import State


async def _nothing_stored(source: DelegatedConsent, caller: Caller) -> None:
    key = UserKey.from_caller(caller)
    assert key is not None
    assert await source.grants.get_grant(key.hashed) is None
    assert await source.grants.get_binding(key.hashed) is None


def _rejected(response: httpx2.Response, code: str) -> None:
    assert response.status_code == 400, response.text
    assert f"<code>{code}</code>" in response.text, response.text
    assert "Nothing was stored" in response.text


@pytest.fixture
def alice_caller(consent_env: ConsentEnv) -> Caller:
    return platform_caller(
        f"attack-alice-{time.monotonic_ns()}", upn=consent_env.idp.users["alice"].upn
    )


async def test_forged_state(consent_env: ConsentEnv, alice_caller: Caller) -> None:
    env = consent_env
    source, _ = env.make()
    link = await consent_link(source, env, alice_caller)
    async with env.browser() as browser:
        code, state = await code_and_state(browser, link)
        kid, body, mac = state.split(".")
        key = UserKey.from_caller(alice_caller)
        assert key is not None
        key_hash = key.hashed
        forged = [
            "not-a-state",
            f"{kid}.{body}.{'A' * len(mac)}",  # bad signature
            State("x" * 24, key_hash, time.time() + 60).sign(Keyring.generate(kid)),  # other key
            State("x" * 24, key_hash, time.time() + 60).sign(Keyring.generate("evil")),
        ]
        for value in forged:
            answer = await browser.get(callback_url(env, {"code": code, "state": value}))
            _rejected(answer, "invalid_state")
    await _nothing_stored(source, alice_caller)


async def test_replayed_state(consent_env: ConsentEnv, alice_caller: Caller) -> None:
    env = consent_env
    source, _ = env.make()
    link = await consent_link(source, env, alice_caller)
    async with env.browser() as browser:
        code, state = await code_and_state(browser, link)
        callback = callback_url(env, {"code": code, "state": state})
        first = await browser.get(callback)
        assert first.status_code == 200
        key = UserKey.from_caller(alice_caller)
        assert key is not None
        await source.grants.delete_grant(key.hashed)
        # The browser that completed it is told that access was revoked since.
        again = await browser.get(callback)
        assert again.status_code == 400
        assert "revoked since" in again.text
    async with env.browser() as other:
        replay = await other.get(callback)
    _rejected(replay, "state_used")
    assert await source.grants.get_grant(key.hashed) is None


async def test_expired_state(consent_env: ConsentEnv, alice_caller: Caller) -> None:
    env = consent_env
    source, _ = env.make()
    link = await consent_link(source, env, alice_caller)
    async with env.browser() as browser:
        code, state = await code_and_state(browser, link)
        data = json.loads(source.keyring.verify("state", state))
        expired = State(data["f"], data["k"], time.time() - 1).sign(source.keyring)
        answer = await browser.get(callback_url(env, {"code": code, "state": expired}))
    _rejected(answer, "state_expired")
    await _nothing_stored(source, alice_caller)


async def test_state_for_user_a_completed_by_user_b(consent_env: ConsentEnv) -> None:
    env = consent_env
    alice, bob = env.idp.users["alice"], env.idp.users["bob"]
    source, _ = env.make()
    caller = verified_caller(alice.tenant_id, alice.oid)
    link = await consent_link(source, env, caller)
    async with env.browser() as browser:
        start = await browser.get(link, follow_redirects=False)
        authorize = (
            start.headers["location"] + "&" + urllib.parse.urlencode({"login_hint": bob.upn})
        )
        answer = await submit_form_post(browser, await browser.get(authorize))
    _rejected(answer, "user_mismatch")
    key = UserKey.from_caller(caller)
    assert key is not None
    assert await source.grants.get_grant(key.hashed) is None


async def test_platform_id_stays_bound_to_its_first_user(consent_env: ConsentEnv) -> None:
    env = consent_env
    alice, bob = env.idp.users["alice"], env.idp.users["bob"]
    source, _ = env.make()
    caller = platform_caller(f"shared-{time.monotonic_ns()}", upn=alice.upn)
    ok = await follow_link(env, await consent_link(source, env, caller))
    assert ok.status_code == 200
    key = UserKey.from_caller(caller)
    assert key is not None
    found = await source.grants.get_grant(key.hashed)
    assert found is not None
    assert found[0].oid == alice.oid
    await source.grants.delete_grant(key.hashed)
    async with env.browser() as browser:
        start = await browser.get(await consent_link(source, env, caller), follow_redirects=False)
        location = with_login_hint(start.headers["location"], alice.upn, bob.upn)
        answer = await submit_form_post(browser, await browser.get(location))
    _rejected(answer, "user_mismatch")
    assert await source.grants.get_grant(key.hashed) is None


async def test_pkce_verifier_mismatch(consent_env: ConsentEnv, alice_caller: Caller) -> None:
    env = consent_env
    source, _ = env.make()
    link = await consent_link(source, env, alice_caller)
    async with env.browser() as browser:
        code_1, _ = await code_and_state(browser, link)
        _, state_2 = await code_and_state(browser, link)
        # code from sign-in 1, state (hence PKCE verifier) of sign-in 2: code injection
        answer = await browser.get(callback_url(env, {"code": code_1, "state": state_2}))
    _rejected(answer, "redeem_failed")
    assert "AADSTS501481" in answer.text
    await _nothing_stored(source, alice_caller)


async def test_nonce_mismatch(consent_env: ConsentEnv, alice_caller: Caller) -> None:
    env = consent_env
    source, _ = env.make()
    link = await consent_link(source, env, alice_caller)
    async with env.browser() as browser:
        start = await browser.get(link, follow_redirects=False)
        parts = urllib.parse.urlsplit(start.headers["location"])
        query = dict(urllib.parse.parse_qsl(parts.query))
        query["nonce"] = "attacker-chosen-nonce"
        tampered = parts._replace(query=urllib.parse.urlencode(query)).geturl()
        answer = await submit_form_post(browser, await browser.get(tampered))
    _rejected(answer, "id_token_invalid")
    await _nothing_stored(source, alice_caller)


async def test_state_completed_in_another_browser(
    consent_env: ConsentEnv, alice_caller: Caller
) -> None:
    env = consent_env
    source, _ = env.make()
    link = await consent_link(source, env, alice_caller)
    async with env.browser() as attacker:
        code, state = await code_and_state(attacker, link)
    async with env.browser() as victim:
        answer = await victim.get(callback_url(env, {"code": code, "state": state}))
    _rejected(answer, "browser_mismatch")
    await _nothing_stored(source, alice_caller)


async def test_redirect_uri_not_on_the_list(consent_env: ConsentEnv, alice_caller: Caller) -> None:
    env = consent_env
    source, _ = env.make()
    link = await consent_link(source, env, alice_caller)
    async with env.browser() as browser:
        for evil in (
            "https://evil.example/callback",
            env.redirect_uri + "x",
            env.redirect_uri.replace("https", "http"),
        ):
            answer = await browser.get(
                link + "&" + urllib.parse.urlencode({"redirect_uri": evil}), follow_redirects=False
            )
            _rejected(answer, "redirect_uri_not_allowed")
    await _nothing_stored(source, alice_caller)


async def test_oversized_duplicated_and_garbage_parameters(
    consent_env: ConsentEnv, alice_caller: Caller
) -> None:
    env = consent_env
    source, _ = env.make()
    link = await consent_link(source, env, alice_caller)
    ticket = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(link).query))["t"]
    async with env.browser() as browser:
        cases = [
            (f"{env.base}/start?t={ticket}&t={ticket}", "duplicate_parameter"),
            (f"{env.base}/start?t={'A' * 9000}", "request_too_large"),
            (f"{env.base}/start?t={'A' * 5000}", "request_too_large"),
            (f"{env.base}/start?t=garbage", "invalid_link"),
            (f"{env.base}/start", "invalid_link"),
            (f"{env.base}/start?t={ticket}&extra=1", "bad_request"),
            (f"{env.base}/start?t=%ff%fe", "invalid_link"),
            (f"{env.base}/start?" + "&".join(f"p{i}=1" for i in range(40)), "request_too_large"),
            (f"{env.redirect_uri}?code=a&state=b&state=c", "duplicate_parameter"),
            (f"{env.redirect_uri}?code=a&code=a&state=b", "duplicate_parameter"),
            (f"{env.redirect_uri}?code={'c' * 5000}&state=b", "request_too_large"),
            (f"{env.redirect_uri}?code=a&state={'s' * 600}", "invalid_state"),
            (f"{env.redirect_uri}?code=a", "invalid_state"),
            (f"{env.redirect_uri}", "invalid_state"),
            (f"{env.redirect_uri}?state=%00%01&code=%ff", "invalid_state"),
        ]
        for url, code in cases:
            answer = await browser.get(url, follow_redirects=False)
            _rejected(answer, code)
        json_answer = await browser.get(
            f"{env.redirect_uri}?code=a&state=b", headers={"Accept": "application/json"}
        )
        assert json_answer.status_code == 400
        assert json_answer.json() == {
            "error": "invalid_state",
            "error_description": json_answer.json()["error_description"],
            "stored": False,
        }
        revoke = await browser.post(f"{env.base}/revoke", data={"t": "forged"})
        assert revoke.status_code == 400
    await _nothing_stored(source, alice_caller)


@pytest.mark.parametrize(
    ("error", "code", "words"),
    [
        ("consent_required", 90094, "administrator"),
        ("invalid_client", 650057, "API permissions"),
        ("access_denied", 65004, "declined"),
        ("access_denied", 50105, "assign"),
        ("access_denied", 53003, "conditional access"),
        ("access_denied", 50057, "administrator"),
    ],
)
async def test_identity_provider_aadsts_is_decoded_with_the_fix(
    consent_env: ConsentEnv, alice_caller: Caller, error: str, code: int, words: str
) -> None:
    # What Entra sends to the redirect URI when the user may not consent (admin-only scope or
    # a tenant without user consent: 90094), the app does not configure the permission
    # (650057) or the user pressed Cancel (65004): the page names the code, its meaning and the
    # fix from the library's table, and nothing else of the description.
    env = consent_env
    source, _ = env.make()
    link = await consent_link(source, env, alice_caller)
    async with env.browser() as browser:
        _, state = await code_and_state(browser, link)
        denied = await browser.get(
            callback_url(
                env,
                {
                    "error": error,
                    "error_description": f"AADSTS{code}: <b>unshown</b> text",
                    "state": state,
                },
            )
        )
    _rejected(denied, "sign_in_refused")
    assert f"AADSTS{code}" in denied.text
    assert words in denied.text
    assert "Fix:" in denied.text
    assert "unshown" not in denied.text
    # Only an administrator can lift 90094, 50105, 53003 or 50057: the page does not send the
    # user back to a link that fails the same way until then.
    admin_only = code in (90094, 50105, 53003, 50057)
    assert ("Ask an administrator" in denied.text) is admin_only
    assert ("use the sign-in link again" in denied.text) is not admin_only
    await _nothing_stored(source, alice_caller)


async def test_identity_provider_error_is_shown_and_consumes_the_state(
    consent_env: ConsentEnv,
    alice_caller: Caller,
) -> None:
    env = consent_env
    source, _ = env.make()
    link = await consent_link(source, env, alice_caller)
    async with env.browser() as browser:
        _, state = await code_and_state(browser, link)
        denied = await browser.get(
            callback_url(
                env,
                {
                    "error": "access_denied",
                    "error_description": "<script>x</script>",
                    "state": state,
                },
            )
        )
    _rejected(denied, "sign_in_refused")
    assert "<script>" not in denied.text
    await _nothing_stored(source, alice_caller)


async def test_form_post_callback_is_parsed_as_strictly(consent_env: ConsentEnv) -> None:
    env = consent_env
    env.make()
    async with env.browser() as browser:
        cases = [
            ({"content": b"code=a&state=b&state=c"}, "duplicate_parameter"),
            ({"content": b"code=" + b"c" * 9000 + b"&state=b"}, "request_too_large"),
            ({"json": {"code": "a", "state": "b"}}, "bad_request"),
            ({"content": b"code=a&state=b"}, "invalid_state"),
        ]
        for kwargs, code in cases:
            headers = (
                {} if "json" in kwargs else {"Content-Type": "application/x-www-form-urlencoded"}
            )
            answer = await browser.post(env.redirect_uri, headers=headers, **kwargs)
            _rejected(answer, code)


async def test_forwarded_link_cannot_bind_the_chat_user_to_another_account(
    consent_env: ConsentEnv,
) -> None:
    # A Foundry caller: platform user id + a token for https://ai.azure.com naming alice. The
    # link is a platform key, but the sign-in must be alice's account: bob, who got the link
    # forwarded (or phished it), cannot bind alice's chat identity to his account.
    from entra_passthrough import UnverifiedClaims

    env = consent_env
    alice, bob = env.idp.users["alice"], env.idp.users["bob"]
    source, _ = env.make()
    claims = UnverifiedClaims(
        upn=alice.upn, tid=alice.tenant_id, oid=alice.oid, aud="https://ai.azure.com"
    )
    caller = Caller(user_id=f"forwarded-{time.monotonic_ns()}", claims=claims)
    link = await consent_link(source, env, caller)
    async with env.browser() as browser:
        start = await browser.get(link, follow_redirects=False)
        location = with_login_hint(start.headers["location"], alice.upn, bob.upn)
        answer = await submit_form_post(browser, await browser.get(location))
    _rejected(answer, "user_mismatch")
    await _nothing_stored(source, caller)
    # alice herself completes a fresh link.
    ok = await follow_link(env, await consent_link(source, env, caller))
    assert ok.status_code == 200, ok.text
    key = UserKey.from_caller(caller)
    assert key is not None
    found = await source.grants.get_grant(key.hashed)
    assert found is not None
    assert found[0].oid == alice.oid
