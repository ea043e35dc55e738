"""OnBehalfOf pre-flight and MSAL plumbing, without any Entra (nothing is listening)."""

from __future__ import annotations

import datetime
import os
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import msal
import pytest

from entra_passthrough import (
    AppCredential,
    AppOnlyAssertion,
    AssertionAudienceMismatch,
    AssertionExpired,
    AssertionMalformed,
    Caller,
    ConfigurationError,
    ManagedIdentity,
    OnBehalfOf,
    SourceUnavailable,
    TenantNotAllowed,
    TokenRequest,
)
from entra_passthrough._msal import (
    DiscoveryOnlyHttpCache,
    FederatedTokenFile,
    NullTokenCache,
    federation_audience,
    load_certificate,
)

from ._fakes import make_jwt

CLIENT = "11111111-1111-1111-1111-111111111111"
TENANT = "t1"
SECRET = "super-secret-value-123"
SCOPES = ("api://mcp/.default",)


def obo(**kw: object) -> OnBehalfOf:
    options: dict[str, object] = {
        "client_id": CLIENT,
        "tenant_id": TENANT,
        "client_secret": SECRET,
        "authority_host": "https://127.0.0.1:9",  # nothing listens: any request would fail
    }
    options.update(kw)
    return OnBehalfOf(**options)  # type: ignore[arg-type]


def request(token: str | None) -> TokenRequest:
    return TokenRequest(SCOPES, Caller.from_token(token) if token is not None else None)


async def test_no_caller_is_not_applicable() -> None:
    source = obo()
    assert source.cache_partition(request(None)) is None
    assert await source.get_token_async(request(None)) is None
    assert source.get_token(TokenRequest(SCOPES, Caller(user_id="x"))) is None


@pytest.mark.parametrize(
    ("token", "error"),
    [
        ("garbage", AssertionMalformed),
        ("", AssertionMalformed),
        (make_jwt(aud="https://ai.azure.com"), AssertionAudienceMismatch),
        (make_jwt(aud="api://someone-else"), AssertionAudienceMismatch),
        (make_jwt(aud=CLIENT, exp=time.time() - 5), AssertionExpired),
        (make_jwt(aud=CLIENT, scp=None, roles=["Tools.Call"], idtyp="app"), AppOnlyAssertion),
        (make_jwt(aud=f"api://{CLIENT}", tid="evil-tenant"), TenantNotAllowed),
    ],
)
async def test_preflight_refuses_without_any_request(token: str, error: type[Exception]) -> None:
    source = obo()
    with pytest.raises(error) as info:
        await source.get_token_async(request(token))
    with pytest.raises(error):
        source.get_token(request(token))
    assert source.msal_apps() == []  # no MSAL app built: no discovery, no POST
    text = str(info.value)
    if token:
        assert token not in text
    assert SECRET not in text


async def test_foundry_audience_message_explains() -> None:
    with pytest.raises(AssertionAudienceMismatch) as info:
        await obo().get_token_async(request(make_jwt(aud="https://ai.azure.com")))
    text = str(info.value)
    assert "Foundry" in text
    assert "AADSTS500131" in text
    assert f"api://{CLIENT}" in text


def test_accepted_audiences_and_allowed_tenants() -> None:
    source = obo(accepted_audiences=["api://contoso.com/agent"], allowed_tenants=["t1", "t2"])
    tenant, _, _ = source.preflight(request(make_jwt(aud="api://contoso.com/agent", tid="t2")))
    assert tenant == "t2"


def test_ids_configured_in_upper_case_accept_entras_lower_case_claims() -> None:
    """GUIDs and identifier URIs are case-insensitive in Entra, which writes them in lower
    case: an upper-case client id, tenant or allow-list entry must not refuse every caller."""
    source = obo(
        client_id=CLIENT.upper().replace("1", "A"),
        tenant_id="T1",
        allowed_tenants=["T1", "T2"],
        accepted_audiences=["API://Contoso.com/Agent"],
    )
    for aud in (
        CLIENT.replace("1", "a"),
        f"api://{CLIENT.replace('1', 'a')}",
        "api://contoso.com/agent",
    ):
        tenant, _, _ = source.preflight(request(make_jwt(aud=aud, tid="t2")))
        assert tenant == "t2"
    with pytest.raises(TenantNotAllowed):
        source.preflight(request(make_jwt(aud=f"api://{CLIENT.replace('1', 'a')}", tid="t3")))


def test_a_secret_pasted_as_the_credential_choice_is_not_shown() -> None:
    pasted = "xq8Q~AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"
    env = {
        "ENTRA_PASSTHROUGH_CLIENT_ID": CLIENT,
        "AZURE_TENANT_ID": TENANT,
        "ENTRA_PASSTHROUGH_CLIENT_CREDENTIAL": pasted,
    }
    with pytest.raises(ConfigurationError) as info:
        OnBehalfOf.from_env(env)
    text = str(info.value).lower()
    assert pasted.lower()[:12] not in text
    assert "entra_passthrough_client_credential" in text


def test_exactly_one_credential() -> None:
    with pytest.raises(ConfigurationError):
        obo(client_secret=None)
    with pytest.raises(ConfigurationError, match="OnBehalfOf needs exactly one client credential"):
        obo(managed_identity=ManagedIdentity(client_id="5f2b9c1e-8d3a-4c6b-9e7f-0a1b2c3d4e5f"))
    with pytest.raises(ConfigurationError):
        obo(authority_host="http://login.example")


def test_agent_identity_needs_exactly_one_blueprint_credential() -> None:
    from entra_passthrough import AgentIdentityOnBehalfOf

    ids = {"blueprint_client_id": "bp", "agent_identity_id": "agent", "tenant_id": TENANT}
    with pytest.raises(ConfigurationError, match="exactly one client credential, got 0"):
        AgentIdentityOnBehalfOf(**ids)
    with pytest.raises(ConfigurationError, match="exactly one client credential, got 2"):
        AppCredential(
            client_id="bp", tenant_id=TENANT, client_secret=SECRET, client_assertion=lambda: "x"
        )
    with pytest.raises(ConfigurationError, match=r"blueprint\) needs client_id and tenant_id"):
        AgentIdentityOnBehalfOf(**{**ids, "blueprint_client_id": ""}, client_secret=SECRET)


def test_repr_has_no_secret() -> None:
    assert SECRET not in repr(obo())
    assert "credential=secret" in repr(obo())


def test_consent_link() -> None:
    source = obo(consent_redirect_uri="https://agent.contoso.com/consent/callback")
    token = make_jwt(aud=CLIENT, upn="alice@contoso.com")
    link = source.consent_link(request(token), "t1")
    assert link is not None
    parts = urlsplit(link)
    assert link.startswith("https://127.0.0.1:9/t1/oauth2/v2.0/authorize?")
    query = parse_qs(parts.query)
    assert query["client_id"] == [CLIENT]
    assert query["prompt"] == ["consent"]
    assert query["response_type"] == ["code"]
    assert query["scope"] == ["api://mcp/.default"]
    assert query["login_hint"] == ["alice@contoso.com"]
    assert query["redirect_uri"] == ["https://agent.contoso.com/consent/callback"]
    assert token not in link
    custom = obo(consent_link=lambda req: "https://broker/start")
    assert custom.consent_link(request(token)) == "https://broker/start"


def test_consent_link_without_tenant_uses_only_an_allowed_tid() -> None:
    source = obo(allowed_tenants=["t1", "t2"])
    forged = make_jwt(aud=CLIENT, tid="common/oauth2/v2.0/logout?post_logout_redirect_uri=x")
    link = source.consent_link(request(forged))
    assert link is not None
    assert link.startswith(f"https://127.0.0.1:9/{TENANT}/oauth2/v2.0/authorize?")
    allowed = source.consent_link(request(make_jwt(aud=CLIENT, tid="t2")))
    assert allowed is not None
    assert allowed.startswith("https://127.0.0.1:9/t2/oauth2/v2.0/authorize?")


def test_federation_audience_per_cloud() -> None:
    assert federation_audience("https://login.microsoftonline.com") == "api://AzureADTokenExchange"
    assert federation_audience("https://login.microsoftonline.us") == (
        "api://AzureADTokenExchangeUSGov"
    )
    assert federation_audience("https://login.chinacloudapi.cn/") == (
        "api://AzureADTokenExchangeChina"
    )
    assert federation_audience("https://127.0.0.1:8443") == "api://AzureADTokenExchange"


def test_discovery_only_http_cache_drops_posts() -> None:
    cache = DiscoveryOnlyHttpCache()
    cache["POST https://x/token hash=abc 400"] = "cached 400"
    cache["GET https://x/.well-known/openid-configuration hash= 2xx"] = "discovery"
    assert list(cache) == ["GET https://x/.well-known/openid-configuration hash= 2xx"]


def test_null_token_cache_stores_nothing() -> None:
    event = {
        "client_id": CLIENT,
        "scope": ["api://mcp/.default"],
        "token_endpoint": "https://login.microsoftonline.com/t1/oauth2/v2.0/token",
        "response": {"access_token": "at", "refresh_token": "rt", "expires_in": 3600},
    }
    real = msal.TokenCache()
    real.add(dict(event))
    assert list(real.search(msal.TokenCache.CredentialType.ACCESS_TOKEN))  # the contrast
    cache = NullTokenCache()
    cache.add(dict(event))
    assert list(cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)) == []
    assert list(cache.search(msal.TokenCache.CredentialType.REFRESH_TOKEN)) == []


def test_federated_token_file_rereads_on_change(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("first\n")
    reader = FederatedTokenFile(str(path))
    assert reader() == "first"
    path.write_text("second-longer\n")
    os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert reader() == "second-longer"
    assert "second" not in repr(reader)


def _self_signed_pem() -> tuple[bytes, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "obo-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ) + cert.public_bytes(serialization.Encoding.PEM)
    return pem, cert.fingerprint(hashes.SHA1()).hex().upper()


@pytest.mark.parametrize("content", ["", " \n"])
def test_an_empty_federated_token_file_is_refused_before_any_request(
    tmp_path: Path, content: str
) -> None:
    """Sent as it is, Entra sees no credential at all (AADSTS7000218, whose fix names a
    secret): the error names the file and the variable instead."""
    path = tmp_path / "azure-identity-token"
    path.write_text(content)
    with pytest.raises(SourceUnavailable, match="is empty") as info:
        FederatedTokenFile(str(path))()
    assert "AZURE_FEDERATED_TOKEN_FILE" in str(info.value)
    path.write_text("eyJ.header.signature")
    assert FederatedTokenFile(str(path))() == "eyJ.header.signature"


def test_authority_host_scheme_ignores_case() -> None:
    from entra_passthrough._msal import normalize_authority_host

    assert normalize_authority_host("HTTPS://login.microsoftonline.us/") == (
        "https://login.microsoftonline.us"
    )
    with pytest.raises(ConfigurationError, match="not HTTPS"):
        normalize_authority_host("HTTP://login.microsoftonline.com")


def test_load_certificate_bytes_and_path(tmp_path: Path) -> None:
    pem, thumb = _self_signed_pem()
    cred = load_certificate(pem)
    # MSAL gets the public certificate (PS256 + x5t#S256), not a SHA-1 thumbprint.
    assert "thumbprint" not in cred
    assert cred["public_certificate"].count("BEGIN CERTIFICATE") == 1
    assert thumb
    assert "PRIVATE KEY" in cred["private_key"]
    path = tmp_path / "cert.pem"
    path.write_bytes(pem)
    assert load_certificate(str(path)) == cred
    with pytest.raises(ConfigurationError):
        load_certificate(b"not a pem")
    with pytest.raises(ConfigurationError):
        load_certificate(str(tmp_path / "missing.pem"))
