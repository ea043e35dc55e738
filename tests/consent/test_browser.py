"""The consent flow in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

Trust: Chromium is told to accept exactly the two loopback server keys (the emulator's and the
broker's) with ``--ignore-certificate-errors-spki-list`` (honoured only with a user data dir,
hence a persistent context). That is narrower than ``ignore_https_errors=True``, which would
accept any certificate; every other certificate check stays on (``ignore_https_errors=False``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from _support.consent import (
    CHROMIUM,
    ConsentEnv,
    launch_chromium,
    platform_caller,
    server_pem,
    spki,
)
from entra_passthrough import ConsentRequired, TokenRequest
from entra_passthrough._jwt import decode_unverified

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM),
        reason=f"{CHROMIUM} is missing (apt-get install chromium; CI installs it)",
    ),
]


async def test_consent_in_a_real_browser(consent_env: ConsentEnv, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    env = consent_env
    carol = env.idp.users["carol"]  # has not consented to the broker's app: consent page shown
    source, _ = env.make()
    # no sign-in hint: the emulator shows its sign-in page
    caller = platform_caller(f"browser-carol-{time.monotonic_ns()}")
    request = TokenRequest(scopes=(env.mcp_scope,), caller=caller)
    with pytest.raises(ConsentRequired) as info:
        await source.get_token_async(request)
    link = info.value.link
    assert link is not None

    pins = ",".join(
        {spki(server_pem(env.idp.url)), spki(server_pem(f"https://127.0.0.1:{env.port}"))}
    )
    async with async_playwright() as pw:
        context = await launch_chromium(pw, tmp_path / "profile", pins)
        try:
            page = await context.new_page()
            # the chat shows the link; the user clicks it
            await page.set_content(f'<a id="consent" href="{link}">Sign in to use mcp</a>')
            await page.click("#consent")
            await page.wait_for_selector("#username", timeout=30_000)
            assert "Sign in" in await page.title()
            await page.select_option("#username", carol.upn)
            await page.fill("#password", carol.password)
            await page.click("#signin")
            await page.wait_for_selector("#accept", timeout=30_000)
            await page.click("#accept")
            await page.wait_for_selector("text=You are signed in", timeout=30_000)
            assert page.url.startswith(env.redirect_uri)
            assert "return to the chat" in await page.content()
        finally:
            await context.close()

    result = await source.get_token_async(request)
    assert result is not None
    claims = decode_unverified(result.token)
    assert claims["oid"] == carol.oid
    assert claims["aud"] == env.idp.mcp.client_id
