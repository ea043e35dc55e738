"""Helpers shared by the built-in sources."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from .._errors import (
    EntraError,
    EntraPassthroughError,
    SourceUnavailable,
    Throttled,
    error_from_entra,
)
from .._http import CLOSED_FIX, TransportFailure
from .._types import IdentityKind, TokenResult, token_exp

#: The longest lifetime believed from a token endpoint's ``expires_in`` (seconds): a day.
MAX_LIFETIME = 86_400.0
#: ``expires_in`` is whole seconds: up to one more than the token has left when it is sent.
_ROUNDING = 1.0


def result_from_msal(
    response: Mapping[str, Any],
    *,
    kind: IdentityKind,
    source: str,
    scopes: tuple[str, ...],
    cap: float | None = None,
    consent_link: str | None = None,
    who: str = "Entra",
    fix: str | None = None,
    started: float | None = None,
) -> TokenResult:
    """A ``TokenResult`` from an MSAL answer, or the typed error for an Entra error body
    (``who`` answered it; ``fix`` when it carries no AADSTS code: ``error_from_entra``).

    ``started``: when the request that got the answer was sent (``time.time()`` before the
    exchange). ``expires_in`` counts from when Entra issued the token, so the expiry counted
    from the answer's arrival (MSAL's ``expires_on``) runs past the token's own ``exp`` by the
    answer's time on the wire, and a token served to that expiry reaches the resource expired.
    Counted from ``started``, less a second for the endpoint's whole-second rounding, it ends
    before ``exp``."""
    token = response.get("access_token")
    if not isinstance(token, str) or not token:
        if response.get("error"):
            raise error_from_entra(
                response,
                source=source,
                scopes=scopes,
                consent_link=consent_link,
                who=who,
                fix=fix,
            )
        raise EntraError("Entra's answer carried no access token.", source=source, scopes=scopes)
    now = time.time()
    raw = response.get("expires_in")
    try:
        expires_in = float(raw) if raw is not None and not isinstance(raw, bool) else math.nan
    except (TypeError, ValueError, OverflowError):  # a 400-digit number overflows a float
        expires_in = math.nan
    if math.isfinite(expires_in) and expires_in <= 0:
        # Expired already by this host's clock (an identity endpoint's expires_on in the past,
        # which MSAL turns into a negative expires_in): kept expired, so the chain refuses it
        # (never served), not read as an unknown lifetime of 300 s.
        return TokenResult(token=token, expires_on=now + expires_in, kind=kind, source=source)
    if not 0 < expires_in < math.inf:  # missing, NaN or infinite: not a lifetime
        expires_in = 300.0
    # Entra's access tokens live at most a day (configurable token lifetimes): a longer claim
    # from the endpoint is not believed.
    lifetime = min(expires_in, MAX_LIFETIME)
    if started is not None and started <= now:
        expires_on = started + lifetime
        exp = token_exp(token)  # an opaque token: its expires_in is all there is
        if exp is not None:
            # The token's own end, on the issuer's clock: with this host ahead of it, the
            # earlier of the two, and none is served past its exp. (With this host behind,
            # ``started + lifetime`` is the earlier, short of the assertion's cap by the clock
            # difference: the cache compares ``exp`` itself with the cap, ``entry_timing``.)
            expires_on = min(expires_on, exp)
        else:
            expires_on -= min(_ROUNDING, lifetime / 2)
    else:
        expires_on = now + lifetime
    if cap is not None:
        expires_on = min(expires_on, cap)
    return TokenResult(token=token, expires_on=expires_on, kind=kind, source=source)


#: The fix for a token request answered by a page (``TransportFailure`` kind ``page``).
PAGE_FIX = (
    "check what answers for the authority host from this machine: an HTTP proxy "
    "(HTTPS_PROXY / NO_PROXY; HTTP 407 means it wants credentials), a firewall or a "
    "TLS-inspecting gateway that blocks or rewrites requests to it, and the authority host "
    "setting (authority_host / AZURE_AUTHORITY_HOST: Entra's login host for your cloud)."
)


#: The fix for a managed identity endpoint answered by a page instead of its JSON.
_MI_PAGE_FIX = (
    "check what answers at the managed identity endpoint from this process: IDENTITY_ENDPOINT "
    "(App Service, Container Apps, Functions), MSI_ENDPOINT or the IMDS address "
    "169.254.169.254 (VMs, AKS) must be the host's own endpoint, not another server on that "
    "address; and an HTTP proxy must not take these requests (NO_PROXY must name "
    "169.254.169.254 and the endpoint's host)."
)


#: The fix for a managed identity endpoint that failed or did not answer (not Entra: the host's).
_MI_TRANSIENT_FIX = (
    "nothing to configure if it is transient (the request was retried with backoff); if it "
    "persists, the host's identity endpoint is down or unreachable: check that this host has a "
    "managed identity (and the user-assigned one is assigned to it), IDENTITY_ENDPOINT (App "
    "Service, Container Apps, Functions) or the IMDS address 169.254.169.254 (VMs, AKS), and "
    "the host's status page."
)


#: The fix for an authority MSAL refused (``unreachable``).
AUTHORITY_FIX = (
    "check AZURE_AUTHORITY_HOST / authority_host= (the host only, e.g. "
    "https://login.microsoftonline.com: no tenant path, query or fragment) and AZURE_TENANT_ID "
    "(the Directory (tenant) ID), and that {host}/{tenant}/v2.0/.well-known/openid-configuration "
    "answers from this machine."
)


def raised_in(exc: BaseException, module: str) -> bool:
    """Whether ``exc`` was raised by code of ``module`` (its traceback's innermost frame)."""
    tb = exc.__traceback__
    if tb is None:
        return False
    for _ in range(1000):  # bounded walk to the innermost frame
        if tb.tb_next is None:
            break
        tb = tb.tb_next
    return tb.tb_frame.f_globals.get("__name__") == module


def unreachable(
    exc: BaseException, *, what: str, source: str, scopes: tuple[str, ...]
) -> EntraPassthroughError:
    """A typed error for a transport failure; never includes the exception text (URLs with
    query strings, response bodies). The library's own errors pass unchanged: a
    ``ConfigurationError`` raised while MSAL builds a client assertion (a managed identity that
    cannot be selected on this host) keeps its message and fix."""
    if isinstance(exc, EntraPassthroughError):
        return exc
    if isinstance(exc, TransportFailure):
        # What the answer's body named (code, request ids) and what failed, for the error's
        # attributes, its WARNING and its span: never the body itself.
        named: dict[str, Any] = {
            "aadsts": exc.aadsts,
            "correlation_id": exc.correlation_id,
            "trace_id": exc.trace_id,
            "failure": exc.summary(),
        }
        if exc.kind == "throttled":
            return Throttled(
                f"{what} failed: {exc.describe()}",
                retry_after=exc.retry_after,
                status=exc.status,
                source=source,
                scopes=scopes,
                **named,
            )
        if exc.kind == "closed":
            # The application closed the source (chain.close()) with this request in flight:
            # neither the endpoint's failure nor a deadline, and nothing to retry here.
            return SourceUnavailable(
                f"{what} failed: {exc.describe()}.",
                source=source,
                scopes=scopes,
                fix=CLOSED_FIX,
                **named,
            )
        if exc.kind == "page":
            # A 3xx/4xx page instead of an OAuth error: something between here and Entra
            # answered (or the authority host is not Entra's). Not retried: it is an answer.
            return SourceUnavailable(
                f"{what} failed: {exc.describe()}.",
                source=source,
                scopes=scopes,
                fix=_MI_PAGE_FIX if what.startswith("managed identity") else PAGE_FIX,
                **named,
            )
        return SourceUnavailable(
            f"{what} failed: {exc.describe()}.",
            source=source,
            scopes=scopes,
            **named,
            fix=_MI_TRANSIENT_FIX
            if what.startswith("managed identity")
            else "nothing to configure if it is transient (the request was retried with "
            "backoff); check the network path to the authority host, or raise the timeouts "
            "(Timeouts / ENTRA_PASSTHROUGH_READ_TIMEOUT) if Entra is slow from here.",
        )
    if isinstance(exc, ValueError) and raised_in(exc, "msal.authority"):
        # Every ValueError of MSAL's authority module is about the authority URL it was given
        # ({authority host}/{tenant}) or the OpenID configuration fetched from it. Its text is
        # not shown (it may carry the discovery endpoint's answer).
        return SourceUnavailable(
            f"{what} failed: MSAL could not use the authority (the authority host and tenant) "
            "or fetch its OpenID configuration (ValueError).",
            source=source,
            scopes=scopes,
            fix=AUTHORITY_FIX,
            failure="authority",
        )
    detail = type(exc).__name__
    text = str(exc)
    if detail == "MsalServiceError" and text.startswith("HTTP Error: "):
        # MSAL raises this for an error answer without a JSON body (e.g. a 503 from a proxy);
        # its text is only the status line.
        status = text[len("HTTP Error: ") :][:12].strip()
        detail = f"Entra answered HTTP {status} without an error body"
        failure = f"HTTP {status}" if status.isdigit() else "HTTP error"
    else:
        failure = detail  # an exception type's name: bounded, and never its text
    return SourceUnavailable(
        f"{what} failed: {detail}.", source=source, scopes=scopes, failure=failure
    )
