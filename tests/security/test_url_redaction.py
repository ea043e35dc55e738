"""URLs in log records: httpx logs every request's URL, so a key carried in one (user info, a
SAS signature, an API Management or Functions key, a bare ``?<key>``) is redacted, and what is
not a secret (a documentation link's anchor, a query value with an ordinary name, prose) stays
readable."""

from __future__ import annotations

import pytest

from entra_passthrough._redact import REDACTED, redact


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("GET https://reader:P4ss@keys.contoso.com/k", "reader:P4ss"),
        ("GET https://keys.contoso.com/k?sv=1&sig=SAS-SIG", "SAS-SIG"),
        ("GET https://apim.contoso.com/k?subscription-key=APIM-KEY", "APIM-KEY"),
        ("GET https://f.azurewebsites.net/k?code=FN-KEY", "FN-KEY"),
        ("GET https://f.azurewebsites.net/k?x-functions-key=FN-KEY", "FN-KEY"),
        ("GET https://maps.example/k?key=AIzaKEY&v=3", "AIzaKEY"),
        ("GET https://keys.contoso.com/k?BARE-KEY", "BARE-KEY"),
        ("GET https://keys.contoso.com/k?a=1&BARE-KEY&b=2", "BARE-KEY"),
        ('HTTP Request: GET https://u:p@h/k?api-key=K1 "HTTP/1.1 200 OK"', "K1"),
        # A 64-byte key in standard base64 (a storage account's) with three "/" in it.
        (
            "storage key ILX0dRkz8Qp1/uhB3I8Wq9Zt/Tw5pXcV7mN2/aB4dE6fG8hJ0kL+3nP5rT7vX9zB1dF3hJ5"
            "lN7pR9tV1xZ3bD5fH7jL9nP1rT3vX5zA== rejected",
            "ILX0dRkz8Qp1/uhB3I8Wq9Zt/Tw5pXcV7mN2/aB4dE6fG8hJ0kL",
        ),
        # After a port, a path segment that is itself opaque is still redacted.
        (
            "GET https://h:8443/k/Zq9vT3xw8Lr2mN5pQ7sU1yB4cE6gH0jKaB3dE5fG7h",
            "Zq9vT3xw8Lr2mN5pQ7sU1yB4cE6gH0jKaB3dE5fG7h",
        ),
    ],
)
def test_a_key_in_a_url_is_redacted(text: str, secret: str) -> None:
    shown = redact(text)
    assert secret not in shown
    assert REDACTED in shown


@pytest.mark.parametrize(
    "text",
    [
        "see https://docs.example.com/errors/#aadsts65001",
        "GET https://graph.microsoft.com/v1.0/me?$select=displayName",
        "cache key: abc, token: expired",
        "a question? and a # mark",
        # A port and a path (MCP's resource metadata, the request that fails when a resource
        # URL is wrong): the port's digits do not make the path a secret.
        'HTTP Request: GET https://127.0.0.1:57143/.well-known/oauth-protected-resource "HTTP/1.1'
        ' 404 Not Found"',
        "GET https://mcp.contoso.com:8443/.well-known/oauth-authorization-server",
        # An ARM resource id (a user-assigned identity's) is a path, not a secret.
        "/subscriptions/0b1f6471-1bf0-4dda-aec3-111122223333/resourceGroups/rg-agent/providers/"
        "Microsoft.ManagedIdentity/userAssignedIdentities/agent-mi",
    ],
)
def test_what_is_not_a_secret_stays_readable(text: str) -> None:
    assert redact(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "Ocp-Apim-Subscription-Key: 0123456789abcdef0123456789abcdef",
        "x-api-key: K-12345",
        "{'Ocp-Apim-Subscription-Key': 'K-12345', 'accept': 'json'}",
        '{"x-api-key": "K-12345"}',
    ],
)
def test_a_key_in_a_header_dump_is_redacted(text: str) -> None:
    shown = redact(text)
    assert "0123456789abcdef" not in shown
    assert "K-12345" not in shown
