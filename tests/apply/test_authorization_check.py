"""The hit path's "already has an Authorization header" check reads httpx/httpx2's stored
lower-case names; any other headers object (or a layout it does not know) takes the public
lookup. Both must answer the same."""

from __future__ import annotations

from typing import Any

import httpx
import httpx2
import pytest

from entra_passthrough._httpx_seams import has_authorization

CASES = [
    ({}, False),
    ({"Host": "a"}, False),
    ({"Authorization": "Bearer x"}, True),
    ({"AUTHORIZATION": "Basic y", "x-other": "1"}, True),
    ({"x-authorization": "z", "authorization-x": "z"}, False),
]


@pytest.mark.parametrize("module", [httpx, httpx2])
@pytest.mark.parametrize(("given", "expected"), CASES)
def test_the_stored_names_answer_as_the_public_lookup(
    module: Any, given: dict[str, str], expected: bool
) -> None:
    with module.Client(headers=given) as client:
        request = client.build_request("GET", "http://127.0.0.1:9/")
    assert ("authorization" in request.headers) is expected
    assert has_authorization(request.headers) is expected


class _OtherLayout:
    """A headers object whose ``_list`` has another shape (single names, or str triples):
    never read as httpx's triples."""

    def __init__(self, names: list[str], *, triples: bool) -> None:
        self._list: list[Any] = (
            [(name, name.lower(), "v") for name in names] if triples else [(n,) for n in names]
        )
        self.raw = [(name.encode(), b"v") for name in names]


@pytest.mark.parametrize("triples", [False, True])
def test_an_unknown_layout_takes_the_public_path(triples: bool) -> None:
    assert has_authorization(_OtherLayout(["Authorization"], triples=triples)) is True
    assert has_authorization(_OtherLayout(["host", "Authorization"], triples=triples)) is True
    assert has_authorization(_OtherLayout(["host"], triples=triples)) is False
    assert has_authorization({"authorization": "x"}) is True
