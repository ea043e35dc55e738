"""``ManagedIdentity`` takes one scope, ``<resource>/.default`` (docs/sources-and-policy.md). A
single *named* permission (``api://<mcp>/access_as_user``, what a user flow asks for) was sent
to the managed identity endpoint as the resource ``api://<mcp>/access_as_user``; the endpoint
answered AADSTS500011 and the error said the API's service principal does not exist, though
the API exists and only the scope's shape is wrong. It is refused before any request, with a
``ConfigurationError`` naming the scope and the fix ``<resource>/.default``, as two scopes are.

Every form azure-identity's ``ManagedIdentityCredential`` sends (it strips ``/.default`` only)
that can be a resource still works: ``<resource>/.default``, a bare resource URL or App ID URI
(with a path too: it cannot be told from a permission), a client id.

Real parts: the emulator's App Service and IMDS managed identity endpoints and its ``az`` /
``azd`` stand-ins, the library's ``ManagedIdentity`` (on MSAL), ``AzureCli`` and ``TokenChain``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from entra_passthrough import (
    AzureCli,
    ConfigurationError,
    ManagedIdentity,
    Policy,
    SourceUnavailable,
    TokenChain,
    TokenRequest,
)
from entra_passthrough._http import SHARED_THROTTLE
from entra_passthrough._sources.managed_identity import scope_to_resource
from entra_passthrough.testing import EntraEmulator

from .conftest import decode

APP = "fc3e56bc-c5ce-5934-926e-1cd113a188a4"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"


@pytest.fixture(params=["app_service", "imds"])
def mi_host(
    request: pytest.FixtureRequest, idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    for name in idp.MI_HOST_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in idp.mi_env(request.param).items():
        monkeypatch.setenv(name, value)
    SHARED_THROTTLE.clear()
    yield request.param
    SHARED_THROTTLE.clear()


def _msi_requests(idp: EntraEmulator) -> int:
    return int(idp.stats()["endpoints"].get("msi", 0))


@pytest.mark.parametrize("name", ["access_as_user", "tools.read"])
def test_a_named_permission_is_refused_before_any_request(
    idp: EntraEmulator, mi_host: str, name: str
) -> None:
    scope = f"{idp.mcp.app_id_uri}/{name}"
    before = _msi_requests(idp)
    source = ManagedIdentity()
    try:
        with pytest.raises(ConfigurationError) as info:
            source.get_token(TokenRequest((scope,)))
    finally:
        source.close()
    assert _msi_requests(idp) == before  # nothing was sent
    err = info.value
    text = str(err)
    assert scope in text
    assert "nothing was sent" in text
    assert err.fix is not None
    assert f"'{idp.mcp.app_id_uri}/.default'" in err.fix
    assert "does not exist" not in text  # not AADSTS500011's wrong cause
    assert "500011" not in text


def test_through_the_chain_the_refusal_keeps_its_text_and_fix(
    idp: EntraEmulator, mi_host: str
) -> None:
    scope = f"{idp.mcp.app_id_uri}/access_as_user"
    before = _msi_requests(idp)
    chain = TokenChain([ManagedIdentity()], policy=Policy.APP_ONLY)
    try:
        # A ConfigurationError met while a source runs is kept, text and fix, in the chain's
        # SourceUnavailable for that source (_policy.Attempts.record).
        with pytest.raises(SourceUnavailable) as info:
            chain.get_token([scope])
    finally:
        chain.close()
    assert _msi_requests(idp) == before
    err = info.value
    assert isinstance(err.__cause__, ConfigurationError)
    assert err.source == "managed_identity"
    assert scope in str(err)
    assert f"'{idp.mcp.app_id_uri}/.default'" in (err.fix or "")
    assert "does not exist" not in str(err)


def test_the_resource_forms_still_get_their_token(idp: EntraEmulator, mi_host: str) -> None:
    """``<App ID URI>/.default``, the bare App ID URI and the bare client id: one token each
    for the mcp API (azure-identity sends each of them as the resource)."""
    uri = idp.mcp.app_id_uri or ""
    source = ManagedIdentity()
    try:
        for scope in (f"{uri}/.default", uri, idp.mcp.client_id, f"{idp.mcp.client_id}/.default"):
            result = source.get_token(TokenRequest((scope,)))
            assert result is not None, scope
            assert decode(result.token)["aud"] in (uri, idp.mcp.client_id), scope
    finally:
        source.close()


@pytest.mark.parametrize(
    ("scope", "resource"),
    [
        ("https://vault.azure.net/.default", "https://vault.azure.net"),
        ("https://vault.azure.net", "https://vault.azure.net"),
        ("https://management.azure.com/", "https://management.azure.com/"),
        ("https://management.azure.com//.default", "https://management.azure.com/"),
        ("https://graph.microsoft.com", "https://graph.microsoft.com"),
        (f"api://{APP}", f"api://{APP}"),
        (f"api://{APP}/", f"api://{APP}/"),
        (f"api://{TENANT}/{APP}", f"api://{TENANT}/{APP}"),
        (f"api://contoso-mcp/{APP}", f"api://contoso-mcp/{APP}"),
        ("api://contoso-mcp", "api://contoso-mcp"),
        (APP, APP),
        (f"{APP}/.default", APP),
        ("https://contoso.onmicrosoft.com/mcp", "https://contoso.onmicrosoft.com/mcp"),
        ("https://analysis.windows.net/powerbi/api", "https://analysis.windows.net/powerbi/api"),
        ("urn:contoso:mcp", "urn:contoso:mcp"),
        (f"api://{APP}/access_as_user/.default", f"api://{APP}/access_as_user"),
    ],
)
def test_every_resource_form_azure_identity_sends_is_kept(scope: str, resource: str) -> None:
    assert scope_to_resource((scope,)) == resource


@pytest.mark.parametrize(
    ("scope", "resource"),
    [
        (f"api://{APP}/.DEFAULT", f"api://{APP}"),
        ("https://graph.microsoft.com/.Default", "https://graph.microsoft.com"),
        ("https://graph.microsoft.com/.default ", "https://graph.microsoft.com"),
        (" https://vault.azure.net/.default\n", "https://vault.azure.net"),
    ],
)
def test_a_default_scope_written_otherwise_is_still_its_resource(scope: str, resource: str) -> None:
    """``/.DEFAULT``, or a space pasted after ``/.default``, is the resource's every-role scope
    all the same: it was refused as "a permission named '.default'", with a fix naming what the
    user appeared to have passed."""
    assert scope_to_resource((scope,)) == resource


@pytest.mark.parametrize(
    ("scope", "fix"),
    [
        (f"api://{APP}/access_as_user", f"'api://{APP}/.default'"),
        ("api://contoso-mcp/tools.read", "'api://contoso-mcp/.default'"),
        (f"api://{TENANT}/{APP}/user_impersonation", f"'api://{TENANT}/{APP}/.default'"),
        (f"{APP}/access_as_user", f"'{APP}/.default'"),
        ("https://graph.microsoft.com/User.Read", "'https://graph.microsoft.com/.default'"),
        ("https://graph.microsoft.us/Mail.Send", "'https://graph.microsoft.us/.default'"),
    ],
)
def test_a_named_permission_is_refused_with_its_resources_default(scope: str, fix: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        scope_to_resource((scope,))
    assert scope in str(info.value)
    assert info.value.fix is not None
    assert fix in info.value.fix
    # The one form that reads as a permission but can be an App ID URI has its way out.
    assert f"'{scope}/.default'" in info.value.fix


@pytest.mark.parametrize("tool", ["az", "azd"])
def test_azure_cli_reads_its_one_scope_the_same_way(
    idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch, tool: str
) -> None:
    """``AzureCli`` asks its CLI for ``<resource>/.default`` (``scope_to_resource``): a named
    permission was asked as the resource ``api://<mcp>/access_as_user`` and answered
    AADSTS500011 by the CLI; it is refused before the CLI runs, with the same fix."""
    for name, value in idp.az_env("alice").items():
        monkeypatch.setenv(name, value)
    before = int(idp.stats()["endpoints"].get("token", 0))
    source = AzureCli(tool=tool)
    try:
        with pytest.raises(ConfigurationError) as info:
            source.get_token(TokenRequest((f"{idp.mcp.app_id_uri}/access_as_user",)))
        assert f"'{idp.mcp.app_id_uri}/.default'" in (info.value.fix or "")
        assert int(idp.stats()["endpoints"].get("token", 0)) == before
        # The resource's .default: the user's token.
        result = source.get_token(TokenRequest((f"{idp.mcp.app_id_uri}/.default",)))
        assert result is not None
    finally:
        source.close()
