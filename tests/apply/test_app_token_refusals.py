"""An MCP server's 401/403 to the app's own token (an app-only token, as ``user_or_app`` serves
a request without a user) is said as such, with the app's fix: it said "the user's token" and
told the operator to check "that the user may call it" or to grant a delegated scope, which an
app-only token can never carry. A user's token keeps the user's wording. (The connect's path
runs end to end in ``tests/integration/test_pool_app_identity.py``; these are the call's.)"""

from __future__ import annotations

import base64
import json
import time

import httpx2
import pytest

from entra_passthrough.mcp import CallAttempt, ConnectRefusal, call_refusal


def _jwt(payload: dict[str, object]) -> str:
    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(payload)}.c2ln"


APP = _jwt({"oid": "app-sp", "roles": ["Tools.Read"], "exp": time.time() + 3600})
USER = _jwt({"oid": "alice", "scp": "access_as_user", "exp": time.time() + 3600})
OPAQUE = "opaque-token-value"


def _refused(token: str, status: int, challenge: str) -> httpx2.Response:
    request = httpx2.Request(
        "POST", "https://mcp.example/mcp", headers={"Authorization": f"Bearer {token}"}
    )
    return httpx2.Response(
        status, headers={"WWW-Authenticate": f'Bearer error="{challenge}"'}, request=request
    )


@pytest.mark.parametrize(
    ("status", "challenge"), [(401, "invalid_token"), (403, "insufficient_scope")]
)
def test_a_call_refused_to_the_apps_token_says_so(status: int, challenge: str) -> None:
    attempt = CallAttempt()
    attempt.status, attempt.challenge_error, attempt.app_token = status, challenge, True
    error = call_refusal(attempt, "MCP server 'records' refused the token of the call")
    assert error is not None
    text = str(error)
    assert "app-only token" in text
    assert "the user may call it" not in text
    assert "user's own" not in text  # no delegated consent for an app-only token
    assert APP not in text


@pytest.mark.parametrize(
    ("token", "app"), [(APP, True), (USER, False), (OPAQUE, False)], ids=["app", "user", "opaque"]
)
def test_which_token_was_refused_is_read_from_the_refused_request(token: str, app: bool) -> None:
    refusal = ConnectRefusal.of(_refused(token, 401, "invalid_token"))
    assert refusal.app_token is app
    whose = refusal.whose(object())
    assert ("app's own token" in whose) is app
    assert ("user's token" in whose) is not app
    assert "lifecycle identity" in ConnectRefusal.of(_refused(USER, 401, "x")).whose(None)
