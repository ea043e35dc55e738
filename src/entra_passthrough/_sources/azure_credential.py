"""``AzureCredential``: any azure-identity credential (sync or aio) with a declared kind."""

from __future__ import annotations

import inspect
import math
import re
import secrets
import time
from collections.abc import Mapping
from typing import Any

from .. import _env
from .._errors import ConfigurationError, EntraError, SourceUnavailable, Throttled, safe_text
from .._http import retry_after_seconds
from .._msal import WorkerPool, normalize_authority_host
from .._types import IdentityKind, TokenRequest, TokenResult, token_exp
from ._base import MAX_LIFETIME

#: azure-identity's tenant id characters (``validate_tenant_id``), ASCII only.
_TENANT = re.compile(r"[A-Za-z0-9.-]+")

_NETWORK_FIX = (
    "check the network path to the authority host (AZURE_AUTHORITY_HOST; a proxy: HTTPS_PROXY / "
    "NO_PROXY) or to the managed identity endpoint; nothing to configure if it is transient"
)


#: The most characters of azure-identity's text an unavailable credential's reason keeps.
_REASON_LIMIT = 200


def _unavailable_text(exc: Exception) -> str:
    """``CredentialUnavailableError: <its first line>``, through the library's redaction
    (``safe_text``): azure-identity's text may quote what an endpoint answered, a token
    included (MSAL words a Machine Learning answer it cannot read as the body's repr)."""
    text = str(getattr(exc, "message", "") or exc).strip()
    first = text.splitlines()[0] if text else ""
    said = safe_text(first, _REASON_LIMIT) if first else ""
    return f"{type(exc).__name__}: {said}" if said else type(exc).__name__


class AzureCredential:
    """Wrap an azure-identity credential as a source; *you* declare whose identity it is
    (``app`` or ``developer``: a fixed credential is never the caller's ``user`` identity).

    Sync credentials run in a bounded worker pool, aio credentials are awaited (``get_token``
    on an aio credential raises: use the async path). ``CredentialUnavailableError`` means
    "not applicable" (the chain tries the next source; its first line, redacted, is the reason
    the chain reports); any other
    ``ClientAuthenticationError`` is a typed error. The credential is one fixed identity, so
    results are cached per source, not per caller: never wrap a per-user credential in a
    chain that serves several users.

    >>> from azure.identity import ClientSecretCredential
    >>> app = AzureCredential(ClientSecretCredential(tenant, client_id, secret), name="app")
    >>> chain = TokenChain([app], policy=Policy.APP_ONLY)
    """

    def __init__(
        self,
        credential: Any,
        *,
        kind: IdentityKind | str = IdentityKind.APP,
        name: str = "azure_credential",
        max_workers: int = 4,
    ) -> None:
        get_token = getattr(credential, "get_token", None)
        if not callable(get_token):
            raise ConfigurationError("AzureCredential needs an object with get_token().")
        self.credential = credential
        self.kind = IdentityKind(kind)
        if self.kind is IdentityKind.USER:
            # One fixed identity, cached per source and not per caller: as "user" it would serve
            # one person's token to every caller, and to callers-less (stale) contexts.
            raise ConfigurationError(
                "AzureCredential cannot declare kind 'user': an azure-identity credential is "
                "one fixed identity, not the identity of whoever calls.",
                fix="use OnBehalfOf or DelegatedConsent for the end user; kind='app' for the "
                "agent's own identity, kind='developer' for a locally signed-in account.",
            )
        self.name = name
        self.is_async = inspect.iscoroutinefunction(get_token)
        self._pool = WorkerPool(max_workers=max_workers, name=f"entra-{name}")
        self._unavailable: str | None = None
        # The credential's identity is opaque to us: a per-instance tag keeps two sources of the
        # same name and credential class apart in a TokenCache shared between chains.
        self._partition = (type(credential).__name__, secrets.token_hex(8))

    def __repr__(self) -> str:
        return (
            f"AzureCredential(name={self.name!r}, kind={self.kind.value}, "
            f"credential={type(self.credential).__name__})"
        )

    def close(self) -> None:
        self._pool.close()

    def explain(self, request: TokenRequest) -> str:
        return self.unavailable_reason() or "not applicable"

    def unavailable_reason(self) -> str | None:
        """Why the credential's last call did not apply: "not applicable (<azure-identity's
        exception type>: <the first line of its text, redacted, bounded>)", so that a missing
        environment is told from an endpoint that answered nonsense; ``None`` after a token."""
        reason = self._unavailable
        return f"not applicable ({reason})" if reason else None

    def cache_partition(self, request: TokenRequest) -> tuple[str, ...] | None:
        return self._partition

    def _call_sync(self, request: TokenRequest) -> TokenResult | None:
        try:
            token = self.credential.get_token(*request.scopes, claims=request.claims)
        except Exception as exc:
            self._failed(exc, request)
            return None
        return self._result(token)

    def get_token(self, request: TokenRequest) -> TokenResult | None:
        if self.is_async:
            raise SourceUnavailable(
                "an azure-identity aio credential cannot serve the sync get_token(); use "
                "get_token_async (or wrap the sync credential).",
                source=self.name,
                scopes=request.scopes,
            )
        return self._call_sync(request)

    async def get_token_async(self, request: TokenRequest) -> TokenResult | None:
        if not self.is_async:
            return await self._pool.run(self._call_sync, request)
        try:
            token = await self.credential.get_token(*request.scopes, claims=request.claims)
        except Exception as exc:
            self._failed(exc, request)
            return None
        return self._result(token)

    def _result(self, token: Any) -> TokenResult:
        self._unavailable = None
        expires_on = _bounded_expiry(token.token, token.expires_on)
        if not math.isfinite(expires_on):
            raise SourceUnavailable(
                f"{type(self.credential).__name__} returned a token whose expires_on is not a "
                f"number of seconds ({type(token.expires_on).__name__}); it was not cached "
                "and not sent.",
                source=self.name,
                failure="malformed token answer",
                fix="a credential's get_token must return an AccessToken whose expires_on is "
                "the token's expiry in epoch seconds (azure.core.credentials.AccessToken); "
                "check a custom or wrapped credential.",
            )
        return TokenResult(
            token=token.token, expires_on=expires_on, kind=self.kind, source=self.name
        )

    def _failed(self, exc: Exception, request: TokenRequest) -> None:
        from azure.core.exceptions import ClientAuthenticationError
        from azure.identity import CredentialUnavailableError

        if isinstance(exc, CredentialUnavailableError):
            self._unavailable = _unavailable_text(exc)
            return None
        what = type(self.credential).__name__
        if isinstance(exc, ClientAuthenticationError):
            # azure-identity raises it for Entra's answers and for the transport alike: only an
            # answer that is not a throttle or a server failure is Entra's verdict. The aio
            # credentials keep the HTTP response; the MSAL-based sync ones only its text.
            text = str(getattr(exc, "message", "") or exc)
            match = re.search(r"AADSTS(\d+)", text)
            response = getattr(exc, "response", None)
            status = getattr(response, "status_code", None)
            if not isinstance(status, int):
                http = re.search(r"HTTP Error: (\d{3})", text)
                status = int(http.group(1)) if http else None
            if status is None and match is None:
                raise SourceUnavailable(
                    f"{what} could not reach the token endpoint (no answer).",
                    source=self.name,
                    scopes=request.scopes,
                    fix=_NETWORK_FIX,
                ) from None
            code = int(match.group(1)) if match else None
            if status == 429 or (status or 0) >= 500 or (status is None and code == 90033):
                # 90033 with no status: MSAL's text of a transient failure (a 429 or a 5xx).
                wait = retry_after_seconds(getattr(response, "headers", None) or {})
                if status == 429 or wait is not None:
                    raise Throttled(
                        f"{what}: the token endpoint",
                        retry_after=wait,
                        status=status,
                        source=self.name,
                        scopes=request.scopes,
                    ) from None
                raise SourceUnavailable(
                    f"{what}: the token endpoint failed "
                    f"({f'HTTP {status}' if status else 'AADSTS90033, transient'}).",
                    source=self.name,
                    scopes=request.scopes,
                    fix="nothing to configure if it is transient (azure-identity retried "
                    "it); check the authority host if it persists.",
                ) from None
            # azure-identity messages carry Entra's description; keep only the AADSTS code.
            raise EntraError(
                f"{what} failed to authenticate.",
                source=self.name,
                scopes=request.scopes,
                aadsts=code,
            ) from None
        from azure.core.exceptions import ServiceRequestError, ServiceResponseError

        network = isinstance(exc, ServiceRequestError | ServiceResponseError)
        raise SourceUnavailable(
            f"{what}.get_token failed ({type(exc).__name__}).",
            source=self.name,
            scopes=request.scopes,
            fix=_NETWORK_FIX if network else None,
        ) from None

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        kind: IdentityKind | str = IdentityKind.APP,
        name: str = "azure_credential",
    ) -> AzureCredential:
        """An app registration's client credentials from azure-identity's variables
        (``AZURE_TENANT_ID``, ``AZURE_CLIENT_ID``, ``AZURE_CLIENT_SECRET`` or
        ``AZURE_CLIENT_CERTIFICATE_PATH`` with ``AZURE_CLIENT_CERTIFICATE_PASSWORD`` and
        ``AZURE_CLIENT_SEND_CERTIFICATE_CHAIN``, ``AZURE_ADDITIONALLY_ALLOWED_TENANTS``,
        ``AZURE_AUTHORITY_HOST``), as ``kind`` (app), the way azure-identity's
        ``EnvironmentCredential`` reads them.

        Deliberately not ``DefaultAzureCredential``: it may end up as the Azure CLI's signed-in
        developer, which is not an app identity.
        """
        from azure.identity import CertificateCredential, ClientSecretCredential

        env = _env.environ_or(environ)
        # No hint about azure-identity's variables: here they are the ones read (the hint
        # says this library reads AZURE_CLIENT_ID only as the managed identity).
        tenant = _env.require(env, "AZURE_TENANT_ID", what="the app's tenant", app_hint=False)
        client = _env.require(
            env, "AZURE_CLIENT_ID", what="the app registration (its client id)", app_hint=False
        )
        # Checked here, with the library's rules, so that azure-identity's constructors raise
        # no bare ValueError for them (an app catching ConfigurationError at start-up would not
        # catch it) and the certificate branch's ValueError can only be the certificate's.
        if not _TENANT.fullmatch(tenant):
            raise ConfigurationError(
                "AZURE_TENANT_ID is not a tenant id: letters, digits, '-' and '.' only.",
                fix="set AZURE_TENANT_ID to the Directory (tenant) ID (a GUID) or the tenant's "
                "domain (contoso.onmicrosoft.com).",
            )
        options: dict[str, Any] = {}
        authority = _env.get(env, "AZURE_AUTHORITY_HOST")
        if authority:
            options["authority"] = normalize_authority_host(authority, what="AZURE_AUTHORITY_HOST")
        extra_tenants = _env.get_list(env, "AZURE_ADDITIONALLY_ALLOWED_TENANTS")
        if extra_tenants:
            options["additionally_allowed_tenants"] = list(extra_tenants)
        secret = _env.get(env, "AZURE_CLIENT_SECRET")
        cert = _env.get(env, "AZURE_CLIENT_CERTIFICATE_PATH")
        credential: Any
        if secret:
            try:
                credential = ClientSecretCredential(tenant, client, secret, **options)
            except ValueError:
                # Whatever else azure-identity refuses: typed, its text not shown.
                raise ConfigurationError(
                    "azure-identity refused the client secret credential's settings.",
                    fix="check AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_AUTHORITY_HOST and "
                    "AZURE_ADDITIONALLY_ALLOWED_TENANTS.",
                ) from None
        elif cert:
            # Read before the try: its ConfigurationError is a ValueError, and must not turn
            # into "the certificate cannot be opened".
            send_chain = _env.get_bool(env, "AZURE_CLIENT_SEND_CERTIFICATE_CHAIN")
            try:
                credential = CertificateCredential(
                    tenant,
                    client,
                    certificate_path=cert,
                    password=_env.get(env, "AZURE_CLIENT_CERTIFICATE_PASSWORD"),
                    send_certificate_chain=send_chain,
                    **options,
                )
            except (ValueError, TypeError, OSError):
                # azure-identity opens the key now. A wrong password on an encrypted PKCS#8 key
                # surfaces as "bad decrypt" or, when the garbage happens to unpad, as an ASN.1
                # parse error: either way the fix is the same, so one typed error names both.
                raise ConfigurationError(
                    "the client certificate at AZURE_CLIENT_CERTIFICATE_PATH cannot be opened: "
                    "the file is not a PEM or PFX with a private key, or its password is wrong.",
                    fix="check the file and AZURE_CLIENT_CERTIFICATE_PASSWORD.",
                ) from None
        else:
            raise ConfigurationError(
                "AzureCredential.from_env needs AZURE_CLIENT_SECRET or "
                "AZURE_CLIENT_CERTIFICATE_PATH.",
                fix="set one of them, or build AzureCredential(<any credential>) in code.",
            )
        return cls(credential, kind=kind, name=name)


def _bounded_expiry(token: object, expires_on: object) -> float:
    """The expiry a credential's ``AccessToken`` reports, as the MSAL-based sources bound
    theirs (``result_from_msal``): never past the token's own ``exp`` (a credential that
    reports milliseconds, or a later expiry than the token's, had the token served expired,
    and cached for decades), at most a day from now. One that is missing or not a number
    (``None``, a boolean, text) is NaN (``_result`` refuses it, typed: ``float(None)`` was a
    bare ``TypeError``)."""
    try:
        value = float(expires_on) if not isinstance(expires_on, bool) else math.nan  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        value = math.nan
    if not math.isfinite(value):
        return value
    value = min(value, time.time() + MAX_LIFETIME)
    exp = token_exp(token) if isinstance(token, str) else None
    return value if exp is None else min(value, exp)
