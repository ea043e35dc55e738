"""One reading of ``Authorization`` for the capture middleware and the MCP server.

RFC 6750 2.1 is ``"Bearer" 1*SP b64token``. Capture split on any whitespace, so
``Bearer<TAB><token>`` gave a usable bearer there (and a ``verifier=`` admitted it), while the MCP
server's reader (``_www_auth``) called it malformed and answered 401 ``invalid_token``. Both read
it now as ``presents_token``'s docstring says: the user's token in a malformed header, presented
and unusable. ``Bearer`` then one or more spaces stays the usable form.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from _support.servers import serve_in_thread
from _support.tokens import unsigned_jwt
from entra_passthrough import Caller, CallerMiddleware, JwtVerifier, current_caller
from entra_passthrough._www_auth import bearer_token, malformed_authorization
from entra_passthrough.testing import EntraEmulator

T = unsigned_jwt(oid="alice", exp=4102444800)

USABLE = [
    f"Bearer {T}",
    f"bearer {T}",
    f"BEARER {T}",
    f"Bearer   {T}",
    f"Bearer {T}  ",
    f"Bearer \t{T}",
]
# what is between the scheme and the token is not SP: presented, unusable
NOT_SP = [f"Bearer{sep}{T}" for sep in ("\t", "\t\t", "\x0b", "\x0c", "\x1c", "\x85", "\xa0")]
MALFORMED = [*NOT_SP, f"Bearer\t {T}", f"Bearer:{T}", T, f"DPoP {T}"]
NO_TOKEN = ["Basic dXNlcjpwYXNz", "Negotiate abc", ""]


def _scope(value: str) -> dict[str, Any]:
    return {"headers": [(b"authorization", value.encode("latin-1"))]}


def _callers(value: str) -> list[Caller]:
    headers = [(b"authorization", value.encode("latin-1"))]
    return [
        Caller.from_headers(headers),  # the one-header read
        Caller.from_headers(headers, assertion_headers=("authorization", "x-other")),  # general
    ]


@pytest.mark.parametrize("value", USABLE)
def test_bearer_then_spaces_is_usable_on_both_sides(value: str) -> None:
    for caller in _callers(value):
        assert caller.assertion == T
        assert caller.decode_error is None
    assert bearer_token(_scope(value)) == T
    assert not malformed_authorization(_scope(value))


@pytest.mark.parametrize("value", MALFORMED)
def test_a_token_in_another_form_is_presented_and_unusable_on_both_sides(value: str) -> None:
    for caller in _callers(value):
        assert caller.presented
        assert not caller.assertion
        assert caller.claims is None
        assert caller.decode_error == "no token in the form 'Authorization: Bearer <token>'"
    assert bearer_token(_scope(value)) is None
    assert malformed_authorization(_scope(value))


@pytest.mark.parametrize("value", NO_TOKEN)
def test_no_user_token_on_both_sides(value: str) -> None:
    for caller in _callers(value):
        assert not caller.presented
    assert bearer_token(_scope(value)) is None
    assert not malformed_authorization(_scope(value))


@pytest.fixture(scope="module")
def api(entra_emulator: EntraEmulator) -> Iterator[str]:
    idp = entra_emulator

    async def me(request: Request) -> JSONResponse:
        caller = current_caller()
        assert caller is not None
        assert caller.verified is not None
        return JSONResponse({"oid": caller.verified["oid"]})

    verifier = JwtVerifier(
        audiences=[idp.mcp.client_id, idp.mcp.app_id_uri],
        tenants=[idp.tenant_id],
        authority_host=idp.url,
        verify=idp.ca_file,
    )
    app = CallerMiddleware(Starlette(routes=[Route("/me", me)]), verifier=verifier)
    with serve_in_thread(app) as url:
        yield url


async def test_a_verifying_middleware_refuses_bearer_tab_over_uvicorn(
    api: str, entra_emulator: EntraEmulator
) -> None:
    idp = entra_emulator
    token = idp.user_token(user="bob", audience=idp.mcp.client_id, scopes=("access_as_user",))
    async with httpx2.AsyncClient() as http:
        good = await http.get(f"{api}/me", headers={"Authorization": f"Bearer {token}"})
        assert good.status_code == 200, good.text
        assert good.json() == {"oid": idp.users["bob"].oid}
        tab = await http.get(f"{api}/me", headers={"Authorization": f"Bearer\t{token}"})
    assert tab.status_code == 401, tab.text
    challenge = tab.headers["www-authenticate"]
    assert 'error="invalid_token"' in challenge
    assert "Bearer <token>" in challenge
    assert token not in tab.text
    assert token not in challenge
