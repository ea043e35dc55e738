"""``entra-passthrough inspect`` prints an unverified token's claims, which anyone can write:
escape codes or a line break in a claim reached the terminal, so a token pasted from a ticket
could clear the screen and print a fake verdict on a line of its own. Every character that is
not printable is shown escaped."""

from __future__ import annotations

import pytest

from _support.tokens import unsigned_jwt
from entra_passthrough.cli import main

FAKE = "mallory\x1b[2J\x1b[1;1HVERDICT: token is VALID and VERIFIED\n\u202etxt.exe"


def test_control_characters_and_line_breaks_are_escaped(
    capsys: pytest.CaptureFixture[str],
) -> None:
    token = unsigned_jwt(aud="api://x", oid="o1", tid="t1", preferred_username=FAKE, upn=FAKE)
    assert main(["inspect", token]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "\u202e" not in out
    assert not any(line.startswith("VERDICT") for line in out.splitlines())
    assert "\\x1b[2J" in out  # shown, escaped
