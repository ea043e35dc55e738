"""``FoundryToolboxRoute``: the agent's token for Foundry + the *current* request's call id."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._cache import TokenCache
from .._caller import CALL_ID_HEADER
from .._errors import ConfigurationError
from .._types import IdentityKind, TokenRequest, TokenResult, TokenSource

FOUNDRY_SCOPE = "https://ai.azure.com/.default"


class FoundryToolboxRoute:
    """Call a Foundry toolbox endpoint as the agent, letting Foundry route the user.

    The token is the *agent's* (an app source such as ``ManagedIdentity``, for
    ``https://ai.azure.com/.default``), so this source is ``kind=app``: use it in a chain with
    ``policy=Policy.APP_ONLY`` for the toolbox target. The user reaches the tool because Foundry's
    toolbox proxy does OBO and consent server-side from the ``x-agent-foundry-call-id`` header,
    which this source sets from the *current* request's Caller on every call - never a stale one
    (agent-framework's built-in ``FoundryToolbox`` reuses the first call id: issue #7690). With no
    active caller, or no call id on it, the source does not apply: nothing is sent.

    >>> route = FoundryToolboxRoute(ManagedIdentity.from_env())
    >>> toolbox_chain = TokenChain([route], policy=Policy.APP_ONLY)
    """

    kind = IdentityKind.APP
    #: The header changes per request: the chain must not cache whole results; the agent token
    #: itself is cached here.
    cache_results = False

    def __init__(
        self,
        inner: TokenSource,
        *,
        scope: str = FOUNDRY_SCOPE,
        name: str = "foundry_toolbox",
    ) -> None:
        if inner.kind is not IdentityKind.APP:
            raise ConfigurationError(
                "FoundryToolboxRoute authenticates as the agent: its inner source must be an app "
                f"identity, not {inner.kind.value}."
            )
        self.inner = inner
        self.scope = scope
        self.name = name
        self._cache = TokenCache(max_entries=16)

    def __repr__(self) -> str:
        return f"FoundryToolboxRoute(name={self.name!r}, inner={self.inner.name!r})"

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()

    def explain(self, request: TokenRequest) -> str:
        if request.caller is None:
            return "no active caller (the toolbox call id comes from the current request)"
        return f"the current request has no {CALL_ID_HEADER} header"

    def cache_partition(self, request: TokenRequest) -> tuple[str, ...] | None:
        caller = request.caller
        if caller is None or not caller.call_id:
            return None
        return ("call", caller.call_id)

    def _inner_request(self, request: TokenRequest) -> TokenRequest:
        return TokenRequest((self.scope,), None, request.claims, request.client_capabilities)

    def _route(self, request: TokenRequest, agent: TokenResult | None) -> TokenResult | None:
        caller = request.caller
        if agent is None or caller is None or not caller.call_id:
            return None
        return TokenResult(
            token=agent.token,
            expires_on=agent.expires_on,
            kind=IdentityKind.APP,
            source=self.name,
            headers={CALL_ID_HEADER: caller.call_id},
            cache_key=agent.cache_key,
        )

    def _key(self, inner_request: TokenRequest) -> Any:
        return (self.inner.name, self.inner.cache_partition(inner_request), inner_request.claims)

    def get_token(self, request: TokenRequest) -> TokenResult | None:
        if self.cache_partition(request) is None:
            return None
        inner_request = self._inner_request(request)
        agent = self._cache.get_or_acquire(
            self._key(inner_request), lambda: self.inner.get_token(inner_request)
        )
        return self._route(request, agent)

    async def get_token_async(self, request: TokenRequest) -> TokenResult | None:
        if self.cache_partition(request) is None:
            return None
        inner_request = self._inner_request(request)
        agent = await self._cache.get_or_acquire_async(
            self._key(inner_request), lambda: self.inner.get_token_async(inner_request)
        )
        return self._route(request, agent)

    def invalidate(self, result: TokenResult) -> None:
        if result.cache_key is not None:
            self._cache.invalidate(result.cache_key)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, name: str = "foundry_toolbox"
    ) -> FoundryToolboxRoute:
        """The agent's managed identity (``ManagedIdentity.from_env``) as the inner source."""
        from .managed_identity import ManagedIdentity

        return cls(ManagedIdentity.from_env(environ), name=name)
