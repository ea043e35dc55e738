"""The broker over plain HTTP on loopback (development: ``broker --insecure-http``), in a real
headless Chromium against the emulator: the identity provider's form post is a cross-site POST,
and a ``SameSite=Lax`` binding cookie never came back with it, so the sign-in could not
complete (``browser_mismatch``). The cookie is ``Secure; SameSite=None`` on loopback too."""

from __future__ import annotations

import os
import time
import urllib.parse
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from _support.consent import CHROMIUM, Slot, launch_chromium, platform_caller, server_pem, spki
from _support.servers import serve_in_thread
from entra_passthrough import ConsentRequired, TokenRequest
from entra_passthrough._jwt import decode_unverified
from entra_passthrough._sources.delegated import DelegatedConsent
from entra_passthrough._store import Keyring, MemoryStore
from entra_passthrough.consent import ConsentBroker
from entra_passthrough.testing import EntraEmulator, World
from entra_passthrough.testing._world import App, Grant, stable_id

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM),
        reason=f"{CHROMIUM} is missing (apt-get install chromium; CI installs it)",
    ),
]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_consent_over_http_on_loopback_completes(host: str, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    slot = Slot()
    with serve_in_thread(slot, lifespan="off") as base:
        port = urllib.parse.urlsplit(base).port
        broker_base = f"http://{host}:{port}/consent"
        world = World.default()
        mcp = next(a for a in world.apps if a.name == "mcp")
        app = App(
            name="consent-broker",
            client_id=stable_id("app", "consent-broker-http"),
            tenant_id=world.tenants[0].id,
            object_id=stable_id("sp", "consent-broker-http"),
            secret="consent-" + stable_id("secret", str(port)),
            redirect_uris=(f"{broker_base}/callback",),
            multi_tenant=False,
        )
        world = world.with_app(app).with_grant(
            Grant(
                client_id=app.client_id,
                resource_id=mcp.client_id,
                scopes=("access_as_user",),
                user="alice",
            )
        )
        with EntraEmulator(world=world) as idp:
            source = DelegatedConsent(
                client_id=app.client_id,
                tenant_id=idp.tenant_id,
                client_secret=app.secret,
                store=MemoryStore(),
                keyring=Keyring.generate(),
                broker_url=broker_base,
                authority_host=idp.url,
                http_client=idp.msal_http_client(),
                server_label="mcp",
            )
            broker = ConsentBroker.for_source(source, redirect_uris=[f"{broker_base}/callback"])
            slot.app = Starlette(routes=[Mount("/consent", broker.app)])
            alice = idp.users["alice"]
            request = TokenRequest(
                scopes=(f"{idp.mcp.app_id_uri}/access_as_user",),
                caller=platform_caller(f"http-{host}-{time.monotonic_ns()}"),
            )
            try:
                with pytest.raises(ConsentRequired) as info:
                    await source.get_token_async(request)
                link = info.value.link
                assert link is not None
                async with async_playwright() as pw:
                    context = await launch_chromium(
                        pw, tmp_path / "profile", spki(server_pem(idp.url))
                    )
                    try:
                        page = await context.new_page()
                        await page.goto(link)
                        await page.wait_for_selector("#username", timeout=30_000)
                        await page.select_option("#username", alice.upn)
                        await page.fill("#password", alice.password)
                        await page.click("#signin")
                        await page.wait_for_selector(
                            "text=/signed in|could not be completed/", timeout=30_000
                        )
                        assert "You are signed in" in await page.inner_text("body")
                    finally:
                        await context.close()
                result = await source.get_token_async(request)
                assert decode_unverified(result.token)["oid"] == alice.oid
            finally:
                source.close()
