"""One malformed answer from the token endpoint does not stop the consent app: MSAL keeps the
``error`` of the last failure and sends it in a header of the app's next request, so an
``error`` that is not a plain word (a gateway's ``{"code", "message"}``, CR/LF) made every later
refresh and code redemption fail before sending, for every user (``_http.OAuthBodies``). Real
MSAL against the emulator; the one bad answer comes from a wrapper around its session."""

from __future__ import annotations

import json
from typing import Any

import pytest

from _support.consent import ConsentEnv
from entra_passthrough import AppCredential
from entra_passthrough._consent_client import ConsentClient


class _Answer:
    def __init__(self, body: object) -> None:
        self.status_code = 400
        self.text = json.dumps(body)
        self.headers: dict[str, str] = {"content-type": "application/json"}


class _OneBadAnswer:
    """The emulator's session, except that the first token POST is answered ``bad`` here."""

    def __init__(self, inner: Any, bad: object) -> None:
        self.inner = inner
        self.bad: object | None = bad
        self.sent = 0

    def post(self, url: str, *args: Any, **kwargs: Any) -> Any:
        if self.bad is not None:
            bad, self.bad = self.bad, None
            return _Answer(bad)
        self.sent += 1
        return self.inner.post(url, *args, **kwargs)

    def get(self, url: str, *args: Any, **kwargs: Any) -> Any:
        return self.inner.get(url, *args, **kwargs)

    def close(self) -> None:
        self.inner.close()


@pytest.mark.parametrize(
    "bad",
    [
        {"error": {"code": "BadRequest", "message": "gateway"}},
        {"error": 400},
        {"error": "invalid_grant\r\nX-Injected: 1"},
        {"error": "invalid_grant\u2713"},
    ],
    ids=["object", "number", "crlf", "not-latin-1"],
)
def test_the_request_after_a_malformed_answer_is_sent(consent_env: ConsentEnv, bad: object) -> None:
    env = consent_env
    session = _OneBadAnswer(env.idp.msal_http_client(), bad)
    client = ConsentClient(
        AppCredential(
            client_id=env.app.client_id,
            tenant_id=env.idp.tenant_id,
            client_secret=env.app.secret,
            authority_host=env.idp.url,
        ),
        http_client=session,
        max_workers=1,
    )
    scopes = [env.mcp_scope]
    try:
        first = client.refresh("not-a-refresh-token", scopes, None)
        assert isinstance(first.get("error"), str)
        assert first["error"].isascii()
        assert "\n" not in first["error"]
        # The next redemption reaches Entra (which refuses this refresh token, as it should).
        second = client.refresh("not-a-refresh-token", scopes, None)
        assert session.sent == 1
        assert second.get("error") == "invalid_grant", second
    finally:
        client.pool.close()
