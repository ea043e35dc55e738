"""Device code grant and ``userinfo``.

Device code (https://learn.microsoft.com/entra/identity-platform/v2-oauth2-device-code):
``POST /{tenant}/oauth2/v2.0/devicecode`` (``client_id``, ``scope``) answers ``device_code``,
``user_code``, ``verification_uri``, ``expires_in``, ``interval`` and ``message``; the client polls
the token endpoint with ``grant_type=urn:ietf:params:oauth:grant-type:device_code`` and gets
``authorization_pending`` until the user signs in at the verification page (here
``EntraEmulator.approve_device_code(user_code, user)`` or the ``/devicelogin`` form), then the
user's tokens; ``authorization_declined``, ``expired_token`` and ``bad_verification_code`` as the
page lists them. The verification page is Entra's sign-in page: the same checks and consent
decision as ``/authorize`` (``_signin.sign_in``); what it refuses is the poll's answer.

``userinfo`` (https://learn.microsoft.com/entra/identity-platform/userinfo): ``GET`` with a token
for Microsoft Graph (``openid``); answers ``sub``, ``name``, ``family_name``, ``given_name``,
``email`` (when the ``email`` scope was granted) and ``picture``.
"""

from __future__ import annotations

import html
import secrets
import string
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from . import _errors as e
from ._issue import check_account, parse_scopes, user_token_response
from ._signin import SignIn, sign_in
from ._state import Runtime
from ._tokens import verify
from ._world import GRAPH_APP_ID, MSA_DIRECTORY, Tenant

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
#: Seconds between polls the answer asks for (Entra answers 5).
INTERVAL = 5
#: An expired code is answered ``expired_token`` this long after it expired, then forgotten.
_KEEP_EXPIRED = 900


@dataclass
class DeviceRecord:
    client_id: str
    scope: str
    tenant_id: str
    user_code: str
    expires: float
    user: str | None = None
    declined: bool = False
    #: The tenant of the authority the flow started at (``None``: common/organizations, the
    #: user's home tenant).
    path_tenant: str | None = None
    #: What the client asked for at the devicecode endpoint (``scope``, ``claims``, ``resource``).
    params: Mapping[str, str] = field(default_factory=dict)
    #: What the verification page refused (the sign-in checks, the consent): the poll's answer
    #: instead of a token.
    error: e.StsError | None = None
    #: The sign-in at the verification page, once the user signed in.
    signin: SignIn | None = None


def _user_code() -> str:
    alphabet = string.ascii_uppercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(9))


def start(
    rt: Runtime, form: Mapping[str, str], tenant: Tenant | None, *, personal: bool = False
) -> dict[str, Any]:
    """A device code for the request at ``tenant`` (``None``: common/organizations, or with
    ``personal`` consumers, where no app of the world exists: AADSTS700016)."""
    client_id = form.get("client_id") or ""
    if not client_id:
        raise e.missing_param("client_id")
    if personal:
        raise e.unknown_client(client_id, MSA_DIRECTORY)
    app = rt.world.app(client_id)
    if app is None:
        raise e.StsError(
            700016,
            "unauthorized_client",
            f"Application with identifier '{client_id[:80]}' was not found in the directory.",
        )
    if app.kind == "agent_identity":
        # As at /authorize: a child agent identity signs no user in interactively and cannot be
        # consented to (AADSTS82014, https://learn.microsoft.com/entra/agent-id/
        # agent-on-behalf-of-oauth-flow); its delegated permissions come from its blueprint.
        raise e.agent_interactive_consent()
    if tenant is None and not app.multi_tenant:
        # A single-tenant app at common/organizations: Entra's devicecode endpoint answers
        # AADSTS50059 (no tenant named), not a sign-in in the app's or the user's tenant
        # (nospor/teams-tui-go#2, verified against a single-tenant registration;
        # microsoftgraph/msgraph-training-dotnet#44, a Microsoft maintainer's explanation).
        raise e.no_tenant()
    tid = tenant.id if tenant else app.tenant_id
    parse_scopes(rt, form.get("scope"), tid)  # the resource must exist (AADSTS500011, 70011...)
    device_code = "emu-dc." + secrets.token_urlsafe(32)
    user_code = _user_code()
    lifetime = rt.world.lifetimes.device_code
    now = time.time()
    with rt.lock:
        for stale in [c for c, r in rt.device_codes.items() if r.expires < now - _KEEP_EXPIRED]:
            del rt.device_codes[stale]
        rt.device_codes[device_code] = DeviceRecord(
            client_id=app.client_id,
            scope=form.get("scope", ""),
            tenant_id=tid,
            user_code=user_code,
            expires=now + lifetime,
            path_tenant=tenant.id if tenant else None,
            params={k: form[k] for k in ("scope", "claims", "resource") if form.get(k)},
        )
        rt.issued.add(device_code)
    uri = f"{rt.url}/devicelogin"
    return {
        "user_code": user_code,
        "device_code": device_code,
        "verification_uri": uri,
        "expires_in": lifetime,
        "interval": INTERVAL,
        "message": f"To sign in, use a web browser to open the page {uri} and enter the code "
        f"{user_code} to authenticate.",
    }


def approve(
    rt: Runtime, user_code: str, user: str | None, *, decline: bool = False
) -> DeviceRecord | None:
    """The user at the verification page: signs in as ``user`` and answers the consent prompt
    the page shows for permissions not yet granted (Continue accepts it), or declines. The
    code's record (its ``error``: what the sign-in refused), ``None`` for an unknown or expired
    user code."""
    now = time.time()
    with rt.lock:
        record: DeviceRecord | None = next(
            (
                r
                for r in rt.device_codes.values()
                if r.user_code == user_code.strip().upper() and r.expires > now
            ),
            None,
        )
        if record is None:
            return None
        if decline:
            record.declined = True
            return record
    problem: e.StsError | None = None
    signin: SignIn | None = None
    if user is not None:
        try:
            signin = _sign_in_on_the_page(rt, record, user)
        except e.StsError as err:
            problem = err
    with rt.lock:
        record.user = user
        record.error = problem
        record.signin = signin
    return record


def _sign_in_on_the_page(rt: Runtime, record: DeviceRecord, name: str) -> SignIn | None:
    """The device login page is Entra's sign-in page (v2-oauth2-device-code: the user "signs
    in" and is "asked to consent"): the same checks and consent decision as /authorize
    (``_signin.sign_in``: tenant membership 50020, assignment 50105, Conditional Access 53003,
    the MFA a policy requires, consent 650057/90094), Continue accepting the prompt. ``None``
    for an unknown user (the poll answers for it)."""
    user = rt.world.user(name)
    app = rt.world.app(record.client_id)
    if user is None or app is None:
        return None
    tenant = rt.world.tenant(record.path_tenant) if record.path_tenant else None
    signin = sign_in(rt, client=app, user=user, tenant=tenant, params=record.params)
    signin.accept(rt)
    return signin


def redeem(
    rt: Runtime,
    form: Mapping[str, str],
    client_id: str,
    client_acr: str,
    *,
    tenant_id: str | None,
) -> dict[str, Any]:
    """A poll of the token endpoint at ``tenant_id`` (``None``: common/organizations). The
    poll's ``client_id`` "must match the client_id used in the initial request" and its tenant
    is "the same tenant or tenant alias used in the initial request" (v2-oauth2-device-code,
    "Authenticating the user"): a code polled by another client or at another tenant is not
    recognised there (``bad_verification_code``)."""
    code = form.get("device_code") or ""
    if not code:
        raise e.missing_param("device_code")
    with rt.lock:
        record = rt.device_codes.get(code)
    if record is None or record.client_id != client_id or record.path_tenant != tenant_id:
        raise e.StsError(70000, "bad_verification_code", "The provided device code is not valid.")
    if form.get("resource") is not None:
        # RFC 8707 `resource` on the poll must name the resource of the code's scopes, as on
        # every grant (AADSTS9010010); the code is not spent by the refused poll.
        from ._token_endpoint import check_resource_param

        check_resource_param(form, parse_scopes(rt, record.scope, record.tenant_id))
    if record.expires <= time.time():
        raise e.StsError(70019, "expired_token", "Verification code expired.")
    if record.declined:
        with rt.lock:
            rt.device_codes.pop(code, None)
        raise e.StsError(70020, "authorization_declined", "The user declined the authorization.")
    if record.error is not None:
        with rt.lock:
            rt.device_codes.pop(code, None)
        raise record.error
    if record.user is None:
        raise e.StsError(
            70016,
            "authorization_pending",
            "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
        )
    with rt.lock:
        rt.device_codes.pop(code, None)  # one redemption
    signin = record.signin
    if signin is None:
        raise e.StsError(70000, "invalid_grant", "The user of the device code does not exist.")
    check_account(rt, signin.user)  # its state may have changed since the sign-in
    return user_token_response(
        rt,
        req=signin.req,
        client=signin.client,
        client_acr=client_acr,
        user=signin.user,
        tenant_id=signin.tenant_id,
        form={**record.params, **form},
        amr=signin.amr,
    )


async def device_code_endpoint(
    rt: Runtime, request: Request, tenant: Tenant | None, *, personal: bool = False
) -> Response:
    raw = await request.form()
    form = dict(raw)
    try:
        e.check_no_duplicates(raw.multi_items())  # AADSTS9000411, as at the token endpoint
        body = start(rt, {k: str(v) for k, v in form.items()}, tenant, personal=personal)
    except e.StsError as err:
        return JSONResponse(err.body(request.headers.get("client-request-id")), err.status)
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


async def device_login_page(rt: Runtime, request: Request) -> Response:
    """The verification page: a user code, a test user and Continue / Cancel."""
    if request.method == "POST":
        form = await request.form()
        record = approve(
            rt,
            str(form.get("user_code", "")),
            str(form.get("user", "")) or None,
            decline=form.get("action") == "cancel",
        )
        if record is None:
            text = "Code not recognised."
        elif record.error is not None:
            # Entra shows what refused the sign-in on its page; the device's poll gets it too.
            text = f"AADSTS{record.error.code}: {record.error.text}"
        else:
            text = "You have signed in; you may close this window."
        ok = record is not None and record.error is None
        return HTMLResponse(
            f"<p id='result'>{html.escape(text)}</p>", status_code=200 if ok else 400
        )
    users = "".join(
        f"<option value='{html.escape(u.name)}'>{html.escape(u.upn)}</option>"
        for u in rt.world.users
    )
    return HTMLResponse(
        "<form method='post'><input name='user_code' id='user_code'>"
        f"<select name='user' id='user'>{users}</select>"
        "<button name='action' value='continue' id='continue'>Continue</button>"
        "<button name='action' value='cancel' id='cancel'>Cancel</button></form>"
    )


async def userinfo(rt: Runtime, request: Request) -> Response:
    auth = request.headers.get("authorization", "")
    token = auth[7:] if auth.lower().startswith("bearer ") else ""
    challenge = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
    try:
        claims = verify(rt.keys, token)
    except jwt.PyJWTError:
        return JSONResponse({"error": "invalid_token"}, status_code=401, headers=challenge)
    graph = rt.world.app(GRAPH_APP_ID)
    audiences = {GRAPH_APP_ID, "https://graph.microsoft.com", *(graph.identifiers if graph else ())}
    if claims.get("aud") not in audiences or claims.get("exp", 0) < time.time():
        return JSONResponse({"error": "invalid_token"}, status_code=401, headers=challenge)
    user = rt.world.user(str(claims.get("oid", "")))
    if user is None:
        return JSONResponse({"error": "invalid_token"}, status_code=401, headers=challenge)
    given, _, family = user.display_name.partition(" ")
    out: dict[str, Any] = {
        "sub": claims.get("sub"),
        "name": user.display_name,
        "given_name": given,
        "family_name": family,
        "picture": "https://graph.microsoft.com/v1.0/me/photo/$value",
    }
    if "email" in str(claims.get("scp", "")).split():
        out["email"] = user.upn
    return JSONResponse(out)
