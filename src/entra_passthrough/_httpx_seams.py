"""Every use of a private name of httpx2 (and of classic httpx, whose ``Headers`` share the
layout and whose client keeps its ``Cookies`` the same way), in one place.

``tests/seams/test_httpx_seams.py`` fails with "httpx2 <version> moved <name>: update
_httpx_seams.py" when an upgrade moves one; ``docs/upstream-hooks.md`` says why there is no
public way. Checked against httpx2 2.17.0 and httpx 0.29.0 (``pyproject.toml`` allows httpx2
>= 2.16, < 3 and httpx >= 0.28, < 1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import httpx2

__all__ = [
    "append_authorization",
    "has_authorization",
    "skip_cookie_extraction_without_set_cookie",
    "wrap_transports",
]


def wrap_transports(
    client: httpx2.AsyncClient,
    wrap: Callable[[httpx2.AsyncBaseTransport], httpx2.AsyncBaseTransport],
    *,
    wrap_proxy: Callable[[httpx2.AsyncBaseTransport], httpx2.AsyncBaseTransport] | None = None,
) -> None:
    """Wrap every transport ``client`` may send through: its own (private ``_transport``) and
    the proxy mounts it built from the environment (private ``_mounts``, pattern -> transport or
    ``None``), those with ``wrap_proxy`` when given. The public ``transport=``/``mounts=``
    arguments replace the transports httpx2 would build (proxies from ``HTTPS_PROXY``,
    ``verify``, limits) instead of wrapping them: a proxied request would bypass a wrapper
    installed only on ``transport=``."""
    proxy = wrap if wrap_proxy is None else wrap_proxy
    client._transport = wrap(client._transport)
    client._mounts = {
        pattern: proxy(transport) if transport is not None else None
        for pattern, transport in client._mounts.items()
    }


class _SetCookieCookies(httpx.Cookies):
    """Classic httpx's ``Cookies``, skipping extraction for a response that sets none, as httpx2
    does upstream (``Cookies.extract_cookies``). Classic httpx hands every response to the
    stdlib jar: it builds an ``email.message.Message`` of the response's headers (evaluated for
    a debug line even when nothing is logged) and a ``urllib`` request of every request header,
    the 1.5 KB bearer included. Measured in process (``MockTransport``): ~40 us a request, of
    which ~5 us is the bearer's copy; a jar given no ``Set-Cookie`` changes nothing."""

    def extract_cookies(self, response: httpx.Response) -> None:
        headers = response.headers
        if "set-cookie" in headers or "set-cookie2" in headers:
            super().extract_cookies(response)


def skip_cookie_extraction_without_set_cookie(client: Any) -> None:
    """Make a classic ``httpx`` client (sync or async) skip the cookie jar for responses with
    no ``Set-Cookie``; the same jar, policy and cookies are kept, and a response that sets a
    cookie goes through the jar as before. The client's ``Cookies`` is the private ``_cookies``
    (the public setter wraps what it is given in a new ``httpx.Cookies``). Anything else (an
    httpx2 client, which does this itself; cookies of another type) is left alone."""
    if not isinstance(client, httpx.Client | httpx.AsyncClient):
        return
    cookies = getattr(client, "_cookies", None)
    if type(cookies) is not httpx.Cookies or client.cookies is not cookies:
        return
    fast = _SetCookieCookies()
    fast.jar = cookies.jar
    client._cookies = fast


def has_authorization(headers: Any) -> bool:
    """``"authorization" in headers``, read from the raw names: a lookup by name makes httpx and
    httpx2 pick the headers' encoding first, by decoding every name and value of a request whose
    encoding nobody asked for yet (a client's request: ~1 us more, and more with a large cookie
    or token). The stored names compare the same way lower-cased (RFC 9110 5.1). They are the
    private ``Headers._list``; another layout takes the public path (correct, slower)."""
    items = getattr(headers, "_list", None)
    if type(items) is list:
        # httpx and httpx2 keep (raw name, lower-cased name, value) triples: read the stored
        # lower-cased names (``raw`` builds a new list of pairs on every call, ~0.3 us).
        try:
            for _, lower, _ in items:
                if lower == b"authorization":
                    return True
                if type(lower) is not bytes:
                    raise TypeError  # not the layout we know: the public path below
            return False
        except (TypeError, ValueError):
            pass
    raw = getattr(headers, "raw", None)
    if raw is None:
        return "authorization" in headers
    for name, _ in raw:  # noqa: SIM110 - a plain loop: any() over a generator costs more
        if len(name) == 13 and name.lower() == b"authorization":
            return True
    return False


def append_authorization(headers: Any, value: str) -> None:
    """``headers["Authorization"] = value`` for headers that ``has_authorization`` found
    without one, and an ASCII ``value`` (a token found fit for a header): the triple appended
    to the private ``Headers._list``, exactly what ``__setitem__`` appends there when the name
    is absent. ``__setitem__`` encodes the name and scans every header again for it: 9.1k
    instructions a request against 2.8k (callgrind, httpx2 2.17), and classic httpx pays it
    in a request path that makes the same work cost twice the time. Another layout (the last
    triple not ``(bytes, bytes, bytes)``) takes the public path."""
    items = getattr(headers, "_list", None)
    if type(items) is list:
        last = items[-1] if items else (b"", b"", b"")
        if type(last) is tuple and len(last) == 3 and type(last[1]) is bytes:
            items.append((b"Authorization", b"authorization", value.encode("ascii")))
            return
    headers["Authorization"] = value
