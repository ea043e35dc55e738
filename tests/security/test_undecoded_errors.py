"""An error the library cannot decode is reduced to its code, correlation id and a redacted
first line: a gateway that echoes the request form must not put ``client_secret=`` (or a JWT,
or the form) into an exception's message.
"""

from __future__ import annotations

import pytest

from entra_passthrough import EntraError, TokenAcquisitionError
from entra_passthrough._errors import error_from_entra

from ._hygiene import error_text, leaks

SECRET = "Qx8~s3cr3tVALUEthatIsLong.enough_1234"
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSIsImF1ZCI6Im1jcCJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
REFRESH = "0.AUoAbcdefGHIJ1234567890klmnopQRSTUVwxyz-_0987654321abcdefgh"
FORM = (
    f"client_id=abc&client_secret={SECRET}&grant_type=urn:ietf:params:oauth:grant-type:"
    f"jwt-bearer&assertion={JWT}&requested_token_use=on_behalf_of"
)
CORRELATION = "6f1c7a2e-1111-2222-3333-444455556666"

DESCRIPTIONS = {
    "form-echo": f"AADSTS99999: bad request: {FORM}",
    "form-echo-no-code": f"Request rejected by gateway. Body was {FORM}",
    "jwt": f"AADSTS99998: The token {JWT} is not accepted",
    "opaque": f"AADSTS99997: refresh token {REFRESH} unknown",
    "json-echo": '{"client_secret": "' + SECRET + '", "x": 1}',
    "second-line": f"AADSTS99996: nope\r\nform: {FORM}",
}


@pytest.mark.parametrize("description", list(DESCRIPTIONS.values()), ids=list(DESCRIPTIONS))
def test_undecoded_description_never_echoes_a_secret(description: str) -> None:
    body = {
        "error": "invalid_request",
        "error_description": description,
        "error_codes": [99999] if "form-echo-no" in description else [],
        "correlation_id": CORRELATION,
        "trace_id": "trace-1",
    }
    err = error_from_entra(body, source="obo", scopes=["api://x/.default"])
    assert isinstance(err, TokenAcquisitionError)
    text = error_text(err)
    assert leaks(text, [SECRET, JWT, REFRESH]) == []
    assert "client_secret=" not in text
    assert "grant_type=" not in text
    assert CORRELATION in str(err)  # the id support needs stays
    assert err.correlation_id == CORRELATION


def test_the_code_is_taken_from_the_text_when_error_codes_is_missing() -> None:
    err = error_from_entra(
        {"error": "invalid_grant", "error_description": "AADSTS99995: something new.\r\nTrace"}
    )
    assert err.code is not None
    assert err.code.code == 99995
    assert "AADSTS99995" in str(err)
    assert "something new." in str(err)  # a harmless first line is still shown


def test_non_identifier_fields_are_dropped() -> None:
    err = error_from_entra(
        {
            "error": f"client_secret={SECRET}",
            "error_description": "x",
            "correlation_id": f"<script>{SECRET}",
            "suberror": "a\r\nb",
        }
    )
    assert isinstance(err, EntraError)
    assert SECRET not in str(err)
    assert err.error is None
    assert err.correlation_id is None
    assert err.suberror is None


def test_a_known_code_keeps_its_decoded_meaning() -> None:
    err = error_from_entra(
        {
            "error": "invalid_grant",
            "error_description": "AADSTS50013: Assertion failed signature validation.",
            "error_codes": [50013],
            "correlation_id": CORRELATION,
        }
    )
    assert err.code is not None
    assert err.code.code == 50013


@pytest.mark.parametrize(
    ("codes", "text_code"),
    [
        ([int("9" * 400)], None),  # a 400-digit "code" went whole into the message
        ([-50013], None),
        ([True], None),  # a bool is an int to Python, not an AADSTS code
        ([0], None),
        ([int("9" * 400)], 50013),  # the code in the text is used instead
    ],
    ids=["huge", "negative", "bool", "zero", "huge-with-text-code"],
)
def test_error_codes_out_of_range_are_not_a_code(codes: list[int], text_code: int | None) -> None:
    """``error_codes`` is the endpoint's text too: only a number an AADSTS code can be counts."""
    description = f"AADSTS{text_code}: x" if text_code else "no code here"
    err = error_from_entra(
        {"error": "invalid_grant", "error_description": description, "error_codes": codes}
    )
    assert "9" * 20 not in str(err)
    assert len(str(err)) < 1000
    if text_code is None:
        assert err.code is None
        assert "AADSTS" not in str(err)
    else:
        assert err.code is not None
        assert err.code.code == text_code
