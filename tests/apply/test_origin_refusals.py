"""``EntraAuth(origins=)`` refusals name the origin as scheme, host and port at most: a user
name and password, a path, a query or a fragment (where a key may be) never reaches the
message, nor a value that is not an http(s) URL (a secret pasted into the wrong place). Each
refusal is a ``ConfigurationError`` with a fix."""

from __future__ import annotations

from typing import Any

import pytest

from entra_passthrough import ConfigurationError, EntraAuth, TokenChain

SECRET = "S3cretPw0rdXYZ"


def build(origins: Any) -> EntraAuth:
    return EntraAuth(TokenChain([]), scopes=["api://x/.default"], origins=origins)


@pytest.mark.parametrize(
    ("origin", "shown", "word"),
    [
        (f"https://u:{SECRET}@mcp.contoso.com", "https://mcp.contoso.com", "password"),
        (f"https://{SECRET}@mcp.contoso.com", "https://mcp.contoso.com", "password"),
        (f"https://mcp.contoso.com/?k={SECRET}", "https://mcp.contoso.com", "query"),
        (f"https://mcp.contoso.com/?{SECRET}", "https://mcp.contoso.com", "query"),
        (f"https://mcp.contoso.com:8443#{SECRET}", "https://mcp.contoso.com:8443", "fragment"),
        (f"https://mcp.contoso.com/{SECRET}", "https://mcp.contoso.com", "path"),
        (f"http://u:{SECRET}@mcp.contoso.com", "http://mcp.contoso.com", "password"),
        (f"ftp://{SECRET}", None, "https://"),
        (SECRET, None, "https://"),
        (f"https://[::1/{SECRET}", None, "origin"),
        (f"https://mcp.contoso.com:{SECRET}", None, "origin"),
        ("http://mcp.contoso.com:8080/", "http://mcp.contoso.com:8080", "plain HTTP"),
    ],
)
def test_refusals_show_scheme_host_and_port_only(origin: str, shown: str | None, word: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        build([origin])
    text = f"{info.value} {info.value!r}"
    assert SECRET.lower() not in text.lower(), text
    if shown is not None:
        assert shown in text, text
    assert word in str(info.value), str(info.value)
    assert info.value.fix
    assert info.value.__cause__ is None


@pytest.mark.parametrize("origin", [5, None, b"https://mcp.contoso.com", ""])
def test_not_a_string(origin: Any) -> None:
    with pytest.raises(ConfigurationError) as info:
        build([origin])
    assert "origin" in str(info.value)
    assert info.value.fix


def test_good_origins_still_accepted() -> None:
    auth = build(["https://mcp.contoso.com/", "https://api.contoso.com:8443"])
    assert auth is not None
