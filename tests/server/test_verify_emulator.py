"""JwtVerifier against the local Entra emulator: real HTTPS JWKS, real Entra-shaped tokens."""

from __future__ import annotations

import asyncio

import pytest

from entra_passthrough import InsufficientScope, JwtVerifier, TokenVerificationError
from entra_passthrough.testing import FOUNDRY_AUDIENCE, EntraEmulator


def mcp_verifier(idp: EntraEmulator, **options: object) -> JwtVerifier:
    return JwtVerifier(
        audiences=[idp.mcp.client_id, idp.mcp.app_id_uri],
        tenants=[idp.tenant_id],
        authority_host=idp.url,
        verify=idp.ca_file,
        **options,  # type: ignore[arg-type]
    )


def jwks_count(idp: EntraEmulator) -> int:
    return idp.stats()["endpoints"]["jwks"]


async def test_v2_user_token(entra_emulator: EntraEmulator) -> None:
    idp = entra_emulator
    alice = idp.users["alice"]
    token = idp.user_token(user="alice", audience=idp.mcp.client_id, scopes=("access_as_user",))
    vt = await mcp_verifier(idp, required_scopes=["access_as_user"]).verify_async(token)
    assert (vt.oid, vt.tid, vt.version) == (alice.oid, idp.tenant_id, "2.0")
    assert vt.upn == alice.upn
    assert vt.audience == idp.mcp.client_id
    assert vt.issuer == idp.issuer(version="2.0")
    assert vt.scopes == ("access_as_user",)


def test_v1_user_token_sync(entra_emulator: EntraEmulator) -> None:
    idp = entra_emulator
    api = idp.legacy_api
    verifier = JwtVerifier(
        audiences=[api.client_id, api.app_id_uri],
        tenants=[idp.tenant_id],
        authority_host=idp.url,
        verify=idp.ca_file,
    )
    token = idp.user_token(user="bob", audience=api.app_id_uri)
    vt = verifier.verify(token)
    assert vt.version == "1.0"
    assert vt.audience == api.app_id_uri
    assert vt.issuer == idp.issuer(version="1.0")
    assert vt.oid == idp.users["bob"].oid
    assert vt.client_id == idp.frontend.client_id  # v1: appid


async def test_v1_token_for_a_v2_app_is_accepted_by_app_id_uri(
    entra_emulator: EntraEmulator,
) -> None:
    idp = entra_emulator
    token = idp.user_token(user="alice", audience=idp.mcp.app_id_uri, version=1)
    vt = await mcp_verifier(idp).verify_async(token)
    assert vt.version == "1.0"


async def test_foundry_token_is_refused(entra_emulator: EntraEmulator) -> None:
    idp = entra_emulator
    token = idp.user_token(user="alice", audience=FOUNDRY_AUDIENCE)
    with pytest.raises(TokenVerificationError, match="audience"):
        await mcp_verifier(idp).verify_async(token)


async def test_other_tenant_is_refused_without_fetch(entra_emulator: EntraEmulator) -> None:
    idp = entra_emulator
    token = idp.user_token(user="alice", audience=idp.mcp.client_id, tenant_id=idp.second_tenant_id)
    verifier = mcp_verifier(idp)
    with pytest.raises(TokenVerificationError, match="allow-list"):
        await verifier.verify_async(token)
    assert verifier.jwks_fetches == 0


async def test_app_only_token(entra_emulator: EntraEmulator) -> None:
    idp = entra_emulator
    token = idp.app_token(
        client_id=idp.agent.client_id, audience=idp.mcp.client_id, roles=("Tools.Call",)
    )
    with pytest.raises(InsufficientScope, match="app-only"):
        await mcp_verifier(idp).verify_async(token)
    verifier = mcp_verifier(idp, allow_app_only=True, required_roles=["Tools.Call"])
    vt = await verifier.verify_async(token)
    assert vt.app_only
    assert vt.client_id == idp.agent.client_id


async def test_rotation_one_refetch(entra_emulator_fresh: EntraEmulator) -> None:
    idp = entra_emulator_fresh
    verifier = mcp_verifier(idp)
    before = jwks_count(idp)
    await verifier.verify_async(idp.user_token(user="alice", audience=idp.mcp.client_id))
    assert jwks_count(idp) == before + 1
    # Entra publishes the next key before signing with it: one rollover needs no refetch...
    idp.rotate_keys()
    await verifier.verify_async(idp.user_token(user="alice", audience=idp.mcp.client_id))
    assert jwks_count(idp) == before + 1
    # ...a key published after the verifier's fetch (a second rollover) needs exactly one.
    idp.rotate_keys()
    tokens = [idp.user_token(user="alice", audience=idp.mcp.client_id) for _ in range(20)]
    results = await asyncio.gather(*(verifier.verify_async(t) for t in tokens))
    assert {r.oid for r in results} == {idp.users["alice"].oid}
    assert jwks_count(idp) == before + 2
    # the new key is cached now: later tokens verify with no further fetch
    await verifier.verify_async(idp.user_token(user="bob", audience=idp.mcp.client_id))
    assert jwks_count(idp) == before + 2


async def test_fifty_concurrent_verifies_one_fetch(entra_emulator_fresh: EntraEmulator) -> None:
    idp = entra_emulator_fresh
    users = ["alice", "bob"]
    tokens = [idp.user_token(user=users[i % 2], audience=idp.mcp.client_id) for i in range(50)]
    verifier = mcp_verifier(idp)
    before = jwks_count(idp)
    results = await asyncio.gather(*(verifier.verify_async(t) for t in tokens))
    assert [r.oid for r in results] == [idp.users[users[i % 2]].oid for i in range(50)]
    assert jwks_count(idp) == before + 1
    assert verifier.jwks_fetches == 1


async def test_discovery_document(entra_emulator: EntraEmulator) -> None:
    idp = entra_emulator
    verifier = mcp_verifier(
        idp, discovery_url=f"{idp.authority}/v2.0/.well-known/openid-configuration"
    )
    token = idp.user_token(user="alice", audience=idp.mcp.client_id)
    assert (await verifier.verify_async(token)).oid == idp.users["alice"].oid


async def test_multi_tenant_any_tenant(entra_emulator: EntraEmulator) -> None:
    idp = entra_emulator
    verifier = JwtVerifier(
        audiences=[idp.mcp.client_id],
        any_tenant=True,
        authority_host=idp.url,
        verify=idp.ca_file,
    )
    token = idp.user_token(user="alice", audience=idp.mcp.client_id, tenant_id=idp.second_tenant_id)
    assert (await verifier.verify_async(token)).tid == idp.second_tenant_id
