"""What the guarded HTTP layer relies on in MSAL to keep one bad token answer from stopping an
application (``_http.oauth_error_body``): MSAL reads a token answer through the ``text``,
``status_code`` and ``headers`` of what its ``http_client`` returns, and sends the ``error`` of
the last failure in the ``x-client-last-telemetry`` header of the application's next request.
Real MSAL, a fake transport (no network): each failure names the seam to update."""

from __future__ import annotations

import json
from typing import Any

import msal

from entra_passthrough._http import GuardedHttpClient, Throttle, Timeouts
from entra_passthrough._msal import confidential_app

AUTHORITY = "https://login.microsoftonline.com/contoso.example"
TOKEN_ENDPOINT = f"{AUTHORITY}/oauth2/v2.0/token"
MSAL = f"MSAL {msal.__version__}"


class _Answer:
    def __init__(self, status: int, body: object) -> None:
        self.status_code = status
        self.text = json.dumps(body)
        self.headers: dict[str, str] = {}


class _Transport:
    """MSAL's discovery document for GETs; the queued answers for the token POSTs, whose
    headers it records."""

    def __init__(self, answers: list[tuple[int, object]]) -> None:
        self.answers = answers
        self.sent: list[dict[str, str]] = []

    def get(self, url: str, **_: Any) -> _Answer:
        return _Answer(
            200,
            {
                "authorization_endpoint": f"{AUTHORITY}/oauth2/v2.0/authorize",
                "token_endpoint": TOKEN_ENDPOINT,
                "issuer": f"{AUTHORITY}/v2.0",
            },
        )

    def post(self, url: str, headers: Any = None, **_: Any) -> _Answer:
        self.sent.append(dict(headers or {}))
        status, body = self.answers.pop(0)
        return _Answer(status, body)

    def close(self) -> None:
        return None


def test_msal_reads_the_answer_the_layer_hands_it_and_reports_its_error_next_time() -> None:
    transport = _Transport(
        [
            (400, {"error": {"code": "BadRequest", "message": "gateway"}}),
            (200, {"access_token": "at", "token_type": "Bearer", "expires_in": 3600}),
        ]
    )
    app = confidential_app(
        "client",
        credential="secret",
        authority=AUTHORITY,
        http_client=GuardedHttpClient(transport, timeouts=Timeouts(retries=0), throttle=Throttle()),
    )
    failed = app.acquire_token_on_behalf_of("assertion", ["api://x/.default"])
    assert failed.get("error") == "invalid_request", (
        f"{MSAL} no longer reads the token answer from the response's text/status_code/headers "
        "the guarded layer hands it (OAuthAnswer): update _http.GuardedHttpClient._oauth_answer."
    )
    done = app.acquire_token_on_behalf_of("assertion", ["api://x/.default"])
    assert done.get("access_token") == "at", done
    assert len(transport.sent) == 2  # the request after the bad answer was sent
    header = {k.lower(): v for k, v in transport.sent[1].items()}.get("x-client-last-telemetry")
    assert isinstance(header, str), header
    assert "invalid_request" in header, (
        f"{MSAL} changed how it reports the last failure ({header!r}); check whether an "
        "error answer can still poison later requests (_http.oauth_error_body's docstring)."
    )
    assert header.isascii()
    assert header.isprintable()
