"""``Policy``: which identity kinds a target accepts; and how a chain explains a refusal.

Kept apart from ``_chain`` so the rules read in one place (docs/sources-and-policy.md).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ._docs import see
from ._errors import (
    AssertionNotUsable,
    ConsentRequired,
    EntraPassthroughError,
    InteractionRequired,
    NoCallerError,
    PolicyViolation,
    SourceUnavailable,
    Throttled,
    TokenAcquisitionError,
    safe_text,
    without_fix,
)
from ._types import IdentityKind, TokenRequest, TokenSource, explain

if TYPE_CHECKING:
    from ._chain import TokenChain

_USER = frozenset({IdentityKind.USER})
_APP = frozenset({IdentityKind.APP})
_USER_OR_APP = frozenset({IdentityKind.USER, IdentityKind.APP})
_USER_OR_DEVELOPER = frozenset({IdentityKind.USER, IdentityKind.DEVELOPER})
_DEVELOPER = frozenset({IdentityKind.DEVELOPER})
_NONE: frozenset[IdentityKind] = frozenset()

#: Errors a user can act on (consent, sign in again / MFA).
_ACTIONABLE = (ConsentRequired, InteractionRequired)


class Policy(enum.StrEnum):
    """Which identity kinds are acceptable for a target. ``USER_ONLY`` is the default.

    >>> TokenChain([OnBehalfOf.from_env(), ManagedIdentity()], policy=Policy.USER_OR_APP)
    """

    USER_ONLY = "user_only"  # only the user; never the agent
    USER_OR_APP = "user_or_app"  # the agent only when no assertion was presented at all
    APP_ONLY = "app_only"  # service calls, the Foundry toolbox route
    DEVELOPER = "developer"  # Azure CLI as the developer; explicit opt-in only

    def allowed(self, *, presented: bool) -> frozenset[IdentityKind]:
        """The kinds a result may have, given whether the request presented an assertion."""
        if self is Policy.USER_ONLY:
            return _USER
        if self is Policy.APP_ONLY:
            return _APP
        if presented:
            return _USER  # presented but unusable fails closed: no stand-in identity
        if self is Policy.USER_OR_APP:
            return _USER_OR_APP
        return _USER_OR_DEVELOPER

    def call_kinds(self, *, ended_presented: bool | None) -> frozenset[IdentityKind]:
        """The kinds allowed for a call (work done for someone: an MCP ``tools/call``) made
        with no active caller. ``ended_presented``: ``None`` when no caller was ever bound,
        else whether the caller that has since ended presented an assertion. A call of an
        ended caller gets only what that caller could have had besides the user (under
        ``user_or_app``, the app only if it presented nothing); a call with no caller at all,
        what the policy allows it, never ``lifecycle_app``'s allowance (connection-lifetime
        requests only)."""
        if ended_presented is None:
            return self.lifecycle_kinds(lifecycle_app=False)
        return self.allowed(presented=ended_presented) - _USER

    def lifecycle_kinds(self, *, lifecycle_app: bool) -> frozenset[IdentityKind]:
        """The kinds allowed for requests with no caller (connection set-up, discovery)."""
        if self in (Policy.USER_OR_APP, Policy.APP_ONLY) or lifecycle_app:
            return _APP
        if self is Policy.DEVELOPER:
            return _DEVELOPER
        return _NONE


@dataclass(slots=True)
class Attempts:
    """What happened to the sources a chain tried (built only when something failed)."""

    notes: dict[str, str] = field(default_factory=dict)
    error: TokenAcquisitionError | None = None

    def record(self, source: str, exc: BaseException) -> None:
        if not isinstance(exc, TokenAcquisitionError):
            if isinstance(exc, EntraPassthroughError):
                # Ours, met only when the source runs (a ConfigurationError: a managed identity
                # host's variables, MSAL's version, a client of the wrong type): its text says
                # what to configure and never holds a secret, so it is kept, not its type alone.
                kept = SourceUnavailable(without_fix(exc), source=source, fix=exc.fix)
                kept.__cause__ = exc
            else:
                # Its text is not kept: it may hold the caller's token (an HTTP library's
                # error quoting the request it sent).
                kept = SourceUnavailable(
                    f"source failed unexpectedly: {type(exc).__name__} (its text is not shown: "
                    "it may hold the caller's token).",
                    source=source,
                    fix="if the source is your own TokenSource, catch that exception in its "
                    "get_token/get_token_async and raise a TokenAcquisitionError subclass saying "
                    "what happened and the fix (SourceUnavailable when it cannot run here); if it "
                    "is one of entra-passthrough's, report the exception type as a defect "
                    f"({see('sources-and-policy', 'your-own-source')}).",
                )
            exc = kept
        self.notes[source] = type(exc).__name__
        # The first error wins, except that one the user can act on (sign in, consent, MFA)
        # outranks an earlier dead end: with [OnBehalfOf, DelegatedConsent] a Foundry token is
        # refused by OBO, and the consent link is what the user needs to see.
        # Between two consent requests, a later source's link outranks an earlier one's: the
        # chain's consent fallback comes last ([OnBehalfOf, DelegatedConsent]), and its link
        # (the consent broker's) is the sign-in that stores a grant the fallback then uses;
        # OBO's own link (Entra's authorize page) leads back to no flow of this agent.
        # And a later source's refusal of this user (DelegatedConsent: "the consent stored for
        # this platform user belongs to another account") outranks an earlier source that
        # could not use the token at all (OBO and a Foundry token, whose fix is "use
        # DelegatedConsent": already done); not a later source that could not run or was
        # throttled, nor another unusable token.
        if (
            self.error is None
            or (isinstance(exc, _ACTIONABLE) and not isinstance(self.error, _ACTIONABLE))
            or (
                isinstance(self.error, AssertionNotUsable)
                and not isinstance(exc, (AssertionNotUsable, SourceUnavailable, Throttled))
            )
            or (
                isinstance(exc, ConsentRequired)
                and isinstance(self.error, ConsentRequired)
                and exc.link
            )
        ):
            self.error = exc


#: The chain's note for a source that answered ``None`` (it does not apply).
NOT_APPLICABLE = "not applicable"


@runtime_checkable
class _ReasonedSource(Protocol):
    """A source that says why its last answer was "not applicable" (``None`` if it has no
    reason)."""

    def unavailable_reason(self) -> str | None: ...


def reasons(
    policy: Policy,
    sources: Sequence[TokenSource],
    request: TokenRequest,
    allowed: frozenset[IdentityKind],
    attempts: Attempts,
) -> list[str]:
    """One line per source: why it gave no acceptable token. No token ever appears. Only
    called when no source raised (otherwise that error is what the chain raises)."""
    caller = request.caller
    presented = caller is not None and caller.presented
    lines = []
    for source in sources:
        kind = source.kind
        if kind not in allowed:
            why = f"kind {kind.value} not allowed by policy {policy.value}"
            if presented and kind is not IdentityKind.USER:
                why += " (an assertion was presented)"
        elif source.name in attempts.notes:
            why = attempts.notes[source.name]
            if why == NOT_APPLICABLE and isinstance(source, _ReasonedSource):
                # It answered "not applicable" and knows why (AzureCredential: azure-identity's
                # CredentialUnavailableError, whose text tells a missing environment from an
                # endpoint that answered nonsense).
                # Through the redaction too: a source written outside the library may have it.
                why = safe_text(source.unavailable_reason() or why, 300)
        else:
            why = explain(source, request)
        lines.append(f"{source.name}: {why}")
    return lines


def explain_failure(
    chain: TokenChain,
    request: TokenRequest,
    allowed: frozenset[IdentityKind],
    attempts: Attempts,
) -> TokenAcquisitionError | NoCallerError:
    """The error a chain raises when no source gave an acceptable token."""
    if attempts.error is not None:
        return attempts.error
    if not chain.sources:
        return PolicyViolation(
            "The chain has no sources, so no token can be obtained for "
            f"{' '.join(request.scopes)}.",
            policy=chain.policy.value,
            scopes=request.scopes,
            fix="pass the sources to try, in order: TokenChain([OnBehalfOf(...)]), or build "
            "the chain with TokenChain.from_env().",
        )
    lines = reasons(chain.policy, chain.sources, request, allowed, attempts)
    if request.caller is None and chain.policy is Policy.USER_ONLY:
        return NoCallerError(
            "No active caller, and policy user_only needs the user's identity "
            f"(tried: {'; '.join(lines) or 'no sources'})."
        )
    return PolicyViolation(
        f"No source produced a token that policy {chain.policy.value} accepts for "
        f"{' '.join(request.scopes)}.",
        policy=chain.policy.value,
        scopes=request.scopes,
        attempts=lines,
        fix=f"check the policy and the chain's sources ({see('sources-and-policy')}).",
    )
