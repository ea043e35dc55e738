"""Every error the library raises, in one tree.

    EntraPassthroughError
    ├── ConfigurationError            the library is configured wrongly (raised at build time)
    ├── MissingExtraError (ImportError) an optional integration's package is not installed
    ├── NoCallerError                 a user token was needed but no caller is bound / it ended
    ├── TokenAcquisitionError         no acceptable token for (caller, scopes)
    │   ├── AssertionNotUsable        the caller presented a token that cannot be exchanged
    │   │   ├── AssertionAudienceMismatch   aud is not the OBO client      (AADSTS500131)
    │   │   ├── AssertionExpired            exp is in the past             (AADSTS500133)
    │   │   ├── AssertionMalformed          not a decodable JWT            (AADSTS50027)
    │   │   ├── AppOnlyAssertion            app token, no user             (AADSTS7000114)
    │   │   └── IdTokenAssertion            an ID token, not an access token (AADSTS240002)
    │   ├── TenantNotAllowed          the caller's tid is not on the allow-list (no request sent)
    │   ├── PolicyViolation           only identities the policy forbids were available
    │   ├── ConsentRequired           the user must consent; carries a link (AADSTS65001, -32006)
    │   ├── InteractionRequired       conditional access / MFA; carries claims (50076, 53003)
    │   ├── SourceUnavailable         a source cannot run here (no az, no MI endpoint)
    │   ├── Throttled                 Entra said retry later (429/5xx with Retry-After);
    │   │                             carries retry_after (seconds)
    │   └── EntraError                any other Entra answer, AADSTS code decoded
    └── TokenVerificationError        server side: a presented token is not acceptable
        ├── InsufficientScope         valid token, missing scope or role (HTTP 403)
        └── SigningKeysUnavailable    the issuer's keys cannot be fetched (HTTP 503, not the
                                      token's fault; still never accepted)

Messages say what happened, why, and what to configure. They never contain a token, secret,
assertion or code: only claims that identify nothing secret (aud, iss, tid) and short hashes.
All context is keyword-only and kept as attributes for programs.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ._aadsts import AADSTS, Aadsts, describe
from ._docs import see
from ._redact import redact


class EntraPassthroughError(Exception):
    """Base class of every error raised by entra-passthrough."""

    fix: str | None = None

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        if fix is not None:
            self.fix = fix
        full = f"{message} Fix: {self.fix}" if self.fix else message
        super().__init__(full)


def without_fix(exc: EntraPassthroughError) -> str:
    """The message of ``exc`` without its " Fix: ..." tail (``exc.fix``): for an error that
    carries another's message with a fix of its own, or the same fix, once."""
    full = str(exc)
    tail = f" Fix: {exc.fix}" if exc.fix else ""
    return full[: -len(tail)] if tail and full.endswith(tail) else full


class ConfigurationError(EntraPassthroughError, ValueError):
    """The library was configured in a way that cannot work or would be unsafe."""


class MissingExtraError(EntraPassthroughError, ImportError):
    """An optional integration was imported without its extra installed."""

    def __init__(self, *, module: str, extra: str) -> None:
        self.module = module
        self.extra = extra
        super().__init__(
            f"entra_passthrough.{module} needs optional packages that are not installed.",
            fix=install_extra_hint(extra),
        )


def install_extra_hint(extra: str) -> str:
    """How to add the extra ``extra``: the package is not on PyPI, so where it came from."""
    return (
        f"pip install 'entra-passthrough[{extra}]' from where entra-passthrough came from "
        f"(not on PyPI: a wheel, 'dist/entra_passthrough-<version>-py3-none-any.whl[{extra}]', "
        f"or the repository, 'entra-passthrough[{extra}] @ git+<repository URL>')"
    )


def require_extra(module: str, extra: str, exc: ImportError) -> MissingExtraError:
    """Build the error to raise from ``exc`` when an integration's import fails."""
    err = MissingExtraError(module=module, extra=extra)
    err.__cause__ = exc
    return err


class NoCallerError(EntraPassthroughError):
    """A user's token was needed but no active caller is bound to this context."""

    def __init__(self, message: str | None = None, *, fix: str | None = None) -> None:
        super().__init__(
            message
            or "No active caller: this request runs outside any user's request (no "
            "CallerMiddleware/bind_caller, or the request already ended).",
            fix=fix
            or "install CallerMiddleware on the app, or wrap the work in bind_caller(...); "
            "a stale context from a long-lived connection task never gets a user token.",
        )


class TokenAcquisitionError(EntraPassthroughError):
    """No token acceptable under the policy could be obtained.

    ``aadsts`` is set when Entra answered; ``correlation_id``/``trace_id`` identify the request
    for Microsoft support and are safe to log. ``failure``: for an endpoint that failed rather
    than answered (``SourceUnavailable``, ``Throttled``), what failed in a few bounded words
    (``HTTP 503``, ``timeout``, ``deadline in headers``, ``HTTP 407 page``): the WARNING names
    it, so one failure's line is never coalesced into another's.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        scopes: Sequence[str] = (),
        aadsts: int | None = None,
        error: str | None = None,
        suberror: str | None = None,
        correlation_id: str | None = None,
        trace_id: str | None = None,
        fix: str | None = None,
        failure: str | None = None,
    ) -> None:
        self.source = source
        self.scopes = tuple(scopes)
        self.code: Aadsts | None = describe(aadsts) if aadsts is not None else None
        self.error = error
        self.suberror = suberror
        self.correlation_id = correlation_id
        self.trace_id = trace_id
        self.failure = failure
        if fix is None and self.code is not None:
            # Each decoded code has an anchor on the errors page (the AADSTS table); a code
            # the library does not decode has none, and links the section that says so.
            link = (
                see("errors", f"aadsts{self.code.code}")
                if self.code.code in AADSTS
                else see("errors", "aadsts-codes")
            )
            fix = f"{self.code.fix} ({link})"
        where = f" [source {source}]" if source else ""
        ids = f" (correlation_id {correlation_id})" if correlation_id else ""
        super().__init__(f"{message}{where}{ids}", fix=fix)


class AssertionNotUsable(TokenAcquisitionError):
    """The caller presented a token, but it cannot be exchanged by on-behalf-of.

    The token is never sent to Entra in that case. A presented-but-unusable assertion never
    lets the chain fall back to an app identity.
    """


class AssertionAudienceMismatch(AssertionNotUsable):
    def __init__(
        self,
        *,
        audience: str | None,
        expected: Sequence[str],
        source: str | None = None,
        scopes: Sequence[str] = (),
    ) -> None:
        self.audience = audience
        self.expected = tuple(expected)
        hint = (
            " This is the token Microsoft Foundry sends to hosted agents; it names the "
            "user but is for Foundry, not for your app."
            if is_foundry_audience(audience)
            else ""
        )
        own_uri = own_uri_fix(audience, "the OBO app")
        others = ", or another of its Application ID URIs in accepted_audiences"
        super().__init__(
            f"The caller's token is for audience {audience!r}; on-behalf-of needs a token issued "
            f"for the OBO app itself ({' or '.join(self.expected)}{others if own_uri else ''}"
            f"), so Entra would answer AADSTS500131.{hint} The token was not sent.",
            source=source,
            scopes=scopes,
            aadsts=500131,
            fix=f"{own_uri}have the client request a token for your app's scope "
            "(api://<app>/<scope>), use DelegatedConsent (the user signs in once through the "
            "consent broker), or, for Foundry, FoundryToolboxRoute; do not forward this token.",
        )


#: The hosts of Microsoft's own resources (public and sovereign clouds): a token for one of
#: them is never the OBO app's (no "add it to accepted_audiences" for these).
_MICROSOFT_HOSTS = (
    ".microsoft.com",
    ".microsoftonline.com",
    ".windows.net",
    ".azure.com",
    ".azure.net",
    ".azure.us",
    ".microsoft.us",
    ".usgovcloudapi.net",
    ".chinacloudapi.cn",
    ".azure.cn",
    ".microsoftazure.de",
    ".sharepoint.com",
    ".office.com",
    ".office365.com",
    ".office.net",
    ".outlook.com",
    ".powerbi.com",
    ".dynamics.com",
    ".loganalytics.io",
    ".applicationinsights.io",
    ".fabric.microsoft.com",
)


#: The audiences of the token Microsoft Foundry sends to hosted agents.
FOUNDRY_AUDIENCES = ("https://ai.azure.com", "https://ml.azure.com")


def is_foundry_audience(audience: object) -> bool:
    """Whether a caller token's ``aud`` is Foundry's (a trailing ``/`` or not)."""
    return isinstance(audience, str) and audience.rstrip("/") in FOUNDRY_AUDIENCES


def own_uri_fix(audience: object, owner: str) -> str:
    """The start of an ``AADSTS500131`` refusal's fix when ``audience`` could be a custom
    Application ID URI of ``owner`` ("the OBO app", "the blueprint"): v1 tokens carry the App
    ID URI the client asked for, which Entra accepts once the app lists it, and only the
    operator knows whether it is one, so the fix names the setting first. ``""`` otherwise
    (Foundry's, Microsoft's resources, GUIDs)."""
    if is_foundry_audience(audience) or not could_be_own_uri(audience):
        return ""
    return (
        f"if {audience!r} is an Application ID URI of {owner} (Expose an API), add it to "
        "accepted_audiences (ENTRA_PASSTHROUGH_ACCEPTED_AUDIENCES); otherwise "
    )


def could_be_own_uri(audience: object) -> bool:
    """Whether a caller token's ``aud`` could be a custom Application ID URI of the OBO app
    (``https://contoso.example/agent``, ``api://contoso.example/agent``): not a GUID, not
    ``api://<GUID>`` (an app's own id form, and this app's is accepted already), not one of
    Microsoft's resources."""
    if not isinstance(audience, str) or not audience:
        return False
    lowered = audience.lower()
    if lowered.startswith("api://"):
        rest = lowered[len("api://") :].strip("/")
        return bool(rest) and GUID.fullmatch(rest) is None
    if not lowered.startswith("https://"):
        return False
    host = lowered[len("https://") :].split("/", 1)[0].split(":", 1)[0]
    return bool(host) and not any(f".{host}".endswith(suffix) for suffix in _MICROSOFT_HOSTS)


class AssertionExpired(AssertionNotUsable):
    def __init__(
        self, *, expired_at: float, source: str | None = None, scopes: Sequence[str] = ()
    ) -> None:
        self.expired_at = expired_at
        super().__init__(
            "The caller's token has expired (exp in the past); Entra would answer AADSTS500133. "
            "The token was not sent.",
            source=source,
            scopes=scopes,
            aadsts=500133,
        )


class AssertionMalformed(AssertionNotUsable):
    def __init__(self, *, reason: str, source: str | None = None, scopes: Sequence[str] = ()):
        super().__init__(
            f"The caller presented a bearer token that is not a decodable JWT ({reason}); it "
            "cannot be exchanged and it stops the chain from using an app identity instead.",
            source=source,
            scopes=scopes,
            aadsts=50027,
        )


class IdTokenAssertion(AssertionNotUsable):
    """The caller sent its ID token (the sign-in's ``id_token``: no ``scp``, and neither
    ``azp`` nor ``appid``, which every Entra access token carries) where the access token for
    the OBO app belongs."""

    def __init__(self, *, source: str | None = None, scopes: Sequence[str] = ()) -> None:
        super().__init__(
            "The caller's token is an ID token (it has no 'scp' and neither 'azp' nor 'appid', "
            "which every access token carries): it says who signed in to the client, and "
            "on-behalf-of needs the access token the client got for the OBO app; Entra answers "
            "AADSTS240002. The token was not sent.",
            source=source,
            scopes=scopes,
            aadsts=240002,
            fix="have the client send the access token it requested for your app's scope "
            "(api://<app>/<scope>) in the Authorization header, not the id_token of its "
            "sign-in.",
        )


class AppOnlyAssertion(AssertionNotUsable):
    def __init__(self, *, source: str | None = None, scopes: Sequence[str] = ()) -> None:
        super().__init__(
            # An app's token carries 'roles' only when the app was granted some: the text
            # names what every app-only token lacks, not what some have.
            "The caller's token is app-only (no delegated scopes 'scp': an app's token, no "
            "signed-in user); on-behalf-of needs a user token (AADSTS7000114). The token was "
            "not sent.",
            source=source,
            scopes=scopes,
            aadsts=7000114,
        )


#: A GUID (tenant, client, object ids), either case; ``fullmatch`` for "is one", ``search``
#: and ``findall`` for one inside a URL or scope. The package's one pattern for it.
GUID = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")


class TenantNotAllowed(TokenAcquisitionError):
    """The caller's tenant is not on the source's allow-list (``allowed_tenants``): nothing
    was sent to Entra."""

    def __init__(
        self,
        *,
        tenant: str | None,
        allowed: Sequence[str],
        source: str | None = None,
        scopes: Sequence[str] = (),
    ) -> None:
        self.tenant = tenant
        self.allowed = tuple(allowed)
        names = [a for a in self.allowed if not GUID.fullmatch(a)]
        if tenant is None:
            # Entra's user tokens always carry tid: "add the tenant" cannot be followed.
            message = (
                "The caller's token names no tenant (its tid claim is missing or not a string), "
                "so it cannot be checked against the allow-list; no request was sent to Entra."
            )
            fix = (
                "send an access token Entra issued to a user for this app's API (Entra's "
                "tokens always carry tid); see what the client sends with `entra-passthrough "
                "inspect <token>`."
            )
        elif names:
            # A token's tid is always a GUID: a domain (contoso.onmicrosoft.com) or an alias
            # (organizations) on the list matches no caller, and a single-tenant app configured
            # with its domain refuses everyone. Say so, not "add the tenant".
            message = (
                f"The caller's tenant {tenant!r} is not on the allow-list "
                f"({', '.join(self.allowed)}); no request was sent to Entra. "
                f"{', '.join(repr(n) for n in names)} is not a tenant GUID, and a token's tid "
                "always is: it matches no caller."
            )
            fix = (
                "configure tenants by GUID: AZURE_TENANT_ID / tenant_id (Entra admin center > "
                "Overview > Tenant ID; or the GUID in the issuer of https://login."
                "microsoftonline.com/<domain>/v2.0/.well-known/openid-configuration), and "
                "allowed_tenants / ENTRA_PASSTHROUGH_ALLOWED_TENANTS for a multi-tenant app."
            )
        else:
            message = (
                f"The caller's tenant {tenant!r} is not on the allow-list "
                f"({', '.join(self.allowed) or 'empty'}); no request was sent to Entra."
            )
            fix = (
                "add the tenant to allowed_tenants (or ENTRA_PASSTHROUGH_ALLOWED_TENANTS) if "
                "your app is multi-tenant and you trust users from it."
            )
        super().__init__(message, source=source, scopes=scopes, fix=fix)


class PolicyViolation(TokenAcquisitionError):
    """Only identities the policy does not accept for this target could be obtained."""

    def __init__(
        self,
        message: str,
        *,
        policy: str,
        scopes: Sequence[str] = (),
        attempts: Sequence[str] = (),
        fix: str | None = None,
    ) -> None:
        self.policy = policy
        self.attempts = tuple(attempts)
        tried = f" Tried: {'; '.join(self.attempts)}." if self.attempts else ""
        super().__init__(f"{message}{tried}", scopes=scopes, fix=fix)


_CONSENT_LINK_FIX = "show the user the consent link; once they consent, retry the call."


class ConsentRequired(TokenAcquisitionError):
    """The user (or an admin) must consent before a token can be issued.

    ``link`` is an HTTPS URL to show the user (an authorize URL with ``prompt=consent``, or
    the consent broker's start URL). It contains no secret. ``fix`` replaces the code's fix
    when no user can consent (an Entra agent identity: only an administrator can grant it).
    """

    def __init__(
        self,
        message: str,
        *,
        link: str | None,
        source: str | None = None,
        scopes: Sequence[str] = (),
        server_label: str | None = None,
        aadsts: int | None = None,
        correlation_id: str | None = None,
        trace_id: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.link = link
        self.server_label = server_label
        super().__init__(
            message,
            source=source,
            scopes=scopes,
            aadsts=aadsts,
            error="invalid_grant" if aadsts else None,
            suberror="consent_required" if aadsts else None,
            correlation_id=correlation_id,
            trace_id=trace_id,
            fix=fix or (_CONSENT_LINK_FIX if link else None),
        )


class InteractionRequired(TokenAcquisitionError):
    """Conditional access needs the user (MFA, compliant device...). ``claims`` is the
    decoded challenge to send back to the client so it can sign in again."""

    def __init__(
        self,
        message: str,
        *,
        claims: str | None,
        source: str | None = None,
        scopes: Sequence[str] = (),
        aadsts: int | None = None,
        suberror: str | None = None,
        correlation_id: str | None = None,
        trace_id: str | None = None,
    ) -> None:
        self.claims = claims
        super().__init__(
            message,
            source=source,
            scopes=scopes,
            aadsts=aadsts,
            error="interaction_required",
            suberror=suberror,
            correlation_id=correlation_id,
            trace_id=trace_id,
        )


class SourceUnavailable(TokenAcquisitionError):
    """The source cannot run in this environment (no ``az`` on PATH, no MI endpoint...)."""


class Throttled(TokenAcquisitionError):
    """Entra (or the identity endpoint) asked to retry later: HTTP 429, or a 5xx with
    ``Retry-After``. ``retry_after`` is the number of seconds to wait (``None`` if Entra gave
    none); ``retry_at`` the same as a ``time.time()`` timestamp. While it lasts, requests to
    the same endpoint fail fast with this error instead of being sent.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None,
        status: int | None = None,
        source: str | None = None,
        scopes: Sequence[str] = (),
        aadsts: int | None = None,
        correlation_id: str | None = None,
        trace_id: str | None = None,
        failure: str | None = None,
    ) -> None:
        self.retry_after = retry_after
        self.retry_at = time.time() + retry_after if retry_after is not None else None
        self.status = status
        if retry_after is None:
            when = "retry later"
        elif retry_after >= 10:  # "retry in 3600 s", not "3.6e+03 s"
            when = f"retry in {retry_after:.0f} s"
        else:
            when = f"retry in {retry_after:.2g} s"
        # The answer's code when its body named one, else what a 429 usually is.
        why = f"AADSTS{aadsts}" if aadsts is not None else "a rate limit, or AADSTS90033 from Entra"
        # ``message`` names who throttles (Entra, or the host's managed identity endpoint).
        super().__init__(
            f"{message}: throttling (HTTP {status or 'error'}: {why}); {when}.",
            source=source,
            scopes=scopes,
            aadsts=aadsts,
            correlation_id=correlation_id,
            trace_id=trace_id,
            failure=failure if failure is not None else f"HTTP {status or 'error'}",
            error="temporarily_unavailable",
            fix="wait retry_after seconds before calling again (the library already retried "
            "where the wait was short); if it persists, reduce the request rate per app and "
            "tenant, and cache tokens (the default TokenChain does).",
        )


class EntraError(TokenAcquisitionError):
    """Entra answered with an error this library maps to no more specific class."""


class TokenVerificationError(EntraPassthroughError):
    """A token presented to a protected resource is not acceptable (HTTP 401).

    ``error`` is the RFC 6750 code for ``WWW-Authenticate``; ``reason`` is safe to log.
    """

    status_code = 401
    error = "invalid_token"

    def __init__(self, reason: str, *, fix: str | None = None) -> None:
        self.reason = reason
        super().__init__(reason, fix=fix)


class InsufficientScope(TokenVerificationError):
    """The token is valid but lacks a required scope or role (HTTP 403)."""

    status_code = 403
    error = "insufficient_scope"

    def __init__(
        self, reason: str, *, required: Sequence[str] = (), fix: str | None = None
    ) -> None:
        self.required = tuple(required)
        super().__init__(reason, fix=fix)


class SigningKeysUnavailable(TokenVerificationError):
    """The issuer's signing keys cannot be fetched, so no token can be verified (HTTP 503).

    The request is refused (fail closed), but the client's token may be fine: a 401 would make
    clients throw good tokens away.
    """

    status_code = 503
    error = "temporarily_unavailable"


_MAX_DESCRIPTION = 300


def _first_line(description: str) -> str:
    # Entra's description is "AADSTS65001: The user or administrator has not consented...\r\n
    # Trace ID: ... Correlation ID: ... Timestamp: ...". Keep the human part only, bounded.
    text = description.split("\r\n", 1)[0].split("\n", 1)[0].strip()
    return text[:_MAX_DESCRIPTION]


#: A line that echoes a token request's form (a gateway or proxy answering with what it got),
#: also URL-encoded once more (``client_secret%3D...``). Other shapes (a dict's repr, XML,
#: ``field: value``) have their secret values redacted (``_redact.redact``).
_CODE_IN_TEXT = re.compile(r"\s*AADSTS(\d{4,7})\b")
_FORM_ECHO = re.compile(
    r"(?i)\b(grant_type|client_id|client_secret|client_assertion|client_assertion_type|"
    r"requested_token_use|assertion|refresh_token|code_verifier|redirect_uri|scope)(=|%3D)"
)
_WORD = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_MAX_UNDECODED = 160


def safe_word(value: object) -> str | None:
    """A short identifier from an error body (``error``, ids), or ``None`` if it is not one."""
    text = str(value or "")
    return text if _WORD.fullmatch(text) else None


#: A request id as Entra writes them (a GUID; hex and dashes at most): anything else in a
#: ``correlation_id``/``trace_id`` field is a gateway's text, possibly a token or a key.
_REQUEST_ID = re.compile(r"[0-9A-Fa-f-]{8,64}")


def safe_request_id(value: object) -> str | None:
    """A ``correlation_id``/``trace_id`` from an error body when it looks like one (hex and
    dashes), else ``None``: it is shown in messages and spans, never redacted there."""
    text = str(value or "")
    return text if _REQUEST_ID.fullmatch(text) else None


def _undecoded_line(description: str) -> str:
    """The first line of a description the library cannot decode, safe to show: never a form
    echo, a JWT-shaped or long opaque value, nor a secret field's value; printable, bounded."""
    return safe_text(_first_line(description), _MAX_UNDECODED)


def safe_text(text: str, limit: int = 400) -> str:
    """Text from outside the library (a CLI's stderr, an endpoint's answer) made safe for a
    message: never a form echo, a JWT-shaped or long opaque value, nor a secret field's value;
    one printable line, bounded by ``limit``."""
    text = text[: limit * 8]  # bounded work on a huge text
    if _FORM_ECHO.search(text):
        return "(not shown: the text echoes the token request)"
    text = " ".join(redact(text).split())
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: AADSTS codes have 4 to 7 digits (as ``_CODE_IN_TEXT`` reads them from a description).
_CODE_RANGE = range(1000, 10_000_000)


def first_code(body: Mapping[str, Any]) -> int | None:
    """The first of ``error_codes`` when it can be an AADSTS code. The body is the endpoint's
    text: a bool, a negative or a 400-digit number is no code (and never reaches a message)."""
    codes = body.get("error_codes")
    if isinstance(codes, list) and codes:
        first = codes[0]
        if type(first) is int and first in _CODE_RANGE:
            return first
    return None


_CODE_ANYWHERE = re.compile(r"\bAADSTS(\d{4,7})\b")


def code_in_body(body: Mapping[str, Any]) -> int | None:
    """The AADSTS code an error body names: ``error_codes``, else the first ``AADSTSnnnn`` in
    its text, wherever the endpoint put it: Entra's ``error_description``, App Service's
    managed identity ``{"statusCode", "message"}``, Service Fabric's ``{"error": {"message"}}``,
    or MSAL's rewording of those (``"500, AADSTS500011: ..."``)."""
    code = first_code(body)
    if code is not None:
        return code
    nested = body.get("error")
    texts = [body.get("error_description"), body.get("message")]
    if isinstance(nested, Mapping):
        texts.append(nested.get("message"))
    for text in texts:
        code = code_in_text(text[:2000]) if isinstance(text, str) else None
        if code is not None:
            return code
    return None


def code_in_text(text: str) -> int | None:
    """The first ``AADSTSnnnn`` (4 to 7 digits) in a text: a 5,000-digit number is no code."""
    found = _CODE_ANYWHERE.search(text)
    return int(found.group(1)) if found is not None else None


#: AADSTS codes that need the user (MFA, conditional access) whatever ``error`` says beside
#: them: 50076/50079 MFA, 53003 blocked by conditional access.
INTERACTION_CODES = frozenset({50076, 50079, 53003})


def is_consent_required(body: Mapping[str, Any]) -> bool:
    """Whether ``error_from_entra(body)`` is a ``ConsentRequired`` (AADSTS65001 or suberror
    ``consent_required``): a source builds the consent link only then."""
    return first_code(body) == 65001 or body.get("suberror") == "consent_required"


#: MSAL's text for an App Service identity endpoint failure: "<statusCode>, <message>".
_MSAL_PLACEHOLDER = re.compile(r"(\d{3}), ")


def error_from_entra(
    body: Mapping[str, Any],
    *,
    source: str | None = None,
    scopes: Sequence[str] = (),
    consent_link: str | None = None,
    who: str = "Entra",
    fix: str | None = None,
    request: str = "the token request",
) -> TokenAcquisitionError:
    """Map an Entra error body (as MSAL returns it) to the matching typed error.

    ``who`` names the endpoint that answered (a managed identity endpoint is not Entra) and
    ``request`` what it refused (the token request, unless it was another);
    ``fix`` is the fix when the body carries no AADSTS code the library decodes.

    The body may not be Entra's (a proxy or gateway can answer, and echo the request): the
    description of a code the library does not decode is reduced to a redacted first line,
    and ``error``/``correlation_id``/``trace_id`` are kept only when they are short
    identifiers.
    """
    code = first_code(body)
    # Every field of the body is the endpoint's text (a proxy's, a gateway's): only short
    # identifiers are kept, and a description only as a redacted first line.
    error = safe_word(body.get("error"))
    suberror = safe_word(body.get("suberror"))
    correlation_id = safe_request_id(body.get("correlation_id"))
    trace_id = safe_request_id(body.get("trace_id"))
    raw_description = str(body.get("error_description") or "")
    if code is None:
        found = _CODE_IN_TEXT.match(raw_description)
        code = int(found.group(1)) if found else None
    entry: Aadsts | None = describe(code) if code is not None else None
    description = _undecoded_line(raw_description) if raw_description else ""
    label = error or "unknown error"
    placeholder = _MSAL_PLACEHOLDER.match(raw_description) if who != "Entra" else None
    if placeholder is not None and error == "invalid_scope":
        # MSAL reports every App Service identity endpoint failure as ``invalid_scope`` with
        # "<status>, <message>": the status is what happened, not a scope.
        label = f"HTTP {placeholder.group(1)}"
    what = (
        f"{who} refused {request}: {entry}: {entry.meaning}."
        if entry
        else (f"{who} refused {request}: {label}.")
    )
    if description and (entry is None or entry.name == "Unknown"):
        what = f"{what} {'It' if who != 'Entra' else who} said: {description}"
    reason = _assertion_reason(raw_description) if code == 700027 else None
    if reason is not None:
        # Entra's reason tells the causes of AADSTS700027 apart (a key never uploaded, or
        # one that expired): no secret in it, only the thumbprint and the key's dates.
        what = f"{what} Entra said: {reason}"
    common: dict[str, Any] = {
        "source": source,
        "scopes": scopes,
        "correlation_id": correlation_id,
        "trace_id": trace_id,
    }
    if is_consent_required(body):
        return ConsentRequired(what, link=consent_link, aadsts=code, **common)
    if error == "interaction_required" or code in INTERACTION_CODES:
        return InteractionRequired(
            what,
            claims=_claims_challenge(body.get("claims")),
            aadsts=code,
            suberror=suberror,
            **common,
        )
    cls: type[TokenAcquisitionError] = {
        50013: AssertionNotUsable,
        500131: AssertionNotUsable,
        500133: AssertionNotUsable,
        7000114: AssertionNotUsable,
        240002: AssertionNotUsable,
    }.get(code or 0, EntraError)
    # ``fix`` only here: a consent or an interaction carries its own way out (the link, the
    # claims; a source with no link gives ConsentRequired its own fix, as Agent ID does).
    own_fix = {"fix": fix} if fix is not None and entry is None else {}
    if reason is not None and "expired" in reason.lower():
        own_fix = {"fix": f"{EXPIRED_KEY_FIX} ({see('errors', 'aadsts700027')})"}
    return cls(what, aadsts=code, error=error, suberror=suberror, **common, **own_fix)


#: The longest claims challenge kept (``_claims_challenge``).
_MAX_CLAIMS = 8192


def _claims_challenge(raw: object) -> str | None:
    """The body's ``claims``, kept only as Entra sends a claims challenge: a JSON object in a
    string, bounded, with nothing secret-shaped in it. Anything else (a list, a number, a
    gateway's echo of the request) was kept as its ``str``, on the error for anyone to read and
    hand to the client."""
    if not isinstance(raw, str) or not raw or len(raw) > _MAX_CLAIMS:
        return None
    try:
        parsed = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(parsed, dict) or redact(raw) != raw:
        return None
    return raw


#: How to replace a client certificate (expired, or with a key Entra cannot use).
NEW_CERTIFICATE_FIX = (
    "create a new certificate with an RSA key (2048 bits or more), upload its public key to the "
    "app registration (Certificates & secrets) and point the certificate path "
    "(ENTRA_PASSTHROUGH_CLIENT_CERTIFICATE_PATH, AZURE_CLIENT_CERTIFICATE_PATH or "
    "client_certificate=) at it"
)
#: The fix for AADSTS700027 when Entra's reason is "The key used is expired".
EXPIRED_KEY_FIX = (
    f"the app's certificate (the key Entra has for it) has expired: {NEW_CERTIFICATE_FIX}"
)

_REASON = re.compile(r"\[Reason - ([^\]\r\n]{1,600})\]")
_THUMBPRINT = re.compile(r"Thumbprint of key used by client: '([0-9A-Fa-f]{40})'")


def _assertion_reason(description: str) -> str | None:
    """Entra's ``[Reason - ...]`` of an AADSTS700027 description, bounded and redacted, with
    the SHA-1 thumbprint kept (a public hash of the certificate, which the redaction would
    hide as a long opaque value): ``None`` when there is none."""
    found = _REASON.search(description[:4000])
    if found is None:
        return None
    text = safe_text(found.group(1), 300)
    thumbprint = _THUMBPRINT.search(found.group(1))
    if thumbprint is not None:
        text = text.replace(
            "Thumbprint of key used by client: '[redacted]'",
            f"Thumbprint of key used by client: '{thumbprint.group(1)}'",
            1,
        )
    return f"[Reason - {text}]"
