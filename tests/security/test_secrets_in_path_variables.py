"""A secret put where a path or an id belongs is never printed back.

A Kubernetes secret mapped as an environment variable instead of a file puts the *content* (a
token, a private key) into ``AZURE_FEDERATED_TOKEN_FILE`` or a certificate path variable; a
client secret swapped into ``AZURE_CLIENT_ID``. Before, ``doctor`` printed the token, every
token request's ``SourceUnavailable`` quoted it, a certificate error kept the key on its
``__context__`` (the ``OSError``'s file name), and ``ManagedIdentity`` echoed the secret in its
repr, its errors and the request URL. Real components: the emulator over HTTPS, MSAL."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from entra_passthrough import (
    ConfigurationError,
    DelegatedConsent,
    ManagedIdentity,
    TokenChain,
    bind_caller,
)
from entra_passthrough._doctor import run, table
from entra_passthrough.testing import EntraEmulator

from ._hygiene import error_text, leaks


@pytest.fixture(scope="module")
def idp() -> Iterator[EntraEmulator]:
    with EntraEmulator() as emulator:
        yield emulator


SECRET = "Xq8~Kd9.vbN2mQ7rT4wZ1yP6sL3hJ5fA0gC8eD-u"  # an Entra client secret's shape


def _key() -> tuple[str, str]:
    """A PEM private key and a part of it no other key shares (past the ASN.1 header)."""
    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    return pem, "".join(pem.splitlines()[1:-1])[48:]


@pytest.mark.parametrize(
    ("variable", "kind"),
    [
        ("AZURE_FEDERATED_TOKEN_FILE", "jwt"),
        ("AZURE_FEDERATED_TOKEN_FILE", "key"),
        ("ENTRA_PASSTHROUGH_CLIENT_CERTIFICATE_PATH", "key"),
        ("ENTRA_PASSTHROUGH_CLIENT_CERTIFICATE_PATH", "jwt"),
        ("ENTRA_PASSTHROUGH_CONSENT_CLIENT_CERTIFICATE_PATH", "key"),
    ],
)
def test_content_pasted_into_a_path_variable_is_never_shown(
    idp: EntraEmulator, variable: str, kind: str
) -> None:
    if kind == "jwt":
        value = secret = idp.user_token("alice", audience="api://AzureADTokenExchange")
    else:
        value, secret = _key()
    env = {
        "AZURE_TENANT_ID": idp.tenant_id,
        "AZURE_AUTHORITY_HOST": idp.url,
        "ENTRA_PASSTHROUGH_CA_FILE": idp.ca_file,
        "ENTRA_PASSTHROUGH_CLIENT_ID": idp.agent.client_id,
        "ENTRA_PASSTHROUGH_CONSENT_CLIENT_ID": idp.agent.client_id,
        "ENTRA_PASSTHROUGH_CONSENT_KEYS": "k1:" + "A" * 43,
        "ENTRA_PASSTHROUGH_CONSENT_BROKER_URL": "https://broker.example.com/consent",
        variable: value,
    }
    scopes = [f"{idp.mcp.app_id_uri}/.default"]
    checks = run(env, scopes=scopes)
    shown = table(checks) + json.dumps([check.__dict__ for check in checks])
    assert not leaks(shown, {secret})
    assert any(check.status == "fail" for check in checks)  # it is still reported
    build = DelegatedConsent.from_env if "CONSENT" in variable else TokenChain.from_env
    refused: ConfigurationError | None = None
    try:
        built = build(env)
    except ConfigurationError as exc:
        refused = exc
    if refused is not None:
        assert not leaks(error_text(refused), {secret})
        return
    assert isinstance(built, TokenChain)  # a token file is read at the first request
    try:
        assert not leaks(repr(built.sources), {secret})

        async def ask() -> None:
            async with bind_caller(token=idp.user_token("alice", audience=idp.agent.client_id)):
                await built.get_token_async(scopes)

        with pytest.raises(Exception) as info:  # noqa: PT011 - whichever: its text is checked
            asyncio.run(ask())
        assert not leaks(error_text(info.value), {secret})
    finally:
        built.close()


@pytest.mark.parametrize(
    ("selector", "value"),
    [
        ("client_id", SECRET),
        ("object_id", SECRET),
        ("client_id", "uami"),
        ("resource_id", SECRET),
        ("resource_id", "/subscriptions/x"),
    ],
)
def test_a_managed_identity_selector_that_is_not_one_is_refused_unshown(
    selector: str, value: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        ManagedIdentity(**{selector: value})
    assert value not in error_text(info.value)
    assert selector in str(info.value)
    assert info.value.fix is not None


def test_a_secret_in_azure_client_id_is_refused_unshown() -> None:
    with pytest.raises(ConfigurationError) as info:
        ManagedIdentity.from_env(
            {"AZURE_CLIENT_ID": SECRET, "IDENTITY_ENDPOINT": "http://x", "IDENTITY_HEADER": "h"}
        )
    assert not leaks(error_text(info.value), {SECRET})
    assert "AZURE_CLIENT_ID" in (info.value.fix or "")


def test_a_user_assigned_identitys_ids_are_taken() -> None:
    resource = (
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/"
        "Microsoft.ManagedIdentity/userAssignedIdentities/uami"
    )
    for selector, value in (
        ("client_id", "5F2B9C1E-8D3A-4C6B-9E7F-0A1B2C3D4E5F"),
        ("object_id", "5f2b9c1e-8d3a-4c6b-9e7f-0a1b2c3d4e5f"),
        ("resource_id", resource),
        ("resource_id", resource.lower()),
    ):
        identity = ManagedIdentity(**{selector: value})
        try:
            assert identity.selector == (selector, value)
        finally:
            identity.close()


def test_a_selector_is_sent_as_checked() -> None:
    """A ``uuid.UUID`` is its text; a pasted id loses its surrounding spaces and newline (it
    was checked stripped and sent as given)."""
    client = uuid.UUID("5f2b9c1e-8d3a-4c6b-9e7f-0a1b2c3d4e5f")
    for given in (client, f"  {client}\n"):
        identity = ManagedIdentity(client_id=given)  # type: ignore[arg-type]
        try:
            assert identity.client_id == str(client)
        finally:
            identity.close()


def test_a_secret_in_a_workload_identity_pods_client_id_is_refused_unshown(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """On an AKS workload identity pod a ``ManagedIdentity()`` built in code reads
    ``AZURE_CLIENT_ID`` from the environment: a secret there was sent to Entra as the client
    id."""
    for name in (*EntraEmulator.MI_HOST_VARIABLES, "IMDS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    token = tmp_path / "token"
    token.write_text("header.payload.signature")
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token))
    monkeypatch.setenv("AZURE_TENANT_ID", "22222222-2222-2222-2222-222222222222")
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.com")
    monkeypatch.setenv("AZURE_CLIENT_ID", SECRET)
    with pytest.raises(ConfigurationError) as info:
        ManagedIdentity()
    assert not leaks(error_text(info.value), {SECRET})
    assert "AZURE_CLIENT_ID" in str(info.value)


@pytest.mark.parametrize(
    "path", ["token.jwt", "secrets/token.jwt", "/mnt/Azure Files/token.jwt", "a@b+c.jwt"]
)
def test_a_token_file_path_that_is_a_path_is_shown(path: str) -> None:
    """Hidden only when it looks like a secret: a relative path, or one with spaces, is named
    in the error, so the user sees which file was tried."""
    from entra_passthrough import SourceUnavailable
    from entra_passthrough._msal import FederatedTokenFile

    token_file = FederatedTokenFile(path)  # not there: read at the first request
    assert repr(path) in repr(token_file)
    with pytest.raises(SourceUnavailable) as info:
        token_file()
    assert repr(path) in str(info.value)
