"""``EntraAuth`` for the classic ``httpx`` client (0.28).

The same decisions as ``entra_passthrough.EntraAuth`` (httpx2): one flow in ``_flow``, only the
base class differs.

>>> from entra_passthrough.httpx import EntraAuth
>>> auth = EntraAuth(chain, scopes=["api://api/.default"], origins=["https://api.contoso.com"])
>>> httpx.AsyncClient(auth=auth, event_hooks={"request": [auth.async_request_hook]})
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator, Iterable, Sequence
from typing import Any

import httpx

from ._auth import EntraAuthBase, drive_async, drive_sync, use_token
from ._flow import Chain, OnError

__all__ = ["EntraAuth", "use_token"]


class EntraAuth(EntraAuthBase, httpx.Auth):
    """``httpx.Auth`` that attaches the right Entra token to every request (see
    ``entra_passthrough.EntraAuth`` for the rules).

    >>> auth = EntraAuth(chain, scopes=["api://api/.default"], origins=["https://api.contoso.com"])
    >>> with httpx.Client(auth=auth) as client:
    ...     client.get("https://api.contoso.com/me")
    """

    requires_request_body = False
    requires_response_body = False

    def __init__(
        self,
        chain: Chain,
        *,
        scopes: Sequence[str],
        origins: Iterable[str],
        on_error: OnError = "raise",
        client_capabilities: Sequence[str] = (),
        allow_insecure_loopback: bool = True,
    ) -> None:
        self._init_core(
            chain,
            scopes=scopes,
            origins=origins,
            on_error=on_error,
            client_capabilities=client_capabilities,
            allow_insecure_loopback=allow_insecure_loopback,
        )

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        return drive_sync(self._core, request)

    def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        flow: AsyncGenerator[httpx.Request, httpx.Response] = drive_async(self._core, request)
        return flow

    def install(self, client: httpx.Client | httpx.AsyncClient) -> None:
        """Make ``client`` use this auth and the redirect hook."""
        hooks = dict(client.event_hooks)
        hook: Any = (
            self.async_request_hook if isinstance(client, httpx.AsyncClient) else self.request_hook
        )
        hooks["request"] = [*hooks.get("request", []), hook]
        client.event_hooks = hooks
        client.auth = self
