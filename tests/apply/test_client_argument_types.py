"""``EntraAuth`` and ``entra_http_client`` given an argument of the wrong type: a
``ConfigurationError`` naming the argument and what it takes, never a bare ``TypeError``,
``FileNotFoundError`` or ``ssl.SSLError``; and ``client_capabilities="CP1"`` (one string) is
refused as every other list argument is, instead of declaring the capabilities C, P and 1."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx2
import pytest

from entra_passthrough import ConfigurationError, EntraAuth, TokenChain
from entra_passthrough.mcp import entra_http_client
from entra_passthrough.testing import EntraEmulator

SCOPES = ["api://x/.default"]
ORIGINS = ["https://mcp.contoso.com"]


def auth(**overrides: Any) -> EntraAuth:
    return EntraAuth(TokenChain([]), **{"scopes": SCOPES, "origins": ORIGINS, **overrides})


def client(**overrides: Any) -> httpx2.AsyncClient:
    return entra_http_client(
        chain=TokenChain([]), **{"scopes": SCOPES, "origins": ORIGINS, **overrides}
    )


BUILDERS = {"EntraAuth": auth, "entra_http_client": client}


@pytest.mark.parametrize("build", BUILDERS.values(), ids=BUILDERS.keys())
def test_one_string_of_capabilities_is_refused(build: Any) -> None:
    with pytest.raises(ConfigurationError, match="client_capabilities must be a list") as info:
        build(client_capabilities="CP1")
    assert "not one string" in str(info.value)
    assert "['CP1']" in (info.value.fix or "")


@pytest.mark.parametrize("build", BUILDERS.values(), ids=BUILDERS.keys())
@pytest.mark.parametrize(
    "value", [None, 5, ["CP1", 5], [""]], ids=["None", "int", "entry", "blank"]
)
def test_capabilities_of_the_wrong_type(build: Any, value: Any) -> None:
    with pytest.raises(ConfigurationError, match="client_capabilities") as info:
        build(client_capabilities=value)
    assert info.value.fix


def test_a_list_of_capabilities_is_kept() -> None:
    assert auth(client_capabilities=["CP1"])._core.client_capabilities == ("CP1",)
    assert auth(client_capabilities=("cp1", "xms_x"))._core.client_capabilities == ("cp1", "xms_x")
    assert auth()._core.client_capabilities == ()


@pytest.mark.parametrize("build", BUILDERS.values(), ids=BUILDERS.keys())
@pytest.mark.parametrize(
    "value", [None, 5, b"https://mcp.contoso.com"], ids=["None", "int", "bytes"]
)
def test_origins_that_are_not_a_list(build: Any, value: Any) -> None:
    with pytest.raises(ConfigurationError, match="origins must be a list of origins") as info:
        build(origins=value)
    assert "https://mcp.contoso.com" in (info.value.fix or "")


def test_origins_as_one_string_or_a_generator_still_work() -> None:
    assert auth(origins="https://mcp.contoso.com").origins == ("https://mcp.contoso.com",)
    made = auth(origins=(o for o in ["https://a.contoso.com", "https://b.contoso.com"]))
    assert made.origins == ("https://a.contoso.com", "https://b.contoso.com")


@pytest.mark.parametrize(
    "value",
    ["5", [5], float("nan"), -1, 0, True],
    ids=["str", "list", "nan", "neg", "zero", "bool"],
)
def test_a_timeout_of_the_wrong_type(value: Any) -> None:
    with pytest.raises(ConfigurationError, match="timeout") as info:
        client(timeout=value)
    assert info.value.fix


def test_good_timeouts_are_kept() -> None:
    async def run() -> None:
        for value, read in ((5, 5.0), (2.5, 2.5), (httpx2.Timeout(3.0, read=9.0), 9.0)):
            made = client(timeout=value)
            assert made.timeout.read == read
            await made.aclose()
        made = client()
        assert made.timeout.read == 300.0  # the default, unchanged
        await made.aclose()

    asyncio.run(run())


def test_a_ca_file_that_does_not_exist(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-ca.pem")
    with pytest.raises(ConfigurationError, match="verify=") as info:
        client(verify=missing)
    assert "does not exist" in str(info.value)
    assert missing not in f"{info.value} {info.value.fix}"  # the path is not repeated
    assert info.value.__cause__ is None


@pytest.mark.parametrize("content", ["", "not a certificate\n"], ids=["empty", "not-pem"])
def test_a_ca_file_with_no_certificate(tmp_path: Path, content: str) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text(content)
    with pytest.raises(ConfigurationError, match="verify=") as info:
        client(verify=str(ca))
    assert "holds no certificate" in str(info.value)
    assert info.value.fix


@pytest.mark.parametrize(
    "value", [None, 5, b"/etc/ssl/ca.pem", ""], ids=["None", "int", "bytes", "empty"]
)
def test_verify_of_the_wrong_type(value: Any) -> None:
    with pytest.raises(ConfigurationError, match="verify must be True"):
        client(verify=value)


def test_a_ca_file_path_is_trusted_on_a_real_connection() -> None:
    """The path given as ``verify=`` (str or ``Path``) is what the client trusts: the
    emulator's HTTPS certificate verifies with its CA file, and not without it."""

    async def fetch(idp: EntraEmulator, verify: Any) -> int:
        http = client(verify=verify)
        try:
            answer = await http.get(f"{idp.authority}/v2.0/.well-known/openid-configuration")
            return answer.status_code
        finally:
            await http.aclose()

    with EntraEmulator() as idp:
        assert asyncio.run(fetch(idp, idp.ca_file)) == 200
        assert asyncio.run(fetch(idp, Path(idp.ca_file))) == 200
        with pytest.raises(httpx2.ConnectError):
            asyncio.run(fetch(idp, True))


@pytest.mark.parametrize("front", ["httpx2", "httpx"])
def test_scopes_given_as_a_generator_are_kept(front: str) -> None:
    """The scope check read a generator to its end, and the auth kept no scopes (every request
    then failed, or before the chain refused it, asked for a Microsoft Graph token)."""
    from entra_passthrough.httpx import EntraAuth as ClassicEntraAuth

    make = EntraAuth if front == "httpx2" else ClassicEntraAuth
    given = (s for s in ["api://mcp/.default"])
    auth = make(TokenChain([]), scopes=given, origins=ORIGINS)
    assert auth.scopes == ("api://mcp/.default",)
