"""The 503 a caller gets while the signing keys cannot be fetched names no key URL: a key URL
may carry a secret in its query (an Azure Functions or API Management key: ``?code=...``) or
userinfo, and any caller with a JWT-shaped token of an allowed tenant gets this answer. The
operator still sees the URL, redacted, in the log line and in the exception's own text."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import certifi
import httpx2
import pytest
from mcp.server.mcpserver import MCPServer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from _support.servers import serve_in_thread
from _support.tokens import API, API_URI, TENANT, Issuer
from entra_passthrough import JwtVerifier
from entra_passthrough._errors import SigningKeysUnavailable
from entra_passthrough.server import (
    EntraChallengeMiddleware,
    EntraTokenVerifier,
    auth_settings,
    current_user,
    require_entra_auth,
)

from ._https_keys import KeyEndpoint, https_key_endpoint

SECRET = "FUNCTION-KEY-SECRET-123"
GENERIC = "the signing keys could not be fetched; no token can be verified until they are."


@pytest.fixture
def keys(tmp_path: Path) -> Iterator[KeyEndpoint]:
    with https_key_endpoint(Issuer(), tmp_path) as endpoint:
        endpoint.down = True
        yield endpoint


def verifier_for(jwks_uri: str, ca_file: str) -> JwtVerifier:
    return JwtVerifier(
        audiences=[API, API_URI], tenants=[TENANT], jwks_uri=jwks_uri, verify=ca_file
    )


def plain_api(verifier: JwtVerifier) -> Any:
    async def me(request: Request) -> JSONResponse:
        return JSONResponse({"oid": current_user().oid})

    return require_entra_auth(Starlette(routes=[Route("/me", me)]), verifier=verifier)


def mcp_api(verifier: JwtVerifier, base: str) -> Any:
    auth = auth_settings(resource_server_url=f"{base}/mcp", tenant_id=TENANT)
    server = MCPServer("keys-down", token_verifier=EntraTokenVerifier(verifier), auth=auth)
    return EntraChallengeMiddleware(server.streamable_http_app(stateless_http=True), settings=auth)


async def call(url: str, kind: str, token: str) -> httpx2.Response:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx2.AsyncClient() as http:
        if kind == "plain":
            return await http.get(f"{url}/me", headers=headers)
        headers |= {"Accept": "application/json, text/event-stream"}
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
        return await http.post(f"{url}/mcp", json=body, headers=headers)


def assert_generic(answer: httpx2.Response, *hidden: str) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"] == "5"
    assert "www-authenticate" not in answer.headers
    assert answer.json() == {"error": "temporarily_unavailable", "error_description": GENERIC}
    for text in hidden:
        assert text not in answer.text


@pytest.mark.parametrize("kind", ["plain", "mcp"])
async def test_the_503_names_no_key_url_and_no_secret(
    keys: KeyEndpoint, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="entra_passthrough.verify")
    verifier = verifier_for(f"{keys.keys_url}?code={SECRET}", keys.ca_file)
    make = (
        (lambda _base: plain_api(verifier))
        if kind == "plain"
        else (lambda base: mcp_api(verifier, base))
    )
    with serve_in_thread(make_app=make, lifespan="off") as url:
        first = await call(url, kind, Issuer().token())  # the failed fetch itself
        again = await call(url, kind, Issuer().token())  # refused at once, until the retry
    host = keys.base.split("//", 1)[1]
    for answer in (first, again):
        assert_generic(answer, SECRET, host, "code=", "/discovery/")
    assert keys.requests == 1
    # The operator's log line names the endpoint, the secret redacted.
    lines = [r.getMessage() for r in caplog.records if "fetching signing keys" in r.getMessage()]
    assert len(lines) == 1
    assert f"{keys.keys_url}?code=[redacted]" in lines[0]
    assert SECRET not in caplog.text


async def test_the_exception_text_keeps_the_url_for_the_operator(keys: KeyEndpoint) -> None:
    host_port = keys.base.split("//", 1)[1]
    with_userinfo = f"https://ops:hunter2-pass@{host_port}/{TENANT}/discovery/v2.0/keys"
    verifier = verifier_for(f"{with_userinfo}?code={SECRET}&api-version=2", keys.ca_file)
    with pytest.raises(SigningKeysUnavailable) as info:
        await verifier.verify_async(Issuer().token())
    error = info.value
    assert error.status_code == 503
    assert error.reason == GENERIC  # what a caller may be told
    text = str(error)  # what the operator reads: the URL, no secret, the failure's type
    assert f"{keys.keys_url}?code=[redacted]&api-version=[redacted]" in text
    assert "(ValueError)" in text
    assert SECRET not in text
    assert "hunter2" not in text
    assert "ops" not in text.split("://", 1)[1].split("/", 1)[0]  # no userinfo in the host
    with pytest.raises(SigningKeysUnavailable) as again:  # refused at once, same text
        verifier.verify(Issuer().token())
    assert again.value.reason == GENERIC
    assert SECRET not in str(again.value)


def test_a_bare_query_part_of_the_key_url_is_not_shown() -> None:
    from entra_passthrough._origins import shown_url

    shown = shown_url("https://keys.contoso.com/k?code=abc&S3CR3T-bare&=x&v=1")
    assert shown == "https://keys.contoso.com/k?code=[redacted]&[redacted]&[redacted]&v=[redacted]"


@pytest.mark.parametrize("driver", ["async", "sync"])
async def test_the_http_clients_request_log_shows_no_secret_of_the_key_url(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, driver: str
) -> None:
    """httpx and httpx2 log every request's URL at INFO (what docs/observability.md suggests
    enabling): a key URL behind a SAS signature, API Management or with user info must not
    reach a handler whole, on a fetch that works as on one that fails."""
    issuer = Issuer()
    with https_key_endpoint(issuer, tmp_path) as keys:
        base = keys.keys_url.replace("https://", "https://keyreader:P4ssw0rd-S3CR3T@")
        url = (
            f"{base}?sv=2022-11-02&sig=SAS-S3CR3T-SIG&subscription-key=APIM-S3CR3T-KEY&BARE-S3CR3T"
        )
        verifier = verifier_for(url, keys.ca_file)
        with caplog.at_level(logging.INFO):
            if driver == "async":
                assert (await verifier.verify_async(issuer.token())).oid
            else:
                assert verifier.verify(issuer.token()).oid
    lines = [r.getMessage() for r in caplog.records if r.name.startswith(("httpx", "httpcore"))]
    assert any("HTTP Request" in line for line in lines), lines
    text = "\n".join(lines)
    leaked = [s for s in ("P4ssw0rd", "SAS-S3CR3T", "APIM-S3CR3T", "BARE-S3CR3T") if s in text]
    assert leaked == []


def _chain_text(exc: BaseException) -> str:
    """``exc`` and every error chained to it (cause or context), as error reporters read them:
    str, repr and each attribute's repr."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts += [str(current), repr(current)]
        parts += [repr(value) for value in vars(current).values()]
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


@pytest.mark.parametrize("driver", ["async", "sync"])
async def test_no_secret_of_the_key_url_is_in_the_errors_chained_to_the_refusal(
    driver: str,
) -> None:
    """The key endpoint cannot be reached: ``SigningKeysUnavailable`` names the failure's type
    and the redacted URL, and is chained to nothing that holds the URL. It was raised ``from``
    the HTTP client's ``ConnectError``, whose request (an attribute) printed the SAS key:
    reporters that walk an error's causes and attributes (Sentry) would have sent it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the block ends: nothing listens there
    url = f"https://127.0.0.1:{port}/keys?sv=2022-11-02&sig=SAS-S3CR3T-SIG"
    verifier = verifier_for(url, certifi.where())
    token = Issuer().token()
    with pytest.raises(SigningKeysUnavailable) as raised:
        await (
            verifier.verify_async(token)
            if driver == "async"
            else asyncio.to_thread(verifier.verify, token)
        )
    assert "ConnectError" in str(raised.value)
    assert "SAS-S3CR3T" not in _chain_text(raised.value)
