"""Configuration mistakes of the server side are a ``ConfigurationError`` with a fix, at
construction, and the message names the parameter, never a value that could be a secret:

* one string where a list of scopes or roles belongs (it used to be split into characters, so
  every caller got 403 and the metadata advertised one-letter scopes), an empty or blank entry
  (``required_scopes=""`` silently required nothing);
* ``auth_settings`` URLs pydantic refuses (it raised its own ``ValidationError``, quoting the
  value), a plain-http authority off loopback (which ``JwtVerifier`` refuses), an empty tenant;
* ``JwtVerifier(verify=<missing file>)`` (``FileNotFoundError``), ``leeway="60"``
  (``TypeError``) and other non-numbers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp.server.mcpserver import MCPServer

from _support.servers import serve_in_thread
from _support.tokens import API, API_URI, TENANT, Issuer
from entra_passthrough import ConfigurationError, JwtVerifier
from entra_passthrough.server import (
    EntraChallengeMiddleware,
    EntraTokenVerifier,
    auth_settings,
    require_entra_auth,
)

SECRET = "hunter2-SECRET-9"
MCP_URL = "https://mcp.contoso.com/mcp"


def refused(build: Callable[[], Any], *names: str) -> ConfigurationError:
    """``build()`` raises a ConfigurationError with a fix, naming ``names``, quoting no secret
    and chaining no third-party error (pydantic's quotes the input)."""
    with pytest.raises(ConfigurationError) as info:
        build()
    error = info.value
    assert error.fix, str(error)
    for name in names:
        assert name in str(error), str(error)
    assert SECRET not in str(error)
    assert error.__cause__ is None
    assert error.__suppress_context__ or error.__context__ is None
    return error


def verifier(**options: Any) -> JwtVerifier:
    options.setdefault("audiences", [API, API_URI])
    options.setdefault("tenants", [TENANT])
    return JwtVerifier(**options)


# --- one string where a list belongs, empty or blank entries --------------------------------


@pytest.mark.parametrize(
    ("parameter", "value"),
    [
        ("required_scopes", "access_as_user"),
        ("required_scopes", ""),
        ("required_scopes", ["access_as_user", ""]),
        ("required_scopes", ["  "]),
        ("required_scopes", ["access_as_user other"]),
        ("required_scopes", [None]),
        ("required_roles", "Admin"),
        ("required_roles", ["Admin", " "]),
        ("issuers", f"https://login.microsoftonline.com/{TENANT}/v2.0"),
        ("tenants", [""]),
    ],
)
def test_jwt_verifier_refuses_a_string_or_blank_names(parameter: str, value: Any) -> None:
    options: dict[str, Any] = {parameter: value}
    if parameter == "required_roles":
        options["allow_app_only"] = True
    refused(lambda: verifier(**options), parameter)


def test_names_given_as_lists_still_work() -> None:
    v = verifier(
        required_scopes=("access_as_user",),
        required_roles=["Notes.Read"],
        issuers=[f"https://login.microsoftonline.com/{TENANT}/v2.0"],
        allow_app_only=True,
    )
    assert v.required_scopes == ("access_as_user",)
    assert v.required_roles == ("Notes.Read",)
    assert verifier(required_scopes=[]).required_scopes == ()


@pytest.mark.parametrize("scopes", ["access_as_user", "", ["access_as_user", ""], [" "]])
def test_auth_settings_refuses_a_string_or_blank_scopes(scopes: Any) -> None:
    refused(
        lambda: auth_settings(
            resource_server_url=MCP_URL, tenant_id=TENANT, scopes=scopes, app_id_uri=API_URI
        ),
        "scopes",
    )


def test_require_entra_auth_refuses_a_string_of_scopes() -> None:
    async def api(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - not run
        pass

    refused(lambda: require_entra_auth(api, verifier=verifier(), scopes=f"{API_URI}/x"), "scopes")


async def test_the_metadata_advertises_whole_scopes() -> None:
    """What a one-string ``scopes=`` broke, seen over HTTP: the protected-resource metadata."""

    def make(base: str) -> Any:
        auth = auth_settings(
            resource_server_url=f"{base}/mcp",
            tenant_id=TENANT,
            scopes=["access_as_user"],
            app_id_uri=API_URI,
        )
        v = verifier(http_client=Issuer().async_client())
        server = MCPServer("scopes", token_verifier=EntraTokenVerifier(v), auth=auth)
        return EntraChallengeMiddleware(server.streamable_http_app(), settings=auth)

    with serve_in_thread(make_app=make) as url:
        async with httpx2.AsyncClient() as http:
            meta = await http.get(f"{url}/.well-known/oauth-protected-resource/mcp")
    assert json.loads(meta.text)["scopes_supported"] == [f"{API_URI}/access_as_user"]


# --- auth_settings: URLs and the tenant ------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "parameter"),
    [
        ({"resource_server_url": "https://"}, "resource_server_url"),
        ({"resource_server_url": "https://mcp contoso.com/mcp"}, "resource_server_url"),
        ({"resource_server_url": f"https://?code={SECRET}"}, "resource_server_url"),  # no host
        ({"resource_server_url": f"https://u:{SECRET}@mcp.contoso.com/mcp"}, "resource_server_url"),
        ({"resource_server_url": f"{SECRET}"}, "resource_server_url"),
        ({"authority_host": "login.microsoftonline.com"}, "authority_host"),
        ({"authority_host": "http://evil.example"}, "authority_host"),
        ({"authority_host": f"https://login.microsoftonline.com?code={SECRET}"}, "authority_host"),
        ({"authority_host": f"https://login microsoftonline.com/{SECRET}"}, "authority_host"),
        ({"service_documentation_url": "docs"}, "service_documentation_url"),
        ({"service_documentation_url": f"https://docs .contoso.com/{SECRET}"}, "service_doc"),
        ({"tenant_id": ""}, "tenant_id"),
        ({"tenant_id": "  "}, "tenant_id"),
        ({"tenant_id": f"{TENANT}/v2.0"}, "tenant_id"),
        ({"tenant_id": f"x?code={SECRET}"}, "tenant_id"),
    ],
)
def test_auth_settings_refuses_unusable_values(options: dict[str, Any], parameter: str) -> None:
    settings: dict[str, Any] = {"resource_server_url": MCP_URL, "tenant_id": TENANT, **options}
    refused(lambda: auth_settings(**settings), parameter)


def test_auth_settings_accepts_loopback_http_and_https() -> None:
    local = auth_settings(
        resource_server_url="http://127.0.0.1:8000/mcp",
        tenant_id=TENANT,
        authority_host="http://127.0.0.1:9443/",
        service_documentation_url="https://docs.contoso.com/mcp",
    )
    assert str(local.issuer_url) == f"http://127.0.0.1:9443/{TENANT}/v2.0"
    assert str(local.service_documentation_url) == "https://docs.contoso.com/mcp"
    public = auth_settings(resource_server_url=MCP_URL, tenant_id=TENANT.upper())
    assert str(public.issuer_url) == f"https://login.microsoftonline.com/{TENANT}/v2.0"


# --- JwtVerifier: CA bundle and numbers ------------------------------------------------------


def test_a_ca_bundle_that_cannot_be_loaded_is_a_configuration_error(tmp_path: Path) -> None:
    missing = tmp_path / SECRET / "ca.pem"
    error = refused(lambda: verifier(verify=str(missing)), "verify", "FileNotFoundError")
    assert str(tmp_path) not in str(error)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    refused(lambda: verifier(verify=str(junk)), "verify")
    refused(lambda: verifier(verify=str(tmp_path)), "verify")  # a directory


@pytest.mark.parametrize(
    ("parameter", "value"),
    [
        ("leeway", "60"),
        ("leeway", math.nan),
        ("leeway", True),
        ("leeway", None),
        ("leeway", -1),
        ("jwks_ttl", "3600"),
        ("jwks_ttl", math.inf),
        ("jwks_ttl", 0),
        ("min_refetch_interval", "60"),
        ("min_refetch_interval", math.nan),
    ],
)
def test_numbers_must_be_numbers(parameter: str, value: Any) -> None:
    refused(lambda: verifier(**{parameter: value}), parameter)


def test_numbers_that_are_numbers_still_work() -> None:
    v = verifier(leeway=0, jwks_ttl=60, min_refetch_interval=0.0)
    assert v.leeway == 0


@pytest.mark.parametrize("verifier", [None, "https://login.microsoftonline.com", object()])
def test_entra_token_verifier_needs_a_jwt_verifier(verifier: object) -> None:
    # was a bare AttributeError ('NoneType' object has no attribute 'audiences')
    with pytest.raises(ConfigurationError, match="needs a JwtVerifier") as raised:
        EntraTokenVerifier(verifier)  # type: ignore[arg-type]
    assert raised.value.fix


@pytest.mark.parametrize(
    "host", ["https://login.microsoftonline.com?x=1", "https://login.microsoftonline.com#f"]
)
def test_jwt_verifier_refuses_an_authority_host_with_a_query(host: str) -> None:
    # the key URL is built by appending /<tenant>/...: after a query, every fetch fails
    with pytest.raises(ConfigurationError, match="no query or fragment"):
        JwtVerifier(audiences=[API], tenants=[TENANT], authority_host=host)


@pytest.mark.parametrize(
    "host",
    [
        "https://svc:Hunter2pw@login.microsoftonline.com",
        "https://login.microsoftonline.com\\@evil.com",
    ],
)
def test_jwt_verifier_refuses_an_authority_host_with_user_info(host: str) -> None:
    # the expected issuer, built from it, is named in the 401 every caller gets
    with pytest.raises(ConfigurationError, match="host only") as raised:
        JwtVerifier(audiences=[API], tenants=[TENANT], authority_host=host)
    assert "Hunter2pw" not in str(raised.value)
