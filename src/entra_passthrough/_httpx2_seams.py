"""Every use of a private name of httpx2, in one place.

``tests/seams/test_httpx2_seams.py`` fails with "httpx2 <version> moved <name>: update
_httpx2_seams.py" when an upgrade moves one; ``docs/upstream-hooks.md`` says why there is no
public way. Checked against httpx2 2.17.0 (``pyproject.toml`` allows >= 2.16, < 3).
"""

from __future__ import annotations

from collections.abc import Callable

import httpx2

__all__ = ["wrap_transports"]


def wrap_transports(
    client: httpx2.AsyncClient,
    wrap: Callable[[httpx2.AsyncBaseTransport], httpx2.AsyncBaseTransport],
) -> None:
    """Wrap every transport ``client`` may send through: its own (private ``_transport``) and
    the proxy mounts it built from the environment (private ``_mounts``, pattern -> transport or
    ``None``). The public ``transport=``/``mounts=`` arguments replace the transports httpx2
    would build (proxies from ``HTTPS_PROXY``, ``verify``, limits) instead of wrapping them: a
    proxied request would bypass a wrapper installed only on ``transport=``."""
    client._transport = wrap(client._transport)
    client._mounts = {
        pattern: wrap(transport) if transport is not None else None
        for pattern, transport in client._mounts.items()
    }
