"""``EntraAuth`` for the classic ``httpx`` client (0.28).

The same decisions as ``entra_passthrough.EntraAuth`` (httpx2): one flow in ``_flow``, only the
base class differs. Everything else (``use_token``, the chain, the sources) is client-agnostic
and imported from ``entra_passthrough``.

>>> from entra_passthrough.httpx import EntraAuth
>>> auth = EntraAuth(chain, scopes=["api://api/.default"], origins=["https://api.contoso.com"])
>>> httpx.AsyncClient(auth=auth, event_hooks={"request": [auth.async_request_hook]})
"""

from __future__ import annotations

import httpx

from ._auth import EntraAuthBase, drive_async, drive_sync

__all__ = ["EntraAuth"]


class EntraAuth(EntraAuthBase, httpx.Auth):
    """``httpx.Auth`` that attaches the right Entra token to every request (see
    ``entra_passthrough.EntraAuth`` for the rules).

    >>> auth = EntraAuth(chain, scopes=["api://api/.default"], origins=["https://api.contoso.com"])
    >>> with httpx.Client(auth=auth) as client:
    ...     client.get("https://api.contoso.com/me")
    """

    requires_request_body = False
    requires_response_body = False

    _sync_client = httpx.Client
    _async_client = httpx.AsyncClient
    _front = "entra_passthrough.httpx.EntraAuth"
    _library = "httpx"

    sync_auth_flow = drive_sync
    async_auth_flow = drive_async
