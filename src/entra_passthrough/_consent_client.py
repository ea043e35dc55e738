"""The consent app's MSAL client, shared by ``DelegatedConsent`` and the consent broker.

One confidential client (the library's own app registration for delegated consent), one MSAL
app per authority tenant (the configured one; an allow-listed tenant a verified user of which
signs in at home: ``user_tenant``) with MSAL's token and HTTP caches neutralised (``_msal``),
every blocking call in a dedicated bounded worker pool. ID tokens are verified here too
(signature via the tenant's JWKS, iss, aud, nonce, exp, tid), with PyJWT, because MSAL only
decodes them.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import jwt
import msal
import requests

from ._checks import TENANTLESS, caller_tenant
from ._credential import AppCredential
from ._env import check_url_host
from ._errors import ConfigurationError, TokenVerificationError
from ._http import OAuthBodies
from ._jwks import KeySet, KeySource, check_fetch_url, read_bounded
from ._msal import (
    DiscoveryOnlyHttpCache,
    NullTokenCache,
    WorkerPool,
    client_credential,
)
from ._origins import is_loopback, shown_url

#: Scopes MSAL adds itself and refuses to be given.
RESERVED_SCOPES = frozenset({"openid", "profile", "offline_access"})
_JWKS_TTL = 3600.0
#: The consent app's bound on each of its requests (seconds): to connect, per read, and the
#: deadline over the whole exchange (``_http.OAuthBodies``); an async refresh waiting for one of
#: the pool's workers gives up at it too (``DelegatedConsent``).
HTTP_TIMEOUT = 15.0
_JWKS_MIN_REFETCH = 30.0
#: A tenant id or domain as it may stand in an authority's path (``user_tenant``).
#: A domain name (``contoso.onmicrosoft.com``): labels of letters, digits and hyphens.
_DOMAIN = re.compile(r"(?=.{1,253}$)([A-Za-z0-9-]{1,63}\.)+[A-Za-z0-9-]{2,63}")
_TENANT_SEGMENT = re.compile(r"[a-z0-9][a-z0-9.-]{0,252}")
_PUBLIC_HOSTS = frozenset(
    {
        "login.microsoftonline.com",
        "login.microsoftonline.us",
        "login.chinacloudapi.cn",
        "login.partner.microsoftonline.cn",
    }
)


class IdTokenError(ValueError):
    """The id token is not acceptable. The message names the check, never the token."""


#: What to write instead, per URL ``check_https_url`` is given.
_URL_FIX = {
    "broker_url": "set broker_url (ENTRA_PASSTHROUGH_CONSENT_BROKER_URL) to the consent broker's "
    "public address alone, e.g. https://agent.contoso.com/consent.",
    "redirect URI": "use the broker's callback URL as registered on the consent app, e.g. "
    "https://agent.contoso.com/consent/callback.",
}


def check_https_url(url: str, *, what: str) -> str:
    """A browser-facing URL of the consent flow: HTTPS (HTTP only on loopback), a host, no user
    info, query or fragment (hosts reject non-HTTPS consent links; a query would be appended to;
    a password would be in every consent link shown to users). The refusal shows the URL's
    origin at most: its user info, path, query or fragment may hold a secret."""
    fix = _URL_FIX.get(what, f"set {what} to an https:// URL with no user info, query or fragment.")
    shown = shown_url(url, path=False)
    # Another scheme's "host" may be anything pasted there (a secret): not shown.
    if shown is None or not shown.startswith(("https://", "http://")):
        raise ConfigurationError(
            f"{what} must be an https:// URL with a host (and a numeric port, if any).", fix=fix
        )
    check_url_host(url, what)  # a host that cannot be a host name: every link unusable
    parts = urlsplit(url)
    named = f"{what} ({shown})"
    if parts.scheme != "https" and not (
        parts.scheme == "http" and is_loopback(parts.hostname or "")
    ):
        raise ConfigurationError(f"{named} must be HTTPS (HTTP only on loopback).", fix=fix)
    if "@" in parts.netloc:
        raise ConfigurationError(f"{named} must have no user name or password.", fix=fix)
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise ConfigurationError(f"{named} must have no query or fragment.", fix=fix)
    return url


class ConsentClient:
    """MSAL for the consent app. Thread-safe; every method here is blocking (run it in
    ``self.pool``)."""

    def __init__(
        self,
        credential: AppCredential,
        *,
        http_client: Any,
        max_workers: int,
        allowed_tenants: Sequence[str] | None = None,
        owner: str = "ConsentBroker",
        variable: str | None = None,
    ) -> None:
        self.credential = credential
        self.client_id = credential.client_id
        self.tenant_id = credential.tenant_id
        self.authority_host = credential.authority_host
        if isinstance(allowed_tenants, str):
            raise ConfigurationError(
                "allowed_tenants must be a list of tenant ids, not one string",
                fix='write ["<tenant id>"] (a JSON list in broker.json)',
            )
        #: the tenants whose users may consent, lower case; none given: the consent app's own
        #: tenant, however it is spelled (a domain name is matched through discovery's issuer)
        self.allowed_tenants = tuple(t.strip().lower() for t in allowed_tenants or ()) or (
            self.tenant_id.lower(),
        )
        own = self.tenant_id.lower()
        for entry in allowed_tenants or ():
            # Each entry is compared with a verified caller's tid (a GUID). Only the consent
            # app's own tenant is also matched by name (its discovery document's issuer names
            # its GUID: ``_tenant_allowed``); another tenant's domain matched no caller: its
            # members got a dead link to the configured tenant's sign-in (AADSTS50020), forever.
            if isinstance(entry, str) and (entry.strip().lower() != own or own in TENANTLESS):
                if _DOMAIN.fullmatch(entry.strip()):
                    named = f"{owner}: an entry of allowed_tenants" + (
                        f" ({variable})" if variable else ""
                    )
                    raise ConfigurationError(
                        f"{named} is a domain name: entries are compared with a verified "
                        "caller's tid claim (the tenant's GUID), so it matches no caller. Only "
                        "the consent app's own tenant may be listed by domain, written as its "
                        "tenant id is configured (matched through discovery).",
                        fix="list the tenant's Directory (tenant) ID, a GUID (Entra admin "
                        "center > Overview; `entra-passthrough doctor` prints it for a domain), "
                        "or its domain exactly as the consent app's tenant id is written.",
                    )
                caller_tenant(
                    entry.strip(),
                    what="allowed_tenants",
                    variable=variable,
                    owner=owner,
                    entry=True,
                )
        self._credential = client_credential(credential)
        self._http = http_client
        self.pool = WorkerPool(max_workers=max_workers, name="entra-passthrough-consent")
        self._app: Any = None  # the configured tenant's
        #: allow-listed tenants' own MSAL apps and discovery documents (``user_tenant``): at
        #: most one per entry of ``allowed_tenants``
        self._tenant_apps: dict[str, Any] = {}
        self._tenant_oidc: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        # The access-token verifier's key cache: single-flight refresh, one rate-limited refetch
        # on an unknown kid, stale keys kept when a refresh fails, RSA signing keys only.
        self._keys = KeySet(
            sync_http_client=self._http if self._http is not None else requests,
            ttl=_JWKS_TTL,
            min_refetch_interval=_JWKS_MIN_REFETCH,
        )
        self._oidc: dict[str, Any] | None = None

    @property
    def authority(self) -> str:
        """The configured tenant's authority."""
        return f"{self.authority_host}/{self.tenant_id}"

    def authority_for(self, tenant: str | None) -> str:
        """The authority of ``tenant`` (from ``user_tenant``), ``None``: the configured one."""
        return self.authority if tenant is None else f"{self.authority_host}/{tenant}"

    def user_tenant(self, kind: str | None, tid: str | None) -> str | None:
        """The tenant whose authority signs a user in, redeems the code and refreshes the
        user's grant: the user's own tenant when it is *verified* (an ``entra`` key: tid+oid of
        a verified token; the grant of one, whose tid the broker checked against it) and on
        ``allowed_tenants`` (an entry of it, as listed), else ``None`` (the configured tenant).

        A member of a second allowed tenant is unknown to the configured tenant's authority
        (AADSTS50020), and a guest verified in the resource tenant must sign in there (at
        ``organizations`` Entra signs them in at home, as another user): what ``OnBehalfOf``
        does with each caller's own tenant. A platform user id's tenant is unverified (the
        request's token), so it never chooses the authority: fail closed."""
        if kind != "entra" or not isinstance(tid, str):
            return None
        tenant = tid.strip().lower()
        if (
            tenant not in self.allowed_tenants
            or tenant == self.tenant_id.lower()
            or tenant in TENANTLESS  # (names no tenant: never a user's own)
            or not _TENANT_SEGMENT.fullmatch(tenant)
        ):
            return None
        return tenant

    def app(self, tenant: str | None = None) -> Any:
        """The MSAL app of ``tenant``'s authority (``user_tenant``); ``None``: the configured
        tenant's."""
        if tenant is not None and tenant not in self.allowed_tenants:  # never any other
            raise ValueError("not an allowed tenant")
        with self._lock:
            app = self._app if tenant is None else self._tenant_apps.get(tenant)
            if app is None:
                host = self.authority_host.split("://", 1)[1].split("/", 1)[0].lower()
                app = msal.ConfidentialClientApplication(
                    self.client_id,
                    client_credential=self._credential,
                    authority=self.authority_for(tenant),
                    instance_discovery=host in _PUBLIC_HOSTS,
                    # Every token answer with a safe ``error`` (one malformed answer would
                    # otherwise stop every later request of this app: ``OAuthBodies``), each
                    # request bounded by one deadline, shorter than a refresh lease
                    # (delegated.LEASE_SECONDS), and a 429's Retry-After honoured for every
                    # user of the app (the process-wide throttle), never retried.
                    http_client=OAuthBodies(self._http, timeout=HTTP_TIMEOUT),
                    token_cache=NullTokenCache(),
                    http_cache=DiscoveryOnlyHttpCache(),
                )
                if tenant is None:
                    self._app = app
                else:
                    self._tenant_apps[tenant] = app
            return app

    # --- the flows ---------------------------------------------------------------------------
    def refresh(
        self,
        refresh_token: str,
        scopes: Sequence[str],
        claims: str | None,
        tenant: str | None = None,
    ) -> dict[str, Any]:
        """Redeem a refresh token at ``tenant``'s authority (``user_tenant`` of the grant: a
        refresh token is redeemed in the tenant that issued it)."""
        kwargs: dict[str, Any] = {}
        if claims:
            kwargs["data"] = {"claims": claims}
        result: dict[str, Any] = self.app(tenant).acquire_token_by_refresh_token(
            refresh_token, [s for s in scopes if s not in RESERVED_SCOPES], **kwargs
        )
        return result

    def initiate(
        self,
        *,
        scopes: Sequence[str],
        redirect_uri: str,
        state: str,
        login_hint: str | None,
        domain_hint: str | None,
        claims: str | None,
        prompt: str | None = None,
        tenant: str | None = None,
    ) -> dict[str, Any]:
        flow: dict[str, Any] = self.app(tenant).initiate_auth_code_flow(
            [s for s in scopes if s not in RESERVED_SCOPES],
            redirect_uri=redirect_uri,
            state=state,
            prompt=prompt,
            login_hint=login_hint,
            domain_hint=domain_hint,
            claims_challenge=claims,
            # The code comes back in a POST body, not in the URL (browser history, logs,
            # referrers): RFC 9700 section 4.3.1, and MSAL warns about anything else.
            response_mode="form_post",
        )
        if "code_verifier" not in flow or "nonce" not in flow:
            raise ConfigurationError("MSAL did not start a PKCE flow (unexpected MSAL version).")
        return flow

    def redeem(
        self, flow: dict[str, Any], response: Mapping[str, str], tenant: str | None = None
    ) -> dict[str, Any]:
        """Redeem the code with the flow's PKCE verifier, at the authority of the sign-in
        (``tenant``). MSAL checks state and nonce too; it raises ``ValueError`` on a mismatch."""
        result: dict[str, Any] = self.app(tenant).acquire_token_by_auth_code_flow(
            dict(flow), dict(response)
        )
        return result

    def logout_url(self, post_logout_redirect_uri: str | None) -> str:
        url = f"{self.authority}/oauth2/v2.0/logout"
        if post_logout_redirect_uri:
            from urllib.parse import urlencode

            url += "?" + urlencode({"post_logout_redirect_uri": post_logout_redirect_uri})
        return url

    # --- id token verification --------------------------------------------------------------
    def _discovery(self, tenant: str | None = None) -> dict[str, Any]:
        """The OpenID configuration (issuer, jwks_uri) of ``tenant``'s authority (``None``: the
        configured tenant's), fetched once."""
        with self._lock:
            known = self._oidc if tenant is None else self._tenant_oidc.get(tenant)
            if known is not None:
                return known
        session = self._http if self._http is not None else requests
        # One deadline for the whole answer and a streamed size cap, as for the signing keys:
        # ``timeout=`` is per read, and a body trickling in (or endless) would hold the
        # callback, or fill memory, for as long as it came.
        # Its failures (a status other than 200, too large, past the deadline) are the
        # identity provider's, not the sign-in's: the broker answers 503, start again.
        url = f"{self.authority_for(tenant)}/v2.0/.well-known/openid-configuration"
        data = json.loads(read_bounded(session, url, time.monotonic() + HTTP_TIMEOUT))
        if not isinstance(data, dict) or not isinstance(data.get("jwks_uri"), str):
            raise ValueError("discovery document has no jwks_uri")
        check_fetch_url(data["jwks_uri"], what="jwks_uri")
        with self._lock:
            if tenant is None:
                self._oidc = data
            else:
                self._tenant_oidc[tenant] = data
        return data

    def _keys_for(self, kid: str, oidc: Mapping[str, Any]) -> tuple[Any, ...]:
        """Every key published under ``kid`` (one, unless the document repeats the kid: a
        gateway merging key sets), in the document's order."""
        try:
            return self._keys.get_keys(KeySource(str(oidc["jwks_uri"])), kid)
        except TokenVerificationError:  # unknown kid (after one rate-limited refetch)
            raise IdTokenError("the id token's signing key is not in the tenant's JWKS") from None

    def _tenant_allowed(self, tid: str, oidc: Mapping[str, Any]) -> bool:
        if tid.lower() in self.allowed_tenants:
            return True
        if self.tenant_id.lower() not in self.allowed_tenants:
            return False
        # The consent app's own tenant is allowed (by default, or listed as it is configured),
        # spelled as a domain: its discovery document's issuer names it by id
        # (``https://login.microsoftonline.com/<tid>/v2.0``). A tenant-less authority's issuer
        # is a template, which names none.
        issuer = str(oidc.get("issuer", ""))
        if "{tenantid}" in issuer:
            return False
        segments = urlsplit(issuer).path.strip("/").split("/")
        return bool(segments) and segments[0].lower() == tid.lower()

    def verify_id_token(
        self, id_token: str, *, flow_nonce: str, tenant: str | None = None
    ) -> dict[str, Any]:
        """Signature (JWKS), issuer, audience (this client), expiry, nonce, tenant; the issuer
        is that of the sign-in's authority (``tenant``: ``user_tenant``, ``None`` the
        configured tenant's)."""
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.PyJWTError as exc:
            raise IdTokenError("the id token is not a JWT") from exc
        kid = header.get("kid")
        if header.get("alg") != "RS256" or not isinstance(kid, str):
            raise IdTokenError("the id token is not RS256 with a kid")
        oidc = self._discovery(tenant)
        keys = self._keys_for(kid, oidc)
        for index, key in enumerate(keys):
            try:
                claims: dict[str, Any] = jwt.decode(
                    id_token,
                    key,
                    algorithms=["RS256"],
                    audience=self.client_id,
                    options={"require": ["exp", "iat", "iss", "aud", "tid", "oid", "nonce"]},
                    leeway=60,
                )
                break
            except jwt.InvalidSignatureError as exc:
                if index + 1 < len(keys):
                    continue  # another key under the same kid may be the one that signed
                raise IdTokenError(f"the id token does not verify ({type(exc).__name__})") from exc
            except jwt.PyJWTError as exc:
                raise IdTokenError(f"the id token does not verify ({type(exc).__name__})") from exc
        tid = claims.get("tid")
        if not isinstance(tid, str) or not self._tenant_allowed(tid, oidc):
            raise IdTokenError("the id token's tenant is not allowed")
        if tenant is not None and tid.lower() != tenant:
            raise IdTokenError("the id token's tenant is not the tenant signed in to")
        expected_iss = str(oidc.get("issuer", "")).replace("{tenantid}", tid)
        if claims.get("iss") != expected_iss:
            raise IdTokenError("the id token's issuer is not the tenant's issuer")
        # MSAL sends sha256(nonce) to the authorize endpoint and keeps the nonce itself.
        expected_nonce = hashlib.sha256(flow_nonce.encode("ascii")).hexdigest()
        if claims.get("nonce") != expected_nonce:
            raise IdTokenError("the id token's nonce does not match this sign-in")
        if not isinstance(claims.get("oid"), str):
            raise IdTokenError("the id token has no oid")
        return claims
