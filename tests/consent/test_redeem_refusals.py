"""A code redemption the identity provider refuses says why, to the user and to the operator.

Before, the page read "could not be redeemed: invalid_client (AADSTS7000215) ... use the sign-in
link again" (no meaning, and a retry that loops forever when the consent app's secret is wrong)
and the broker logged only ``INFO consent callback rejected: redeem_failed``. Now the page is
built from the AADSTS table (as for an authorize error); a refusal of the consent app's own
registration or credential (secret wrong or expired, app not found) tells the user the agent's
sign-in is misconfigured and to tell its operator, with the correlation id, not to retry; and a
WARNING names the AADSTS code, the correlation id and the operator's fix, never the code, state,
secret or a token. Every refusal here is the emulator's own answer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import re
import ssl
import time
import uuid
from collections.abc import Iterator

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from _support.consent import (
    ConsentEnv,
    code_and_state,
    consent_link,
    form_post_fields,
    platform_caller,
    submit_form_post,
)
from entra_passthrough import UserKey
from entra_passthrough._sources.delegated import DelegatedConsent
from entra_passthrough.consent import ConsentBroker
from entra_passthrough.testing import EntraEmulator

_GUID = re.compile(r"correlation id ([0-9a-f-]{36})")


def _broker(
    env: ConsentEnv,
    source: DelegatedConsent,
    *,
    idp: EntraEmulator | None = None,
    client_id: str | None = None,
    secret: str | None = None,
) -> ConsentBroker:
    """A broker sharing ``source``'s store and keyring, mounted in the test server."""
    idp = idp or env.idp
    broker = ConsentBroker(
        store=source.grants.store,
        keyring=source.keyring,
        redirect_uris=[env.redirect_uri],
        client_id=client_id or env.app.client_id,
        tenant_id=idp.tenant_id,
        client_secret=secret or env.app.secret,
        authority_host=idp.url,
        http_client=idp.msal_http_client(),
    )
    env.slot.app = Starlette(routes=[Mount("/consent", broker.app)])
    return broker


async def _sign_in(
    env: ConsentEnv, browser: httpx2.AsyncClient, link: str
) -> tuple[httpx2.Response, list[str]]:
    """Follow the link through the identity provider and post its answer; also the code and
    state that went by (they must reach no log line)."""
    start = await browser.get(link, follow_redirects=False)
    assert start.status_code == 302, start.text
    authorize = await browser.get(start.headers["location"], follow_redirects=False)
    _, fields = form_post_fields(authorize)
    return await submit_form_post(browser, authorize), [fields["code"], fields["state"]]


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("entra_passthrough") and r.levelno == logging.WARNING
    ]


def _misconfigured(page: httpx2.Response, code: int, meaning: str) -> str:
    """The page of a refusal only the operator can fix; returns its correlation id."""
    assert page.status_code == 400, page.text
    assert "<code>broker_misconfigured</code>" in page.text, page.text
    assert f"AADSTS{code}" in page.text
    assert meaning in page.text
    assert "misconfigured" in page.text
    assert "tell the agent&#x27;s operator" in page.text
    assert "use the sign-in link again" not in page.text  # it would fail the same way
    found = _GUID.search(page.text)
    assert found is not None, page.text
    return found.group(1)


def _logged(caplog: pytest.LogCaptureFixture, code: int, correlation_id: str, fix: str) -> None:
    lines = [line for line in _warnings(caplog) if f"AADSTS{code}" in line]
    assert lines, _warnings(caplog)
    assert correlation_id in lines[0]
    assert f"Fix: {fix}" in lines[0]


def _no_secret_logged(caplog: pytest.LogCaptureFixture, secrets: list[str]) -> None:
    text = "\n".join(r.getMessage() for r in caplog.records)
    for secret in secrets:
        assert secret not in text


async def test_a_wrong_client_secret_tells_the_user_to_tell_the_operator(
    consent_env: ConsentEnv, caplog: pytest.LogCaptureFixture
) -> None:
    env = consent_env
    source, _ = env.make()
    secret = f"rotated-away-{uuid.uuid4()}"
    broker = _broker(env, source, secret=secret)
    caplog.set_level(logging.INFO)
    caller = platform_caller(f"redeem-secret-{time.monotonic_ns()}", upn=env.idp.users["alice"].upn)
    try:
        async with env.browser() as browser:
            page, seen = await _sign_in(env, browser, await consent_link(source, env, caller))
    finally:
        broker.close()
    correlation_id = _misconfigured(page, 7000215, "the client secret is wrong")
    _logged(caplog, 7000215, correlation_id, "send the secret's value")
    _no_secret_logged(caplog, [secret, *seen])
    key = UserKey.from_caller(caller)
    assert key is not None
    assert await source.grants.get_grant(key.hashed) is None


@contextlib.contextmanager
def _idp_with_an_expired_secret(env: ConsentEnv) -> Iterator[EntraEmulator]:
    """Another emulator whose consent app's only secret ended yesterday (AADSTS7000222)."""
    world = env.idp.world
    ended = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    apps = tuple(
        dataclasses.replace(a, secret_expires=ended) if a.client_id == env.app.client_id else a
        for a in world.apps
    )
    with EntraEmulator(world=dataclasses.replace(world, apps=apps)) as idp:
        yield idp


async def test_an_expired_client_secret_tells_the_user_to_tell_the_operator(
    consent_env: ConsentEnv, caplog: pytest.LogCaptureFixture
) -> None:
    env = consent_env
    source, _ = env.make()
    caplog.set_level(logging.INFO)
    caller = platform_caller(
        f"redeem-expired-{time.monotonic_ns()}", upn=env.idp.users["alice"].upn
    )
    with _idp_with_an_expired_secret(env) as idp:
        broker = _broker(env, source, idp=idp)
        trust = ssl.create_default_context(cafile=env.bundle)
        trust.load_verify_locations(cafile=idp.ca_file)
        try:
            async with httpx2.AsyncClient(
                verify=trust, follow_redirects=True, timeout=30
            ) as browser:
                page, seen = await _sign_in(env, browser, await consent_link(source, env, caller))
        finally:
            broker.close()
    correlation_id = _misconfigured(page, 7000222, "the client secret has expired")
    _logged(caplog, 7000222, correlation_id, "create a new secret")
    _no_secret_logged(caplog, [env.app.secret or "", *seen])


async def test_an_app_the_tenant_does_not_know_tells_the_user_to_tell_the_operator(
    consent_env: ConsentEnv, caplog: pytest.LogCaptureFixture
) -> None:
    """The sign-in started by a broker with the right client id is answered by one with a
    client id the tenant does not know (a replica configured with another app)."""
    env = consent_env
    source, _ = env.make()
    caplog.set_level(logging.INFO)
    caller = platform_caller(f"redeem-app-{time.monotonic_ns()}", upn=env.idp.users["alice"].upn)
    link = await consent_link(source, env, caller)
    async with env.browser() as browser:
        start = await browser.get(link, follow_redirects=False)
        authorize = await browser.get(start.headers["location"], follow_redirects=False)
        _, fields = form_post_fields(authorize)
        other = _broker(env, source, client_id=str(uuid.uuid4()))
        try:
            page = await submit_form_post(browser, authorize)
        finally:
            other.close()
    correlation_id = _misconfigured(page, 700016, "the application was not found")
    _logged(caplog, 700016, correlation_id, "check the client id and the tenant")
    _no_secret_logged(caplog, [fields["code"], fields["state"]])


async def test_a_code_already_used_asks_for_a_new_sign_in(
    consent_env: ConsentEnv, caplog: pytest.LogCaptureFixture
) -> None:
    env = consent_env
    source, _ = env.make()
    caplog.set_level(logging.INFO)
    caller = platform_caller(f"redeem-used-{time.monotonic_ns()}", upn=env.idp.users["alice"].upn)
    link = await consent_link(source, env, caller)
    async with env.browser() as browser:
        first, _ = await _sign_in(env, browser, link)
        assert first.status_code == 200, first.text
        used = re.search(r"emu-code\.[\w-]+", str(first.request.content))
        assert used is not None
        _, state = await code_and_state(browser, link)
        page = await browser.post(env.redirect_uri, data={"code": used.group(0), "state": state})
    assert page.status_code == 400, page.text
    assert "<code>redeem_failed</code>" in page.text
    assert "AADSTS54005" in page.text
    assert "already used or has expired" in page.text
    assert "use the sign-in link again" in page.text  # a new sign-in gets a new code
    lines = [line for line in _warnings(caplog) if "AADSTS54005" in line]
    assert lines, _warnings(caplog)
    assert "correlation_id " in lines[0]
    assert "Fix: start the sign-in again" in lines[0]
    _no_secret_logged(caplog, [used.group(0), state])


async def test_consent_withdrawn_before_the_redemption_is_decoded(
    consent_env: ConsentEnv, caplog: pytest.LogCaptureFixture
) -> None:
    """AADSTS65001 with suberror consent_required at the token endpoint (the user's consent was
    removed between the sign-in and the redemption)."""
    env = consent_env
    source, _ = env.make()
    caplog.set_level(logging.INFO)
    caller = platform_caller(f"redeem-consent-{time.monotonic_ns()}", upn=env.idp.users["rita"].upn)
    link = await consent_link(source, env, caller)
    async with env.browser() as browser:
        start = await browser.get(link, follow_redirects=False)
        authorize = await browser.get(start.headers["location"], follow_redirects=False)
        env.idp.revoke_consent("rita", env.app.client_id)
        try:
            page = await submit_form_post(browser, authorize)
        finally:
            env.idp.grant_consent("rita", env.app.client_id, ["access_as_user"])
    assert page.status_code == 400, page.text
    assert "<code>redeem_failed</code>" in page.text
    assert "AADSTS65001 (DelegationDoesNotExist)" in page.text
    assert "has not consented" in page.text
    assert "suberror consent_required" in page.text
    found = _GUID.search(page.text)
    assert found is not None, page.text
    _logged(caplog, 65001, found.group(1), "have the user consent")


async def test_a_redemption_answered_without_json_is_unavailable_not_a_mismatch(
    consent_env: ConsentEnv, caplog: pytest.LogCaptureFixture
) -> None:
    """The token endpoint answers the code redemption with a body that is not JSON (a proxy's
    page, a body cut short): MSAL raises ``JSONDecodeError``, a ``ValueError`` like its state
    mismatch, and the page said "The sign-in answer does not match this sign-in", sending the
    user after the wrong thing. It is the identity provider's side: 503, start again."""
    env = consent_env
    source, _ = env.make()
    broker = _broker(env, source)
    caplog.set_level(logging.INFO)
    caller = platform_caller(
        f"redeem-notjson-{time.monotonic_ns()}", upn=env.idp.users["alice"].upn
    )
    try:
        async with env.browser() as browser:
            start = await browser.get(
                await consent_link(source, env, caller), follow_redirects=False
            )
            authorize = await browser.get(start.headers["location"], follow_redirects=False)
            env.idp.inject_fault("token", truncate=5)  # the redemption's answer, cut: not JSON
            page = await submit_form_post(browser, authorize)
    finally:
        env.idp.clear_faults()
        broker.close()
    assert page.status_code == 503, page.text
    assert "temporarily_unavailable" in page.text
    assert "does not match this sign-in" not in page.text
    key = UserKey.from_caller(caller)
    assert key is not None
    assert await source.grants.get_grant(key.hashed) is None
