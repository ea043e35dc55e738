"""Tokens resolved *before* the transport, handed to ``EntraAuth`` through a ContextVar.

The MCP integrations resolve the token in the tool call's own task, where an error can be
raised and handled, then make the request inside ``use_token(...)``: the auth flow applies that
token and acquires nothing. A binding belongs to the caller that was active when it was made
and is switched off when its block exits: a long-lived task that copied the context (an MCP
connection's lifecycle task) can never use it afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from contextvars import ContextVar, Token
from dataclasses import dataclass
from types import TracebackType

from ._caller import Caller, active_caller
from ._errors import ConfigurationError
from ._jwt import JwtDecodeError, UnverifiedClaims
from ._types import IdentityKind, TokenResult


@dataclass(eq=False, slots=True)
class _Prefetched:
    caller: Caller | None
    tokens: dict[tuple[str, ...], TokenResult]
    #: Until when each token may be applied: its own expiry (see ``_own_expiry``).
    until: dict[tuple[str, ...], float]
    active: bool = True


def _own_expiry(result: TokenResult) -> float:
    """The token's own ``exp`` when it is a JWT, else ``result.expires_on``.

    ``expires_on`` of a cached result is capped at the caller's assertion expiry (the cache must
    not serve it to a caller that is gone). A token already resolved for *this* call stays
    valid for this call until the resource would refuse it: if the binding lapsed at the cap,
    the transport would acquire again, OBO would refuse the expired assertion, and the request
    would go out without a token.
    """
    try:
        exp = UnverifiedClaims.from_token(result.token).exp
    except (JwtDecodeError, ValueError, OverflowError):  # opaque or unreadable: the result's
        return result.expires_on
    return max(result.expires_on, exp) if exp is not None else result.expires_on


prefetched_var: ContextVar[_Prefetched | None] = ContextVar(
    "entra_passthrough.prefetched", default=None
)


def scope_key(scopes: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(scopes)))


class use_token:
    """Hand a token resolved *before* the transport to ``EntraAuth`` in this task.

    The MCP integration resolves the token in the tool call's task (where errors can be
    raised safely), then sends the request inside ``with use_token(result, scopes=...)``; the
    auth flow applies it with no acquisition. The binding is tied to the active caller and is
    switched off on exit, so a long-lived task that copied this context (an MCP connection's
    lifecycle task) can never reuse it.

    >>> result = await auth.acquire_async()
    >>> with use_token(result, scopes=auth.scopes):
    ...     await session.call_tool("whoami", {})
    """

    def __init__(self, result: TokenResult, *, scopes: Iterable[str]) -> None:
        caller = active_caller()
        if result.kind is IdentityKind.USER and caller is None:
            raise ConfigurationError(
                "use_token(...) got a user token outside an active caller; it would have no "
                "owner and could reach another user's request",
                fix="bind the caller first (CallerMiddleware or bind_caller)",
            )
        outer = prefetched_var.get()
        tokens: dict[tuple[str, ...], TokenResult] = {}
        until: dict[tuple[str, ...], float] = {}
        if outer is not None and outer.active and outer.caller is caller:
            tokens.update(outer.tokens)
            until.update(outer.until)
        key = scope_key(scopes)
        tokens[key] = result
        until[key] = _own_expiry(result)
        self._binding = _Prefetched(caller=caller, tokens=tokens, until=until)
        self._result = result
        self._reset: Token[_Prefetched | None] | None = None

    def __enter__(self) -> TokenResult:
        self._reset = prefetched_var.set(self._binding)
        return self._result

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._binding.active = False
        if self._reset is not None:
            prefetched_var.reset(self._reset)
            self._reset = None

    def __repr__(self) -> str:
        return f"use_token(scopes={list(self._binding.tokens)!r}, active={self._binding.active})"


def orphaned(caller: Caller | None) -> bool:
    """Whether a request with no active caller (``caller`` is ``None``) is made inside a
    ``use_token`` block resolved for a caller who has since ended: it belongs to that caller's
    call (a tool call whose run ended, whose request ended first), so it must not be given the
    identity of a request that never had a caller (the app under ``lifecycle_app=True``)."""
    if caller is not None:
        return False
    binding = prefetched_var.get()
    return binding is not None and binding.active and binding.caller is not None


def refused(result: TokenResult) -> None:
    """The resource answered 401 to ``result``: if this context's ``use_token`` block handed
    it out, it hands it out no more (the block's later requests acquire, from the cache the
    retry refilled, instead of sending the refused token again)."""
    binding = prefetched_var.get()
    if binding is None or not binding.active:
        return
    for key, held in list(binding.tokens.items()):
        if held is result:
            binding.until[key] = 0.0  # lapsed: ``prefetched_for`` no longer returns it


def prefetched_for(caller: Caller | None, key: tuple[str, ...]) -> TokenResult | None:
    binding = prefetched_var.get()
    if binding is None or not binding.active or binding.caller is not caller:
        return None
    result = binding.tokens.get(key)
    if result is None or binding.until.get(key, result.expires_on) <= time.time():
        return None
    return result
