"""AzureCli checks the token ``az`` / ``azd`` printed before serving (and caching) it: a token
for another resource (a Graph token for the MCP server) or of another tenant than the
configured one is refused, typed, with the sign-in that fixes it; it was served and cached for
the scope asked for, and the httpx Auth would have sent it to an audience it was not issued for.
What cannot be decided (a v2 token's client id ``aud`` for an API named by its URI, an opaque
token) is served as before; the emulator's az and azd (v1 and v2 resources) still work."""

from __future__ import annotations

import asyncio
import base64
import json
import stat
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from entra_passthrough import AzureCli, Policy, SourceUnavailable, TokenChain
from entra_passthrough.testing import EntraEmulator

from .conftest import decode

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="a shebang script stands in")

TENANT = "11111111-1111-1111-1111-111111111111"
OTHER_TENANT = "99999999-9999-9999-9999-999999999999"
API_ID = "22222222-3333-4444-5555-666666666666"
GRAPH = "https://graph.microsoft.com"


def _jwt(claims: dict[str, Any]) -> str:
    def enc(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{enc({'alg': 'RS256', 'typ': 'JWT'})}.{enc(claims)}.c2ln"


def _fake_cli(tmp_path: Path, tool: str, token: str, *, tenant: str = TENANT) -> tuple[str, Path]:
    """A CLI that prints ``token`` as az or azd prints one, and counts its runs."""
    exp = int(time.time()) + 3600
    if tool == "az":
        out: dict[str, Any] = {
            "accessToken": token,
            "expiresOn": "2099-01-01 00:00:00.000000",
            "expires_on": exp,
            "tenant": tenant,
            "tokenType": "Bearer",
        }
    else:
        out = {"token": token, "expiresOn": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(exp))}
    runs = tmp_path / "runs"
    script = tmp_path / tool
    script.write_text(
        f"#!{sys.executable}\n"
        f"with open({str(runs)!r}, 'a') as f: f.write('x')\n"
        f"print({json.dumps(out)!r})\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script), runs


def _get(chain: TokenChain, scope: str, driver: str) -> Any:
    if driver == "sync":
        return chain.get_token([scope])
    return asyncio.run(chain.get_token_async([scope]))


def _claims(aud: str, tid: str = TENANT) -> dict[str, Any]:
    return {"aud": aud, "tid": tid, "exp": int(time.time()) + 3600, "ver": "1.0"}


@pytest.mark.parametrize("tool", ["az", "azd"])
@pytest.mark.parametrize("driver", ["sync", "async"])
@pytest.mark.parametrize(
    ("aud", "scope"),
    [
        (GRAPH, "api://mcp/.default"),  # a v1 Graph token for a custom API
        (GRAPH, f"{API_ID}/.default"),  # ... for one named by its client id
        ("00000003-0000-0000-c000-000000000000", f"api://{API_ID}/.default"),  # Graph, v2
        ("api://other", "api://mcp/.default"),  # another API's v1 token
        ("33333333-3333-3333-3333-333333333333", f"api://{API_ID}/.default"),  # another's v2
    ],
)
def test_a_token_for_another_resource_is_refused_and_not_cached(
    tmp_path: Path, tool: str, driver: str, aud: str, scope: str
) -> None:
    token = _jwt(_claims(aud))
    executable, runs = _fake_cli(tmp_path, tool, token)
    chain = TokenChain(
        [AzureCli(tool=tool, executable=executable, tenant_id=TENANT)], policy=Policy.DEVELOPER
    )
    try:
        for _ in range(2):  # refused each time: nothing was cached
            with pytest.raises(SourceUnavailable) as info:
                _get(chain, scope, driver)
            message = str(info.value)
            assert f"{tool} printed a token for another resource" in message
            assert token not in message
            assert token.split(".")[1] not in message
            login = "az login" if tool == "az" else "azd auth login"
            assert f"{login} --tenant" in (info.value.fix or "")
            assert "--scope" in (info.value.fix or "")
    finally:
        chain.close()
    assert runs.read_text() == "xx"


@pytest.mark.parametrize("tool", ["az", "azd"])
@pytest.mark.parametrize("driver", ["sync", "async"])
def test_a_token_of_another_tenant_is_refused(tmp_path: Path, tool: str, driver: str) -> None:
    token = _jwt(_claims("api://mcp", tid=OTHER_TENANT))
    executable, _ = _fake_cli(tmp_path, tool, token, tenant=OTHER_TENANT)
    chain = TokenChain(
        [AzureCli(tool=tool, executable=executable, tenant_id=TENANT)], policy=Policy.DEVELOPER
    )
    try:
        with pytest.raises(SourceUnavailable) as info:
            _get(chain, "api://mcp/.default", driver)
    finally:
        chain.close()
    assert f"{tool} printed a token of another tenant ({OTHER_TENANT}, not {TENANT}" in str(
        info.value
    )
    login = (
        f"az login --tenant {TENANT}" if tool == "az" else f"azd auth login --tenant-id {TENANT}"
    )
    assert login in (info.value.fix or "")
    assert token not in str(info.value)


def test_an_opaque_token_of_another_tenant_by_azs_own_word_is_refused(tmp_path: Path) -> None:
    executable, _ = _fake_cli(tmp_path, "az", "opaque-token-value", tenant=OTHER_TENANT)
    chain = TokenChain([AzureCli(executable=executable, tenant_id=TENANT)], policy=Policy.DEVELOPER)
    try:
        with pytest.raises(SourceUnavailable, match="another tenant"):
            chain.get_token(["api://mcp/.default"])
    finally:
        chain.close()


@pytest.mark.parametrize("tool", ["az", "azd"])
@pytest.mark.parametrize(
    ("token", "scope", "tenant_id"),
    [
        (_jwt(_claims("api://mcp")), "api://mcp/.default", TENANT),  # v1, the URI asked for
        (_jwt(_claims("API://MCP/")), "api://mcp/.default", TENANT),  # case, trailing slash
        (_jwt(_claims(API_ID)), f"api://{API_ID}/.default", TENANT),  # v2: the client id
        (_jwt(_claims(API_ID)), "api://mcp/.default", TENANT),  # v2 for a URI: undecided
        (_jwt(_claims(GRAPH)), f"{GRAPH}/.default", TENANT),
        (_jwt(_claims("00000003-0000-0000-c000-000000000000")), f"{GRAPH}/.default", TENANT),
        (_jwt(_claims("api://mcp", tid=OTHER_TENANT)), "api://mcp/.default", None),  # CLI's own
        (_jwt(_claims("api://mcp", tid=OTHER_TENANT)), "api://mcp/.default", "contoso.com"),
        ("opaque-token-value", "api://mcp/.default", TENANT),  # nothing to read
        # ARM's two URIs are one resource (Cloud Shell's az answers one with the other,
        # Azure/azure-cli#29313): a token that worked before the check still works.
        (
            _jwt(_claims("https://management.core.windows.net/")),
            "https://management.azure.com/.default",
            TENANT,
        ),
        (
            _jwt(_claims("https://management.azure.com")),
            "https://management.core.windows.net//.default",
            TENANT,
        ),
    ],
)
def test_what_matches_or_cannot_be_decided_is_served(
    tmp_path: Path, tool: str, token: str, scope: str, tenant_id: str | None
) -> None:
    executable, _ = _fake_cli(tmp_path, tool, token)
    chain = TokenChain(
        [AzureCli(tool=tool, executable=executable, tenant_id=tenant_id)], policy=Policy.DEVELOPER
    )
    try:
        assert chain.get_token([scope]).token == token
    finally:
        chain.close()


@pytest.mark.parametrize("tool", ["az", "azd"])
@pytest.mark.parametrize("driver", ["sync", "async"])
def test_the_emulators_cli_tokens_pass_the_check(
    idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch, tool: str, driver: str
) -> None:
    for name, value in idp.az_env("alice").items():
        monkeypatch.setenv(name, value)
    chain = TokenChain([AzureCli(tool=tool, tenant_id=idp.tenant_id)], policy=Policy.DEVELOPER)
    try:
        for scope in (f"{idp.mcp.app_id_uri}/.default", f"{GRAPH}/.default"):
            claims = decode(_get(chain, scope, driver).token)
            assert claims["tid"] == idp.tenant_id
            assert claims["oid"] == idp.users["alice"].oid
    finally:
        chain.close()
