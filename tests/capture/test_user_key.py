"""``UserKey`` is the one representation of *which user*: one string form (``.value``), one
stored form (``.hashed``), and every part of the library that keys by user derives it the same
way (consent grants, the per-user MCP pool, the MCP server's per-user data, telemetry)."""

from __future__ import annotations

import hashlib
import time

import pytest

from _support.tokens import unsigned_jwt
from entra_passthrough import Caller, IdentityKind, TokenResult, UserKey, bind_caller


def test_the_stored_form_never_changes() -> None:
    # Grants, links and states already in a store (Redis, shared by replicas) carry this hash:
    # changing it would orphan every user's grant.
    def stored(value: str) -> str:
        return hashlib.sha256(f"entra-passthrough/user\x00{value}".encode()).hexdigest()

    assert UserKey.for_entra_user("t", "o").hashed == stored("t:o")
    assert UserKey.for_platform_user("chat-7").hashed == stored("platform:chat-7")


def test_equal_by_kind_and_value_hints_aside() -> None:
    plain = UserKey.for_entra_user("t", "o")
    hinted = UserKey.for_entra_user("t", "o", upn="alice@contoso.com")
    assert plain == hinted
    assert {plain: 1}[hinted] == 1  # a dict key for per-user data
    assert plain != UserKey.for_entra_user("t", "o2")
    assert plain != UserKey.for_platform_user("t:o")  # another kind, even with a lookalike id
    assert UserKey.for_platform_user("t:o").value == "platform:t:o"


def test_repr_names_no_person() -> None:
    key = UserKey.for_entra_user("tenant-1", "oid-secret", upn="alice@contoso.com")
    shown = repr(key)
    assert "oid-secret" not in shown
    assert "alice" not in shown
    assert "entra" in shown


def test_from_caller_takes_verified_claims_or_the_platform_id_never_unverified_ones() -> None:
    forged = Caller.from_token(unsigned_jwt(oid="victim-oid", tid="victim-tid"))
    assert UserKey.from_caller(forged) is None
    forged.verified = {"tid": "t", "oid": "alice", "upn": "alice@contoso.com"}
    key = UserKey.from_caller(forged)
    assert key == UserKey.for_entra_user("t", "alice")
    assert key is not None
    assert key.login_hint == "alice@contoso.com"
    assert UserKey.from_verified_claims(forged.verified) == key
    assert UserKey.from_verified_claims({"tid": "t"}) is None
    platform = Caller.from_token(None, user_id="chat-7")
    assert UserKey.from_caller(platform) == UserKey.for_platform_user("chat-7")
    platform.end()
    assert UserKey.from_caller(platform) is None  # an ended caller is no one


def test_the_integrations_derive_the_same_key() -> None:
    pytest.importorskip("agent_framework")
    pytest.importorskip("mcp")
    from entra_passthrough.agent_framework import issued_pool_key
    from entra_passthrough.server import EntraUser

    expected = UserKey.for_entra_user("t", "alice")
    server_side = EntraUser(
        oid="alice",
        tid="t",
        upn=None,
        name=None,
        scopes=(),
        roles=(),
        client_id="c",
        app_only=False,
        claims={},
    )
    assert server_side.user_key == expected
    issued = TokenResult(
        unsigned_jwt(tid="t", oid="alice"), time.time() + 600, IdentityKind.USER, "obo"
    )
    with bind_caller(token=unsigned_jwt(tid="t", oid="alice")) as caller:
        assert issued_pool_key(issued, caller) == expected
        caller.verified = {"tid": "t", "oid": "alice"}
        assert UserKey.from_caller(caller) == expected


def test_telemetry_hashes_the_user_key() -> None:
    from entra_passthrough import _otel

    with bind_caller(token=unsigned_jwt(tid="t", oid="alice")) as verified:
        verified.verified = {"tid": "t", "oid": "alice"}
        alice = _otel.user_hash(verified)
    with bind_caller(token=unsigned_jwt(tid="t", oid="alice")) as forged:
        copied = _otel.user_hash(forged)  # unverified claims naming alice: not alice
    with bind_caller(token=unsigned_jwt(tid="t", oid="bob")) as other:
        other.verified = {"tid": "t", "oid": "bob"}
        bob = _otel.user_hash(other)
    assert alice is not None
    assert len({alice, copied, bob}) == 3
    with bind_caller(token=unsigned_jwt(tid="t", oid="alice")) as again:
        again.verified = {"tid": "t", "oid": "alice", "upn": "changes@contoso.com"}
        assert _otel.user_hash(again) == alice
