"""Server side: verify an Entra access token presented to a protected resource.

``JwtVerifier`` checks, in this order, and fails closed at the first problem:

1. shape: a string under 16 KiB, three base64url JSON segments, header ``alg`` exactly RS256
   (``none``/HS256 key confusion are refused before any key is looked up) and a ``kid``;
2. tenant (unverified ``tid``) on the allow-list *before* any network I/O, so forged tokens for
   random tenants cost nothing;
3. signature with the issuer's published key (``_jwks``: cached, one rate-limited refetch on an
   unknown ``kid``), ``exp``/``nbf``/``iat`` with ``leeway``, ``aud`` among ``audiences``;
4. the verified ``tid`` on the allow-list, ``iss`` exactly the issuer of that tenant for the
   token's ``ver`` (v1 ``https://sts.windows.net/{tid}/``, v2 ``{authority}/{tid}/v2.0``), the
   client claim of that version (v1 ``appid``, v2 ``azp``), an ``oid``, no ``cnf`` (a token
   bound to a proof-of-possession key is not a bearer token);
5. authorization: delegated tokens (``scp``) need *all* ``required_scopes``; app-only tokens (no
   ``scp``) are refused unless ``allow_app_only`` and then need *all* ``required_roles`` and
   a tenant of ``app_only_tenants`` (``required_roles`` applies to delegated tokens too).
   Failing here is ``InsufficientScope`` (HTTP 403); everything before is
   ``TokenVerificationError`` (HTTP 401).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, cast
from urllib.parse import urlsplit

import jwt
from jwt import exceptions as jwt_errors

from ._checks import seconds
from ._drive import require_asyncio
from ._errors import GUID, ConfigurationError, InsufficientScope, TokenVerificationError
from ._jwks import (
    AsyncGetter,
    KeySet,
    KeySource,
    SyncGetter,
    check_authority_host,
    check_fetch_url,
)
from ._jwt import (
    MAX_TOKEN_BYTES,
    JwtDecodeError,
    check_time_claims,
    decode_unverified,
    fingerprint,
)

PUBLIC_AUTHORITY = "https://login.microsoftonline.com"

#: v1 token issuers per authority host, where they differ from ``{authority}/{tid}/``.
_V1_ISSUERS = {
    "login.microsoftonline.com": "https://sts.windows.net/{tid}/",
    "login.windows.net": "https://sts.windows.net/{tid}/",
    "login.chinacloudapi.cn": "https://sts.chinacloudapi.cn/{tid}/",
}
_REQUIRED = ["exp", "iat", "aud", "iss", "tid"]
#: Where to find a tenant's GUID (for ``tenants=`` and ``auth_settings(tenant_id=)``).
TENANT_GUID_FIX = (
    "use the Directory (tenant) ID, a GUID: `az account show --query tenantId`, or Entra admin "
    "center > Overview > Tenant ID."
)
_MAX_KID = 128


def names(value: object, *, what: str, example: str, spaces: bool = False) -> tuple[str, ...]:
    """A configured list of names (scopes, roles, tenants, issuers) as a tuple, or a
    ``ConfigurationError`` naming ``what``: one string (it was split into characters: every
    caller refused, one-letter scopes advertised), an empty, blank or non-string entry
    (``""`` silently required nothing), or an entry holding whitespace unless ``spaces`` (a
    scope or app role never does: it would match no token). ``None`` is no names."""
    if value is None:
        return ()
    if isinstance(value, str | bytes):
        raise ConfigurationError(
            f"{what} must be a list of names, not one string.",
            fix=f"pass a list, one name per entry: {what}=[{example!r}].",
        )
    try:
        items: tuple[object, ...] = tuple(cast("Iterable[object]", value))
    except TypeError:
        raise ConfigurationError(
            f"{what} must be a list of names ({type(value).__name__} given).",
            fix=f"pass a list, one name per entry: {what}=[{example!r}].",
        ) from None
    for item in items:
        if not isinstance(item, str):
            why = f"an entry that is not a string ({type(item).__name__})"
        elif not item.strip():
            why = "an empty or blank entry"
        elif not spaces and any(c.isspace() for c in item):
            why = "an entry holding whitespace (no name does)"
        else:
            continue
        raise ConfigurationError(
            f"{what} has {why}.",
            fix=f"pass one name per entry, each a non-empty string: {what}=[{example!r}].",
        )
    return cast("tuple[str, ...]", items)


def default_app_id_uri(audiences: Sequence[str]) -> str:
    """The API's Application ID URI among a verifier's ``audiences`` (the first that is a URI,
    else ``api://<the first>``): what a short scope name (``access_as_user``) is qualified
    with in a challenge, since Entra reads a scope without a resource as Microsoft Graph's."""
    for aud in audiences:
        if "://" in aud:
            return aud
    return f"api://{audiences[0]}"


def _show(value: object) -> str:
    """A claim from an *unverified* token, bounded and escaped before it goes into a message."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """The verified identity in an access token. Holds no token, only its fingerprint.

    >>> vt = await verifier.verify_async(token)
    >>> vt.oid, vt.upn, vt.scopes
    ('6f1c...', 'alice@contoso.com', ('access_as_user',))
    """

    oid: str
    tid: str
    upn: str | None
    name: str | None
    scopes: tuple[str, ...]
    roles: tuple[str, ...]
    client_id: str
    expires_at: float
    issuer: str
    audience: str
    version: str
    subject: str | None
    app_only: bool
    fingerprint: str
    claims: Mapping[str, Any] = field(repr=False, compare=False)


class JwtVerifier:
    """Verify Entra access tokens (v1 and v2) for one API. Async first, with a sync twin.

    >>> verifier = JwtVerifier(audiences=[client_id, f"api://{client_id}"], tenants=[tenant_id],
    ...                        required_scopes=["access_as_user"])
    >>> vt = await verifier.verify_async(token)   # TokenVerificationError / InsufficientScope
    >>> vt = verifier.verify(token)               # same, blocking (JWKS via httpx)

    ``tenants`` is required (the allow-list; a single-tenant API names its own tenant); accept
    any tenant only with ``any_tenant=True`` (then app-only callers, ``allow_app_only``, need
    ``app_only_tenants``: any tenant's administrators can assign your API's app roles to their
    own apps). ``issuers`` replaces the derived issuers with an
    exact list; ``v1_issuer``/``v2_issuer`` are templates with ``{tid}`` for other clouds.
    Keys come from ``{authority_host}/{tid}/discovery/v2.0/keys`` unless ``jwks_uri`` or
    ``discovery_url`` (an OpenID configuration document) is given.
    """

    def __init__(
        self,
        *,
        audiences: Sequence[str],
        tenants: Sequence[str] | None = None,
        any_tenant: bool = False,
        authority_host: str = PUBLIC_AUTHORITY,
        issuers: Sequence[str] | None = None,
        v1_issuer: str | None = None,
        v2_issuer: str | None = None,
        jwks_uri: str | None = None,
        discovery_url: str | None = None,
        required_scopes: Sequence[str] = (),
        required_roles: Sequence[str] = (),
        allow_app_only: bool = False,
        app_only_tenants: Sequence[str] | None = None,
        leeway: float = 60.0,
        http_client: AsyncGetter | None = None,
        sync_http_client: SyncGetter | None = None,
        verify: ssl.SSLContext | str | bool = True,
        jwks_ttl: float = 6 * 3600.0,
        min_refetch_interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        try:
            listed = () if isinstance(audiences, str | bytes) else tuple(audiences)
        except TypeError:
            listed = ()
        if not listed or not all(isinstance(a, str) and a.strip() for a in listed):
            raise ConfigurationError(
                "audiences must be a non-empty list of strings.",
                fix="pass your API's client id and App ID URI: audiences=[client_id, "
                "'api://<client_id>'].",
            )
        if isinstance(tenants, str):
            raise ConfigurationError(
                "tenants must be a list of tenant ids, not one string.",
                fix="pass tenants=[<your tenant id>].",
            )
        allowed = names(tenants, what="tenants", example="<tenant id>", spaces=True)
        scopes = names(required_scopes, what="required_scopes", example="access_as_user")
        roles = names(required_roles, what="required_roles", example="Notes.Read")
        exact_issuers: tuple[str, ...] | None = None
        if issuers is not None:
            exact_issuers = names(issuers, what="issuers", example="https://<issuer>/<tid>/v2.0")
            if not exact_issuers:
                raise ConfigurationError(
                    "issuers=[] accepts no issuer: every token would be refused.",
                    fix="name the accepted issuers, or leave issuers out to derive them.",
                )
        if not any_tenant and not allowed:
            raise ConfigurationError(
                "no tenant allow-list: a single-tenant API names its tenant.",
                fix="pass tenants=[<your tenant id>] (or any_tenant=True for a multi-tenant API "
                "that accepts every Entra tenant, deliberately).",
            )
        if any_tenant and allowed:
            raise ConfigurationError("pass either tenants=[...] or any_tenant=True, not both.")
        if not all(GUID.fullmatch(t.strip()) for t in allowed):
            # A token's tid is always its tenant's GUID: a domain or an alias (common,
            # organizations) matches no token. The entry is not shown (it may be a secret
            # pasted into the wrong place).
            raise ConfigurationError(
                "tenants has an entry that is not a tenant GUID (a domain name, common or "
                "organizations?): a token's tid is always a GUID, so every token would be "
                "refused.",
                fix=TENANT_GUID_FIX + " For every tenant, pass any_tenant=True instead.",
            )
        if allow_app_only and not roles:
            raise ConfigurationError(
                "allow_app_only without required_roles would accept a client-credentials token "
                "from any app in the tenant.",
                fix="name the app roles app-only callers must hold: required_roles=[...].",
            )
        app_tenants = names(
            app_only_tenants, what="app_only_tenants", example="<tenant id>", spaces=True
        )
        if app_only_tenants is not None and not app_tenants:
            raise ConfigurationError(
                "app_only_tenants=[] accepts no app-only token.",
                fix="name the tenants whose apps may call, or leave allow_app_only off.",
            )
        if app_only_tenants is not None and not allow_app_only:
            raise ConfigurationError(
                "app_only_tenants is set but allow_app_only is not: app-only tokens are refused "
                "from every tenant, so the list would do nothing.",
                fix="pass allow_app_only=True (with required_roles) to accept app-only callers "
                "from those tenants, or leave app_only_tenants out.",
            )
        if allow_app_only and any_tenant and not app_tenants:
            # required_roles is the gate for app-only callers because only your tenant's admins
            # assign your API's app roles to apps in your tenant. With any tenant accepted, any
            # tenant's admin can assign them to an app of theirs (a multi-tenant API's service
            # principal exists in every tenant that consented): the roles no longer tell your
            # callers from theirs.
            raise ConfigurationError(
                "allow_app_only with any_tenant=True would accept an app-only token from an app "
                "in any tenant: each tenant's administrators assign your API's app roles to "
                "their own apps, so required_roles does not tell your callers from theirs.",
                fix="name the tenants whose apps may call: app_only_tenants=[<tenant id>, ...] "
                "(delegated tokens are still accepted from any tenant).",
            )
        if not all(GUID.fullmatch(t.strip()) for t in app_tenants):
            raise ConfigurationError(
                "app_only_tenants has an entry that is not a tenant GUID (a domain name, "
                "common or organizations?): a token's tid is always a GUID, so every app-only "
                "token would be refused.",
                fix=TENANT_GUID_FIX,
            )
        lowered = {t.strip().lower() for t in app_tenants}
        if allowed and not lowered <= {t.strip().lower() for t in allowed}:
            raise ConfigurationError(
                "app_only_tenants names a tenant that is not in tenants: no token of it is "
                "accepted at all.",
                fix="list each tenant in tenants=[...] too, or drop it from app_only_tenants.",
            )
        leeway = seconds(leeway, what="leeway", low=0, high=600)
        # Not a string: refused by the check below as no URL, not an AttributeError here.
        # (surrounding blanks, a .env line's trailing space, are dropped as OnBehalfOf does)
        host = authority_host.strip().rstrip("/") if isinstance(authority_host, str) else ""
        check_authority_host(host + "/")
        self.audiences = listed
        # Entra writes tenant GUIDs in lower case; an upper-case allow-list must not lock out
        # every caller.
        self.tenants = tuple(t.strip().lower() for t in allowed)
        self.any_tenant = any_tenant
        self.authority_host = host
        self.issuers = exact_issuers
        self.v2_issuer = v2_issuer or host + "/{tid}/v2.0"
        self.v1_issuer = v1_issuer or _V1_ISSUERS.get(
            urlsplit(host).hostname or "", host + "/{tid}/"
        )
        for template in (self.v1_issuer, self.v2_issuer):
            try:
                usable = isinstance(template, str) and template.format(tid="t") != template
            except (KeyError, IndexError, ValueError, AttributeError):  # "{tid.x}", "{x}"
                usable = False
            if not usable:
                raise ConfigurationError(
                    f"issuer template {_show(template)} must be a string containing '{{tid}}' "
                    "and no other field.",
                    fix="pass v1_issuer= / v2_issuer= such as "
                    "'https://<authority host>/{tid}/v2.0'.",
                )
        self.required_scopes = scopes
        self.required_roles = roles
        self.allow_app_only = allow_app_only
        #: the tenants whose app-only tokens are accepted (lower case); ``None``: every tenant
        #: in ``tenants`` (never ``None`` with ``any_tenant`` and ``allow_app_only``)
        self.app_only_tenants: frozenset[str] | None = frozenset(lowered) if app_tenants else None
        self.leeway = leeway
        self._jwks_uri = check_fetch_url(jwks_uri, what="jwks_uri") if jwks_uri else None
        self._discovery_url = (
            check_fetch_url(discovery_url, what="discovery_url") if discovery_url else None
        )
        self._keys = KeySet(
            verify=verify,
            http_client=http_client,
            sync_http_client=sync_http_client,
            ttl=jwks_ttl,
            min_refetch_interval=min_refetch_interval,
            clock=clock,
        )

    def __repr__(self) -> str:
        tenants = "any" if self.any_tenant else list(self.tenants)
        return f"JwtVerifier(audiences={list(self.audiences)}, tenants={tenants})"

    @property
    def jwks_fetches(self) -> int:
        """How many key documents this verifier fetched (tests, metrics)."""
        return self._keys.fetches

    # --- the two drivers: identical decisions, different key I/O ---

    async def verify_async(self, token: str) -> VerifiedToken:
        require_asyncio("JwtVerifier.verify_async")
        kid, tid = self._precheck(token)
        keys = await self._keys.get_keys_async(self._source(tid), kid)
        return self._check(token, keys)

    def verify(self, token: str) -> VerifiedToken:
        kid, tid = self._precheck(token)
        keys = self._keys.get_keys(self._source(tid), kid)
        return self._check(token, keys)

    # --- decisions (no I/O) ---

    def _tenant_allowed(self, tid: object) -> bool:
        return isinstance(tid, str) and (self.any_tenant or tid in self.tenants)

    def _source(self, tid: str) -> KeySource:
        if self._jwks_uri:
            return KeySource(self._jwks_uri)
        if self._discovery_url:
            return KeySource(self._discovery_url, discovery=True)
        # Per-tenant keys for allow-listed tenants; "common" keys for any tenant (never a fetch
        # per attacker-chosen tenant).
        tenant = "common" if self.any_tenant else tid
        return KeySource(f"{self.authority_host}/{tenant}/discovery/v2.0/keys")

    def _precheck(self, token: object) -> tuple[str, str]:
        """(kid, unverified tid), or a typed error; no I/O."""
        if not isinstance(token, str) or not token:
            raise TokenVerificationError("no bearer token (empty or not a string).")
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenVerificationError("the bearer token is larger than 16 KiB.")
        if not token.isascii():
            raise TokenVerificationError("the bearer token is not a JWT (non-ASCII characters).")
        try:
            header = jwt.get_unverified_header(token)
            payload = decode_unverified(token)
        except (jwt_errors.PyJWTError, JwtDecodeError, ValueError, TypeError) as exc:
            raise TokenVerificationError("the bearer token is not a well-formed JWT.") from exc
        alg = header.get("alg")
        if alg != "RS256":
            raise TokenVerificationError(
                f"the token's signing algorithm {_show(alg)} is not accepted (RS256 only)."
            )
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > _MAX_KID:
            raise TokenVerificationError("the token header has no usable 'kid'.")
        tid = payload.get("tid")
        if not self._tenant_allowed(tid):
            raise TokenVerificationError(self._tenant_reason(tid))
        assert isinstance(tid, str)
        return kid, tid

    def _tenant_reason(self, tid: object) -> str:
        if not isinstance(tid, str):
            return "the token has no tenant ('tid') claim."
        return (
            f"the token's tenant {_show(tid)} is not on this API's allow-list "
            f"({', '.join(self.tenants)})."
        )

    def _decode(self, token: str, key: Any) -> dict[str, Any]:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=["RS256"],
            audience=list(self.audiences),
            leeway=self.leeway,
            options={"require": _REQUIRED, "verify_iss": False, "strict_aud": False},
        )
        return claims

    def _check(self, token: str, keys: tuple[Any, ...]) -> VerifiedToken:
        try:
            if len(keys) > 1:
                # Several keys published under the token's kid (a gateway merging key sets):
                # each in turn, in the document's order. The signature is checked before any
                # claim, so only a key that verifies it gets to judge the claims.
                claims = self._first_verifying(token, keys)
            else:
                claims = self._decode(token, keys[0])
        except jwt_errors.ExpiredSignatureError as exc:
            raise TokenVerificationError("the token has expired.") from exc
        except jwt_errors.ImmatureSignatureError as exc:
            raise TokenVerificationError("the token is not valid yet (nbf/iat).") from exc
        except jwt_errors.InvalidAudienceError as exc:
            aud = _safe_unverified(token, "aud")
            raise TokenVerificationError(
                f"the token is for audience {_show(aud)}, not this API "
                f"({', '.join(self.audiences)}); it was issued for another resource.",
                fix="the client must request a token for this API's scope "
                "(api://<this-api>/<scope>), e.g. by on-behalf-of; never forward a token.",
            ) from exc
        except jwt_errors.MissingRequiredClaimError as exc:
            raise TokenVerificationError(f"the token has no {exc.claim!r} claim.") from exc
        except jwt_errors.InvalidSignatureError as exc:
            raise TokenVerificationError("the token's signature is invalid.") from exc
        except jwt_errors.PyJWTError as exc:
            raise TokenVerificationError(
                f"the token is not acceptable ({type(exc).__name__})."
            ) from exc
        except (ValueError, TypeError, OverflowError) as exc:  # defensive: junk past PyJWT
            raise TokenVerificationError("the token is not a well-formed JWT.") from exc
        try:
            # _precheck bounded the same payload; PyJWT parsed it again on its own.
            check_time_claims(claims)
        except JwtDecodeError as exc:
            raise TokenVerificationError(f"the token is not acceptable: {exc}.") from None
        return self._authorize(self._identity(claims, token))

    def _identity(self, claims: dict[str, Any], token: str) -> VerifiedToken:
        tid = claims.get("tid")
        if not self._tenant_allowed(tid):
            raise TokenVerificationError(self._tenant_reason(tid))
        assert isinstance(tid, str)
        if "cnf" in claims:
            # RFC 7800: the presenter must prove it holds the key. Accepted as a bearer token,
            # a PoP token copied from a cache or a signed-request envelope would work as is.
            raise TokenVerificationError(
                "the token is bound to a proof-of-possession key ('cnf' claim): a PoP-bound "
                "token cannot be used as a bearer token.",
                fix="request a bearer token for this API (no proof of possession).",
            )
        aud = claims.get("aud")
        if not isinstance(aud, str):
            raise TokenVerificationError("the token's 'aud' is not a single string.")
        iss, ver = claims.get("iss"), claims.get("ver")
        if ver == "2.0":
            expected, client_claim = self.v2_issuer.format(tid=tid), "azp"
        elif ver == "1.0":
            expected, client_claim = self.v1_issuer.format(tid=tid), "appid"
        else:
            raise TokenVerificationError(f"the token's version 'ver' {_show(ver)} is unknown.")
        if self.issuers is None:
            accepted: tuple[str, ...] = (expected,)
            issuer_ok = iss == expected
        else:
            # An explicit list still has to agree with 'ver': a v1 token never carries a v2
            # issuer and the reverse (Entra's own invariant), else claims get misread.
            accepted = self.issuers
            is_v2_issuer = isinstance(iss, str) and iss.rstrip("/").endswith("/v2.0")
            issuer_ok = iss in accepted and is_v2_issuer == (ver == "2.0")
        if not issuer_ok:
            raise TokenVerificationError(
                f"the token's issuer {_show(iss)} is not accepted for a v{ver} token of tenant "
                f"{tid} (expected {' or '.join(accepted)}).",
                fix="set issuers=[...] or v1_issuer=/v2_issuer= templates for another cloud.",
            )
        client_id = claims.get(client_claim)
        if not isinstance(client_id, str) or not client_id:
            raise TokenVerificationError(
                f"the v{ver} token has no {client_claim!r} claim (the calling client)."
            )
        oid = claims.get("oid")
        if not isinstance(oid, str) or not oid:
            raise TokenVerificationError("the token has no 'oid' claim.")
        scp = claims.get("scp")
        if scp is not None and not isinstance(scp, str):
            raise TokenVerificationError("the token's 'scp' claim is not a string.")
        raw_roles = claims.get("roles", [])
        if not isinstance(raw_roles, list) or not all(isinstance(r, str) for r in raw_roles):
            raise TokenVerificationError("the token's 'roles' claim is not a list of strings.")
        scopes = tuple(scp.split()) if scp else ()
        upn = next(
            (
                v
                for k in ("upn", "preferred_username", "unique_name")
                if isinstance(v := claims.get(k), str)
            ),
            None,
        )
        name = claims.get("name")
        sub = claims.get("sub")
        return VerifiedToken(
            oid=oid,
            tid=tid,
            upn=upn,
            name=name if isinstance(name, str) else None,
            scopes=scopes,
            roles=tuple(raw_roles),
            client_id=client_id,
            expires_at=float(claims["exp"]),
            issuer=str(iss),
            audience=aud,
            version=ver,
            subject=sub if isinstance(sub, str) else None,
            app_only=not scopes,
            fingerprint=fingerprint(token),
            claims=MappingProxyType(claims),
        )

    def _first_verifying(self, token: str, keys: tuple[Any, ...]) -> dict[str, Any]:
        for key in keys[:-1]:
            try:
                return self._decode(token, key)
            except jwt_errors.InvalidSignatureError:
                continue
        return self._decode(token, keys[-1])

    def _authorize(self, vt: VerifiedToken) -> VerifiedToken:
        if vt.app_only:
            if not self.allow_app_only:
                raise InsufficientScope(
                    "the token is app-only (no 'scp'): this API serves users, and app-only "
                    "callers are not enabled (allow_app_only).",
                    required=self.required_scopes,
                )
            if self.app_only_tenants is not None and vt.tid not in self.app_only_tenants:
                raise InsufficientScope(
                    "the token is app-only (no 'scp') from a tenant whose apps may not call "
                    "this API (app_only_tenants).",
                    required=self.required_roles,
                )
        else:
            missing = [s for s in self.required_scopes if s not in vt.scopes]
            if missing:
                raise InsufficientScope(
                    f"the token lacks the scope(s) {', '.join(missing)} "
                    f"(it has {', '.join(vt.scopes) or 'none'}).",
                    required=self.required_scopes,
                )
        missing_roles = [r for r in self.required_roles if r not in vt.roles]
        if missing_roles:
            raise InsufficientScope(
                f"the token lacks the app role(s) {', '.join(missing_roles)}.",
                required=self.required_roles,
            )
        return vt


def _safe_unverified(token: str, claim: str) -> object:
    try:
        return decode_unverified(token).get(claim)
    except JwtDecodeError:
        return None
