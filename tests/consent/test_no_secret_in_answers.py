"""No code, state, PKCE verifier or refresh token in any answer the consent broker sends,
success or failure (regression tests from its security review)."""

from __future__ import annotations

import json
import time
import urllib.parse

import httpx2

from _support.consent import (
    ConsentEnv,
    callback_url,
    code_and_state,
    consent_link,
    form_post_fields,
    platform_caller,
    submit_form_post,
)
from entra_passthrough import UserKey


def _answer_text(response: httpx2.Response) -> str:
    return response.text + "\n" + "\n".join(f"{k}: {v}" for k, v in response.headers.items())


async def _verifier(source: object, state: str) -> str:
    flow_id = json.loads(source.keyring.verify("state", state))["f"]  # type: ignore[attr-defined]
    found = await source.grants._get(f"ep:v1:flow:{flow_id}")  # type: ignore[attr-defined]
    assert found is not None
    verifier = json.loads(found[0])["msal"]["code_verifier"]
    assert isinstance(verifier, str)
    assert len(verifier) >= 43
    return verifier


async def test_failed_callbacks_echo_no_code_state_or_verifier(consent_env: ConsentEnv) -> None:
    env = consent_env
    source, _ = env.make()
    caller = platform_caller(f"echo-{time.monotonic_ns()}", upn=env.idp.users["alice"].upn)
    link = await consent_link(source, env, caller)
    answers: list[httpx2.Response] = []
    async with env.browser() as browser:
        code, state = await code_and_state(browser, link)
        verifier = await _verifier(source, state)
        kid, body, mac = state.split(".")
        for params in (
            {"code": code, "state": f"{kid}.{body}.{'A' * len(mac)}"},  # bad signature
            {"code": code, "state": state + "x"},
            {"code": code, "state": state, "state2": state, "error": "x" * 100},
            {"code": code},
        ):
            for accept in ("text/html", "application/json"):
                answers.append(
                    await browser.get(callback_url(env, params), headers={"Accept": accept})
                )
    async with env.browser() as other:  # the right state in another browser: refused
        answers.append(await other.get(callback_url(env, {"code": code, "state": state})))
    assert all(a.status_code == 400 for a in answers), [a.status_code for a in answers]
    for answer in answers:
        text = _answer_text(answer)
        for secret in (code, state, body, mac, verifier):
            assert secret not in text


async def test_the_success_page_echoes_no_secret(consent_env: ConsentEnv) -> None:
    env = consent_env
    source, _ = env.make()
    caller = platform_caller(f"ok-{time.monotonic_ns()}", upn=env.idp.users["alice"].upn)
    link = await consent_link(source, env, caller)
    async with env.browser() as browser:
        start = await browser.get(link, follow_redirects=False)
        authorize = await browser.get(start.headers["location"], follow_redirects=False)
        _, fields = form_post_fields(authorize)
        verifier = await _verifier(source, fields["state"])
        page = await submit_form_post(browser, authorize)
    assert page.status_code == 200, page.text
    key = UserKey.from_caller(caller)
    assert key is not None
    found = await source.grants.get_grant(key.hashed)
    assert found is not None
    text = _answer_text(page)
    for secret in (fields["code"], fields["state"], verifier, found[0].refresh_token):
        assert secret not in text


async def test_the_broker_redirects_are_uncacheable_and_send_no_referrer(
    consent_env: ConsentEnv,
) -> None:
    env = consent_env
    source, _ = env.make()
    caller = platform_caller(f"headers-{time.monotonic_ns()}", upn=env.idp.users["alice"].upn)
    key = UserKey.from_caller(caller)
    assert key is not None
    async with env.browser() as browser:
        start = await browser.get(await consent_link(source, env, caller), follow_redirects=False)
        ticket = source.signout_link(key).split("t=", 1)[1]
        revoke = await browser.post(
            f"{env.base}/revoke",
            data={"t": urllib.parse.unquote(ticket)},
            follow_redirects=False,
        )
    for answer, status in ((start, 302), (revoke, 303)):
        assert answer.status_code == status, answer.text
        assert answer.headers["location"]
        assert answer.headers["cache-control"] == "no-store"
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]


async def test_revoke_answers_json_only_to_a_json_client(consent_env: ConsentEnv) -> None:
    env = consent_env
    source, _ = env.make()
    key = UserKey.for_platform_user(f"json-revoke-{time.monotonic_ns()}")
    ticket = urllib.parse.unquote(source.signout_link(key).split("t=", 1)[1])
    async with env.browser() as browser:
        api = await browser.post(
            f"{env.base}/revoke", data={"t": ticket}, headers={"Accept": "application/json"}
        )
        # A browser that also accepts JSON is a browser: it goes on to Entra's sign-out.
        mixed = await browser.post(
            f"{env.base}/revoke",
            data={"t": ticket},
            headers={"Accept": "application/json, text/html"},
            follow_redirects=False,
        )
    assert api.status_code == 200
    assert api.json() == {"status": "ok", "revoked": False}
    assert mixed.status_code == 303
    assert "/oauth2/v2.0/logout" in mixed.headers["location"]


async def test_a_redeem_error_shows_no_text_of_the_endpoint(consent_env: ConsentEnv) -> None:
    """The token endpoint's error body is its text (a gateway may echo the request form): the
    broker's page names the error only when it is a short identifier, and a code only when it
    can be an AADSTS code."""
    env = consent_env
    source, broker = env.make()
    secret = "Qx8~s3cr3tVALUEthatIsLong1234"
    hostile = {
        "error": f"client_secret={secret}",
        "error_description": f"echo client_secret={secret}",
        "error_codes": [int("9" * 400)],
    }
    real = broker.client.redeem
    broker.client.redeem = lambda flow, response: hostile  # type: ignore[method-assign]
    try:
        caller = platform_caller(f"redeem-{time.monotonic_ns()}", upn=env.idp.users["alice"].upn)
        link = await consent_link(source, env, caller)
        async with env.browser() as browser:
            start = await browser.get(link, follow_redirects=False)
            authorize = await browser.get(start.headers["location"], follow_redirects=False)
            page = await submit_form_post(browser, authorize)
    finally:
        broker.client.redeem = real  # type: ignore[method-assign]
    assert page.status_code == 400, page.text
    text = _answer_text(page)
    assert "redeem_failed" in text or "could not be redeemed" in text
    assert secret not in text
    assert "client_secret" not in text
    assert "9" * 20 not in text
