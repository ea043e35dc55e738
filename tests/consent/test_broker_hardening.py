"""The broker under what a deployment meets: a tenant spelled as a domain or in capitals, a store
that fails during sign-out, a login CSRF by navigation, an authority host written with its port,
and the sign-out's JSON answer."""

from __future__ import annotations

import time
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from _support.consent import (
    ConsentEnv,
    callback_url,
    code_and_state,
    consent_link,
    follow_link,
    platform_caller,
    revoke_ticket,
)
from entra_passthrough import ConfigurationError, TokenRequest, UserKey
from entra_passthrough._sources.delegated import DelegatedConsent
from entra_passthrough._store import ANY, Keyring, MemoryStore
from entra_passthrough.consent import ConsentBroker


def _make(
    env: ConsentEnv,
    tenant: str,
    store: MemoryStore | None = None,
    allowed_tenants: list[str] | None = None,
) -> DelegatedConsent:
    source = DelegatedConsent(
        client_id=env.app.client_id,
        tenant_id=tenant,
        client_secret=env.app.secret,
        store=store if store is not None else MemoryStore(),
        keyring=Keyring.generate(),
        broker_url=env.base,
        authority_host=env.idp.url,
        http_client=env.idp.msal_http_client(),
        allowed_tenants=allowed_tenants,
        server_label="mcp",
    )
    broker = ConsentBroker.for_source(source, redirect_uris=[env.redirect_uri])
    env.slot.app = Starlette(routes=[Mount("/consent", broker.app)])
    env.made.append((source, broker))
    return source


@pytest.mark.parametrize("spelling", ["domain", "capitals"])
async def test_a_tenant_spelled_otherwise_still_completes_sign_in(
    consent_env: ConsentEnv, spelling: str
) -> None:
    # The id token's tid is the tenant's id in lower case; a broker configured with the
    # tenant's domain name or its id in capitals refused every sign-in after the user consented
    # ("the id token's tenant is not allowed"), and the agent asked again forever.
    env = consent_env
    tenant = env.idp.world.tenants[0]
    configured = tenant.domain if spelling == "domain" else tenant.id.upper()
    source = _make(env, configured)
    caller = platform_caller(
        f"spelling-{spelling}-{time.monotonic_ns()}", upn=env.idp.users["alice"].upn
    )
    link = await consent_link(source, env, caller)
    page = await follow_link(env, link)
    assert page.status_code == 200, page.text
    result = await source.get_token_async(TokenRequest(scopes=(env.mcp_scope,), caller=caller))
    assert result is not None
    assert result.token


def test_allowed_tenants_as_one_string_is_refused(consent_env: ConsentEnv) -> None:
    env = consent_env
    with pytest.raises(ConfigurationError, match="not one string"):
        DelegatedConsent(
            client_id=env.app.client_id,
            tenant_id=env.idp.tenant_id,
            client_secret=env.app.secret,
            store=MemoryStore(),
            keyring=Keyring.generate(),
            broker_url=env.base,
            authority_host=env.idp.url,
            http_client=env.idp.msal_http_client(),
            allowed_tenants=env.idp.tenant_id,  # type: ignore[arg-type]
        )


class FailingStore(MemoryStore):
    failing = False

    async def delete(self, key: str, *, expect: Any = ANY) -> bool:
        if self.failing:
            raise ConnectionError("store down")
        return await super().delete(key, expect=expect)


@pytest.mark.parametrize("accept", ["text/html", "application/json"])
async def test_sign_out_while_the_store_is_down_is_a_typed_503(
    consent_env: ConsentEnv, accept: str
) -> None:
    env = consent_env
    store = FailingStore()
    source = _make(env, env.idp.tenant_id, store)
    caller = platform_caller(f"revoke-down-{time.monotonic_ns()}", upn=env.idp.users["alice"].upn)
    page = await follow_link(env, await consent_link(source, env, caller))
    assert page.status_code == 200, page.text
    ticket = revoke_ticket(page.text)
    store.failing = True
    async with env.browser() as browser:
        answer = await browser.post(
            f"{env.base}/revoke",
            data={"t": ticket},
            headers={"Origin": f"https://127.0.0.1:{env.port}", "Accept": accept},
            follow_redirects=False,
        )
    assert answer.status_code == 503, answer.text
    assert "temporarily_unavailable" in answer.text
    assert "Internal Server Error" not in answer.text
    store.failing = False
    key = UserKey.from_caller(caller)
    assert key is not None
    assert await source.grants.get_grant(key.hashed) is not None  # nothing was deleted


async def test_sign_out_json_says_revoked_as_a_boolean(consent_env: ConsentEnv) -> None:
    env = consent_env
    source = _make(env, env.idp.tenant_id)
    caller = platform_caller(f"revoke-json-{time.monotonic_ns()}", upn=env.idp.users["alice"].upn)
    page = await follow_link(env, await consent_link(source, env, caller))
    ticket = revoke_ticket(page.text)
    async with env.browser() as browser:
        answers = [
            await browser.post(
                f"{env.base}/revoke",
                data={"t": ticket},
                headers={"Origin": f"https://127.0.0.1:{env.port}", "Accept": "application/json"},
                follow_redirects=False,
            )
            for _ in range(2)
        ]
    assert [a.json() for a in answers] == [
        {"status": "ok", "revoked": True},
        {"status": "ok", "revoked": False},  # nothing left: a client must not read "revoked"
    ]


def test_an_authority_host_with_its_default_port_matches_the_browsers_origin(
    consent_env: ConsentEnv,
) -> None:
    # Browsers write an Origin without the default port; "https://login...:443" as the
    # authority host refused Entra's own form post as cross-site.
    env = consent_env
    broker = ConsentBroker(
        client_id=env.app.client_id,
        tenant_id=env.idp.tenant_id,
        client_secret=env.app.secret,
        store=MemoryStore(),
        keyring=Keyring.generate(),
        redirect_uris=[env.redirect_uri],
        authority_host="https://login.microsoftonline.com:443",
    )
    try:
        assert broker._authority_origin == "https://login.microsoftonline.com"
    finally:
        broker.close()


async def test_an_explicit_allow_list_naming_the_consent_tenant_by_domain_still_signs_in(
    consent_env: ConsentEnv,
) -> None:
    env = consent_env
    domain = env.idp.world.tenants[0].domain
    source = _make(env, domain, allowed_tenants=[domain.upper()])
    caller = platform_caller(f"listed-{time.monotonic_ns()}", upn=env.idp.users["alice"].upn)
    page = await follow_link(env, await consent_link(source, env, caller))
    assert page.status_code == 200, page.text


async def test_a_callback_from_another_site_by_navigation_or_head_spends_nothing(
    consent_env: ConsentEnv,
) -> None:
    # The broker asks Entra for form_post, so a GET is never Entra's answer. A page elsewhere
    # that saw the state could lead the user's browser to the callback with a code of its own
    # (login CSRF) or an error (spending the user's pending sign-in): a navigation has no
    # Origin, but the browser says it came from another site. HEAD (Starlette serves it on a
    # GET route; a no-cors fetch sends the cookie and no Origin) redeemed the code. All are
    # refused before the state is used: the user's own answer still completes.
    env = consent_env
    source, _ = env.make()
    caller = platform_caller(f"head-{time.monotonic_ns()}", upn=env.idp.users["alice"].upn)
    link = await consent_link(source, env, caller)
    async with env.browser() as browser:
        code, state = await code_and_state(browser, link)
        url = callback_url(env, {"code": code, "state": state})
        lured_code = await browser.get(url, headers={"Sec-Fetch-Site": "cross-site"})
        assert lured_code.status_code == 400, lured_code.text  # login CSRF by navigation
        assert "cross_site_callback" in lured_code.text
        head = await browser.head(url, headers={"Sec-Fetch-Site": "cross-site"})
        assert head.status_code == 405
        head_plain = await browser.head(url)
        assert head_plain.status_code == 405
        error = callback_url(env, {"state": state, "error": "access_denied"})
        lured = await browser.get(error, headers={"Sec-Fetch-Site": "cross-site"})
        assert lured.status_code == 400, lured.text
        assert "cross_site_callback" in lured.text
        key = UserKey.from_caller(caller)
        assert key is not None
        assert await source.grants.get_grant(key.hashed) is None
        own = await browser.get(url)  # the user's own answer still completes
    assert own.status_code == 200, own.text
    assert await source.grants.get_grant(key.hashed) is not None


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/start/?t=k1.ticket", 404),  # was a 307 to the request's Host, ticket included
        ("GET", "/signout/", 404),
        ("GET", "/nope", 404),
        ("POST", "/start", 405),
    ],
)
async def test_no_answer_builds_a_url_from_the_host_and_every_one_has_the_page_headers(
    consent_env: ConsentEnv, method: str, path: str, status: int
) -> None:
    env = consent_env
    env.make()  # the broker now served at env.base
    async with env.browser() as browser:
        answer = await browser.request(
            method, f"{env.base}{path}", headers={"Host": "evil.example"}, follow_redirects=False
        )
    assert answer.status_code == status, answer.text
    assert "location" not in answer.headers
    assert "evil.example" not in answer.text
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
