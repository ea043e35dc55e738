"""Two Authorization headers are refused on the EntraTokenVerifier path, as by
require_entra_auth: the mcp SDK reads the first one only, so a valid first token let a request
through whatever the second said (and a proxy or a later reader may pick the other one)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
import pytest

from _support.servers import serve_in_thread

from .test_mcp_server import ISSUER, build_app

BODY = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with serve_in_thread(make_app=lambda base: build_app(resource_url=f"{base}/mcp")) as url:
        yield url


async def _post(url: str, authorizations: list[str]) -> httpx2.Response:
    headers = [
        ("Accept", "application/json, text/event-stream"),
        ("Content-Type", "application/json"),
        *(("Authorization", value) for value in authorizations),
    ]
    async with httpx2.AsyncClient() as http:
        return await http.post(f"{url}/mcp", json=BODY, headers=headers)


@pytest.mark.parametrize(
    "second",
    ["valid-again", "garbage", "Basic dXNlcjpwYXNz", "Bearer"],
)
async def test_two_authorization_headers_are_refused(base_url: str, second: str) -> None:
    valid = f"Bearer {ISSUER.token()}"
    other = valid if second == "valid-again" else second
    response = await _post(base_url, [valid, other])
    assert response.status_code == 401, response.text
    header = response.headers["www-authenticate"]
    assert header.startswith("Bearer")
    assert 'error="invalid_token"' in header
    assert "more than one Authorization header" in header


async def test_one_valid_header_still_passes(base_url: str) -> None:
    response = await _post(base_url, [f"Bearer {ISSUER.token()}"])
    assert response.status_code == 200, response.text
