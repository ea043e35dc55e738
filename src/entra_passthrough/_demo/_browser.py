"""A minimal stand-in for the user's browser: follows redirects, submits the identity
provider's ``response_mode=form_post`` page the way its script does, and clicks *Accept* on a
consent page (the demo's user agrees; tests drive a real Chromium)."""

from __future__ import annotations

import html
import re

import httpx2

_FORM = re.compile(r"<form([^>]*)>(.*?)</form>", re.S | re.I)
_ACTION = re.compile(r"action=['\"]([^'\"]+)['\"]", re.I)
_HIDDEN = re.compile(
    r"<input[^>]*type=['\"]hidden['\"][^>]*name=['\"]([^'\"]*)['\"][^>]*value=['\"]([^'\"]*)['\"]",
    re.I,
)
_ACCEPT = re.compile(r"<button[^>]*name=['\"]([^'\"]+)['\"][^>]*value=['\"](accept)['\"]", re.I)


async def click(
    link: str, *, idp: str, verify: str, stop_at: tuple[str, ...] = (), max_steps: int = 16
) -> httpx2.Response:
    """Open ``link`` and go on while the identity provider (``idp``, its base URL) shows a
    form to submit; stop at any other page, or at a redirect to one of ``stop_at`` (an app's
    redirect URI that nothing serves in the demo). Bounded."""
    async with httpx2.AsyncClient(verify=verify, timeout=30) as browser:

        async def follow(response: httpx2.Response) -> httpx2.Response:
            for _ in range(max_steps):
                target = response.headers.get("location")
                if not response.is_redirect or target is None:
                    return response
                url = str(response.url.join(target))
                if url.startswith(stop_at):
                    return response
                response = await browser.get(url)
            return response

        page = await follow(await browser.get(link))
        for _ in range(max_steps):
            if page.is_redirect:
                return page
            form = _FORM.search(page.text)
            if not str(page.url).startswith(idp) or form is None or "password" in form.group(2):
                return page
            attrs, body = form.groups()
            fields = {html.unescape(k): html.unescape(v) for k, v in _HIDDEN.findall(body)}
            fields.update({html.unescape(k): v for k, v in _ACCEPT.findall(body)})
            action = _ACTION.search(attrs)
            target = page.url.join(html.unescape(action.group(1))) if action else page.url
            page = await follow(await browser.post(str(target), data=fields))
        return page
