"""Unit checks of the guarded HTTP layer's parsing and configuration (no network)."""

from __future__ import annotations

import email.utils
import time

import pytest

from entra_passthrough import ConfigurationError, Timeouts
from entra_passthrough._http import Throttle, TransportFailure, retry_after_seconds


@pytest.mark.parametrize(
    ("value", "expected"),
    [("30", 30.0), (" 7 ", 7.0), ("0", 0.0), ("-5", 0.0), ("999999", 3600.0), ("soon", None)],
)
def test_retry_after_seconds(value: str, expected: float | None) -> None:
    assert retry_after_seconds({"Retry-After": value}) == expected


def test_retry_after_http_date_and_absent() -> None:
    now = time.time()
    date = email.utils.formatdate(now + 20, usegmt=True)
    seconds = retry_after_seconds({"retry-after": date}, now=now)
    assert seconds is not None
    assert 18 <= seconds <= 21
    assert retry_after_seconds({}) is None
    assert retry_after_seconds({"Retry-After": "nan"}) is None


def test_timeouts_validate_and_read_the_environment() -> None:
    env = {
        "ENTRA_PASSTHROUGH_CONNECT_TIMEOUT": "2",
        "ENTRA_PASSTHROUGH_READ_TIMEOUT": "3.5",
        "ENTRA_PASSTHROUGH_TOKEN_DEADLINE": "12",
        "ENTRA_PASSTHROUGH_TOKEN_RETRIES": "1",
    }
    t = Timeouts.from_env(env)
    assert (t.connect, t.read, t.deadline, t.retries) == (2.0, 3.5, 12.0, 1)
    assert Timeouts.from_env({}) == Timeouts()
    with pytest.raises(ConfigurationError, match="READ_TIMEOUT"):
        Timeouts.from_env({"ENTRA_PASSTHROUGH_READ_TIMEOUT": "fast"})
    with pytest.raises(ConfigurationError):
        Timeouts(read=0)
    with pytest.raises(ConfigurationError):
        Timeouts(retries=11)


def test_throttle_entries_are_bounded() -> None:
    now = [0.0]
    throttle = Throttle(clock=lambda: now[0])
    failure = TransportFailure("status", status=503)
    for i in range(Throttle.MAX_ENTRIES + 100):
        throttle.block_key(f"k{i}", 60.0, failure)
    assert len(throttle._keys) == Throttle.MAX_ENTRIES
    blocked, probe = throttle.admit("a", "k4095", probe_window=1.0, wait_until=1e12)
    assert blocked is not None
    assert blocked.cached
    assert probe is None
    now[0] = 61.0  # lapsed: nothing blocks, nothing is probing (key entries have no probe)
    assert throttle.admit("a", "k4095", probe_window=1.0, wait_until=1e12) == (None, None)


def test_failure_text_names_no_url_or_body() -> None:
    text = str(TransportFailure("throttled", status=429, retry_after=3.0, attempts=2))
    assert "429" in text
    assert "http" not in text.lower().replace("http 429", "")


def test_gate_key_is_the_client_at_the_endpoint() -> None:
    """A ``Retry-After`` closes one client application at one token endpoint (Entra throttles
    per app and tenant); a managed identity endpoint is closed whichever identity asked."""
    from entra_passthrough._http import gate_key

    token = "https://login.example/tenant-a/oauth2/v2.0/token"
    a = gate_key(token, {"client_id": "app-a", "grant_type": "x", "assertion": "secret-value"})
    b = gate_key(token, {"client_id": "app-b", "grant_type": "x"})
    other_tenant = gate_key(token.replace("tenant-a", "tenant-b"), {"client_id": "app-a"})
    assert len({a, b, other_tenant}) == 3
    assert a == gate_key(token, {"client_id": "app-a", "scope": "other"})  # per app, not scope
    assert "secret-value" not in a
    imds = "http://169.254.169.254/metadata/identity/oauth2/token"
    assert gate_key(imds + "?api-version=2018-02-01&client_id=x") == gate_key(imds) == imds


def test_aadsts50196_says_it_is_throttling() -> None:
    """Entra's throttling of user-facing flows is a 400 with AADSTS50196, not a 429: the typed
    error names it and says to stop re-requesting."""
    from entra_passthrough._errors import error_from_entra

    error = error_from_entra(
        {
            "error": "invalid_grant",
            "error_description": "AADSTS50196: The server terminated an operation because it "
            "encountered a client request loop.",
            "error_codes": [50196],
        },
        source="obo",
    )
    assert error.code is not None
    assert error.code.code == 50196
    assert "LoopDetected" in str(error)
    assert "throttling" in str(error)
    assert "cache tokens" in str(error)


@pytest.mark.parametrize(
    ("retry_after", "shown"),
    [
        (3600.0, "retry in 3600 s"),
        (30.0, "retry in 30 s"),
        (1.5, "retry in 1.5 s"),
        (None, "retry later"),
    ],
)
def test_throttled_says_when_in_plain_seconds_and_blames_no_one_it_did_not_ask(
    retry_after: float | None, shown: str
) -> None:
    """A managed identity endpoint's 429 said "Entra is throttling requests", and an hour was
    "retry in 3.6e+03 s"."""
    from entra_passthrough import Throttled

    err = Throttled(
        "managed identity token request failed: the managed identity endpoint answered HTTP 429",
        retry_after=retry_after,
        status=429,
        source="managed_identity",
    )
    assert shown in str(err)
    assert "e+" not in str(err)
    assert "Entra is throttling" not in str(err)


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (400, {"error": {"code": "BadRequest", "message": "gateway"}}, "invalid_request"),
        (400, {"error": 400}, "invalid_request"),
        (400, {"error": None}, "invalid_request"),
        (400, {}, "invalid_request"),
        (401, {"error": "invalid_grant\r\nX-Evil: 1"}, "invalid_request"),
        (400, {"error": "invalid_grant\u2713"}, "invalid_request"),
        (400, {"error": "a,b|c"}, "invalid_request"),  # MSAL's header separators
        (400, {"error": "x" * 65}, "invalid_request"),
        (400, {"error": "\uff11"}, "invalid_request"),  # a fullwidth digit: no ASCII word
        (500, {"error": ["server"]}, "server_error"),
        (200, {"error": {"code": "x"}, "access_token": "t"}, "server_error"),
    ],
)
def test_oauth_error_body_makes_error_a_short_ascii_word(
    status: int, body: dict[str, object], error: str
) -> None:
    from entra_passthrough._http import oauth_error_body

    before = dict(body)
    fixed = oauth_error_body(body, status)
    assert fixed["error"] == error
    assert body == before  # a new body: the parsed answer is not changed in place


def test_oauth_error_body_keeps_sane_bodies_and_usable_fields() -> None:
    from entra_passthrough._errors import code_in_body
    from entra_passthrough._http import oauth_error_body

    entra = {
        "error": "invalid_grant",
        "error_description": "AADSTS50013: Assertion failed signature validation.",
        "error_codes": [50013],
        "suberror": "bad_token",
        "correlation_id": "1c2d",
    }
    assert oauth_error_body(entra, 400) is entra  # Entra's answers go to MSAL as they came
    token = {"access_token": "t", "token_type": "Bearer", "expires_in": 3600}
    assert oauth_error_body(token, 200) is token
    # A 2xx saying no error: the key goes (MSAL would record a failure of ``None``).
    assert oauth_error_body({"access_token": "t", "error": None}, 200) == {"access_token": "t"}
    # An error object's message becomes the description: its AADSTS code is still decoded.
    nested = {"error": {"code": "x", "message": "AADSTS65001: consent"}}
    fixed = oauth_error_body(nested, 400)
    assert fixed == {"error": "invalid_request", "error_description": "AADSTS65001: consent"}
    assert code_in_body(fixed) == 65001
    # ... unless the body has a description of its own; one that is no string is dropped.
    assert oauth_error_body({**nested, "error_description": "d"}, 400)["error_description"] == "d"
    assert "error_description" not in oauth_error_body({**nested, "error_description": 5}, 400)
    # A suberror that is no word is dropped, the rest kept.
    odd = {**entra, "suberror": {"x": 1}}
    assert oauth_error_body(odd, 400) == {k: v for k, v in entra.items() if k != "suberror"}


def test_oauth_error_body_never_keeps_a_token_beside_an_error_status() -> None:
    # MSAL reads ``access_token`` whatever the status: an error status's token is dropped (the
    # consent app's ``OAuthBodies`` and the guarded layer both hand MSAL this body).
    from entra_passthrough._http import oauth_error_body

    fields = {"access_token": "a", "refresh_token": "r", "id_token": "i", "client_info": "c"}
    entra = {"error": "invalid_grant", "error_codes": [50013], **fields}
    assert oauth_error_body(entra, 400) == {"error": "invalid_grant", "error_codes": [50013]}
    success_shaped = {"token_type": "Bearer", "expires_in": 60, **fields}
    for status in (302, 401, 403, 500):
        fixed = oauth_error_body(success_shaped, status)
        assert not set(fields) & set(fixed), status
        assert fixed["error"] in ("invalid_request", "server_error")
    odd = {"error": {"code": "x"}, **fields}
    assert not set(fields) & set(oauth_error_body(odd, 400))
    token = {"token_type": "Bearer", "expires_in": 60, **fields}
    assert oauth_error_body(token, 200) is token  # a success keeps its token
