"""``POST /{tenant}/oauth2/v2.0/token``: the grants, each checked the way Entra checks it.

Flow pages: client credentials https://learn.microsoft.com/entra/identity-platform/
v2-oauth2-client-creds-grant-flow; on-behalf-of .../v2-oauth2-on-behalf-of-flow; authorization code
+ PKCE .../v2-oauth2-auth-code-flow; refresh .../refresh-tokens; ROPC .../v2-oauth-ropc; Agent ID
https://learn.microsoft.com/entra/agent-id/identity-platform/agent-on-behalf-of-oauth-flow.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Any

import jwt

from .._msal import MSA_TENANT_ID
from . import _errors as e
from ._ca import b64url
from ._client_auth import ClientAuth, authenticate
from ._issue import (
    ScopeRequest,
    app_roles,
    check_account,
    check_app_assignment,
    check_assignment,
    check_member,
    check_self_token,
    check_user_policies,
    emitted_capabilities,
    mint_access,
    parse_scopes,
    user_token_response,
)
from ._state import Runtime
from ._tokens import NOT_A_TIME, Subject, numeric_claim, performed_mfa, verify
from ._world import TOKEN_EXCHANGE_APP_ID, Tenant

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GRANT_NAMES = {
    "client_credentials": "client_credentials",
    JWT_BEARER: "on_behalf_of",
    "authorization_code": "authorization_code",
    "refresh_token": "refresh_token",
    "password": "password",
    "urn:ietf:params:oauth:grant-type:device_code": "device_code",
}
#: Seconds a user assertion's ``nbf`` may lie ahead of the emulator's clock (Entra allows five
#: minutes of clock skew).
CLOCK_SKEW = 300
_PERSONAL_ACCOUNTS = ("consumers", MSA_TENANT_ID)
_GENERIC_TENANTS = ("common", "organizations", *_PERSONAL_ACCOUNTS)


def personal_accounts(segment: str) -> bool:
    """Whether the path's tenant is ``consumers`` (or the MSA tenant's own id): personal
    Microsoft accounts only. The world holds none, nor any app of that directory, so every flow
    there is AADSTS700016 in 'Microsoft Accounts'."""
    return segment.lower() in _PERSONAL_ACCOUNTS


def resolve_tenant(rt: Runtime, segment: str) -> Tenant | None:
    """A tenant path segment: GUID, domain, or common/organizations/consumers (None = no tenant
    of the world: decided by the user, or for consumers none at all, ``personal_accounts``)."""
    if segment.lower() in _GENERIC_TENANTS:
        return None
    tenant = rt.world.tenant(segment)
    if tenant is None:
        # AADSTS90002 https://learn.microsoft.com/entra/identity-platform/reference-error-codes
        raise e.StsError(
            90002,
            "invalid_request",
            f"Tenant '{segment[:80]}' not found. Check to make sure you have the correct tenant ID "
            "and are signing into the correct cloud.",
        )
    return tenant


def handle_token(
    rt: Runtime, segment: str, form: Mapping[str, str], headers: Mapping[str, str], *, v1: bool
) -> dict[str, Any]:
    tenant = resolve_tenant(rt, segment)
    grant = form.get("grant_type")
    if not grant:
        raise e.missing_param("grant_type")
    if grant not in GRANT_NAMES:
        raise e.unsupported_grant(grant)
    rt.count_grant(GRANT_NAMES[grant])
    form = dict(form)
    if v1 and form.get("resource") and not form.get("scope"):
        # The v1 endpoint names the resource instead of scopes (a trailing slash is kept: it
        # is part of the identifier a v1 token's aud repeats).
        form["scope"] = form["resource"] + "/.default"
        form.pop("resource")
    personal = personal_accounts(segment)
    if grant == "client_credentials" and tenant is None and not personal:
        # Client credentials need "the directory tenant the application plans to operate
        # against" (v2-oauth2-client-creds-grant-flow): at common/organizations nothing names
        # one, and no tenant of the world may stand in for it.
        raise e.no_tenant()
    # The tenant the request runs in: the path's; for OBO at common/organizations the
    # assertion's (its tokens are issued there), where the client must exist as at that
    # tenant's own endpoint.
    run_tid = tenant.id if tenant else None
    if run_tid is None and grant == JWT_BEARER and not personal:
        run_tid = _assertion_tenant(rt, form.get("assertion"))
    endpoints = tuple(
        f"{rt.url}/{seg}/oauth2/{v}token"
        for seg in dict.fromkeys(s for s in (segment, run_tid) if s)
        for v in ("v2.0/", "")
    )
    confidential_only = grant in ("client_credentials", JWT_BEARER)
    client = authenticate(
        rt,
        form,
        headers,
        tenant_id=run_tid,
        token_endpoints=endpoints,
        confidential_only=confidential_only,
        personal_accounts=personal,
    )
    if (
        tenant is None
        and not personal
        and grant in ("authorization_code", "refresh_token")
        and not client.app.multi_tenant
    ):
        # A single-tenant app redeeming a code or a refresh token at common/organizations:
        # AADSTS50194, as Entra answers both (e.single_tenant_at_common cites the reports). What
        # Entra answers OBO and ROPC there is not documented: they keep their rules below.
        raise e.single_tenant_at_common(client.app.client_id, client.app.name)
    if grant == "client_credentials":
        if tenant is None:  # consumers: authenticate refused the client already
            raise e.no_tenant()
        return _client_credentials(rt, form, client, tenant.id)
    if grant == JWT_BEARER:
        return _on_behalf_of(rt, form, client, tenant)
    if grant == "authorization_code":
        return _authorization_code(rt, form, client, tenant)
    if grant == "refresh_token":
        return _refresh(rt, form, client, tenant)
    if GRANT_NAMES[grant] == "device_code":
        from ._device import redeem

        return redeem(
            rt, form, client.app.client_id, client.acr, tenant_id=tenant.id if tenant else None
        )
    return _password(rt, form, client, tenant)


def _assertion_tenant(rt: Runtime, assertion: str | None) -> str | None:
    """The ``tid`` of an OBO assertion when it names a tenant of the world (unverified: the
    assertion's own checks come later and answer for a forged one), else ``None``."""
    if not assertion:
        return None
    try:
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    tid = claims.get("tid") if isinstance(claims, dict) else None
    if not isinstance(tid, str):
        return None
    found = rt.world.tenant(tid)
    return found.id if found is not None and found.id == tid else None


def is_id_token(claims: Mapping[str, Any]) -> bool:
    """Whether a token's claims are an ID token's, not an access token's: every access token
    names the client it was issued to (``azp`` in v2, ``appid`` in v1) and a delegated one its
    ``scp``; an ID token names its client only as ``aud`` and has no ``scp``
    (access-token-claims-reference, id-token-claims-reference). It may carry the user's app
    ``roles``, so those do not make it an app's token; an app's own access token (``azp`` or
    ``appid``, no ``scp``) stays the app-only AADSTS7000114."""
    if claims.get("idtyp") == "app":
        return False
    return not any(name in claims for name in ("scp", "azp", "appid"))


def check_resource_param(form: Mapping[str, str], req: ScopeRequest) -> None:
    # RFC 8707 `resource` on the v2 endpoint must name the scopes' resource, else AADSTS9010010
    # (reference-error-codes; the generic MCP SDK OAuth client sends it, docs/platform-facts.md).
    res = form.get("resource")
    if res is None:
        return
    if req.resource is None or res.rstrip("/") not in {
        i.rstrip("/") for i in req.resource.identifiers
    }:
        raise e.resource_mismatch()


def _client_credentials(
    rt: Runtime, form: Mapping[str, str], client: ClientAuth, tenant_id: str
) -> dict[str, Any]:
    req = parse_scopes(rt, form.get("scope"), tenant_id, app_only=True)
    check_resource_param(form, req)
    check_self_token(req, client.app)
    if req.resource is None or req.names != (".default",):
        # AADSTS1002012: client credentials need <resource>/.default (client-creds flow page).
        raise e.client_credentials_scope(form.get("scope", ""))
    app = client.app
    extra: dict[str, Any] = {}
    caps = emitted_capabilities(form, req.resource)
    if caps:
        extra["xms_cc"] = caps
    subject_oid = app.object_id
    fmi_path = form.get("fmi_path")
    if (
        not fmi_path
        and app.kind == "agent_blueprint"
        and req.resource.client_id == TOKEN_EXCHANGE_APP_ID
    ):
        # A blueprint's exchange token is always for one agent identity: Entra refuses the
        # request without fmi_path, or with an empty one (AADSTS82008).
        raise e.agentic_fmi_path_required()
    if fmi_path:
        # Agent ID: only a blueprint may ask for its child agent identity's T1 (82001 otherwise).
        child = rt.world.resource(fmi_path)
        if (
            app.kind != "agent_blueprint"
            or child is None
            or child.kind != "agent_identity"
            or child.blueprint_id != app.client_id
        ):
            raise e.agent_identity_not_found(fmi_path)
        extra["sub"] = child.client_id
    roles = app_roles(rt, app.client_id, req.resource, tenant_id)
    check_app_assignment(app.client_id, app.name, req.resource, roles)
    token = mint_access(
        rt,
        resource=req.resource,
        client_id=app.client_id,
        client_acr=client.acr,
        subject=Subject(oid=subject_oid, tid=tenant_id),
        roles=roles,
        app_only=True,
        audience=req.v1_audience(),
        extra=extra,
    )
    life = rt.world.lifetimes.access_token
    return {
        "token_type": "Bearer",
        "expires_in": life,
        "ext_expires_in": life,
        "access_token": token,
    }


def _on_behalf_of(
    rt: Runtime, form: Mapping[str, str], client: ClientAuth, tenant: Tenant | None
) -> dict[str, Any]:
    if form.get("requested_token_use") != "on_behalf_of":
        raise e.missing_param("requested_token_use")
    assertion = form.get("assertion")
    if not assertion:
        raise e.missing_param("assertion")
    try:
        jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        # AADSTS50027 https://learn.microsoft.com/entra/identity-platform/reference-error-codes
        raise e.invalid_grant(50027, "JWT token is invalid or malformed.") from None
    try:
        claims = verify(rt.keys, assertion)
    except jwt.PyJWTError:
        raise e.assertion_invalid("Reason - The key was not found.") from None
    tid = str(claims.get("tid", ""))
    if claims.get("iss") not in (rt.issuer(tid, 2), rt.issuer(tid, 1)):
        raise e.assertion_invalid("Reason - The issuer is not trusted.")
    now = int(time.time())
    exp = numeric_claim(claims, "exp")
    if exp < now:
        raise e.assertion_expired(now, exp)
    nbf = numeric_claim(claims, "nbf", bad=NOT_A_TIME)
    if nbf > now + CLOCK_SKEW:
        # Not yet valid, beyond the skew Entra allows: the same AADSTS500133.
        raise e.assertion_not_yet_valid(now, nbf)
    app = client.app
    # The assertion's aud must be the OBO client (its client id or an App ID URI); for an agent
    # identity, the user token is for its blueprint (Agent ID OBO flow).
    expected = app
    if app.kind == "agent_identity" and app.blueprint_id:
        expected = rt.world.app(app.blueprint_id) or app
    aud = claims.get("aud")
    if aud not in expected.identifiers:
        raise e.assertion_audience(str(aud), expected.client_id)
    if tenant is not None and tid != tenant.id:
        raise e.assertion_invalid("Reason - The assertion was issued for another tenant.")
    if is_id_token(claims):
        # An ID token is no access token: OBO's assertion is "the access token that was sent
        # to the middle-tier API" (v2-oauth2-on-behalf-of-flow). Entra's answer, quoted in
        # microsoft/azure-spring-boot#333, #943 and Azure/azure-sdk-for-java#20004: AADSTS240002,
        # error invalid_request.
        raise e.StsError(
            240002,
            "invalid_request",
            "Input id_token cannot be used as 'urn:ietf:params:oauth:grant-type:jwt-bearer' grant.",
        )
    if "scp" not in claims or claims.get("idtyp") == "app":
        raise e.app_only_assertion(app.client_id)
    user = rt.world.user(str(claims.get("oid", "")))
    if user is None:
        raise e.assertion_invalid("Reason - The user of the assertion does not exist.")
    # A user disabled, locked... after the assertion was issued: it is still valid, but Entra
    # issues nothing more for that user (AADSTS50057, 50053, 50055, 50133).
    check_account(rt, user)
    req = parse_scopes(rt, form.get("scope"), tid)
    check_resource_param(form, req)
    check_self_token(req, app)
    raw_amr = claims.get("amr")
    amr = tuple(str(x) for x in raw_amr) if isinstance(raw_amr, list) else ("pwd",)
    if performed_mfa(claims) and "mfa" not in amr:
        amr = (*amr, "mfa")  # a v2 assertion of a stepped-up sign-in (its aio says so)
    check_user_policies(user, req.resource, amr)
    return user_token_response(
        rt,
        req=req,
        client=app,
        client_acr=client.acr,
        user=user,
        tenant_id=tid,
        form=form,
        amr=amr,
    )


def _authorization_code(
    rt: Runtime, form: Mapping[str, str], client: ClientAuth, tenant: Tenant | None
) -> dict[str, Any]:
    code = form.get("code")
    if not code:
        raise e.missing_param("code")
    with rt.lock:
        rec = rt.codes.get(code)
        if rec is None:
            raise e.invalid_grant(
                9002313, "Invalid request. Request is malformed or invalid. - The code is invalid."
            )
        if rec.redeemed:
            # AADSTS54005: codes are single use (v2-oauth2-auth-code-flow, "redeem a code").
            raise e.invalid_grant(
                54005,
                "OAuth2 Authorization code was already redeemed, please retry with a new valid "
                "code or use an existing refresh token.",
            )
        if rec.expires < time.time():
            raise e.invalid_grant(
                70008,
                "The provided authorization code or refresh token has expired due to "
                "inactivity. Send a new interactive authorization request for this user and "
                "resource.",
            )
        if rec.client_id != client.app.client_id:
            raise e.invalid_grant(70000, "Provided grant is invalid or malformed.")
        if tenant is not None and tenant.id != rec.tenant_id:
            # A code is issued for one tenant (the authority's, or at common/organizations the
            # user's home tenant) and redeemed at that tenant's endpoint or common/organizations:
            # AADSTS700005 InvalidGrantRedeemAgainstWrongTenant (reference-error-codes).
            raise e.invalid_grant(
                700005,
                "Provided Authorization Code is intended to use against other tenant, thus "
                "rejected.",
            )
        if form.get("redirect_uri") != rec.redirect_uri:
            # The redirect_uri of the redemption must be the one the code was issued to.
            raise e.invalid_grant(
                70000,
                "The redirect URI in the request does not match the one used to obtain "
                "the authorization code.",
            )
        if rec.challenge is not None:
            verifier = form.get("code_verifier", "")
            if rec.method == "S256":
                ok = hmac.compare_digest(
                    b64url(hashlib.sha256(verifier.encode()).digest()), rec.challenge
                )
            else:
                ok = hmac.compare_digest(verifier, rec.challenge)
            if verifier and ok:
                rt.remember(verifier)  # a secret of the client's: leak scans look for it
            if not verifier or not ok:
                # AADSTS501481 (PKCE, v2-oauth2-auth-code-flow "code_verifier").
                raise e.invalid_grant(
                    501481,
                    "The Code_Verifier does not match the code_challenge supplied in the "
                    "authorization request.",
                )
        if form.get("resource") is not None:
            # RFC 8707 `resource` (the MCP SDK sends it on code exchange) must name the resource
            # of the code's scopes, as on every grant (AADSTS9010010). Checked before the code
            # is spent: a refused redemption leaves it redeemable, like the refusals above.
            check_resource_param(form, parse_scopes(rt, " ".join(rec.scopes), rec.tenant_id))
        rec.redeemed = True
    user = rt.world.user(rec.user)
    if user is None:
        raise e.invalid_grant(70000, "Provided grant is invalid or malformed.")
    check_account(rt, user)
    req = parse_scopes(rt, " ".join(rec.scopes), rec.tenant_id)
    return user_token_response(
        rt,
        req=req,
        client=client.app,
        client_acr=client.acr,
        user=user,
        tenant_id=rec.tenant_id,
        form=form,
        nonce=rec.nonce,
        amr=rec.amr,
    )


def _refresh(
    rt: Runtime, form: Mapping[str, str], client: ClientAuth, tenant: Tenant | None
) -> dict[str, Any]:
    token = form.get("refresh_token")
    if not token:
        raise e.missing_param("refresh_token")
    with rt.lock:
        rec = rt.refresh.get(token)
    if rec is None:
        raise e.invalid_grant(9002313, "Invalid request. Request is malformed or invalid.")
    if rec.revoked:
        # AADSTS50173: the grant was revoked (password reset, revokeSignInSessions).
        raise e.invalid_grant(
            50173,
            "The provided grant has expired due to it being revoked, a fresh auth token is "
            "needed. The user might have changed or reset their password.",
        )
    if rec.expires < time.time():
        raise e.invalid_grant(
            700082, "The refresh token has expired due to inactivity.", suberror="bad_token"
        )
    if rec.client_id != client.app.client_id:
        raise e.invalid_grant(70000, "Provided grant is invalid or malformed.")
    user = rt.world.user(rec.user)
    if user is None:
        raise e.invalid_grant(70000, "Provided grant is invalid or malformed.")
    # A disabled user's refresh token: AADSTS50057 (quoted in canonical/authd#814); likewise
    # the other account states.
    check_account(rt, user)
    # Refresh tokens are multi-resource: the request's scope may name another resource
    # (refresh-tokens page). A new refresh token is returned each time; Entra does NOT revoke
    # the one just used ("The Microsoft identity platform doesn't revoke old refresh tokens when
    # used to fetch new access tokens", refresh-tokens page), so the old one stays valid here too.
    # At common/organizations a refresh token is redeemed in the tenant it was issued in; at a
    # tenant's own endpoint the new tokens are issued by that tenant, which the user must belong
    # to (member or guest; else AADSTS50020), as a sign-in there would be.
    tid = rec.tenant_id
    if tenant is not None:
        check_member(rt, user, tenant.id, client.app)
        tid = tenant.id
    scope = form.get("scope") or " ".join(rec.scopes)
    if "offline_access" not in scope.split():
        scope += " offline_access"
    req = parse_scopes(rt, scope, tid)
    # RFC 8707 `resource` must name the resource of the scopes asked for (AADSTS9010010): what
    # Entra answers the MCP SDKs, which send it on refresh (modelcontextprotocol/csharp-sdk#1587).
    check_resource_param(form, req)
    check_user_policies(user, req.resource, rec.amr)
    return user_token_response(
        rt,
        req=req,
        client=client.app,
        client_acr=client.acr,
        user=user,
        tenant_id=tid,
        form={**form, "scope": scope},
        amr=rec.amr,
    )


def _password(
    rt: Runtime, form: Mapping[str, str], client: ClientAuth, tenant: Tenant | None
) -> dict[str, Any]:
    for name in ("username", "password"):
        if not form.get(name):
            raise e.missing_param(name)
    # The username is the user's sign-in name (UPN; v2-oauth-ropc: "The user's email
    # address"), case-insensitive: never the emulator's short names or an object id, which
    # World.user() also matches for login_hint.
    # Entra's sign-in names are ASCII (its password policies and account restrictions): one
    # with another character is no user's, even one ``lower()`` folds into ASCII (the Kelvin
    # sign U+212A into "k").
    upn = form["username"].lower() if form["username"].isascii() else None
    user = next((u for u in rt.world.users if u.upn.lower() == upn), None)
    if user is None or (tenant is not None and user.tenant_id != tenant.id):
        # AADSTS50034 https://learn.microsoft.com/entra/identity-platform/reference-error-codes
        raise e.invalid_grant(
            50034, f"The user account {form['username'][:80]} does not exist in the directory."
        )
    if rt.account_state(user) == "locked":
        # A locked account is refused whatever password is given (IdsLocked, reference-error-
        # codes: locked after too many sign-ins with a wrong password).
        check_account(rt, user)
    if not hmac.compare_digest(form["password"].encode(), user.password.encode()):
        raise e.invalid_grant(
            50126, "Error validating credentials due to invalid username or password."
        )
    check_account(rt, user)
    check_assignment(client.app, user)
    req = parse_scopes(rt, form.get("scope"), user.tenant_id)
    check_resource_param(form, req)
    # ROPC cannot satisfy MFA or consent interactively (v2-oauth-ropc).
    check_user_policies(user, req.resource, ("pwd",))
    return user_token_response(
        rt,
        req=req,
        client=client.app,
        client_acr=client.acr,
        user=user,
        tenant_id=user.tenant_id,
        form=form,
    )


__all__ = [
    "GRANT_NAMES",
    "TOKEN_EXCHANGE_APP_ID",
    "handle_token",
    "personal_accounts",
    "resolve_tenant",
]
