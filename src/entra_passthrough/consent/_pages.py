"""The broker's HTML (and JSON) answers: small, escaped, uncacheable, unframeable."""

from __future__ import annotations

import html

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem;"
    "color:#222}h1{font-size:1.4rem}.err{color:#a00}code{background:#eee;padding:0 .2rem}"
    "button{font-size:1rem;padding:.4rem 1rem}"
)


def security_headers(form_action: str = "'self'") -> dict[str, str]:
    return {
        "Cache-Control": "no-store",
        "Pragma": "no-cache",
        # The callback URL carries the authorization code: never let it leak as a referrer.
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": (
            f"default-src 'none'; style-src 'unsafe-inline'; form-action {form_action}; "
            "frame-ancestors 'none'; base-uri 'none'"
        ),
    }


def _page(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>"
    )


def wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


#: What a refused sign-in's page tells the user to do, unless the refusal says otherwise.
SIGN_IN_AGAIN = "Go back to the chat and use the sign-in link again."


def error_response(
    request: Request,
    code: str,
    message: str,
    *,
    status: int = 400,
    next_step: str | None = None,
    stored_note: str = "Nothing was stored.",
) -> Response:
    """A clear error; nothing was stored (a store write whose outcome is unknown is
    ``outcome_unknown_response``). ``message`` must be safe to show (no secrets);
    ``next_step`` (default: use the sign-in link again) what the user can do about it;
    ``stored_note`` what the refusal left behind, said before it."""
    answer: dict[str, object] = {"error": code, "error_description": message, "stored": False}
    if next_step:
        answer["next_step"] = next_step
    return _refusal(
        request,
        answer,
        title="Sign-in failed",
        heading="Sign-in could not be completed",
        tail=f"{stored_note} {next_step or SIGN_IN_AGAIN}",
        status=status,
    )


def _refusal(
    request: Request,
    answer: dict[str, object],
    *,
    title: str,
    heading: str,
    tail: str,
    status: int,
) -> Response:
    """A refusal page (or ``answer`` as JSON): the heading, the message, the error code and
    ``tail`` (what it left, what to do)."""
    if wants_json(request):
        return JSONResponse(answer, status_code=status, headers=security_headers())
    body = (
        f'<h1 class="err">{html.escape(heading)}</h1>'
        f"<p>{html.escape(str(answer['error_description']))}</p>"
        f"<p>Error: <code>{html.escape(str(answer['error']))}</code>. {html.escape(tail)}</p>"
    )
    return HTMLResponse(_page(title, body), status_code=status, headers=security_headers())


#: What a refused sign-out leaves, and how the user can still revoke the access (docs/consent.md,
#: "Sign-out").
SIGNOUT_NOT_DONE = (
    "Nothing was deleted: the agent can still act on your behalf with the access you granted. "
    "To revoke it, ask the agent for a new sign-out link, or ask its operator; changing your "
    "password also ends it."
)


def signout_error_response(
    request: Request, code: str, message: str, *, status: int = 400
) -> Response:
    """A refused sign-out: what happened, that the access still stands, how to revoke it."""
    return _refusal(
        request,
        {"error": code, "error_description": message, "revoked": False},
        title="Sign-out failed",
        heading="Sign-out could not be completed",
        tail=SIGNOUT_NOT_DONE,
        status=status,
    )


def success_response(
    request: Request,
    *,
    who: str | None,
    revoke_ticket: str,
    revoke_path: str,
    form_action: str,
    reloaded: bool = False,
) -> Response:
    """The signed-in page; ``reloaded``: the same browser sent the completed sign-in's answer
    again (a reload, Back), which changed nothing."""
    if wants_json(request):
        answer: dict[str, object] = {"status": "ok", "user": who}
        if reloaded:
            answer["already_signed_in"] = True
        return JSONResponse(answer, headers=security_headers())
    name = html.escape(who or "your account")
    if reloaded:
        said = (
            "<h1>You are already signed in</h1>"
            f"<p>This page was reloaded: you signed in as <strong>{name}</strong> earlier, and "
            "nothing was changed now. You can return to the chat; the agent can act on your "
            "behalf for the access you granted.</p>"
        )
    else:
        said = (
            "<h1>You are signed in</h1>"
            f"<p>Signed in as <strong>{name}</strong>. You can return to the chat; the agent "
            "can now act on your behalf for the access you granted.</p>"
        )
    body = (
        f"{said}"
        f'<form method="post" action="{html.escape(revoke_path)}">'
        f'<input type="hidden" name="t" value="{html.escape(revoke_ticket)}">'
        '<button type="submit">Sign out and revoke this access</button></form>'
    )
    return HTMLResponse(_page("Signed in", body), headers=security_headers(form_action=form_action))


#: The page of a sign-in whose code was redeemed but whose store write did not answer (a Redis
#: timeout: the write may still run when it wakes), and whose grant a re-read did not find.
OUTCOME_UNKNOWN = (
    "You signed in at the identity provider, but saving the sign-in did not finish (the agent's "
    "store did not confirm it), so it may have been saved."
)
OUTCOME_UNKNOWN_NEXT = (
    "If the agent asks you to sign in again, use the sign-in link it gives you. If you do not "
    "want the agent to act on your behalf, sign out below: that removes the access if it was "
    "saved."
)
#: Its JSON form's next step (no form to sign out with).
OUTCOME_UNKNOWN_NEXT_JSON = (
    "If the agent asks you to sign in again, use the sign-in link it gives you. To remove the "
    "access if it was saved, ask the agent for a sign-out link."
)


def outcome_unknown_response(
    request: Request, *, revoke_ticket: str, revoke_path: str, form_action: str
) -> Response:
    """503 ``store_outcome_unknown``: the sign-in completed at the identity provider, saving it
    did not finish and may have happened (never "nothing was stored": JSON ``stored: null``),
    with the success page's sign-out form so the user can withdraw what may be stored."""
    if wants_json(request):
        answer = {
            "error": "store_outcome_unknown",
            "error_description": OUTCOME_UNKNOWN,
            "stored": None,
            "next_step": OUTCOME_UNKNOWN_NEXT_JSON,
        }
        return JSONResponse(answer, status_code=503, headers=security_headers())
    body = (
        '<h1 class="err">Sign-in may not have been saved</h1>'
        f"<p>{html.escape(OUTCOME_UNKNOWN)}</p>"
        "<p>Error: <code>store_outcome_unknown</code>. "
        f"{html.escape(OUTCOME_UNKNOWN_NEXT)}</p>"
        f'<form method="post" action="{html.escape(revoke_path)}">'
        f'<input type="hidden" name="t" value="{html.escape(revoke_ticket)}">'
        '<button type="submit">Sign out and revoke this access</button></form>'
    )
    return HTMLResponse(
        _page("Sign-in may not have been saved", body),
        status_code=503,
        headers=security_headers(form_action=form_action),
    )


def signed_out_since_response(request: Request) -> Response:
    """The same browser sent a completed sign-in's answer again, and its grant is gone since
    (signed out, or revoked at Entra): say so, change nothing."""
    message = (
        "This page was reloaded: you signed in here earlier, but that access has been revoked "
        "since (signed out). Nothing was changed."
    )
    if wants_json(request):
        return JSONResponse(
            {"error": "signed_out", "error_description": message, "stored": False},
            status_code=400,
            headers=security_headers(),
        )
    body = (
        "<h1>You are signed out</h1>"
        f"<p>{html.escape(message)}</p><p>To sign in again, use a new sign-in link from the "
        "chat.</p>"
    )
    return HTMLResponse(_page("Signed out", body), status_code=400, headers=security_headers())


def confirm_revoke_response(*, ticket: str, revoke_path: str, form_action: str) -> Response:
    body = (
        "<h1>Sign out</h1><p>Revoke the access you granted to the agent?</p>"
        f'<form method="post" action="{html.escape(revoke_path)}">'
        f'<input type="hidden" name="t" value="{html.escape(ticket)}">'
        '<button type="submit">Sign out and revoke</button></form>'
    )
    return HTMLResponse(_page("Sign out", body), headers=security_headers(form_action))
