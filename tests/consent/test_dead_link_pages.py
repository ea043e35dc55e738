"""A sign-in link that no longer opens (expired, or damaged) gets a page with one way forward:
ask the agent for a new link. The page said "ask the agent for a new one" and then, in its
default tail, "use the sign-in link again": the same dead link. An expired link is now told
apart from a damaged one (``expired_link`` / ``invalid_link``), as sign-out links already were.

Real components: the emulator, the broker mounted in a Starlette app, the DelegatedConsent
source that made the link."""

from __future__ import annotations

import time
import urllib.parse

import pytest

import entra_passthrough._sources.delegated as delegated
from _support.consent import ConsentEnv, platform_caller
from entra_passthrough import ConsentRequired, TokenRequest


async def _expired_link(env: ConsentEnv, monkeypatch: pytest.MonkeyPatch) -> str:
    source, _ = env.make()
    request = TokenRequest(
        scopes=(env.mcp_scope,), caller=platform_caller(f"msg-{time.monotonic_ns()}")
    )
    real = time.time
    # The link is made as if 1,900 s ago: its ticket has expired by the time it is opened.
    monkeypatch.setattr(delegated.time, "time", lambda: real() - 1900)
    with pytest.raises(ConsentRequired) as info:
        await source.get_token_async(request)
    monkeypatch.setattr(delegated.time, "time", real)
    assert info.value.link
    return info.value.link


async def test_an_expired_link_says_so_and_asks_for_a_new_one(
    consent_env: ConsentEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    link = await _expired_link(consent_env, monkeypatch)
    async with consent_env.browser() as browser:
        page = await browser.get(link)
        answer = await browser.get(link, headers={"Accept": "application/json"})
    assert page.status_code == answer.status_code == 400
    body = answer.json()
    assert body["error"] == "expired_link"
    assert body["stored"] is False
    assert "has expired" in body["error_description"]
    assert "new sign-in link" in body["next_step"]
    for text in (page.text, answer.text):
        assert "use the sign-in link again" not in text


async def test_a_damaged_link_asks_for_a_new_one_not_the_same_again(
    consent_env: ConsentEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    link = await _expired_link(consent_env, monkeypatch)
    parts = urllib.parse.urlsplit(link)
    ticket = dict(urllib.parse.parse_qsl(parts.query))["t"]
    cut = parts._replace(query=urllib.parse.urlencode({"t": ticket[:-10]})).geturl()
    async with consent_env.browser() as browser:
        for url in (cut, f"{consent_env.base}/start?t=garbage"):
            answer = await browser.get(url, headers={"Accept": "application/json"})
            page = await browser.get(url)
            assert answer.status_code == page.status_code == 400
            body = answer.json()
            assert body["error"] == "invalid_link"
            assert "new sign-in link" in body["next_step"]
            assert "copy the whole link" in body["next_step"]
            assert "use the sign-in link again" not in page.text
            assert ticket[:40] not in page.text + answer.text
