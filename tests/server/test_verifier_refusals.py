"""What the MCP-server-side verifier refuses, and what it must not refuse, on real servers.

- A token bound to a proof-of-possession key (``cnf``, RFC 7800) is not a bearer token: it
  used to be accepted as one, so a PoP token copied from MSAL's cache or from a signed-request
  envelope worked as is.
- ``allow_app_only=True`` behind ``MCPServer`` and ``auth_settings(scopes=...)``: the SDK
  requires the scopes of every token, so an app-only token the verifier accepted (it holds the
  required roles) used to get 403 "lacks a scope".
- ``auth_settings(tenant_id=<domain>|"common")`` and ``JwtVerifier(tenants=[<domain>])`` were
  accepted, then failed every request (issuer mismatch at the client, every tid refused).
- Signing-key endpoint down while Entra rolls its keys: a genuine token signed with the new key
  got 401 ``invalid_token`` "which the issuer does not publish" (its client drops a good token),
  though the refetch that would have told failed. It is not judged: 503 + ``Retry-After``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from _support.servers import serve_in_thread
from _support.tokens import API, API_URI, TENANT, USER_OID, Issuer
from entra_passthrough import ConfigurationError, JwtVerifier
from entra_passthrough._errors import SigningKeysUnavailable
from entra_passthrough.server import (
    EntraChallengeMiddleware,
    EntraTokenVerifier,
    auth_settings,
    current_user,
    require_entra_auth,
)
from entra_passthrough.testing import EntraEmulator

from ._https_keys import KeyEndpoint

ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
TOOLS_LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def params(header: str) -> dict[str, str]:
    assert header.startswith("Bearer"), header
    out = {}
    for part in header[len("Bearer") :].split(","):
        if "=" in part:
            k, v = part.strip().split("=", 1)
            out[k] = v.strip('"')
    return out


async def post(url: str, token: str, path: str = "/mcp") -> httpx2.Response:
    headers = {**ACCEPT, "Authorization": f"Bearer {token}"}
    async with httpx2.AsyncClient(timeout=30) as http:
        if path == "/mcp":
            return await http.post(f"{url}/mcp", json=TOOLS_LIST, headers=headers)
        return await http.get(f"{url}{path}", headers=headers)


def emulator_mcp_app(idp: EntraEmulator, base: str, **verifier_options: Any) -> Any:
    """The docs' Quick start against the emulator, with a tool that shows the caller."""
    verifier = JwtVerifier(
        audiences=[idp.mcp.client_id, idp.mcp.app_id_uri],
        tenants=[idp.tenant_id],
        authority_host=idp.url,
        verify=idp.ca_file,
        **verifier_options,
    )
    auth = auth_settings(
        resource_server_url=f"{base}/mcp",
        tenant_id=idp.tenant_id,
        scopes=["access_as_user"],
        app_id_uri=idp.mcp.app_id_uri,
        authority_host=idp.url,
    )
    server = MCPServer("notes", token_verifier=EntraTokenVerifier(verifier), auth=auth)

    @server.tool()
    async def whoami() -> dict[str, Any]:
        user = current_user()
        return {
            "oid": user.oid,
            "app_only": user.app_only,
            "roles": list(user.roles),
            "scopes": list(user.scopes),
        }

    return EntraChallengeMiddleware(server.streamable_http_app(stateless_http=True), settings=auth)


@asynccontextmanager
async def session(url: str, token: str) -> AsyncIterator[ClientSession]:
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http,
        streamable_http_client(f"{url}/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as s,
    ):
        await s.initialize()
        yield s


async def whoami(url: str, token: str) -> dict[str, Any]:
    async with session(url, token) as s:
        result = await s.call_tool("whoami", {})
    assert not result.is_error, result
    return json.loads(result.content[0].text)  # type: ignore[union-attr,no-any-return]


# --- 1. a proof-of-possession token is not a bearer token ------------------------------------


@pytest.mark.parametrize(
    "cnf",
    [
        {"kid": "pop-key-thumbprint"},  # MSAL's Signed HTTP Request PoP
        {"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"},  # mTLS-bound (RFC 8705)
        {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"},  # DPoP-bound (RFC 9449)
    ],
)
async def test_a_pop_bound_token_is_refused_as_a_bearer_token(
    entra_emulator: EntraEmulator, cnf: dict[str, str]
) -> None:
    idp = entra_emulator
    bound = idp.user_token(
        user="alice",
        audience=idp.mcp.client_id,
        scopes=("access_as_user",),
        extra_claims={"cnf": cnf},
    )
    plain = idp.user_token(user="alice", audience=idp.mcp.client_id, scopes=("access_as_user",))
    with serve_in_thread(make_app=lambda base: emulator_mcp_app(idp, base)) as url:
        refused = await post(url, bound)
        served = await post(url, plain)
    assert refused.status_code == 401, refused.text
    challenge = params(refused.headers["www-authenticate"])
    assert challenge["error"] == "invalid_token"
    description = refused.json()["error_description"]
    assert description in refused.headers["www-authenticate"]
    assert "proof-of-possession" in description
    assert "cannot be used as a bearer token" in description
    assert bound not in refused.text
    assert bound.split(".")[1][:40] not in refused.headers["www-authenticate"]
    assert served.status_code == 200, served.text


# --- 2. allow_app_only behind MCPServer + auth_settings(scopes=...) --------------------------


async def test_an_app_only_token_with_the_roles_is_served_behind_auth_settings_scopes(
    entra_emulator: EntraEmulator,
) -> None:
    idp = entra_emulator
    app_only = idp.app_token(
        client_id=idp.agent.client_id, audience=idp.mcp.client_id, roles=("Tools.Call",)
    )
    no_role = idp.app_token(client_id=idp.agent.client_id, audience=idp.mcp.client_id)
    alice = idp.user_token(user="alice", audience=idp.mcp.client_id, scopes=("access_as_user",))

    def make(base: str) -> Any:
        return emulator_mcp_app(idp, base, allow_app_only=True, required_roles=["Tools.Call"])

    with serve_in_thread(make_app=make) as url:
        caller = await whoami(url, app_only)
        refused = await post(url, no_role)
        # delegated tokens still need the scopes (and here the role too: required_roles
        # applies to every token)
        delegated = await post(url, alice)
    assert caller["app_only"] is True
    assert caller["roles"] == ["Tools.Call"]
    assert caller["scopes"] == []  # the caller's own scopes: none
    assert refused.status_code == 403, refused.text
    challenge = params(refused.headers["www-authenticate"])
    assert challenge["error"] == "insufficient_scope"
    assert "app role" in refused.json()["error_description"]
    assert delegated.status_code == 403, delegated.text
    assert "app role" in delegated.json()["error_description"]


async def test_delegated_tokens_still_need_the_scopes_with_app_only_allowed(
    entra_emulator: EntraEmulator,
) -> None:
    """The scopes an app-only token is handed are never handed to a delegated one."""
    idp = entra_emulator
    other_scope = idp.user_token(
        user="alice",
        audience=idp.mcp.client_id,
        scopes=("access_as_user",),
        extra_claims={"scp": "Other.Scope", "roles": ["Tools.Call"]},
    )
    with_role = idp.user_token(
        user="alice",
        audience=idp.mcp.client_id,
        scopes=("access_as_user",),
        extra_claims={"roles": ["Tools.Call"]},
    )

    def make(base: str) -> Any:
        return emulator_mcp_app(idp, base, allow_app_only=True, required_roles=["Tools.Call"])

    with serve_in_thread(make_app=make) as url:
        refused = await post(url, other_scope)
        caller = await whoami(url, with_role)
    assert refused.status_code == 403, refused.text
    assert params(refused.headers["www-authenticate"])["error"] == "insufficient_scope"
    assert caller["app_only"] is False
    assert caller["scopes"] == ["access_as_user"]


async def test_app_only_tokens_stay_refused_without_allow_app_only(
    entra_emulator: EntraEmulator,
) -> None:
    idp = entra_emulator
    app_only = idp.app_token(
        client_id=idp.agent.client_id, audience=idp.mcp.client_id, roles=("Tools.Call",)
    )
    with serve_in_thread(make_app=lambda base: emulator_mcp_app(idp, base)) as url:
        refused = await post(url, app_only)
    assert refused.status_code == 403, refused.text
    assert "app-only" in refused.json()["error_description"]


# --- 3. a tenant is its GUID -----------------------------------------------------------------

NOT_A_GUID = ["contoso.onmicrosoft.com", "common", "organizations", f"{{{TENANT}}}", "s3cr3t~value"]


@pytest.mark.parametrize("tenant", NOT_A_GUID)
def test_auth_settings_refuses_a_tenant_that_is_not_a_guid(tenant: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        auth_settings(resource_server_url="https://mcp.contoso.com/mcp", tenant_id=tenant)
    text = str(info.value)
    assert "tenant_id" in text
    assert "az account show --query tenantId" in (info.value.fix or "")
    assert "domain" not in (info.value.fix or "")  # no longer invited
    assert "s3cr3t" not in text  # a value pasted into the wrong place is not echoed


@pytest.mark.parametrize("tenant", NOT_A_GUID)
def test_jwt_verifier_refuses_a_tenant_that_is_not_a_guid(tenant: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        JwtVerifier(audiences=[API], tenants=[TENANT, tenant])
    assert "tenants" in str(info.value)
    assert "az account show --query tenantId" in (info.value.fix or "")
    assert "any_tenant=True" in (info.value.fix or "")
    assert "s3cr3t" not in str(info.value)


def test_tenant_configurations_that_worked_still_do(entra_emulator: EntraEmulator) -> None:
    idp = entra_emulator
    token = idp.user_token(user="alice", audience=idp.mcp.client_id, scopes=("access_as_user",))
    for tenants in (
        [idp.tenant_id.upper()],
        [f" {idp.tenant_id} "],
        [idp.second_tenant_id, idp.tenant_id],
    ):
        verifier = JwtVerifier(
            audiences=[idp.mcp.client_id],
            tenants=tenants,
            authority_host=idp.url,
            verify=idp.ca_file,
        )
        assert verifier.verify(token).tid == idp.tenant_id
    anyone = JwtVerifier(
        audiences=[idp.mcp.client_id], any_tenant=True, authority_host=idp.url, verify=idp.ca_file
    )
    assert anyone.verify(token).tid == idp.tenant_id
    settings = auth_settings(
        resource_server_url="https://mcp.contoso.com/mcp",
        tenant_id=idp.tenant_id.upper(),
        authority_host=idp.url,
    )
    # Entra writes the GUID in lower case in its issuers; the advertised server matches them.
    assert str(settings.issuer_url) == idp.issuer(version="2.0")


# --- 4. key endpoint down while the issuer rolls its keys ------------------------------------


@pytest.fixture
def rolled(keys: KeyEndpoint) -> tuple[KeyEndpoint, Clock, JwtVerifier]:
    clock = Clock()
    verifier = JwtVerifier(
        audiences=[API, API_URI],
        tenants=[TENANT],
        jwks_uri=keys.keys_url,
        verify=keys.ca_file,
        clock=clock,
    )
    return keys, clock, verifier


def plain_api(verifier: JwtVerifier) -> Any:
    async def me(request: Request) -> JSONResponse:
        return JSONResponse({"oid": current_user().oid})

    return require_entra_auth(Starlette(routes=[Route("/me", me)]), verifier=verifier)


def mcp_api(verifier: JwtVerifier, base: str) -> Any:
    auth = auth_settings(resource_server_url=f"{base}/mcp", tenant_id=TENANT)
    server = MCPServer("keys", token_verifier=EntraTokenVerifier(verifier), auth=auth)
    return EntraChallengeMiddleware(server.streamable_http_app(stateless_http=True), settings=auth)


def assert_not_judged(answer: httpx2.Response) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"] == "5"
    assert "www-authenticate" not in answer.headers
    assert answer.json()["error"] == "temporarily_unavailable"


@pytest.mark.parametrize("kind", ["plain", "mcp"])
async def test_a_rotated_key_while_the_key_endpoint_is_down_is_not_judged(
    issuer: Issuer, rolled: tuple[KeyEndpoint, Clock, JwtVerifier], kind: str
) -> None:
    keys, clock, verifier = rolled
    path = "/me" if kind == "plain" else "/mcp"
    make = (
        (lambda _base: plain_api(verifier))
        if kind == "plain"
        else (lambda base: mcp_api(verifier, base))
    )
    old = issuer.token()
    with serve_in_thread(make_app=make) as url:
        assert (await post(url, old, path)).status_code == 200  # warm: the keys are cached
        keys.down = True
        issuer.rotate()  # Entra signs with a new key, the endpoint answers 500
        new = issuer.token()
        assert_not_judged(await post(url, new, path))
        assert keys.requests == 2  # the one refetch, which failed
        # The failed refetch is rate limited too: neither the same kid nor random ones fetch.
        assert_not_judged(await post(url, new, path))
        for _ in range(5):
            assert_not_judged(await post(url, Issuer().token(), path))
        assert keys.requests == 2
        assert (await post(url, old, path)).status_code == 200  # a cached kid is served
        keys.down = False
        clock.now += 61  # past min_refetch_interval: one refetch brings the new key
        assert (await post(url, new, path)).status_code == 200
        assert keys.requests == 3
        # Keys known again: a kid nobody publishes is judged (401), with no fetch of its own.
        forged = await post(url, Issuer().token(), path)
    assert forged.status_code == 401, forged.text
    assert "does not publish" in forged.json()["error_description"]
    assert keys.requests == 3


def test_the_sync_driver_answers_the_same(
    issuer: Issuer, rolled: tuple[KeyEndpoint, Clock, JwtVerifier]
) -> None:
    keys, clock, verifier = rolled
    assert verifier.verify(issuer.token()).oid == USER_OID
    keys.down = True
    issuer.rotate()
    new = issuer.token()
    for token in (new, new, Issuer().token()):
        with pytest.raises(SigningKeysUnavailable) as info:
            verifier.verify(token)
        assert info.value.status_code == 503
    assert keys.requests == 2
    keys.down = False
    clock.now += 61
    assert verifier.verify(new).oid == USER_OID
    assert keys.requests == 3
