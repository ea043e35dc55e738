"""How the capture reads the platform's user id (``x-agent-user-id``): as Latin-1 when that is
printable, the reading every earlier version keyed consent grants and platform bindings by (a
new reading of the same bytes would have lost those users' grants, and let their ids be bound
anew); as UTF-8 when Latin-1 holds control characters (a UTF-8 name whose bytes 0x80-0x9F are
C1 controls in Latin-1: such an id was dropped, and the request had no user)."""

from __future__ import annotations

import pytest

from entra_passthrough import Caller


def _user_id(raw: bytes) -> str | None:
    return Caller.from_headers([(b"x-agent-user-id", raw)]).user_id


@pytest.mark.parametrize(
    ("raw", "read"),
    [
        (b"chat-user-1", "chat-user-1"),
        # Latin-1 printable: read as every earlier version read it (its key unchanged).
        ("José".encode(), "JosÃ©"),
        ("José".encode("latin-1"), "José"),
        # Latin-1 holds C1 controls: read as UTF-8 (it was dropped).
        ("Жанна".encode(), "Жанна"),
        ("名前".encode(), "名前"),
    ],
    ids=["ascii", "utf8-latin1-printable", "latin1", "cyrillic", "cjk"],
)
def test_a_platform_id_is_read_as_before_or_as_utf8(raw: bytes, read: str) -> None:
    assert _user_id(raw) == read


@pytest.mark.parametrize(
    "raw",
    [
        b"a\x07b",
        b"a\x85\xffb",
        b"u" * 300,
        b"   ",
        # UTF-8 whose reading a Latin-1 byte string also gives: one of them would be the other.
        "MÜLLER".encode(),
        "JosÃ©".encode(),
    ],
    ids=["bell", "neither", "long", "blank", "utf8-of-latin1-text", "utf8-of-mojibake"],
)
def test_a_platform_id_neither_reading_makes_printable_is_none(raw: bytes) -> None:
    assert _user_id(raw) is None


def test_two_byte_strings_are_never_one_user() -> None:
    """Latin-1 ``MÜLLER`` and UTF-8 ``MÜLLER``, UTF-8 ``José`` and UTF-8 ``JosÃ©``: each pair
    read as one id would share grants, connections and stored responses."""
    pairs = [
        ("MÜLLER".encode("latin-1"), "MÜLLER".encode()),
        ("José".encode(), "JosÃ©".encode()),
        ("é".encode(), "Ã©".encode()),
    ]
    for first, second in pairs:
        a, b = _user_id(first), _user_id(second)
        assert a is None or b is None or a != b, (first, second)
