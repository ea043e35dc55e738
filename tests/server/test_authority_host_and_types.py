"""``JwtVerifier`` and ``auth_settings`` refuse an authority host with a path at construction,
as ``OnBehalfOf`` does: the library adds ``/<tenant>/v2.0`` itself, so a host written with a
tenant or ``/v2.0`` doubled every key URL and issuer, and every request got a 503 whose fix sent
the operator to check the network. Values of the wrong type are ``ConfigurationError``s with a
fix at construction, not an ``AttributeError`` there or at the first request."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from entra_passthrough import ConfigurationError, JwtVerifier
from entra_passthrough.server import auth_settings, require_entra_auth
from entra_passthrough.testing import EntraEmulator

SECRET = "hunter2-SECRET-9"
TENANT = "22222222-2222-2222-2222-222222222222"


def refused(build: Callable[[], Any], *words: str) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as info:
        build()
    assert info.value.fix, str(info.value)
    for word in words:
        assert word in str(info.value), str(info.value)
    assert SECRET not in str(info.value)
    return info.value


@pytest.fixture(scope="module")
def idp() -> Any:
    with EntraEmulator() as emulator:
        yield emulator


@pytest.mark.parametrize("path", ["/{tid}", "/{tid}/", "/v2.0", "/organizations", f"/{SECRET}"])
def test_verifier_refuses_an_authority_host_with_a_path(idp: Any, path: str) -> None:
    host = idp.url + path.format(tid=idp.tenant_id)
    error = refused(
        lambda: JwtVerifier(
            audiences=[idp.mcp.client_id],
            tenants=[idp.tenant_id],
            authority_host=host,
            verify=idp.ca_file,
        ),
        "authority_host",
        "has a path",
    )
    assert idp.tenant_id not in str(error)  # the origin at most


@pytest.mark.parametrize("host", ["{url}", "{url}/", "{url}/ ", " {url}"])
def test_the_host_alone_still_verifies_a_real_token(idp: Any, host: str) -> None:
    verifier = JwtVerifier(
        audiences=[idp.mcp.client_id],
        tenants=[idp.tenant_id],
        authority_host=host.format(url=idp.url),
        verify=idp.ca_file,
    )
    verified = verifier.verify(idp.user_token("alice", audience=idp.mcp.client_id))
    assert verified.claims["tid"] == idp.tenant_id


@pytest.mark.parametrize(
    "authority",
    [
        "https://login.microsoftonline.com/" + TENANT,
        "https://login.microsoftonline.com/v2.0",
        f"https://login.microsoftonline.com/{SECRET}",
    ],
)
def test_auth_settings_refuses_an_authority_host_with_a_path(authority: str) -> None:
    refused(
        lambda: auth_settings(
            resource_server_url="https://mcp.contoso.com/mcp",
            tenant_id=TENANT,
            authority_host=authority,
        ),
        "authority_host",
        "has a path",
    )


def test_auth_settings_takes_the_host_with_a_trailing_slash() -> None:
    settings = auth_settings(
        resource_server_url="https://mcp.contoso.com/mcp",
        tenant_id=TENANT,
        authority_host="https://login.microsoftonline.com/",
    )
    assert str(settings.issuer_url) == f"https://login.microsoftonline.com/{TENANT}/v2.0"


@pytest.mark.parametrize(
    ("options", "word"),
    [
        ({"authority_host": 5}, "authority_host"),
        ({"authority_host": None}, "authority_host"),
        ({"audiences": [5]}, "audiences"),
        ({"audiences": 5}, "audiences"),
        ({"audiences": ["api://x", " "]}, "audiences"),
        ({"v2_issuer": 5}, "issuer template"),
        ({"v1_issuer": ["https://sts.windows.net/{tid}/"]}, "issuer template"),
        ({"verify": 5}, "verify"),
        ({"verify": None}, "verify"),
    ],
)
def test_verifier_values_of_the_wrong_type(options: dict[str, Any], word: str) -> None:
    options = {"audiences": ["api://x"], "tenants": [TENANT], **options}
    refused(lambda: JwtVerifier(**options), word)


def test_auth_settings_app_id_uri_of_the_wrong_type() -> None:
    refused(
        lambda: auth_settings(
            resource_server_url="https://mcp.contoso.com/mcp",
            tenant_id=TENANT,
            scopes=["access_as_user"],
            app_id_uri=5,  # type: ignore[arg-type]
        ),
        "app_id_uri",
    )


async def _app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("never reached")


@pytest.mark.parametrize("verifier", [None, "api://x", object()])
def test_require_entra_auth_needs_a_verifier(verifier: Any) -> None:
    refused(lambda: require_entra_auth(_app, verifier=verifier), "JwtVerifier")
