"""``DelegatedConsent``: ``close()`` while a refresh's POST stalls at Entra cuts it, and the
caller is told the source was closed, with the fix for that, as ``OnBehalfOf``, Agent ID and
``ManagedIdentity`` say it. It said "Entra's answer was not a token endpoint's JSON (... a page
from a proxy, firewall or gateway)" with the proxy fix. The chain serves again afterwards.
Real MSAL, the emulator over HTTPS, the broker's sign-in."""

from __future__ import annotations

import asyncio

import pytest

from _support.consent import ConsentEnv, platform_caller, submit_form_post
from entra_passthrough import (
    ConsentRequired,
    Policy,
    SourceUnavailable,
    TokenAcquisitionError,
    TokenChain,
)

#: A safety net: close() makes the outcome immediate.
SAFETY = 20.0


async def test_close_during_a_stalled_refresh_says_the_source_was_closed(
    consent_env: ConsentEnv,
) -> None:
    env = consent_env
    idp = env.idp
    source, _ = env.make()
    user = idp.users["pat"]
    caller = platform_caller("chat-pat-close", upn=user.upn)
    first = TokenChain([source], policy=Policy.USER_ONLY)
    with pytest.raises(ConsentRequired) as info:
        await first.get_token_async([env.mcp_scope], caller=caller)
    async with env.browser() as browser:
        page = await browser.get(info.value.link)
        assert (await submit_form_post(browser, page)).status_code == 200
    assert (await first.get_token_async([env.mcp_scope], caller=caller)).token
    idp.wait_idle(5)
    chain = TokenChain([source], policy=Policy.USER_ONLY)  # empty cache: the next ask refreshes
    idp.inject_fault("token", status=None, delay=25.0, count=1)
    try:
        task = asyncio.ensure_future(chain.get_token_async([env.mcp_scope], caller=caller))
        await asyncio.sleep(1.0)  # the refresh's POST is on its way (a stall: any time works)
        chain.close()
        with pytest.raises(TokenAcquisitionError) as raised:
            await asyncio.wait_for(task, SAFETY)
    finally:
        idp.clear_faults()
    error = raised.value
    assert isinstance(error, SourceUnavailable), repr(error)
    assert error.failure == "source closed"
    assert "closed" in str(error)
    assert "proxy" not in str(error)
    assert "close() is for shutdown" in (error.fix or "")
    again = await asyncio.wait_for(chain.get_token_async([env.mcp_scope], caller=caller), 60)
    assert again.token
    chain.close()
    first.close()
