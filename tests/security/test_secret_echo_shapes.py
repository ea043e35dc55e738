"""A gateway or proxy that echoes the token request back in a shape other than a form or JSON (a
Python dict's repr, ``field: value``, a form URL-encoded once more, single-quoted JSON, XML):
a secret field's value, shorter than the 40-character opaque rule, never reaches the exception
message (``error_from_entra``) nor a log line (``redact``)."""

from __future__ import annotations

import logging

import pytest

from entra_passthrough._errors import error_from_entra, safe_text
from entra_passthrough._redact import RedactingFilter, redact

SHORT = "Zq8~Short.Secret_123"  # 20 characters: under the opaque rule
FIELDS = [
    "client_secret",
    "client_assertion",
    "assertion",
    "refresh_token",
    "code",
    "code_verifier",
    "password",
    "access_token",
    "Client_Secret",
]
SHAPES = {
    "python dict repr": "Bad request {{'client_id': 'abc', '{f}': '{s}', 'grant_type': 'x'}}",
    "dict repr, double-quoted value": "got {{'{f}': \"{s}\"}}",
    "header style": "rejected: {f}: {s}",
    "header style, no space": "{f}:{s}",
    "header style, space before colon": "{f} : {s}, then more",
    "urlencoded once more": "body client_id%3Dabc%26{f}%3D{s}%26scope%3Dx",
    "urlencoded, lower-case escape": "body {f}%3d{s}",
    "json with spaces before colon": '{{"{f}" : "{s}"}}',
    "json single-quoted key": "{{'{f}':'{s}'}}",
    "json, cut": "{{'{f}': '{s}",
    "xml": "<{f}>{s}</{f}>",
    "xml with an attribute": '<{f} type="x">{s}</{f}>',
}


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_a_secret_field_is_never_shown(field: str, shape: str) -> None:
    text = SHAPES[shape].format(f=field, s=SHORT)
    error = error_from_entra({"error": "invalid_request", "error_description": text}, source="obo")
    for shown in (str(error), repr(error), safe_text(text), redact(text)):
        assert SHORT not in shown, (shape, shown)
        assert "Short.Secret" not in shown


def test_a_log_record_is_redacted_in_every_shape() -> None:
    for shape in SHAPES.values():
        record = logging.LogRecord(
            "msal",
            logging.ERROR,
            __file__,
            1,
            "answer: %s",
            (shape.format(f="client_secret", s=SHORT),),
            None,
        )
        RedactingFilter().filter(record)
        assert SHORT not in record.getMessage()


@pytest.mark.parametrize(
    "prose",
    [
        "HTTP error code: 400",
        "az could not get a token: the refresh token has expired",
        "the assertion is not valid yet",
        "AADSTS50076: Due to a configuration change made by your administrator",
        "<error>invalid_grant</error>",
        '{"error": "invalid_grant", "error_codes": [70000]}',
    ],
)
def test_prose_is_left_alone(prose: str) -> None:
    assert redact(prose) == prose
