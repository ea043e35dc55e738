"""``FoundryToolboxRoute``: the agent's token for Foundry + the *current* request's call id +
the toolbox feature flags, on every request."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from typing import Any

from .._cache import TokenCache
from .._caller import CALL_ID_HEADER
from .._errors import ConfigurationError, PolicyViolation
from .._types import IdentityKind, TokenRequest, TokenResult, TokenSource

FOUNDRY_SCOPE = "https://ai.azure.com/.default"
#: The header that turns on preview features of the Foundry data plane. A toolbox endpoint
#: refuses every request (lifecycle ones included) that does not name ``Toolboxes=V1Preview``.
FEATURES_HEADER = "Foundry-Features"
TOOLBOX_FEATURE = "Toolboxes=V1Preview"
#: Where a hosted agent's platform injects its extra toolbox feature flags (comma-separated);
#: read once at start-up, like agent-framework's ``FoundryToolbox``.
FEATURES_ENV = "FOUNDRY_AGENT_TOOLSET_FEATURES"

#: What an HTTP header value can hold (visible ASCII, inner spaces and tabs): a flag or a call id
#: outside it could not be sent.
_HEADER_VALUE = re.compile(r"[\x21-\x7e]+(?:[ \t]+[\x21-\x7e]+)*")


def toolbox_features(additional: str | None, *, what: str = FEATURES_ENV) -> str:
    """The ``Foundry-Features`` value: ``Toolboxes=V1Preview`` merged with the platform's flags
    (kept as given when they already name it), the way agent-framework's ``FoundryToolbox``
    builds it. Flags that a header value cannot hold (CR/LF, other control characters,
    non-ASCII) are a ``ConfigurationError`` naming ``what`` (where they were set), never
    quoting them: every request to the toolbox would fail otherwise."""
    if additional is not None and not isinstance(additional, str):
        raise ConfigurationError(
            f"{what} must be text (comma-separated feature flags), not "
            f"{type(additional).__name__}.",
            fix=f"set {what} to the flags as Foundry gives them (e.g. 'Agents=V2Preview'), or "
            "leave it unset.",
        )
    extra = ",".join(part.strip() for part in (additional or "").split(",") if part.strip())
    if extra and _HEADER_VALUE.fullmatch(extra) is None:
        raise ConfigurationError(
            f"{what} holds characters an HTTP header value cannot carry (a line break, another "
            "control character, or non-ASCII), so the Foundry-Features header of every "
            "toolbox request could not be sent.",
            fix=f"set {what} to the comma-separated flags exactly as Foundry injects them "
            "(visible ASCII, e.g. 'Agents=V2Preview'; a value pasted from a file may carry a "
            "trailing line break), or leave it unset.",
        )
    if not extra:
        return TOOLBOX_FEATURE
    if any(part.casefold() == TOOLBOX_FEATURE.casefold() for part in extra.split(",")):
        return extra
    return f"{TOOLBOX_FEATURE},{extra}"


class FoundryToolboxRoute:
    """Call a Foundry toolbox endpoint as the agent, letting Foundry route the user.

    The token is the *agent's* (an app source such as ``ManagedIdentity``, for
    ``https://ai.azure.com/.default``), so this source is ``kind=app``: use it in a chain with
    ``policy=Policy.APP_ONLY`` for the toolbox target. The user reaches the tool because Foundry's
    toolbox proxy does OBO and consent server-side from the ``x-agent-foundry-call-id`` header,
    which this source sets from the *current* request's Caller on every call - never a stale one
    (agent-framework's built-in ``FoundryToolbox`` reuses the first call id: issue #7690).

    Every result also carries ``Foundry-Features: Toolboxes=V1Preview`` plus the platform's flags
    (``features=``, default ``$FOUNDRY_AGENT_TOOLSET_FEATURES`` read here, once): the toolbox
    refuses any request without it.

    * An active caller with a call id: the agent token, the call id, the features.
    * No active caller (connection set-up, the GET stream, the closing DELETE of a shared
      connection): the agent token and the features, *no* call id: the toolbox sees the agent
      itself, never a user (lifecycle requests need the header too, or the toolbox refuses them).
    * An active caller *without* a call id: the source does not apply (nothing is sent): a user
      is there but cannot be routed, and the agent must not silently stand in for them.

    >>> route = FoundryToolboxRoute(ManagedIdentity.from_env())
    >>> toolbox_chain = TokenChain([route], policy=Policy.APP_ONLY)
    """

    kind = IdentityKind.APP
    #: Every request this route authenticates goes through Foundry's toolbox proxy, a gateway
    #: that reads a call and forwards it to the tool: a reset of the agent's connection after
    #: the call was written does not say that the tool did not run. The MCP client therefore
    #: sends no ``tools/call`` again after a reset (``CallOutcomeUnknown``: it may have run),
    #: unless ``ENTRA_PASSTHROUGH_MCP_RESEND_ON_RESET=true`` is set explicitly.
    forwards_calls = True
    #: The header changes per request: the chain must not cache whole results; the agent token
    #: itself is cached here.
    cache_results = False

    def __init__(
        self,
        inner: TokenSource,
        *,
        scope: str = FOUNDRY_SCOPE,
        name: str = "foundry_toolbox",
        features: str | None = None,
    ) -> None:
        if not callable(getattr(inner, "get_token", None)) or not isinstance(
            getattr(inner, "kind", None), IdentityKind
        ):
            # None was a bare AttributeError ('NoneType' object has no attribute 'kind').
            raise ConfigurationError(
                f"FoundryToolboxRoute(inner) needs a token source, not {type(inner).__name__}.",
                fix="pass the agent's app identity, e.g. FoundryToolboxRoute(ManagedIdentity()).",
            )
        if inner.kind is not IdentityKind.APP:
            raise ConfigurationError(
                "FoundryToolboxRoute authenticates as the agent: its inner source must be an app "
                f"identity, not {inner.kind.value}."
            )
        self.inner = inner
        self.scope = scope
        self.name = name
        #: The ``Foundry-Features`` value sent on every request.
        self.features = (
            toolbox_features(os.environ.get(FEATURES_ENV))
            if features is None
            else toolbox_features(features, what="FoundryToolboxRoute(features=)")
        )
        self._cache = TokenCache(max_entries=16)
        self._instance = secrets.token_hex(8)

    def __repr__(self) -> str:
        return f"FoundryToolboxRoute(name={self.name!r}, inner={self.inner.name!r})"

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()

    def explain(self, request: TokenRequest) -> str:
        return (
            f"the current request has no {CALL_ID_HEADER} header (the toolbox routes the user "
            "by it; the agent does not stand in for a caller it cannot route)"
        )

    def cache_partition(self, request: TokenRequest) -> tuple[str, ...] | None:
        caller = request.caller
        if caller is None:
            # The agent's own token, of whichever identity ``inner`` is: a per-instance tag, so
            # that no cache shared beyond this process gives it to another deployment.
            return ("agent", self._instance)
        if not caller.call_id:
            return None  # the toolbox cannot be told the user; the agent does not stand in
        if not _sendable(caller.call_id):
            # A call id no header can carry (a UTF-8 one a client sent): refused here, with
            # its own reason and fix (the chain raises it as this source's failure), never
            # sent, and never the agent standing in.
            raise PolicyViolation(
                f"The current request's {CALL_ID_HEADER} holds characters an HTTP header value "
                "cannot carry (non-ASCII or control characters), so the toolbox cannot be told "
                "who the user is; nothing was sent, and the agent does not stand in for a "
                "caller it cannot route.",
                policy="foundry_toolbox",
                scopes=request.scopes,
                fix=f"send {CALL_ID_HEADER} exactly as Foundry issued it for the request (its "
                "call ids are visible ASCII): a client or gateway in front of the agent that "
                "sets or rewrites the header must pass Foundry's value on unchanged",
            )
        return ("call", caller.call_id)

    def _inner_request(self, request: TokenRequest) -> TokenRequest:
        return TokenRequest((self.scope,), None, request.claims, request.client_capabilities)

    def _route(self, request: TokenRequest, agent: TokenResult | None) -> TokenResult | None:
        caller = request.caller
        if agent is None:
            return None
        headers = {FEATURES_HEADER: self.features}
        if caller is not None:
            if not caller.call_id or not _sendable(caller.call_id):
                return None
            headers[CALL_ID_HEADER] = caller.call_id
        return TokenResult(
            token=agent.token,
            expires_on=agent.expires_on,
            kind=IdentityKind.APP,
            source=self.name,
            headers=headers,
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
        """The agent's managed identity (``ManagedIdentity.from_env``) as the inner source; the
        platform's feature flags from ``FOUNDRY_AGENT_TOOLSET_FEATURES``."""
        from .managed_identity import ManagedIdentity

        env = os.environ if environ is None else environ
        # Checked first, and named as the variable it came from.
        features = toolbox_features(env.get(FEATURES_ENV, ""))
        return cls(ManagedIdentity.from_env(environ), name=name, features=features)


def _sendable(value: str) -> bool:
    """Whether ``value`` can be sent as an HTTP header value."""
    return _HEADER_VALUE.fullmatch(value) is not None
