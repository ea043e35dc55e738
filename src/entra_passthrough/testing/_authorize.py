"""``/{tenant}/oauth2/v2.0/authorize`` and ``/logout``: sign-in, consent, code issuance.

Follows https://learn.microsoft.com/entra/identity-platform/v2-oauth2-auth-code-flow (request and
error response), https://learn.microsoft.com/entra/identity-platform/reply-url (redirect URI must
be registered; the port of an http://localhost / 127.0.0.1 URI is ignored, "localhost exceptions")
and https://learn.microsoft.com/entra/identity-platform/consent-types-developer (consent prompt on
first use or ``prompt=consent``).

Emulator-only conveniences, documented in docs/emulator.md:
- ``login_hint`` naming a test user signs that user in with no UI (as a remembered session would).
- ``emulator_consent=accept`` accepts a pending consent prompt without the HTML page (headless
  tests). Without it the consent page is served, as Entra would, and must be accepted by a person
  or a browser driver (Playwright).
"""

from __future__ import annotations

import hmac
import html
import secrets
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from . import _errors as e
from ._signin import sign_in
from ._state import CodeRecord, Runtime
from ._token_endpoint import personal_accounts, resolve_tenant
from ._world import MSA_DIRECTORY, App, User

SESSION_COOKIE = "emu_session"
#: The ``prompt`` values Entra's v2 /authorize accepts, one at a time (msal-js-prompt-behavior,
#: "Supported prompt values"). ``create`` (self-service sign-up) is a sign-in without the session
#: cookie here: the emulator has no sign-up page.
PROMPTS = ("login", "none", "consent", "select_account", "create")
_OWN = {"emu_action", "username", "password", "pending", "decision"}


#: The hosts of a loopback redirect URI whose port Entra ignores (reply-url, "Localhost
#: exceptions").
_LOOPBACK_HOSTS = ("localhost", "127.0.0.1")


def _redirect_uri_ok(app: App, uri: str) -> bool:
    """Whether ``uri`` is one of ``app``'s redirect URIs, as Entra matches them (reply-url):
    the same string, except that an ``http://localhost`` / ``http://127.0.0.1`` URI may name
    any port. Its query must be the registered one; a fragment (RFC 6749 section 3.1.2: "MUST
    NOT include a fragment component") and user info are never accepted."""
    if "#" in uri:
        return False
    if uri in app.redirect_uris:
        return True
    parts = urlsplit(uri)
    if parts.scheme != "http" or parts.hostname not in _LOOPBACK_HOSTS or "@" in parts.netloc:
        return False
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number (0-65535)
    except ValueError:
        return False
    wanted = ("http", parts.hostname, parts.path or "/", parts.query)
    for reg in app.redirect_uris:
        r = urlsplit(reg)
        if "#" in reg or "@" in r.netloc:
            continue
        if (r.scheme, r.hostname, r.path or "/", r.query) == wanted:
            return True
    return False


def _error_page(err: e.StsError) -> HTMLResponse:
    body = err.body()
    return HTMLResponse(
        "<!doctype html><title>Sign in error</title><h1>Sorry, but we're having trouble signing "
        f"you in.</h1><p id='error'>{html.escape(body['error_description'])}</p>",
        status_code=400,
    )


def _to_client(params: Mapping[str, str], values: Mapping[str, str]) -> Response:
    redirect_uri = params["redirect_uri"]
    out = dict(values)
    if params.get("state") is not None:
        out["state"] = params["state"]
    mode = params.get("response_mode", "query")
    if mode == "form_post":
        fields = "".join(
            f"<input type='hidden' name='{html.escape(k)}' value='{html.escape(v)}'>"
            for k, v in out.items()
        )
        return HTMLResponse(
            f"<!doctype html><body onload='document.forms[0].submit()'><form method='post' "
            f"action='{html.escape(redirect_uri)}'>{fields}<noscript><button>Continue</button>"
            "</noscript></form></body>"
        )
    sep = "#" if mode == "fragment" else ("&" if "?" in redirect_uri else "?")
    return RedirectResponse(redirect_uri + sep + urlencode(out), status_code=302)


def _error_to_client(params: Mapping[str, str], err: e.StsError) -> Response:
    body = err.body()
    # Query errors carry error, error_description, error_uri and state (v2-oauth2-auth-code-flow
    # "Error response"; a real 65004 redirect quoted in MicrosoftDocs/azure-docs#114009 shows
    # error_uri=https://login.microsoftonline.com/error?code=65004).
    values = {
        "error": body["error"],
        "error_description": body["error_description"],
        "error_uri": body["error_uri"],
    }
    if err.suberror:
        values["error_subcode"] = err.suberror
    return _to_client(params, values)


def _hidden(params: Mapping[str, str]) -> str:
    return "".join(
        f"<input type='hidden' name='{html.escape(k)}' value='{html.escape(v)}'>"
        for k, v in params.items()
        if k not in _OWN
    )


def _signin_page(rt: Runtime, params: Mapping[str, str], error: str = "") -> HTMLResponse:
    hint = params.get("login_hint", "")
    options = "".join(
        f"<option value='{html.escape(u.upn)}'{' selected' if hint in (u.upn, u.name) else ''}>"
        f"{html.escape(u.display_name)} ({html.escape(u.upn)})</option>"
        for u in rt.world.users
    )
    err = f"<p id='error' role='alert'>{html.escape(error)}</p>" if error else ""
    return HTMLResponse(
        "<!doctype html><title>Sign in - Entra emulator</title><h1>Sign in</h1>"
        "<p>entra-passthrough local Entra emulator (test users only)</p>"
        f"{err}<form method='post'>{_hidden(params)}"
        "<input type='hidden' name='emu_action' value='signin'>"
        f"<label>User <select name='username' id='username'>{options}</select></label><br>"
        "<label>Password <input type='password' name='password' id='password'></label><br>"
        "<button type='submit' id='signin'>Sign in</button></form>"
    )


def _consent_page(
    params: Mapping[str, str], pending: str, client: App, resource: App | None, scopes: list[str]
) -> HTMLResponse:
    items = "".join(f"<li>{html.escape(s)}</li>" for s in scopes)
    what = html.escape(resource.name if resource else "your profile")
    return HTMLResponse(
        "<!doctype html><title>Permissions requested</title><h1>Permissions requested</h1>"
        f"<p><b>{html.escape(client.name)}</b> ({html.escape(client.client_id)}) wants to access "
        f"{what} on your behalf:</p><ul>{items}</ul>"
        f"<form method='post'>{_hidden(params)}"
        "<input type='hidden' name='emu_action' value='consent'>"
        f"<input type='hidden' name='pending' value='{html.escape(pending)}'>"
        "<button type='submit' name='decision' value='accept' id='accept'>Accept</button> "
        "<button type='submit' name='decision' value='cancel' id='cancel'>Cancel</button></form>"
    )


async def authorize(rt: Runtime, request: Request) -> Response:
    rt.count("authorize")
    params: dict[str, str] = dict(request.query_params)
    # A parameter named twice in the query, or twice in the form, is AADSTS9000411. The
    # emulator's own pages post hidden copies of the query's parameters to the same URL, so a
    # name in both the query and the form is no duplicate (the form's value wins).
    sources: list[list[tuple[str, Any]]] = [request.query_params.multi_items()]
    if request.method == "POST":
        form = await request.form()
        sources.append([(k, v) for k, v in form.multi_items() if isinstance(v, str)])
        params.update({k: v for k, v in form.items() if isinstance(v, str)})
    try:
        for pairs in sources:
            e.check_no_duplicates(pairs)
    except e.StsError as err:
        # Refused before anything else is read, on the error page: a malformed request names
        # no redirect URI to trust with the answer.
        return _error_page(err)
    segment = request.path_params["tenant"]
    try:
        tenant = resolve_tenant(rt, segment)
        client_id = params.get("client_id")
        if not client_id:
            raise e.missing_param("client_id")
        if personal_accounts(segment):
            # consumers: personal Microsoft accounts only, a directory without the world's
            # apps. Entra's error page for an app it does not find there.
            raise e.unknown_client(client_id, MSA_DIRECTORY)
        client = rt.world.app(client_id)
        if client is None or client.client_id != client_id:
            raise e.unknown_client(client_id, tenant.id if tenant else segment)
        if client.kind == "agent_identity":
            # Agent ID: child agent identities cannot initiate /authorize, so users cannot
            # consent to them interactively (AADSTS82014, agent-on-behalf-of-oauth-flow); their
            # permissions are inherited from the blueprint.
            raise e.agent_interactive_consent()
        if tenant is None and not client.multi_tenant:
            # A single-tenant app at common/organizations: AADSTS50194 on Entra's error page
            # ("Sorry, but we're having trouble signing you in", MicrosoftDocs/azure-docs#19346),
            # never a sign-in in the user's home tenant.
            raise e.single_tenant_at_common(client.client_id, client.name)
        redirect_uri = params.get("redirect_uri")
        if not redirect_uri or not _redirect_uri_ok(client, redirect_uri):
            # AADSTS50011: shown to the user, never redirected to an unregistered URI.
            raise e.StsError(
                50011,
                "invalid_request",
                f"The redirect URI '{(redirect_uri or '')[:200]}' specified in the request does "
                f"not match the redirect URIs configured for the application '{client.client_id}'.",
            )
    except e.StsError as err:
        return _error_page(err)
    try:
        return _authorize_for_client(rt, request, params, client, tenant)
    except e.StsError as err:
        return _error_to_client(params, err)


def _authorize_for_client(
    rt: Runtime, request: Request, params: dict[str, str], client: App, tenant: Any
) -> Response:
    response_type = params.get("response_type", "")
    if not response_type.split():
        raise e.missing_param("response_type")
    if "code" not in response_type.split():
        # Implicit flows are not emulated: the app enables neither token in them.
        raise e.unsupported_response_type(response_type)
    method = params.get("code_challenge_method")
    challenge = params.get("code_challenge")
    if challenge and method not in (None, "S256", "plain"):
        # v2-oauth2-auth-code-flow: code_challenge_method is "S256" or "plain" (the default);
        # anything else is AADSTS50149 "Invalid Code_Challenge_method parameter."
        # (https://learn.microsoft.com/entra/identity-platform/reference-error-codes).
        raise e.StsError(50149, "invalid_request", "Invalid Code_Challenge_method parameter.")
    if challenge and not 43 <= len(challenge) <= 128:
        # AADSTS501491 "Invalid size of Code_Challenge parameter." (reference-error-codes): a
        # challenge is a verifier (plain) or its unpadded base64url SHA-256 (S256), and RFC 7636
        # section 4.1 puts verifiers at 43-128 characters; padded S256 challenges (44) still fit.
        raise e.StsError(501491, "invalid_request", "Invalid size of Code_Challenge parameter.")
    prompt = params.get("prompt", "")
    if prompt and prompt not in PROMPTS:
        # One value of Entra's list (msal-js-prompt-behavior, "Supported prompt values"), never
        # OIDC's space-separated combination (`consent select_account`: quoted for a v2
        # /authorize URL in opencloud-eu/desktop#871) nor v1's `admin_consent` (v2 refuses it:
        # AzureAD/microsoft-authentication-library-for-java#581): AADSTS90023.
        raise e.StsError(
            90023,
            "invalid_request",
            f"Unsupported 'prompt' value. The request's prompt '{prompt[:40]}' is not one of "
            f"{', '.join(PROMPTS)}; send one of them alone, or no prompt.",
        )
    user: User | None = None
    action = params.get("emu_action")
    if action == "signin":
        user = rt.world.user(params.get("username", ""))
        given = params.get("password", "").encode()
        if user is not None and rt.account_state(user) == "locked":
            # A locked account is refused whatever the password (IdsLocked), on the page.
            locked = e.account_state(50053)
            return _signin_page(rt, params, f"AADSTS{locked.code}: {locked.text}")
        if user is None or not hmac.compare_digest(given, user.password.encode()):
            return _signin_page(
                rt,
                params,
                "AADSTS50126: Error validating credentials due to invalid username or password.",
            )
    elif action == "consent":
        name = rt.take_pending(params.get("pending", ""))
        user = rt.world.user(name) if name else None
    if user is None and params.get("login_hint"):
        user = rt.world.user(params["login_hint"])
    if user is None and prompt not in ("login", "select_account", "create"):
        sid = request.cookies.get(SESSION_COOKIE)
        with rt.lock:
            name = rt.sessions.get(sid or "")
        user = rt.world.user(name) if name else None
    if user is None:
        if prompt == "none":
            raise e.StsError(
                50058,
                "login_required",
                "A silent sign-in request was sent but no user is signed in.",
            )
        return _signin_page(rt, params)
    # The sign-in checks and the consent decision are the device code page's too (_signin).
    signin = sign_in(
        rt,
        client=client,
        user=user,
        tenant=tenant,
        params=params,
        force_consent=prompt == "consent",
    )
    req = signin.req
    if signin.prompt and action != "consent":
        if prompt == "none":
            # At /authorize, prompt=none with consent missing answers error=consent_required
            # (OIDC Core 3.1.2.6; v2-oauth2-auth-code-flow "Error codes for authorization endpoint
            # errors": "consent_required ... usually only returned on the /authorize endpoint").
            err = e.consent_required(client.client_id, client.name)
            raise e.StsError(err.code, "consent_required", err.text)
        signin.check_may_consent(rt)
        if params.get("emulator_consent") == "accept":
            signin.accept(rt)
        else:
            return _consent_page(
                params, rt.new_pending(user.name), client, req.resource, list(signin.prompt)
            )
    if action == "consent" and req.resource is not None:
        if params.get("decision") != "accept":
            raise e.StsError(65004, "access_denied", "User declined to consent to access the app.")
        signin.accept(rt)
    code = rt.new_code(
        CodeRecord(
            user=user.name,
            client_id=client.client_id,
            redirect_uri=params["redirect_uri"],
            scopes=tuple(params.get("scope", "").split()),
            tenant_id=signin.tenant_id,
            challenge=params.get("code_challenge") or None,
            method=(method or "plain") if params.get("code_challenge") else None,
            nonce=params.get("nonce"),
            expires=time.time() + rt.world.lifetimes.code,
            amr=signin.amr,
        )
    )
    response = _to_client(params, {"code": code})
    response.set_cookie(SESSION_COOKIE, _session(rt, user), httponly=True, secure=True)
    return response


def _session(rt: Runtime, user: User) -> str:
    with rt.lock:
        for sid, name in rt.sessions.items():
            if name == user.name:
                return sid
        sid = secrets.token_urlsafe(16)
        rt.sessions[sid] = user.name
        return sid


def _logout_target_ok(rt: Runtime, client_id: str | None, target: str) -> bool:
    """Whether ``post_logout_redirect_uri`` is a redirect URI registered for the app
    ``client_id`` names, or for any app of the world when none is named (the emulator does not
    track which apps a session signed in to)."""
    if client_id:
        app = rt.world.app(client_id)
        apps: tuple[App, ...] = (app,) if app is not None else ()
    else:
        apps = rt.world.apps
    return any(_redirect_uri_ok(app, target) for app in apps)


async def logout(rt: Runtime, request: Request) -> Response:
    # https://learn.microsoft.com/entra/identity-platform/v2-protocols-oidc#send-a-sign-out-request
    rt.count("logout")
    sid = request.cookies.get(SESSION_COOKIE)
    if sid:
        with rt.lock:
            rt.sessions.pop(sid, None)
    target = request.query_params.get("post_logout_redirect_uri")
    response: Response
    if target and _logout_target_ok(rt, request.query_params.get("client_id"), target):
        response = RedirectResponse(target, status_code=302)
    else:
        # Entra redirects only to a URI registered as a redirect URI of the application (the
        # one ``client_id`` names, else one the session signed in to); any other URI is not
        # followed (an open redirect): the user sees the generic signed-out page.
        response = HTMLResponse("<!doctype html><title>Signed out</title><p>You signed out.</p>")
    response.delete_cookie(SESSION_COOKIE)
    return response
