"""Helpers for the resolve integration tests (real MSAL / azure-identity against the emulator)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from azure.identity import ClientSecretCredential

from entra_passthrough import AppCredential, ManagedIdentity, OnBehalfOf
from entra_passthrough.testing import EntraEmulator


def decode(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def mcp_scope(idp: EntraEmulator) -> list[str]:
    return [f"{idp.mcp.app_id_uri}/.default"]


def token_posts(idp: EntraEmulator) -> int:
    return idp.stats()["endpoints"]["token"]


def obo_posts(idp: EntraEmulator) -> int:
    return idp.stats()["grants"]["on_behalf_of"]


_SESSIONS: list[Any] = []


def session(idp: EntraEmulator) -> Any:
    """An MSAL http_client for the emulator, closed after the test (open keep-alive
    connections would hold up the emulator's shutdown)."""
    http = idp.msal_http_client()
    _SESSIONS.append(http)
    return http


def make_obo(idp: EntraEmulator, **kw: Any) -> OnBehalfOf:
    options: dict[str, Any] = {
        "client_id": idp.agent.client_id,
        "tenant_id": idp.tenant_id,
        "authority_host": idp.url,
        "http_client": session(idp),
    }
    if not any(
        k in kw
        for k in (
            "client_secret",
            "client_certificate",
            "client_assertion",
            "managed_identity",
            "federated_token_file",
        )
    ):
        options["client_secret"] = idp.agent.secret
    full = {
        k: kw.pop(k)
        for k in (
            "client_certificate",
            "certificate_password",
            "send_certificate_chain",
            "client_assertion",
            "federated_token_file",
        )
        if k in kw
    }
    if full:  # a credential beyond the simple path: an AppCredential
        app = {k: options.pop(k) for k in ("client_id", "tenant_id", "authority_host")}
        options["credential"] = AppCredential(**app, **full)
    options.update(kw)
    return OnBehalfOf(**options)


def make_mi(idp: EntraEmulator, **kw: Any) -> ManagedIdentity:
    env = idp.mi_env()
    return ManagedIdentity(
        client_id=idp.managed_identity.client_id,
        endpoint=env["IDENTITY_ENDPOINT"],
        header=env["IDENTITY_HEADER"],
        **kw,
    )


@pytest.fixture
def idp(entra_emulator: EntraEmulator) -> Iterator[EntraEmulator]:
    entra_emulator.clear_faults()
    yield entra_emulator
    entra_emulator.clear_faults()
    entra_emulator.token_latency = 0.0
    while _SESSIONS:
        _SESSIONS.pop().close()


def app_credential(idp: EntraEmulator) -> ClientSecretCredential:
    return ClientSecretCredential(
        idp.tenant_id,
        idp.agent.client_id,
        idp.agent.secret,
        authority=idp.url,
        connection_verify=idp.ca_file,
        disable_instance_discovery=True,
    )
