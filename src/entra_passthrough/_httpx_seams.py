"""Every use of a private name of httpx2 (and of classic httpx, whose ``Headers`` share the
layout), in one place.

``tests/seams/test_httpx_seams.py`` fails with "httpx2 <version> moved <name>: update
_httpx_seams.py" when an upgrade moves one; ``docs/upstream-hooks.md`` says why there is no
public way. Checked against httpx2 2.17.0 and httpx 0.29.0 (``pyproject.toml`` allows httpx2
>= 2.16, < 3 and httpx >= 0.28, < 1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx2

__all__ = ["append_authorization", "has_authorization", "wrap_transports"]


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
