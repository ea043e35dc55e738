"""``ManagedIdentity``: the agent's own Azure identity (kind ``app``)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from .. import _env
from .._errors import EntraError, SourceUnavailable
from .._msal import WorkerPool
from .._types import IdentityKind, TokenRequest, TokenResult
from ._base import result_from_msal, unreachable

logger = logging.getLogger("entra_passthrough.managed_identity")

_TIMEOUT = 10.0
#: Managed identity tokens live ~24 h; refresh the assertion copy this long before expiry.
_MARGIN = 300.0


def scope_to_resource(scopes: tuple[str, ...]) -> str:
    if len(scopes) != 1:
        raise EntraError(
            "A managed identity token is for one resource; pass exactly one '<resource>/.default' "
            "scope.",
            scopes=scopes,
        )
    scope = scopes[0]
    return scope[: -len("/.default")] if scope.endswith("/.default") else scope


class ManagedIdentity:
    """The managed identity of the host (App Service, Container Apps, VM...), ``kind=app``.

    With ``endpoint``/``header`` (or ``IDENTITY_ENDPOINT``/``IDENTITY_HEADER``) it calls the App
    Service-shaped endpoint; with neither it uses MSAL's ``ManagedIdentityClient``, which
    detects the hosting environment (IMDS on VMs, Arc, Service Fabric...). Calls run in a
    bounded worker pool. ``client_id`` selects a user-assigned identity (``AZURE_CLIENT_ID``).

    >>> mi = ManagedIdentity(client_id="<user-assigned-mi-client-id>")
    >>> chain = TokenChain([mi], policy=Policy.APP_ONLY)
    """

    kind = IdentityKind.APP

    def __init__(
        self,
        *,
        client_id: str | None = None,
        endpoint: str | None = None,
        header: str | None = None,
        http_client: Any = None,
        max_workers: int = 4,
        name: str = "managed_identity",
    ) -> None:
        self.name = name
        self.client_id = client_id
        self.endpoint = endpoint
        self._header = header
        if (endpoint is None) != (header is None):
            from .._errors import ConfigurationError

            raise ConfigurationError(
                "ManagedIdentity needs both endpoint and header (IDENTITY_ENDPOINT and "
                "IDENTITY_HEADER), or neither."
            )
        self._http_client = http_client
        self._owns_http = http_client is None
        self._pool = WorkerPool(max_workers=max_workers, name=f"entra-{name}")
        self._lock = threading.Lock()
        self._tokens: dict[str, TokenResult] = {}
        self._msal_client: Any = None

    def __repr__(self) -> str:
        where = "app-service-endpoint" if self.endpoint else "msal-detected"
        return f"ManagedIdentity(name={self.name!r}, client_id={self.client_id!r}, {where})"

    def close(self) -> None:
        """Stop the worker threads and close the HTTP session this source created."""
        self._pool.close()
        if self._owns_http and self._http_client is not None:
            self._http_client.close()
            self._http_client = None

    # -- TokenSource ----------------------------------------

    def explain(self, request: TokenRequest) -> str:
        return "not applicable"

    def cache_partition(self, request: TokenRequest) -> tuple[str, ...] | None:
        return (self.client_id or "system-assigned",)

    def get_token(self, request: TokenRequest) -> TokenResult | None:
        return self._fetch(request.scopes)

    async def get_token_async(self, request: TokenRequest) -> TokenResult | None:
        return await self._pool.run(self._fetch, request.scopes)

    def token_for_resource(self, resource: str) -> str:
        """A token for ``resource`` (sync, cached here): the client assertion when this managed
        identity is a federated credential of an app (``OnBehalfOf(managed_identity=...)``)."""
        with self._lock:
            cached = self._tokens.get(resource)
        if cached is not None and cached.expires_on - _MARGIN > time.time():
            return cached.token
        result = self._fetch((f"{resource}/.default",))
        with self._lock:
            if len(self._tokens) > 16:
                self._tokens.clear()
            self._tokens[resource] = result
        return result.token

    def _fetch(self, scopes: tuple[str, ...]) -> TokenResult:
        resource = scope_to_resource(scopes)
        try:
            if self.endpoint is not None:
                response = self._app_service(resource)
            else:
                response = self._msal(resource)
        except Exception as exc:
            raise unreachable(
                exc, what="managed identity token request", source=self.name, scopes=scopes
            ) from None
        if "access_token" not in response and not response.get("error"):
            raise SourceUnavailable(
                "The managed identity endpoint answered without a token.",
                source=self.name,
                scopes=scopes,
            )
        return result_from_msal(response, kind=IdentityKind.APP, source=self.name, scopes=scopes)

    def _session(self) -> Any:
        if self._http_client is None:
            import requests

            self._http_client = requests.Session()
        return self._http_client

    def _app_service(self, resource: str) -> dict[str, Any]:
        params = {"api-version": "2019-08-01", "resource": resource}
        if self.client_id:
            params["client_id"] = self.client_id
        assert self.endpoint is not None
        assert self._header is not None
        response = self._session().get(
            self.endpoint,
            params=params,
            headers={"X-IDENTITY-HEADER": self._header, "Metadata": "true"},
            timeout=_TIMEOUT,
        )
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            raise SourceUnavailable(
                f"The managed identity endpoint answered HTTP {response.status_code} without JSON.",
                source=self.name,
            )
        if payload.get("access_token") and payload.get("expires_on"):
            return {
                "access_token": payload["access_token"],
                "expires_in": int(payload["expires_on"]) - int(time.time()),
            }
        if payload.get("error"):
            return payload
        return {
            "error": "managed_identity_error",
            "error_description": f"HTTP {response.status_code}: "
            f"{str(payload.get('message') or payload.get('statusCode') or '')[:200]}",
        }

    def _msal(self, resource: str) -> dict[str, Any]:
        import msal

        if self._msal_client is None:
            identity: Any = (
                msal.UserAssignedManagedIdentity(client_id=self.client_id)
                if self.client_id
                else msal.SystemAssignedManagedIdentity()
            )
            self._msal_client = msal.ManagedIdentityClient(identity, http_client=self._session())
        result: dict[str, Any] = self._msal_client.acquire_token_for_client(resource=resource)
        return result

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        http_client: Any = None,
        name: str = "managed_identity",
    ) -> ManagedIdentity:
        """``AZURE_CLIENT_ID`` (user-assigned), ``IDENTITY_ENDPOINT`` + ``IDENTITY_HEADER``."""
        env = _env.environ_or(environ)
        return cls(
            client_id=_env.get(env, "AZURE_CLIENT_ID"),
            endpoint=_env.get(env, "IDENTITY_ENDPOINT"),
            header=_env.get(env, "IDENTITY_HEADER"),
            http_client=http_client,
            name=name,
        )
