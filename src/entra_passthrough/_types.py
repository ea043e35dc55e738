"""Values shared by the three stages: what is asked for, what a source answers."""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ._jwt import JwtDecodeError, decode_unverified, fingerprint

if TYPE_CHECKING:
    from ._caller import Caller


#: The headers of a result that has none (shared, read-only).
NO_HEADERS: Mapping[str, str] = MappingProxyType({})


#: The latest a cached token may be used (the caller's assertion ``exp``), or how to read it: the
#: cache and the shared cache read a callable only once the token is acquired, so a cold call
#: decodes its caller's claims when its token request starts, not in the loop iteration that made
#: it (a burst of new users runs all their first steps in one).
Cap = float | Callable[[], float | None] | None


def cap_value(cap: Cap) -> float | None:
    return cap() if callable(cap) else cap


#: A token that ends this close to its cap (or within its own expiry margin of it) counts as
#: capped: whole-second ``expires_in`` and the answer's time on the wire put an identity
#: provider's own cap a second or two short of the assertion's ``exp``.
CAP_SLACK = 5.0


def token_exp(token: str) -> float | None:
    """The ``exp`` of an access token that is a JWT (Entra's are), on its issuer's clock, else
    ``None`` (an opaque or encrypted token). Read to bound or compare an expiry, never trusted
    for anything else."""
    try:
        exp = decode_unverified(token).get("exp")
    except JwtDecodeError:
        return None
    if isinstance(exp, bool) or not isinstance(exp, (int, float)) or not exp > 0:
        return None
    return float(exp)


def entry_timing(
    expires_on: float, cap: float | None, now: float, *, own_exp: float | None = None
) -> tuple[float, float]:
    """(refresh_at, usable_until) of a token that expires at ``expires_on`` (its own expiry,
    before any cap, on this host's clock) stored at ``now`` under ``cap``: the one rule of the
    in-process cache and the shared cache, so that a replica reading a capped entry serves it
    as long as the one that wrote it.

    ``own_exp``: the token's own ``exp`` when it is a JWT (``token_exp``). The cap (the
    assertion's ``exp``) is on the issuer's clock, like ``own_exp``; ``expires_on`` is counted
    on this host's clock. With this host behind the issuer's, ``expires_on`` falls short of the
    cap by the difference although the token outlives its assertion: compared on one clock,
    it is capped all the same (one token request per assertion, whatever the skew)."""
    lifetime = max(expires_on - now, 0.0)
    skew = min(30.0, lifetime / 10)
    if cap is not None and (
        expires_on >= cap - max(skew, CAP_SLACK)
        or (own_exp is not None and own_exp >= cap - max(skew, CAP_SLACK))
    ):
        # The assertion's expiry ends this entry, and every token acquired later for the same
        # assertion would end there too: no refresh ahead, no early expiry. Also when the token
        # ends just short of the cap, as when the identity provider caps it at the assertion
        # itself (``expires_in`` is whole seconds, counted from before the answer arrived): a
        # refresh would gain less than the margin an entry gives up anyway, and it would get
        # the same capped token again, and again. Served to its own expiry (``expires_on``,
        # on this host's clock: the host's view of ``own_exp``) or the cap, whichever comes
        # first: no request carries an expired token.
        return math.inf, min(expires_on, cap)
    usable_until = expires_on - skew
    refresh_at = expires_on - min(300.0, lifetime / 2)
    return refresh_at, usable_until


class IdentityKind(enum.StrEnum):
    """Whose identity a token represents, as *declared* by the source that produced it."""

    USER = "user"  # the end user (OBO, Agent ID OBO, delegated consent)
    APP = "app"  # the agent itself (managed identity, client credentials)
    DEVELOPER = "developer"  # a developer signed in locally (Azure CLI)


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """What the chain asks each source for.

    ``caller`` is the active caller or ``None`` (no request, or a stale/inactive context).
    ``claims`` is a *decoded* claims challenge (JSON text) from a 401 or from Entra.
    """

    scopes: tuple[str, ...]
    caller: Caller | None = None
    claims: str | None = None
    client_capabilities: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TokenResult:
    """A token and what it is. ``repr`` never shows the token."""

    token: str = field(repr=False)
    expires_on: float
    kind: IdentityKind
    source: str
    #: Extra headers to send with the token (read-only; most results have none, and share
    #: one empty mapping instead of an empty dict each).
    headers: Mapping[str, str] = field(default_factory=lambda: NO_HEADERS, repr=False)
    #: Opaque key of the cache entry that holds this result (``TokenChain.invalidate``).
    cache_key: object = field(default=None, repr=False, compare=False)
    #: Set by the apply stage once ``token`` was found fit for an HTTP header: the check runs
    #: once per result and is remembered exactly as long as the result lives (the cache's
    #: bound), never in a side table that would keep tokens alive after they leave the cache.
    _header_safe: bool = field(default=False, init=False, repr=False, compare=False)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.token)

    def expires_in(self, now: float | None = None) -> float:
        return self.expires_on - (time.time() if now is None else now)


def header_safe(result: TokenResult) -> bool:
    """Whether the apply stage found ``result.token`` fit for an HTTP header."""
    return result._header_safe


def mark_header_safe(result: TokenResult) -> None:
    """Remember on ``result`` that its token is fit for an HTTP header (a one-way mark on a
    frozen result, for the apply stage)."""
    object.__setattr__(result, "_header_safe", True)


@runtime_checkable
class TokenSource(Protocol):
    """A way to obtain a token. Implementations: ``OnBehalfOf``, ``ManagedIdentity``, ...

    ``kind`` is declared, never guessed. Both methods return ``None`` when the source does not
    apply (e.g. OBO with no caller) so the chain tries the next one, a ``TokenResult``, or raise
    a ``TokenAcquisitionError``. ``cache_partition`` returns the part of the cache key that
    identifies *whose* token this would be (e.g. client, tenant, sha256 of the assertion), or
    ``None`` when the source does not apply; it must do no I/O.
    """

    name: str
    kind: IdentityKind

    def cache_partition(self, request: TokenRequest) -> tuple[str, ...] | None: ...

    def get_token(self, request: TokenRequest) -> TokenResult | None: ...

    async def get_token_async(self, request: TokenRequest) -> TokenResult | None: ...


# -- the optional parts of a source ---------------------------------------------------------
#
# A source may have any of these; the chain uses them when it does (``isinstance`` against
# these runtime-checkable protocols, never a bare ``getattr``).


@runtime_checkable
class ExplainingSource(Protocol):
    """Says why it does not apply to ``request`` (shown in ``NoCallerError`` and
    ``PolicyViolation``); without it the reason is "not applicable"."""

    def explain(self, request: TokenRequest) -> str: ...


@runtime_checkable
class InvalidatingSource(Protocol):
    """Forgets what it holds behind ``result`` (its own cache) when the chain invalidates it
    after the resource answered 401."""

    def invalidate(self, result: TokenResult) -> None: ...


@runtime_checkable
class ClosingSource(Protocol):
    """Has worker threads or connections to release; ``TokenChain.close`` calls ``close``."""

    def close(self) -> None: ...


@runtime_checkable
class SelectiveCachingSource(Protocol):
    """Says whether the chain's cache may keep its results: ``cache_results = False`` for
    results that differ per request (a per-call header); it caches what it can itself."""

    cache_results: bool


@runtime_checkable
class CallerPartitionSource(Protocol):
    """Computes its cache partition from the caller alone: ``caller_partition(caller)`` equals
    ``cache_partition(request)`` for every request of that caller (whatever the scopes, claims
    or client capabilities). The chain's cache-hit path then builds no ``TokenRequest``."""

    def caller_partition(self, caller: Caller | None) -> tuple[str, ...] | None: ...


def caches_results(source: TokenSource) -> bool:
    """Whether the chain's cache may keep ``source``'s results (default: yes)."""
    return not isinstance(source, SelectiveCachingSource) or bool(source.cache_results)


def explain(source: TokenSource, request: TokenRequest) -> str:
    """Why ``source`` does not apply to ``request``, in its own words when it has them."""
    return source.explain(request) if isinstance(source, ExplainingSource) else "not applicable"
