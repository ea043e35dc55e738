"""One malformed error answer from the token endpoint stops no one.

MSAL keeps the ``error`` of a failed answer in its application's telemetry buffer and sends it in
the ``x-client-last-telemetry`` header of every later request of that application, clearing it
only after a success. An ``error`` that is not a plain string (a gateway's ``{"code",
"message"}``, a number, ``null``) made every later request raise ``TypeError`` before sending;
one with CR/LF or outside Latin-1 made requests refuse the header (a "connection" failure, then
the negative cache): one such answer stopped every user of that app for good. The guarded HTTP
layer hands MSAL an answer whose ``error`` is a short ASCII word (``_http.oauth_error_body``).

And a 3xx/4xx page instead of an OAuth error (a proxy's, a firewall's) is a ``SourceUnavailable``
naming the status and what to check, not ``JSONDecodeError``.

Real MSAL against the emulator over HTTPS; the bad answer comes from a second HTTPS server on
127.0.0.1 (the emulator's certificate), for exactly the POSTs the session is armed for.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from _support.servers import serve_in_thread
from entra_passthrough import (
    AgentIdentityOnBehalfOf,
    AssertionNotUsable,
    EntraError,
    SourceUnavailable,
    Timeouts,
    TokenAcquisitionError,
    TokenChain,
    bind_caller,
)
from entra_passthrough._http import GuardedHttpClient, Throttle, TransportFailure
from entra_passthrough.testing import EntraEmulator

from .conftest import agent_obo_chain, mcp_scope, token_posts

TIMEOUTS = Timeouts(connect=2.0, read=5.0, deadline=20.0, retries=1, backoff=0.01, max_backoff=0.02)

OBO_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
JSON = {"Content-Type": "application/json"}

#: (status, headers, body) of the one bad answer; the body is JSON text unless it is a str.
MALFORMED: dict[str, tuple[int, dict[str, str], Any]] = {
    "error_object": (400, JSON, {"error": {"code": "BadRequest", "message": "gateway"}}),
    "error_number": (400, JSON, {"error": 400, "error_description": "x"}),
    "error_null": (400, JSON, {"error": None, "error_description": "x"}),
    "error_crlf": (
        400,
        JSON,
        {"error": "invalid_grant\r\nX-Evil: 1", "error_description": "AADSTS50013: x"},
    ),
    "error_not_latin1": (
        400,
        JSON,
        {"error": "invalid_grant\u2713", "error_description": "AADSTS50013: x"},
    ),
}

#: Planted in the pages below: never in a message, a repr or a log line.
PLANTED = "S3cr3tValue_" + "Q7w9" * 8

PAGES: dict[str, tuple[int, dict[str, str], Any]] = {
    "400_html_echoing_the_form": (
        400,
        {"Content-Type": "text/html"},
        lambda form: f"<html><h1>Bad Request</h1><pre>{form}</pre>{PLANTED}</html>",
    ),
    "403_firewall_html": (403, {"Content-Type": "text/html"}, f"<html>Blocked. {PLANTED}</html>"),
    "407_proxy_text": (407, {"Proxy-Authenticate": "Basic"}, f"proxy auth required {PLANTED}"),
    "401_text_echoing_the_form": (401, {"Content-Type": "text/plain"}, lambda form: form),
    "400_json_list": (400, JSON, [{"error": "invalid_grant", "access_token": PLANTED}]),
}


class BadAnswers:
    """An HTTPS server on 127.0.0.1 that answers every request with ``answer`` and counts them,
    remembering the last form it was sent (a page may echo it)."""

    def __init__(self, base: str) -> None:
        self.url = f"{base}/token"
        self.answer: tuple[int, dict[str, str], Any] = (400, JSON, {"error": "invalid_grant"})
        self.hits = 0

    async def handle(self, request: Request) -> Response:
        form = (await request.body()).decode("utf-8", "replace")
        self.hits += 1
        status, headers, body = self.answer
        if callable(body):
            body = body(form)
        text = body if isinstance(body, str) else json.dumps(body)
        return Response(text, status_code=status, headers=headers)


@pytest.fixture(scope="module")
def bad(entra_emulator: EntraEmulator) -> Iterator[BadAnswers]:
    holder: list[BadAnswers] = []

    def make(base: str) -> Starlette:
        holder.append(BadAnswers(base))
        return Starlette(routes=[Route("/token", holder[0].handle, methods=["POST"])])

    with serve_in_thread(
        make_app=make,
        certfile=entra_emulator.server_cert_file,
        keyfile=entra_emulator.server_key_file,
        name="bad-answers",
    ):
        yield holder[0]


class ArmedSession(requests.Session):
    """The application's session to the emulator; the next ``armed`` token POSTs (of ``grant``,
    when given) go to the bad-answer server instead. Records the ``x-client-last-telemetry``
    header of every token POST it sends to the emulator."""

    def __init__(self, idp: EntraEmulator, bad: BadAnswers) -> None:
        super().__init__()
        self.verify = idp.ca_file
        self.trust_env = False
        self.bad = bad
        self.armed = 0
        self.grant: str | None = None
        self.telemetry: list[object] = []
        self._lock = threading.Lock()

    def arm(self, *, grant: str | None = None, count: int = 1) -> None:
        with self._lock:
            self.grant, self.armed = grant, count

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if method.upper() == "POST" and "/oauth2/" in url:
            data = kwargs.get("data")
            grant = data.get("grant_type") if isinstance(data, dict) else None
            with self._lock:
                if self.armed and self.grant in (None, grant):
                    self.armed -= 1
                    url = self.bad.url
                else:
                    headers = kwargs.get("headers") or {}
                    self.telemetry.append(headers.get("x-client-last-telemetry"))
        return super().request(method, url, *args, **kwargs)


class Users:
    """A fresh assertion per call (a new ``uti``): every call is a token request, never a hit
    of the chain's cache."""

    def __init__(self, idp: EntraEmulator, audience: str) -> None:
        self.idp = idp
        self.audience = audience
        self.n = 0

    def token(self, user: str) -> str:
        self.n += 1
        return self.idp.user_token(user, audience=self.audience, extra_claims={"uti": f"m{self.n}"})


def get_as(chain: TokenChain, idp: EntraEmulator, token: str) -> str:
    with bind_caller(token=token):
        return chain.get_token(mcp_scope(idp)).token


def assert_sane_telemetry(session: ArmedSession) -> None:
    """What MSAL sent in ``x-client-last-telemetry`` after the bad answer: a plain ASCII header
    naming the normalised error (the header MSAL builds from the failure it kept)."""
    after = [h for h in session.telemetry if isinstance(h, str) and "|" in h]
    assert after, session.telemetry
    for header in after:
        assert header.isascii(), repr(header)
        assert header.isprintable(), repr(header)


@pytest.fixture
def obo(idp: EntraEmulator, bad: BadAnswers) -> Iterator[tuple[TokenChain, ArmedSession]]:
    bad.hits = 0
    with ArmedSession(idp, bad) as http:
        chain = agent_obo_chain(idp, http, TIMEOUTS)
        try:
            yield chain, http
        finally:
            chain.close()


@pytest.mark.parametrize("shape", sorted(MALFORMED))
def test_one_malformed_error_answer_stops_no_one(
    idp: EntraEmulator, bad: BadAnswers, obo: tuple[TokenChain, ArmedSession], shape: str
) -> None:
    chain, http = obo
    users = Users(idp, idp.agent.client_id)
    assert get_as(chain, idp, users.token("alice"))  # the app works (discovery, one POST)

    bad.answer = MALFORMED[shape]
    http.arm(grant=OBO_GRANT)
    with pytest.raises(TokenAcquisitionError) as info:
        get_as(chain, idp, users.token("alice"))
    assert bad.hits == 1

    # Every user of the app gets tokens again, each a POST the emulator answers.
    before = token_posts(idp)
    http.telemetry.clear()
    for user in ("alice", "bob", "alice", "bob"):
        assert get_as(chain, idp, users.token(user))
    assert token_posts(idp) - before == 4
    assert bad.hits == 1
    assert_sane_telemetry(http)

    # The bad answer itself: an answer, typed as one (not a transport failure), its AADSTS
    # code still decoded from the description.
    err = info.value
    assert isinstance(err, EntraError | AssertionNotUsable), repr(err)
    if "AADSTS50013" in json.dumps(MALFORMED[shape][2]):
        assert isinstance(err, AssertionNotUsable), repr(err)
    else:
        assert err.error == "invalid_request", repr(err)
    assert "X-Evil" not in str(err)


@pytest.mark.parametrize("shape", ["error_object", "error_crlf"])
@pytest.mark.parametrize("grant", ["client_credentials", OBO_GRANT])
def test_agent_identity_apps_recover_from_one_malformed_answer(
    idp: EntraEmulator, bad: BadAnswers, grant: str, shape: str
) -> None:
    """Both MSAL apps of ``AgentIdentityOnBehalfOf``: the blueprint's (T1, client credentials)
    and the agent identity's (on-behalf-of)."""
    bad.hits = 0
    bad.answer = MALFORMED[shape]
    users = Users(idp, idp.blueprint.client_id)
    with ArmedSession(idp, bad) as http:
        chain = TokenChain(
            [
                AgentIdentityOnBehalfOf(
                    blueprint_client_id=idp.blueprint.client_id,
                    agent_identity_id=idp.agent_identity.client_id,
                    tenant_id=idp.tenant_id,
                    client_secret=idp.blueprint.secret,
                    authority_host=idp.url,
                    http_client=http,
                    timeouts=TIMEOUTS,
                )
            ]
        )
        try:
            if grant == OBO_GRANT:
                assert get_as(chain, idp, users.token("alice"))  # T1 fetched and kept
            http.arm(grant=grant)
            with pytest.raises(TokenAcquisitionError) as info:
                get_as(chain, idp, users.token("alice"))
            assert bad.hits == 1
            before = token_posts(idp)
            http.telemetry.clear()
            for user in ("alice", "bob", "alice"):
                assert get_as(chain, idp, users.token(user))
            # The T1 request again (client credentials), then one OBO POST per call; T1 kept.
            assert token_posts(idp) - before == 3 + (grant == "client_credentials")
            assert bad.hits == 1
            assert_sane_telemetry(http)
            assert not isinstance(info.value, SourceUnavailable), repr(info.value)
        finally:
            chain.close()


@pytest.mark.parametrize("page", sorted(PAGES))
def test_a_page_instead_of_an_oauth_error_names_the_status_and_what_to_check(
    idp: EntraEmulator,
    bad: BadAnswers,
    obo: tuple[TokenChain, ArmedSession],
    page: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    chain, http = obo
    users = Users(idp, idp.agent.client_id)
    assert get_as(chain, idp, users.token("alice"))
    status = PAGES[page][0]
    bad.answer = PAGES[page]
    http.arm(grant=OBO_GRANT)
    assertion = users.token("alice")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(SourceUnavailable) as info:
        get_as(chain, idp, assertion)
    err = info.value
    text = f"{err}\n{err!r}\n{err.fix}"
    assert f"HTTP {status}" in str(err), text
    assert "JSONDecodeError" not in text, text
    assert "AttributeError" not in text, text
    assert err.fix is not None
    assert "proxy" in err.fix, text
    assert "AZURE_AUTHORITY_HOST" in err.fix, text
    assert bad.hits == 1  # an answer: not retried
    logs = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (PLANTED, assertion, idp.agent.secret):
        for where in (text, logs):
            assert secret[:16] not in where, page
            assert secret[-16:] not in where, page
    # Not cached, nothing paused: the next request goes out and is answered.
    before = token_posts(idp)
    assert get_as(chain, idp, users.token("bob"))
    assert token_posts(idp) - before == 1


def test_only_token_requests_are_read_as_oauth_answers(idp: EntraEmulator, bad: BadAnswers) -> None:
    """A managed identity endpoint's answers (no ``grant_type``) go back as they came: their
    sources read their own error shapes. A page is no answer of theirs either (MSAL's
    ``json.loads`` raised), except a challenge: Azure Arc's 401 names its key file in
    ``WWW-Authenticate``, with no body."""
    bad.hits = 0
    bad.answer = (400, JSON, {"error": {"code": "ManagedIdentityNotFound", "message": "m"}})
    session = requests.Session()
    session.verify = idp.ca_file
    session.trust_env = False
    client = GuardedHttpClient(session, timeouts=TIMEOUTS, throttle=Throttle())
    try:
        raw = client.post(bad.url, data={"resource": "r"})
        assert json.loads(raw.text)["error"]["code"] == "ManagedIdentityNotFound"
        answer = client.post(bad.url, data={"grant_type": "client_credentials"})
        assert answer.status_code == 400
        assert json.loads(answer.text)["error"] == "invalid_request"
        assert json.loads(answer.text)["error_description"] == "m"
        bad.answer = (403, {}, "<html>blocked</html>")
        with pytest.raises(TransportFailure) as info:
            client.post(bad.url, data={"grant_type": "client_credentials"})
        assert (info.value.kind, info.value.status) == ("page", 403)
        with pytest.raises(TransportFailure) as info:
            client.post(bad.url, data={"resource": "r"})
        assert (info.value.kind, info.value.status) == ("page", 403)
        bad.answer = (401, {"WWW-Authenticate": "Basic realm=/var/opt/key"}, "")
        assert client.post(bad.url, data={"resource": "r"}).status_code == 401
        assert bad.hits == 5
    finally:
        client.close()
