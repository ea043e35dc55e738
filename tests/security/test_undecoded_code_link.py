"""An AADSTS code the library does not decode links to a place that exists: the errors page's
AADSTS section (which says how undecoded codes are reported), never an ``#aadsts<code>`` anchor
only decoded codes have; the lookup at login.microsoftonline.com stays. A decoded code keeps
its own anchor."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from entra_passthrough import EntraError
from entra_passthrough._aadsts import AADSTS
from entra_passthrough._docs import doc_url
from entra_passthrough._errors import error_from_entra

ERRORS_PAGE = Path(__file__).resolve().parents[2] / "docs" / "errors.md"


def _anchors() -> set[str]:
    """The explicit ids of the errors page and its headings' slugs (MkDocs' default)."""
    text = ERRORS_PAGE.read_text(encoding="utf-8")
    found = set(re.findall(r'id="([^"]+)"', text))
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, re.MULTILINE):
        slug = re.sub(r"[^\w\s-]", "", heading.replace("`", "").lower()).strip()
        found.add(re.sub(r"[\s-]+", "-", slug))
    return found


def _linked_anchor(fix: str) -> str:
    found = re.search(r"\(see \S+?#([\w-]+)\)", fix)
    assert found is not None, fix
    return found.group(1)


@pytest.mark.parametrize("code", [9999999, 50195, 1234])
def test_an_undecoded_code_links_the_aadsts_section(code: int) -> None:
    assert code not in AADSTS
    error = error_from_entra(
        {"error": "invalid_request", "error_codes": [code], "error_description": "x"},
        source="obo",
    )
    assert error.fix is not None
    assert f"https://login.microsoftonline.com/error?code={code}" in error.fix
    anchor = _linked_anchor(error.fix)
    assert anchor == "aadsts-codes"
    assert anchor in _anchors()
    assert f"#aadsts{code}" not in str(error)


def test_a_decoded_code_keeps_its_own_anchor() -> None:
    error = EntraError("Entra refused the request", aadsts=65001)
    assert error.fix is not None
    assert doc_url("errors", "aadsts65001") in error.fix
    assert _linked_anchor(error.fix) in _anchors()
