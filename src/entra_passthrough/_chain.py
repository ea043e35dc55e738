"""Resolve: ``TokenChain`` asks its sources, in order, for a token the ``Policy`` accepts.

Rules (docs/sources-and-policy.md):

* A Caller that is not ``.active`` is no caller: its token is never used.
* The policy names the identity kinds a result may have. ``user_only`` (the default) accepts
  only ``user``. ``user_or_app`` accepts ``app`` only when *no* assertion was presented at all.
  ``app_only`` accepts only ``app``. ``developer`` accepts ``user`` and, when no assertion was
  presented, ``developer`` (Azure CLI) - never inferred, always an explicit choice.
* Sources of a forbidden kind are never called. Once a ``user`` source failed (it raised: the
  assertion is presented but unusable, consent is missing...; or it answered with a kind it
  did not declare, something that is not a ``TokenResult``, a token that cannot be sent; or its
  ``cache_partition`` raised), no ``app``/``developer`` source is tried: that error is raised
  (fail closed). Other ``user`` sources are still tried (e.g. OBO refuses a
  Foundry token, ``DelegatedConsent`` has the user's own grant).
* No source applied: ``NoCallerError`` (a user was needed and there is no caller) or
  ``PolicyViolation``, both listing every source's reason.

``Policy`` and the failure reporting live in ``_policy``.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import logging
import math
import re
import time
from collections.abc import Callable, Generator, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import _env, _otel, _redact
from ._cache import TokenCache
from ._caller import Caller, current_caller
from ._docs import see
from ._drive import drive, drive_async, require_asyncio
from ._errors import (
    AssertionExpired,
    ConfigurationError,
    EntraPassthroughError,
    NoCallerError,
    PolicyViolation,
    SourceUnavailable,
    TokenAcquisitionError,
)
from ._policy import Attempts, Policy, explain_failure
from ._types import (
    CallerPartitionSource,
    Cap,
    ClosingSource,
    IdentityKind,
    InvalidatingSource,
    TokenRequest,
    TokenResult,
    TokenSource,
    caches_results,
)

__all__ = ["Policy", "TokenChain"]

logger = logging.getLogger("entra_passthrough.chain")


class _Unset(enum.Enum):
    UNSET = enum.auto()


_UNSET = _Unset.UNSET


@dataclass(frozen=True, slots=True)
class _Candidate:
    """A source the policy allows, with what the hot path needs precomputed."""

    source: TokenSource
    is_user: bool
    #: False for sources whose results change per request (FoundryToolboxRoute's call id
    #: header); they cache what can be cached themselves.
    cached: bool
    #: The source's ``caller_partition`` when it has one (the hit path then builds no
    #: ``TokenRequest``), else ``None``.
    partition_of: Callable[[Caller | None], tuple[str, ...] | None] | None


def _scopes_key(scopes: tuple[str, ...]) -> tuple[str, ...]:
    return scopes if len(scopes) < 2 else tuple(sorted(scopes))


#: ``cached_token``'s answer when a source has no ``caller_partition``: take the general path.
_GENERAL = object()
_MAX_TAILS = 64
_MAX_PREFIXES = 1024


class _Tail:
    """What the keys of one (scopes, client capabilities) share, for ``cached_token``."""

    __slots__ = ("capabilities", "prefixes", "scopes_key")

    def __init__(self, scopes_key: tuple[str, ...], capabilities: tuple[str, ...]) -> None:
        self.scopes_key = scopes_key
        self.capabilities = capabilities
        #: source name -> its interned key prefix
        self.prefixes: dict[str, tuple[Any, ...]] = {}


#: RFC 6750 b64token: what a bearer credential may contain (a JWT is base64url and dots).
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
#: RFC 7230 token (a header name) and field content (visible ASCII, inner spaces and tabs).
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE = re.compile(r"[\x21-\x7e]+(?:[ \t]+[\x21-\x7e]+)*")
_MAX_TOKEN_CHARS = 64 * 1024


#: How work that outlives its request keeps its user (``Caller.copy()`` of an ended caller is
#: ended too: the copy must be taken while the request runs).
_ENDED_FIX = (
    "take caller = current_caller().copy() in the request, before starting the background "
    "work, and run the work inside bind_caller(caller) (capped at the token's expiry); or "
    "finish the work inside the request"
)


def ended_caller_error(ended: Caller, scopes: Sequence[str]) -> EntraPassthroughError:
    """The typed error for work of a caller that has ended and gets no other identity:
    ``AssertionExpired`` when its assertion has expired, else ``NoCallerError``."""
    if ended.presented:
        try:
            claims = ended.claims
        except Exception:
            claims = None
        exp = claims.exp if claims is not None else None
        if exp is not None and exp <= time.time():
            return AssertionExpired(expired_at=exp, scopes=tuple(scopes))
        return NoCallerError(
            "the caller bound to this context has ended (its request completed, or its "
            "run was unbound or passed its deadline); work done for that user is never "
            "continued as another identity",
            fix=_ENDED_FIX,
        )
    return NoCallerError(
        "the caller bound to this context has ended, and this policy gives its work no "
        "other identity (lifecycle_app=True covers connection-lifetime requests only)",
        fix=_ENDED_FIX,
    )


_EXPIRED = "a token that has already expired (its expires_on is in the past)"
_EXPIRED_FIX = (
    "the resource would refuse it (401) and every request would ask the source again: check "
    "this host's clock and the token endpoint's; a custom TokenSource returns expires_on as the "
    "Unix time (seconds) the token expires at"
)


_HEADERS_FIX = (
    "TokenResult.headers maps header names to values, each valid in an HTTP header (leave "
    "headers out for none)."
)


def _value_problem(result: TokenResult) -> str | None:
    """Why ``result`` cannot be sent as an Authorization header, or ``None`` if it can."""
    token = result.token
    if not isinstance(token, str) or not token:
        return "an empty token (or not a string)"
    if len(token) > _MAX_TOKEN_CHARS:
        return "a token larger than 64 KiB"
    if _B64TOKEN.fullmatch(token) is None:
        return (
            "a token with characters a bearer credential cannot hold (control characters, "
            "CR/LF, spaces or non-ASCII)"
        )
    expires_on = result.expires_on
    if isinstance(expires_on, bool) or not isinstance(expires_on, int | float):
        return "a token without a numeric expiry"
    if not math.isfinite(expires_on):
        return "a token whose expiry is not a finite number"
    if expires_on <= time.time():
        return _EXPIRED
    headers: object = result.headers  # a custom source's, whatever the annotation says
    if not isinstance(headers, Mapping):
        return "extra headers that are not a mapping (headers=None?)"
    for name, value in headers.items():
        if not isinstance(name, str) or _HEADER_NAME.fullmatch(name) is None:
            return "an extra header whose name is not a valid header name"
        if not isinstance(value, str) or _HEADER_VALUE.fullmatch(value) is None:
            return f"an extra header {name!r} whose value is not valid in a header"
    return None


#: What a source's two methods return; where the async work goes.
_RESULT_FIX = (
    "a TokenSource's get_token (which chain.get_token calls) returns a TokenResult, or None "
    "when the source does not apply; so does its `async def get_token_async` (which "
    "chain.get_token_async awaits): keep get_token a plain method and put async work in "
    "get_token_async."
)


def _what(value: object) -> str:
    """What a source returned, by type only (the value may be a token)."""
    if inspect.iscoroutine(value):
        return "a coroutine, not its result (an `async def get_token`?)"
    return f"a {type(value).__name__}"


def _not_a_result(value: object, source: TokenSource, request: TokenRequest) -> Exception:
    if inspect.iscoroutine(value):
        value.close()  # never awaited: no "coroutine ... was never awaited" warning later
    return TokenAcquisitionError(
        f"the source returned {_what(value)}, not a TokenResult or None; nothing was sent.",
        source=source.name,
        scopes=request.scopes,
        fix=_RESULT_FIX,
    )


def _kind_text(kind: object) -> str:
    return kind.value if isinstance(kind, IdentityKind) else f"of type {type(kind).__name__}"


def _wrong_kind_error(
    source: TokenSource, kind: object, policy: Policy, scopes: Sequence[str]
) -> PolicyViolation:
    """The error for a result whose kind is not the one its source declares: that source's
    failure (never cached, never sent), so no app or developer source stands in for it."""
    error = PolicyViolation(
        f"source {source.name} returned kind {_kind_text(kind)}, declared "
        f"{_kind_text(source.kind)}: a token of another kind than its source declares is "
        "never cached or sent, and no app or developer source stands in for it.",
        policy=policy.value,
        scopes=scopes,
        fix="return TokenResult(..., kind=self.kind) from the source, and declare as its kind "
        "whose identity its tokens carry (IdentityKind.USER: the end user's; APP: the agent's; "
        f"DEVELOPER: az login's) ({see('sources-and-policy', 'identity-kinds')}).",
    )
    error.source = source.name
    return error


def _scopes_error(scopes: tuple[object, ...]) -> ConfigurationError:
    """No scopes, or an entry that is not a non-blank string: refused before any source is
    asked (MSAL sends only its OpenID scopes for an empty list, and Entra answers with a token
    for Microsoft Graph: a token for an audience nobody asked for)."""
    bad = next((s for s in scopes if not isinstance(s, str) or not s.strip()), None)
    if not scopes:
        why = "no scopes"
    elif not isinstance(bad, str):
        why = f"a scope that is not a string ({type(bad).__name__})"
    else:
        why = "an empty or blank scope"
    return ConfigurationError(
        f"TokenChain got {why}: a token request names the scopes of its target.",
        fix="pass the target's scopes, one per entry, e.g. ['api://<app>/.default'] or "
        "['api://<app>/access_as_user'].",
    )


def _foreign(source: TokenSource) -> bool:
    """A source not written in this library (a custom ``TokenSource``): its errors, even of the
    library's own types, may hold the caller's token in their text. A subclass of one of the
    library's sources is not: its errors are that source's (whose texts keep what the fix
    needs, e.g. the thumbprint Entra names in AADSTS700027); the ``TokenSource`` protocol
    itself, subclassed explicitly, makes no source the library's."""
    return not any(
        klass.__module__.startswith("entra_passthrough.") and klass.__module__ != _PROTOCOLS_MODULE
        for klass in type(source).__mro__
    )


#: Where ``TokenSource`` and its optional protocols are defined (no source is).
_PROTOCOLS_MODULE = TokenSource.__module__


def _partition_error(source: TokenSource, exc: Exception) -> Exception:
    """A source's ``cache_partition`` raised: ours as is (it names no token), anything else by
    its type only (its text may hold the caller's token), typed, with the fix."""
    if isinstance(exc, EntraPassthroughError):
        return _redact.scrub(exc, ours_too=_foreign(source))  # type: ignore[return-value]
    return SourceUnavailable(
        f"its cache_partition(request) raised {type(exc).__name__}.",
        source=source.name,
        fix="cache_partition returns None when the source does not apply, else a tuple of "
        "strings naming whose token it would be (no I/O); raise a TokenAcquisitionError from "
        "get_token / get_token_async to refuse a request.",
    )


def _checked(
    result: TokenResult | None, source: TokenSource, request: TokenRequest, policy: Policy
) -> Any:
    """``result``, or a typed error (raised where the source returned it, so that the cache
    never stores it: the next request asks the source again, and a refresh ahead that answers
    so leaves the valid token in place)."""
    if result is None:
        return None  # not applicable
    if not isinstance(result, TokenResult):
        raise _not_a_result(result, source, request)
    if result.kind is not source.kind:
        raise _wrong_kind_error(source, result.kind, policy, request.scopes)
    problem = _value_problem(result)
    if problem is not None:
        raise TokenAcquisitionError(
            f"the source returned {problem}; it was not cached and not sent.",
            source=source.name,
            scopes=request.scopes,
            fix=_EXPIRED_FIX
            if problem is _EXPIRED
            else _HEADERS_FIX
            if "header" in problem
            else "a custom TokenSource must return the token exactly as issued (no surrounding "
            "whitespace or line breaks); for a built-in source, report it: the token endpoint "
            "answered something that is not a token.",
        )
    return result


def _detached(request: TokenRequest) -> TokenRequest:
    """``request`` for a cached acquisition, which may outlive the request that asked (a
    refresh ahead runs after it returned; an acquisition whose leader went away runs on for its
    waiters): its caller is a copy taken now, while it is active, which the request's end does
    not end. With the request's own caller, a refresh acted for an ended caller, for which a
    source that reads ``Caller.active`` (``DelegatedConsent``) does not apply: it got nothing,
    and every later request started another one until the token ran out."""
    caller = request.caller
    if caller is None:
        return request
    return dataclasses.replace(request, caller=caller.copy())


async def _acquire_async(
    source: TokenSource, request: TokenRequest, acquired: list[str], policy: Policy
) -> TokenResult | None:
    started = time.monotonic()
    try:
        pending = source.get_token_async(request)
        if not inspect.isawaitable(pending):  # a plain ``def get_token_async``
            raise TokenAcquisitionError(
                f"its get_token_async returned {_what(pending)}, which cannot be awaited; "
                "nothing was sent.",
                source=source.name,
                scopes=request.scopes,
                fix="define it as `async def get_token_async(self, request)` returning a "
                "TokenResult or None; blocking work in it belongs in a worker thread.",
            )
        answer = await pending
    except BaseException as exc:  # a cancellation too (outcome "cancelled")
        _otel.time_failed(source.name, time.monotonic() - started, exc)
        raise
    return _acquired(source, request, answer, started, acquired, policy)


def _acquire(
    source: TokenSource, request: TokenRequest, acquired: list[str], policy: Policy
) -> TokenResult | None:
    started = time.monotonic()
    try:
        answer = source.get_token(request)
    except BaseException as exc:  # a KeyboardInterrupt too (outcome "cancelled")
        _otel.time_failed(source.name, time.monotonic() - started, exc)
        raise
    return _acquired(source, request, answer, started, acquired, policy)


def _acquired(
    source: TokenSource,
    request: TokenRequest,
    answer: TokenResult | None,
    started: float,
    acquired: list[str] | None,
    policy: Policy,
) -> TokenResult | None:
    """A source answered with a new token (not a cache hit): checked, then INFO like
    azure-identity's."""
    try:
        result = _checked(answer, source, request, policy)
    except Exception:
        # A value that cannot be a bearer credential: a failed acquisition, timed as one.
        _otel.time_failed(source.name, time.monotonic() - started)
        raise
    if result is None:
        return None
    if acquired is not None:
        acquired.append(source.name)
    _otel.count_acquired(source.name, result.kind.value, time.monotonic() - started)
    if logger.isEnabledFor(logging.INFO):
        logger.info(
            "%s acquired %s %s token for %s (expires in %d s)",
            source.name,
            "an" if result.kind.value == "app" else "a",  # a user, an app, a developer token
            result.kind.value,
            " ".join(request.scopes),
            int(result.expires_on - time.time()),
        )
    return result  # type: ignore[no-any-return]


def _assertion_exp(caller: Caller) -> float | None:
    claims = caller.claims
    return claims.exp if claims is not None else None


class _Ask:
    """The decision flow's one step: ask ``source`` (through the cache under ``key``, or
    directly when ``key`` is ``None``) and send back its answer, or throw in its error."""

    __slots__ = ("acquired", "cap", "key", "request", "source")

    def __init__(
        self,
        source: TokenSource,
        request: TokenRequest,
        key: Any,
        cap: Cap,
        acquired: list[str],
    ) -> None:
        self.source = source
        self.request = request
        self.key = key
        self.cap = cap
        self.acquired = acquired


class TokenChain:
    """Tokens for (caller, scopes) from an ordered list of sources, under a policy, cached.

    >>> chain = TokenChain([OnBehalfOf.from_env()])            # user_only
    >>> with bind_caller(token=incoming_user_token):
    ...     result = chain.get_token(["api://mcp-app/.default"])
    >>> result.kind, result.source
    ('user', 'obo')
    """

    def __init__(
        self,
        sources: Iterable[TokenSource],
        *,
        policy: Policy | str = Policy.USER_ONLY,
        cache: TokenCache | None = None,
        lifecycle_app: bool = False,
    ) -> None:
        try:
            self.sources: tuple[TokenSource, ...] = tuple(sources)
        except TypeError:
            # None, or one source not in a list: "'NoneType' object is not iterable".
            raise ConfigurationError(
                f"TokenChain takes a list of sources, not {type(sources).__name__}.",
                fix="pass the sources in a list, in the order to try them: "
                "TokenChain([OnBehalfOf.from_env()]).",
            ) from None
        _redact.install()  # loggers created by imports since (azure-identity's) get the filter
        try:
            self._policy = Policy(policy)
        except ValueError:
            raise ConfigurationError(
                f"unknown policy {policy!r}.",
                fix=f"use one of {', '.join(p.value for p in Policy)}.",
            ) from None
        # Before the names are read: TokenChain([None]) raised an AttributeError there.
        given: tuple[object, ...] = self.sources  # as passed, whatever the annotation says
        for source in given:
            if not isinstance(source, TokenSource):
                what = (
                    f"the class {source.__name__}"
                    if isinstance(source, type)
                    else f"a {type(source).__name__}"
                )
                raise ConfigurationError(
                    f"TokenChain got {what}, which does not implement TokenSource.",
                    fix="pass built sources: TokenChain([OnBehalfOf(...), ManagedIdentity()]).",
                )
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ConfigurationError(
                f"source names must be unique (they partition the cache): {names}.",
                fix=f"pass name= to all but one of the sources named {', '.join(twice)}, e.g. "
                f"name={twice[0] + '_b'!r}.",
            )

        if cache is not None and not isinstance(cache, TokenCache):
            # Else an AttributeError at the first request.
            raise ConfigurationError(
                f"cache must be a TokenCache, not {type(cache).__name__}.",
                fix="pass cache=TokenCache(...) (shared by chains that should share tokens), "
                "or leave it out for one of the chain's own.",
            )
        self.cache = cache if cache is not None else TokenCache()
        self.lifecycle_app = lifecycle_app
        # Which sources each allowed-kinds set may use; a handful of entries per chain.
        self._plans: dict[frozenset[IdentityKind], tuple[_Candidate, ...]] = {}
        self._allowed = {
            presented: self.policy.allowed(presented=presented) for presented in (False, True)
        }
        # (scopes, client capabilities) as the apply stage passes them -> what their keys
        # share: a bounded memo for ``cached_token``.
        self._tails: dict[tuple[Any, Any], _Tail] = {}
        # Key prefixes (source, sorted scopes, claims, capabilities), one object per value: every
        # entry of a source and audience shares it (a bounded intern table, not a registry).
        self._prefixes: dict[tuple[Any, ...], tuple[Any, ...]] = {}

    @property
    def policy(self) -> Policy:
        """Fixed at construction (the allowed kinds are precomputed from it)."""
        return self._policy

    def __repr__(self) -> str:
        names = ", ".join(s.name for s in self.sources)
        return f"TokenChain([{names}], policy={self.policy.value})"

    # -- planning (no I/O) ---------------------------------------------------------------

    def _candidates(self, allowed: frozenset[IdentityKind]) -> tuple[_Candidate, ...]:
        plan = self._plans.get(allowed)
        if plan is None:
            candidates = [
                _Candidate(
                    s,
                    s.kind is IdentityKind.USER,
                    caches_results(s),
                    s.caller_partition if isinstance(s, CallerPartitionSource) else None,
                )
                for s in self.sources
                if s.kind in allowed
            ]
            # User sources first, each kind in the order given: where a stand-in is allowed
            # (``user_or_app`` with no assertion presented), the app is the fallback for no
            # user, never a choice over one. A caller known only by the platform's user id
            # (a hosted agent's) with a grant got the app's token from ``[ManagedIdentity,
            # DelegatedConsent]``, and the grant was never asked for.
            candidates.sort(key=lambda c: not c.is_user)
            plan = tuple(candidates)
            self._plans[allowed] = plan
        return plan

    def _request(
        self,
        scopes: Sequence[str],
        caller: Caller | _Unset | None,
        claims: str | None,
        client_capabilities: Sequence[str],
    ) -> TokenRequest:
        if isinstance(scopes, str):
            scopes = (scopes,)
        scopes = tuple(scopes)
        for scope in scopes:
            if not isinstance(scope, str) or not scope.strip():
                raise _scopes_error(scopes)
        if not scopes:
            raise _scopes_error(scopes)
        if caller is _UNSET:
            caller = current_caller()
        if caller is not None and not caller.active:
            caller = None
        return TokenRequest(scopes, caller, claims, tuple(client_capabilities))

    def _ask_for(
        self,
        scopes: Sequence[str],
        caller: Caller | _Unset | None,
        claims: str | None,
        client_capabilities: Sequence[str],
    ) -> tuple[TokenRequest, frozenset[IdentityKind]]:
        if caller is _UNSET:
            caller = current_caller()
        request = self._request(scopes, caller, claims, client_capabilities)
        if caller is not None and request.caller is None:  # bound (or given), ended
            return request, self._ended_kinds(caller, request)
        return request, self._allowed[self._presented(request)]

    def _ended_kinds(self, ended: Caller, request: TokenRequest) -> frozenset[IdentityKind]:
        """What a request gets whose caller has ended (its request completed, its run passed
        its assertion's expiry): no caller, and if it presented an assertion, only what it could
        have had besides the user (``Policy.call_kinds``, as for a call). The user's work never
        goes on as the app because the user's token ran out: a typed error instead."""
        allowed = self.policy.call_kinds(ended_presented=ended.presented)
        if allowed:
            return allowed
        raise ended_caller_error(ended, request.scopes)

    def _key(self, source: TokenSource, partition: tuple[str, ...], request: TokenRequest) -> Any:
        """``(prefix, *partition)``, prefix = (source name, its kind, sorted scopes, claims,
        client capabilities): flat, with the prefix shared by every entry that has it (per
        entry one tuple of three, not a key tuple and a partition tuple). The kind keeps apart
        the tokens of two sources of one name and different kinds (two chains sharing a cache,
        replicas sharing Redis with different configurations): a user's request never finds
        an app token."""
        prefix = (
            source.name,
            source.kind.value,
            _scopes_key(request.scopes),
            request.claims,
            request.client_capabilities,
        )
        return (self._interned(prefix), *partition)

    def _interned(self, prefix: tuple[Any, ...]) -> tuple[Any, ...]:
        found = self._prefixes.get(prefix)
        if found is None:
            if len(self._prefixes) >= _MAX_PREFIXES:
                self._prefixes.clear()  # equal prefixes still make equal keys
            found = self._prefixes[prefix] = prefix
        return found

    @staticmethod
    def _cap(candidate: _Candidate, request: TokenRequest) -> Cap:
        caller = request.caller
        if candidate.is_user and caller is not None:
            # read once the token is acquired (the source has decoded the claims by then)
            return functools.partial(_assertion_exp, caller)
        return None

    def _accept(
        self,
        source: TokenSource,
        key: Any,
        result: TokenResult | None,
        allowed: frozenset[IdentityKind],
        outcome: Attempts,
        request: TokenRequest,
    ) -> TokenResult | None:
        if result is None:
            outcome.notes[source.name] = "not applicable"
            return None
        if result.kind is not source.kind:
            # Refused where the source answered (``_checked``); a cached entry of another kind
            # (a source whose ``kind`` changed) is refused the same way: that source failed,
            # so no app stands in for a user it was asked for (rule 5).
            self.cache.invalidate(key)
            outcome.record(
                source.name, _wrong_kind_error(source, result.kind, self._policy, request.scopes)
            )
            return None
        if result.kind not in allowed:
            # A kind the policy does not allow here: never hand it out.
            self.cache.invalidate(key)
            outcome.notes[source.name] = f"returned kind {result.kind.value}, not allowed"
            return None
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "resolved %s via %s (kind %s) for caller %s: token %s",
                " ".join(request.scopes),
                source.name,
                result.kind.value,
                request.caller.fingerprint if request.caller is not None else None,
                result.fingerprint,
            )
        return result

    @staticmethod
    def _presented(request: TokenRequest) -> bool:
        return request.caller is not None and request.caller.presented

    # -- public API -----------------------------------------------------------------------

    async def get_token_async(
        self,
        scopes: Sequence[str],
        *,
        caller: Caller | _Unset | None = _UNSET,
        claims: str | None = None,
        client_capabilities: Sequence[str] = (),
    ) -> TokenResult:
        """A token for ``scopes`` as the caller (default ``current_caller()``), or a typed error."""
        request, allowed = self._ask_for(scopes, caller, claims, client_capabilities)
        return self._hit(request, allowed) or await self._resolve_async(request, allowed)

    def _hit(self, request: TokenRequest, allowed: frozenset[IdentityKind]) -> TokenResult | None:
        """The hot path, without a coroutine frame: the first source that applies has a fresh
        cached token. Anything else (miss, refresh due, errors) goes the full way."""
        try:  # no cost on 3.11+ until something raises
            for candidate in self._candidates(allowed):
                source = candidate.source
                partition = source.cache_partition(request)
                if partition is None:
                    continue
                if not candidate.cached:
                    return None
                hit = self.cache.peek(self._key(source, partition, request))
                if hit is not None and hit.kind in allowed and hit.kind is source.kind:
                    if _otel.metering():
                        _otel.count_hit(source.name, hit.kind.value)
                    return hit
                return None
        except Exception:
            return None  # a source's cache_partition raised: ``_decide`` explains it, typed
        return None

    def _span(self, request: TokenRequest) -> Any:
        if not _otel.tracing():
            return None
        return _otel.start_span(
            "entra_passthrough.acquire",
            {
                "entra_passthrough.policy": self._policy.value,
                "entra_passthrough.scopes": " ".join(request.scopes),
                "entra_passthrough.user": _otel.user_hash(request.caller),
                "entra_passthrough.presented": self._presented(request),
            },
        )

    def _done(
        self,
        span: Any,
        request: TokenRequest,
        result: TokenResult | None,
        error: BaseException | None,
        acquired: list[str],
        lifecycle: bool,
    ) -> None:
        if error is not None:
            source = getattr(error, "source", None)
            _otel.count_failed(source if isinstance(source, str) else None, error)
            routine = lifecycle and isinstance(error, PolicyViolation | NoCallerError)
            level = logging.DEBUG if routine else logging.WARNING
            if logger.isEnabledFor(level):
                logger.log(
                    level,
                    "token acquisition for %s failed: %s%s",
                    " ".join(request.scopes),
                    _otel.describe(error),
                    f" [source {source}]" if isinstance(source, str) else "",
                )
            _otel.end_span(span, error)
            return
        if span is not None and result is not None:
            _otel.end_span(
                span,
                **{
                    "entra_passthrough.source": result.source,
                    "entra_passthrough.kind": result.kind.value,
                    "entra_passthrough.cache": "miss" if acquired else "hit",
                    "entra_passthrough.decision": result.kind.value,
                },
            )
            if not acquired:
                _otel.count_hit(result.source, result.kind.value)

    def _cancelled(
        self, span: Any, request: TokenRequest, cancel: BaseException, source: str | None
    ) -> None:
        """The caller gave up (``CancelledError``: the client went away, a deadline of its own;
        ``GeneratorExit``, ``KeyboardInterrupt``) while ``source`` was asked: the span ends
        (never left open) as a cancellation, counted as one, not as a failure (no WARNING)."""
        _otel.count_cancelled(source)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "token acquisition for %s cancelled (%s)%s",
                " ".join(request.scopes),
                type(cancel).__name__,
                f" [source {source}]" if source is not None else "",
            )
        _otel.end_span(span, cancel)

    # -- the decisions (no I/O) and their two drivers --------------------------------------
    #
    # ``_decide`` walks the candidates under the policy, serves fresh cache hits, and applies
    # the fail-closed rule; for each source it must ask it yields an ``_Ask`` and its driver
    # (``_resolve`` or ``_resolve_async``) does the I/O (encode/httpx's ``auth_flow`` idea, as
    # the apply stage's ``_flow.py`` and the cache's ``_flow``).

    def _decide(
        self, request: TokenRequest, allowed: frozenset[IdentityKind], lifecycle: bool
    ) -> Generator[_Ask, object, TokenResult]:
        span = self._span(request)
        acquired: list[str] = []
        outcome: Attempts | None = None
        cache = self.cache
        asked: str | None = None  # the source being asked, when a cancellation lands
        try:
            for candidate in self._candidates(allowed):
                source = candidate.source
                if outcome is not None and outcome.error is not None and not candidate.is_user:
                    continue  # fail closed: a user source failed, the app does not stand in
                try:
                    partition = source.cache_partition(request)
                except Exception as exc:  # that source's failure, as if get_token raised it
                    outcome = outcome or Attempts()
                    outcome.record(source.name, _partition_error(source, exc))
                    continue
                if partition is None:
                    continue
                key = self._key(source, partition, request)
                if candidate.cached:
                    result = cache.peek(key)  # the hot path: no refresh due, no I/O
                    if result is not None and result.kind in allowed and result.kind is source.kind:
                        break
                    ask = _Ask(source, request, key, self._cap(candidate, request), acquired)
                else:
                    ask = _Ask(source, request, None, None, acquired)
                asked = source.name
                try:
                    answer = yield ask
                except Exception as exc:
                    outcome = outcome or Attempts()
                    outcome.record(source.name, _redact.scrub(exc, ours_too=_foreign(source)))
                    continue
                outcome = outcome or Attempts()
                result = self._accept(source, key, answer, allowed, outcome, request)  # type: ignore[arg-type]
                if result is not None:
                    break
            else:
                raise explain_failure(self, request, allowed, outcome or Attempts())
        except Exception as exc:
            self._done(span, request, None, exc, acquired, lifecycle)
            raise
        except BaseException as exc:  # CancelledError, GeneratorExit, KeyboardInterrupt
            self._cancelled(span, request, exc, asked)
            raise
        self._done(span, request, result, None, acquired, lifecycle)
        return result

    def _ask(self, ask: _Ask) -> TokenResult | None:
        if ask.key is None:
            return _acquire(ask.source, ask.request, ask.acquired, self._policy)
        acquire = functools.partial(
            _acquire, ask.source, _detached(ask.request), ask.acquired, self._policy
        )
        return self.cache.get_or_acquire(ask.key, acquire, cap=ask.cap)

    async def _ask_async(self, ask: _Ask) -> TokenResult | None:
        if ask.key is None:
            return await _acquire_async(ask.source, ask.request, ask.acquired, self._policy)
        acquire = functools.partial(
            _acquire_async, ask.source, _detached(ask.request), ask.acquired, self._policy
        )
        return await self.cache.get_or_acquire_async(ask.key, acquire, cap=ask.cap)

    def _resolve(
        self, request: TokenRequest, allowed: frozenset[IdentityKind], *, lifecycle: bool = False
    ) -> TokenResult:
        return drive(self._decide(request, allowed, lifecycle), self._ask)

    async def _resolve_async(
        self, request: TokenRequest, allowed: frozenset[IdentityKind], *, lifecycle: bool = False
    ) -> TokenResult:
        # Past the cache hit (which needs no loop): the I/O below is asyncio's.
        require_asyncio("TokenChain.get_token_async")
        return await drive_async(self._decide(request, allowed, lifecycle), self._ask_async)

    def get_token(
        self,
        scopes: Sequence[str],
        *,
        caller: Caller | _Unset | None = _UNSET,
        claims: str | None = None,
        client_capabilities: Sequence[str] = (),
    ) -> TokenResult:
        """Sync driver of the same decisions as ``get_token_async`` (blocks the calling thread;
        not for event loops)."""
        request, allowed = self._ask_for(scopes, caller, claims, client_capabilities)
        return self._hit(request, allowed) or self._resolve(request, allowed)

    async def lifecycle_token_async(self, scopes: Sequence[str]) -> TokenResult | None:
        """A token for a request that has no active caller (connection set-up, discovery):
        the app identity when the policy allows it (``user_or_app``, ``app_only``, or
        ``lifecycle_app=True``), the developer under ``developer``, else ``None``."""
        allowed = self.policy.lifecycle_kinds(lifecycle_app=self.lifecycle_app)
        if not allowed:
            return None
        request = self._request(scopes, None, None, ())
        try:
            return await self._resolve_async(request, allowed, lifecycle=True)
        except (PolicyViolation, NoCallerError):
            return None

    def lifecycle_token(self, scopes: Sequence[str]) -> TokenResult | None:
        """Sync twin of ``lifecycle_token_async``."""
        allowed = self.policy.lifecycle_kinds(lifecycle_app=self.lifecycle_app)
        if not allowed:
            return None
        request = self._request(scopes, None, None, ())
        try:
            return self._resolve(request, allowed, lifecycle=True)
        except (PolicyViolation, NoCallerError):
            return None

    async def call_token_async(
        self, scopes: Sequence[str], *, ended: Caller | None = None
    ) -> TokenResult | None:
        """A token for a *call* (an MCP ``tools/call``: work done for someone) made with no
        active caller (``ended``: the caller bound to the context that has since ended, if
        any), else ``None``: ``Policy.call_kinds``. Never ``lifecycle_app``'s allowance, which
        covers connection-lifetime requests only, and never the app for a call of a user whose
        caller ended (a background run outliving its assertion): such a call fails closed."""
        allowed = self.policy.call_kinds(ended_presented=None if ended is None else ended.presented)
        if not allowed:
            return None
        request = self._request(scopes, None, None, ())
        try:
            return await self._resolve_async(request, allowed)
        except (PolicyViolation, NoCallerError):
            return None

    def cached_token(
        self,
        scopes: Sequence[str],
        *,
        caller: Caller | None,
        client_capabilities: Sequence[str] = (),
    ) -> TokenResult | None:
        """What ``get_token`` would return right now *if* it is a fresh cache hit, else
        ``None``: no I/O, no refresh, no error (the apply stage's hot path; anything else goes
        through ``get_token_async``, which raises what there is to raise)."""
        if caller is not None and not caller.active:
            return None  # an ended caller: get_token decides (never the app in its place)
        try:
            if caller is not None and type(scopes) is tuple and type(client_capabilities) is tuple:
                # The apply stage's call: no ``TokenRequest``, the key's prefix memoised.
                tail = self._tails.get((scopes, client_capabilities))
                if tail is None:
                    tail = self._tail(scopes, client_capabilities)
                hit = self._caller_hit(caller, tail)
                if hit is not _GENERAL:
                    return hit  # type: ignore[return-value]
            request = self._request(scopes, caller, None, client_capabilities)
            return self._hit(request, self._allowed[self._presented(request)])
        except Exception:
            return None  # the full path will meet the same problem and explain it

    def hit_lookup(
        self, scopes: Sequence[str], client_capabilities: Sequence[str] = ()
    ) -> Callable[[Caller], TokenResult | None]:
        """``cached_token`` for these scopes and capabilities, bound once (the apply stage
        asks for it when it is built): ``lookup(caller)`` for a caller the apply stage has
        already found active. The per-call work of ``cached_token`` that never changes for one
        ``EntraAuth`` (the argument checks, the key's memoised prefix) is done here, once."""
        scopes = tuple(scopes)
        client_capabilities = tuple(client_capabilities)
        tail = _Tail(_scopes_key(scopes), client_capabilities)  # its own: never cleared
        caller_hit = self._caller_hit
        general = self.cached_token

        def lookup(caller: Caller) -> TokenResult | None:
            try:
                hit = caller_hit(caller, tail)
            except Exception:
                return None  # the full path will meet the same problem and explain it
            if hit is not _GENERAL:
                return hit  # type: ignore[return-value]
            return general(scopes, caller=caller, client_capabilities=client_capabilities)

        return lookup

    def _tail(self, scopes: tuple[str, ...], client_capabilities: tuple[str, ...]) -> _Tail:
        if len(self._tails) >= _MAX_TAILS:
            self._tails.clear()
        tail = self._tails[(scopes, client_capabilities)] = _Tail(
            _scopes_key(scopes), client_capabilities
        )
        return tail

    def _caller_hit(self, caller: Caller, tail: _Tail) -> TokenResult | object | None:
        """``_hit`` for an active ``caller``, with no claims: the same key (``_key``) from
        each source's ``caller_partition``. ``_GENERAL`` when a source has none."""
        # A new request's Caller (``caller_from_asgi``): its headers read here, not through the
        # first field's slot miss (an AttributeError, then ``__getattr__``: ~1.5 us per request
        # through a client, measured).
        caller.read_headers()
        allowed = self._allowed[caller.presented]
        for candidate in self._plans.get(allowed) or self._candidates(allowed):
            partition_of = candidate.partition_of
            if partition_of is None:
                return _GENERAL
            partition = partition_of(caller)
            if partition is None:
                continue
            if not candidate.cached:
                return None
            source = candidate.source
            name = source.name
            prefix = tail.prefixes.get(name)
            if prefix is None:  # ``_key``'s prefix, for no claims
                prefix = tail.prefixes[name] = self._interned(
                    (name, source.kind.value, tail.scopes_key, None, tail.capabilities)
                )
            hit = self.cache.peek((prefix,) + partition)  # noqa: RUF005 - ``_key``'s, cheaper (no list)
            # (Its kind the source's: a source whose kind changed since this prefix was kept.)
            if hit is not None and hit.kind in allowed and hit.kind is source.kind:
                if _otel.metering():
                    _otel.count_hit(source.name, hit.kind.value)
                return hit
            return None
        return None

    def invalidate(self, result: TokenResult, *, where: Hashable | None = None) -> bool:
        """Forget the cached entry behind ``result`` (after the resource answered 401).

        With ``where`` (the refusing resource's origin), returns ``False`` and forgets nothing
        when ``result`` is the token that replaced one that resource refused moments ago, and
        it never accepted it (``TokenCache.refusal_window``): it refuses every token of this
        caller, and the 401 is not retried."""
        if result.cache_key is not None and not self.cache.invalidate(
            result.cache_key, rejected=result, where=where
        ):
            return False
        for source in self.sources:
            if source.name == result.source and isinstance(source, InvalidatingSource):
                source.invalidate(result)
        return True

    def accepted(self, result: TokenResult, *, where: Hashable) -> None:
        """The resource at ``where`` accepted the token that replaced ``result``: its next
        refusal of this caller's token is retried (``TokenCache.refusal_window``)."""
        if result.cache_key is not None:
            self.cache.accepted(result.cache_key, where=where)

    def adopt(self, refused: TokenResult, satisfying: TokenResult) -> None:
        """The resource refused ``refused`` with a claims challenge and accepted
        ``satisfying``, acquired for the same caller and scopes with those claims: the
        requests that would look ``refused``'s entry up get ``satisfying`` (``TokenCache.adopt``),
        not a token without the claims (one OBO POST and one more 401 per request)."""
        if (
            refused.cache_key is not None
            and satisfying.cache_key is not None
            and refused.cache_key != satisfying.cache_key
            and refused.kind is satisfying.kind
        ):
            self.cache.adopt(refused.cache_key, satisfying)

    def close(self) -> None:
        """Stop the sources' worker threads, and cut their token requests in flight: a caller
        waiting on one gets ``SourceUnavailable`` saying the source was closed (another chain's
        requests go on, unless it shares the source object: a source closed is closed for every
        chain built on it), and no worker stays blocked on a stalled endpoint, holding up the
        process's exit (docs/reliability.md)."""
        for source in self.sources:
            if isinstance(source, ClosingSource):
                source.close()

    # -- configuration ----------------------------------------

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        http_client: Any = None,
        policy: Policy | str | None = None,
    ) -> TokenChain:
        """A chain from environment variables (docs/configuration.md).

        Sources, in order: ``AgentIdentityOnBehalfOf`` when
        ``ENTRA_PASSTHROUGH_AGENT_IDENTITY_ID`` is set, else ``OnBehalfOf`` when
        ``ENTRA_PASSTHROUGH_CLIENT_ID`` is set;
        ``ManagedIdentity`` when the policy can use an app identity (``user_or_app``,
        ``app_only``, or ``ENTRA_PASSTHROUGH_LIFECYCLE_APP``) and a managed identity is
        configured; ``AzureCli`` only under ``developer``.
        """
        from ._sources.agent_id import AgentIdentityOnBehalfOf
        from ._sources.azure_cli import AzureCli
        from ._sources.managed_identity import ManagedIdentity
        from ._sources.obo import OnBehalfOf

        env = _env.environ_or(environ)
        raw = policy or _env.get(env, "ENTRA_PASSTHROUGH_POLICY") or Policy.USER_ONLY
        try:
            chosen = Policy(str(raw).lower())
        except ValueError:
            # Not the value: it may be a secret pasted into the wrong variable.
            raise ConfigurationError(
                "ENTRA_PASSTHROUGH_POLICY (or policy=) is not one of "
                f"{', '.join(p.value for p in Policy)}.",
                fix=f"set ENTRA_PASSTHROUGH_POLICY to one of {', '.join(p.value for p in Policy)}.",
            ) from None
        lifecycle_app = _env.get_bool(env, "ENTRA_PASSTHROUGH_LIFECYCLE_APP")
        sources: list[TokenSource] = []
        if _env.get(env, "ENTRA_PASSTHROUGH_AGENT_IDENTITY_ID"):
            sources.append(AgentIdentityOnBehalfOf.from_env(env, http_client=http_client))
        elif _env.get(env, "ENTRA_PASSTHROUGH_CLIENT_ID"):
            sources.append(OnBehalfOf.from_env(env, http_client=http_client))
        elif _env.get(env, "FOUNDRY_AGENT_INSTANCE_CLIENT_ID"):  # set by Foundry (hosted agent)
            sources.append(AgentIdentityOnBehalfOf.from_env(env, http_client=http_client))
        wants_app = chosen in (Policy.USER_OR_APP, Policy.APP_ONLY) or lifecycle_app
        from ._sources.managed_identity import detect_host

        mi_host = detect_host(env) != "imds"  # a host that sets variables (IMDS sets none)
        if wants_app and (mi_host or _env.get(env, "AZURE_CLIENT_ID")):
            sources.append(ManagedIdentity.from_env(env))
        if chosen is Policy.DEVELOPER:
            sources.append(AzureCli.from_env(env))
        blueprint = [
            name
            for name in (
                "ENTRA_PASSTHROUGH_BLUEPRINT_CLIENT_ID",
                "FOUNDRY_AGENT_BLUEPRINT_CLIENT_ID",
            )
            if _env.get(env, name)
        ]
        agent_id = any(
            isinstance(source, AgentIdentityOnBehalfOf) for source in sources
        ) or _env.get(env, "ENTRA_PASSTHROUGH_CLIENT_ID")
        if blueprint and sources and not agent_id:
            # Agent ID half configured beside another source (a managed identity under
            # user_or_app): the chain works without it, and nothing else would say so.
            logger.warning(
                "%s is set (an Entra Agent ID blueprint) but no agent identity "
                "(ENTRA_PASSTHROUGH_AGENT_IDENTITY_ID or FOUNDRY_AGENT_INSTANCE_CLIENT_ID): "
                "Agent ID is not used; the chain has %s",
                blueprint[0],
                ", ".join(source.name for source in sources),
            )
        if not sources:
            if blueprint:
                # Agent ID half configured: the blueprint named, the agent identity not.
                raise ConfigurationError(
                    f"The environment sets {blueprint[0]} (an Entra Agent ID blueprint) but no "
                    "agent identity: neither ENTRA_PASSTHROUGH_AGENT_IDENTITY_ID nor "
                    "FOUNDRY_AGENT_INSTANCE_CLIENT_ID is set, so no token source is configured.",
                    fix="set ENTRA_PASSTHROUGH_AGENT_IDENTITY_ID to the agent identity's client id "
                    "(a Foundry hosted agent gets FOUNDRY_AGENT_INSTANCE_CLIENT_ID from the "
                    "platform: check the agent was deployed with its agent identity); "
                    f"{see('configuration', 'what-tokenchainfrom_env-builds')}.",
                )
            raise ConfigurationError(
                "The environment configures no token source." + _env.azure_app_hint(env),
                fix="set ENTRA_PASSTHROUGH_CLIENT_ID and AZURE_TENANT_ID (and a client "
                f"credential) for on-behalf-of; {see('configuration')}.",
            )
        cache = TokenCache(
            max_entries=_env.get_int(env, "ENTRA_PASSTHROUGH_CACHE_MAX_ENTRIES", 10_000)
        )
        return cls(sources, policy=chosen, cache=cache, lifecycle_app=lifecycle_app)
