"""What a request arriving with a known token costs on the way out: no claims decode."""

from __future__ import annotations

from typing import Any

import pytest

from entra_passthrough import Caller, OnBehalfOf, TokenChain
from entra_passthrough._caller import bind_caller
from entra_passthrough.testing import EntraEmulator


async def test_a_new_caller_with_a_cached_token_is_never_decoded(
    entra_emulator: EntraEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import entra_passthrough._caller as caller_module

    idp = entra_emulator
    real = caller_module.UnverifiedClaims.from_token
    decodes = 0

    def counting(token: str) -> Any:
        nonlocal decodes
        decodes += 1
        return real(token)

    monkeypatch.setattr(caller_module.UnverifiedClaims, "from_token", staticmethod(counting))
    source = OnBehalfOf(
        client_id=idp.agent.client_id,
        tenant_id=idp.tenant_id,
        authority_host=idp.url,
        client_secret=idp.agent.secret,
        http_client=idp.msal_http_client(),
    )
    chain = TokenChain([source])
    scopes = (f"{idp.mcp.app_id_uri}/.default",)
    raw = [(b"authorization", f"Bearer {idp.user_token('alice')}".encode())]
    try:
        tokens = set()
        for _ in range(50):  # 50 requests of one user, each with its own Caller
            caller = Caller.from_headers(raw)
            with bind_caller(caller, cap_at_expiry=False):  # as the middleware binds it
                tokens.add((await chain.get_token_async(scopes)).token)
            caller.end()
    finally:
        chain.close()
    assert len(tokens) == 1
    assert chain.cache.stats().misses == 1
    assert decodes == 1  # the miss (preflight reads the claims); every hit hashed only


def _obo(idp: EntraEmulator) -> OnBehalfOf:
    return OnBehalfOf(
        client_id=idp.agent.client_id,
        tenant_id=idp.tenant_id,
        authority_host=idp.url,
        client_secret=idp.agent.secret,
        http_client=idp.msal_http_client(),
    )


async def test_the_hit_path_builds_no_request_and_serves_only_its_user_and_audience(
    entra_emulator: EntraEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``cached_token`` as the apply stage calls it (a new Caller, tuples) takes the caller's
    partition straight from the source: no ``TokenRequest`` per hit. It still answers only
    for that caller's assertion and those scopes, and never for an ended caller."""
    import entra_passthrough._chain as chain_module

    idp = entra_emulator
    chain = TokenChain([_obo(idp)])
    mcp = (f"{idp.mcp.app_id_uri}/.default",)
    legacy = (f"{idp.app('legacy_api').app_id_uri}/.default",)
    headers = {
        name: [(b"authorization", f"Bearer {idp.user_token(name)}".encode())]
        for name in ("alice", "bob")
    }
    try:
        issued = {}
        for name, raw in headers.items():
            with bind_caller(Caller.from_headers(raw), cap_at_expiry=False):
                issued[name, mcp] = (await chain.get_token_async(mcp)).token
        with bind_caller(Caller.from_headers(headers["alice"]), cap_at_expiry=False):
            issued["alice", legacy] = (await chain.get_token_async(legacy)).token
        assert len(set(issued.values())) == 3

        built = 0
        real = chain_module.TokenRequest

        def counting(*args: Any, **kwargs: Any) -> Any:
            nonlocal built
            built += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(chain_module, "TokenRequest", counting)
        for _ in range(3):
            for name, raw in headers.items():
                caller = Caller.from_headers(raw)
                assert chain.cached_token(mcp, caller=caller) is not None
                assert chain.cached_token(mcp, caller=caller).token == issued[name, mcp]  # type: ignore[union-attr]
                hit = chain.cached_token(legacy, caller=caller)
                assert (hit.token if hit else None) == issued.get((name, legacy))
        assert built == 0
        # the apply stage's lookup, bound once per EntraAuth, answers what cached_token does
        lookups = {scopes: chain.hit_lookup(list(scopes)) for scopes in (mcp, legacy)}
        for name, raw in headers.items():
            for scopes, lookup in lookups.items():
                hit = lookup(Caller.from_headers(raw))
                assert (hit.token if hit else None) == issued.get((name, scopes))
        assert lookups[mcp](Caller.from_token(idp.user_token("carol"))) is None
        assert built == 0
        for raw in headers.values():
            caller = Caller.from_headers(raw)
            caller.end()
            assert chain.cached_token(mcp, caller=caller) is None  # ended: no token
        # A Caller with no assertion, or another one: nothing cached for it.
        assert chain.cached_token(mcp, caller=Caller()) is None
        stranger = idp.user_token("carol")
        assert chain.cached_token(mcp, caller=Caller.from_token(stranger)) is None
        # The general path (a list of scopes) answers the same.
        caller = Caller.from_headers(headers["bob"])
        assert chain.cached_token(list(mcp), caller=caller).token == issued["bob", mcp]  # type: ignore[union-attr]
    finally:
        chain.close()


async def test_a_source_without_caller_partition_is_served_from_the_cache_too(
    entra_emulator: EntraEmulator,
) -> None:
    """A custom source with only ``cache_partition`` (the protocol's required part): the hit
    path falls back to building the request, and still hits."""
    idp = entra_emulator
    obo = _obo(idp)

    class OnlyRequestPartition:
        name = "custom"
        kind = obo.kind

        def cache_partition(self, request: Any) -> Any:
            return obo.cache_partition(request)

        def get_token(self, request: Any) -> Any:
            return obo.get_token(request)

        async def get_token_async(self, request: Any) -> Any:
            return await obo.get_token_async(request)

    chain = TokenChain([OnlyRequestPartition()])
    scopes = (f"{idp.mcp.app_id_uri}/.default",)
    raw = [(b"authorization", f"Bearer {idp.user_token('alice')}".encode())]
    try:
        with bind_caller(Caller.from_headers(raw), cap_at_expiry=False):
            token = (await chain.get_token_async(scopes)).token
        hit = chain.cached_token(scopes, caller=Caller.from_headers(raw))
        assert hit is not None
        assert hit.token == token
        other = [(b"authorization", f"Bearer {idp.user_token('bob')}".encode())]
        assert chain.cached_token(scopes, caller=Caller.from_headers(other)) is None
        # the apply stage's bound lookup falls back the same way
        lookup = chain.hit_lookup(scopes)
        assert lookup(Caller.from_headers(raw)) is hit
        assert lookup(Caller.from_headers(other)) is None
    finally:
        chain.close()
        obo.close()


async def test_the_hit_path_reads_a_new_callers_headers_without_the_slot_miss(
    entra_emulator: EntraEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Caller from raw headers (the middleware's) is read by the hit path itself
    (``read_headers``), not by the first field read missing its slot (an AttributeError and
    ``__getattr__``, ~1.5 us per request through a client); the read is the same: each user's
    own token, one header scan per Caller, and a duplicated header still fails closed."""
    import entra_passthrough._caller as caller_module

    idp = entra_emulator
    chain = TokenChain([_obo(idp)])
    mcp = (f"{idp.mcp.app_id_uri}/.default",)
    headers = {
        name: [
            (b"host", b"agent.contoso.com"),
            (b"Authorization", f"Bearer {idp.user_token(name)}".encode()),
            (b"x-agent-user-id", name.encode()),
        ]
        for name in ("alice", "bob")
    }
    try:
        issued = {}
        for name, raw in headers.items():
            with bind_caller(Caller.from_headers(raw), cap_at_expiry=False):
                issued[name] = (await chain.get_token_async(mcp)).token
        missed = scans = 0
        real_getattr = caller_module.Caller.__getattr__
        real_digest = caller_module.sha256_hex_of
        real_hash = caller_module.sha256_hex

        def counting_getattr(self: Any, name: str) -> Any:
            nonlocal missed
            missed += 1
            return real_getattr(self, name)

        def counting_digest(data: bytes) -> str:  # the read hashes the bearer it found
            nonlocal scans
            scans += 1
            return real_digest(data)

        def no_second_hash(secret: str) -> str:
            raise AssertionError("the read's digest is used, not a second hash of the str")

        monkeypatch.setattr(caller_module.Caller, "__getattr__", counting_getattr)
        monkeypatch.setattr(caller_module, "sha256_hex_of", counting_digest)
        monkeypatch.setattr(caller_module, "sha256_hex", no_second_hash)
        for _ in range(3):
            for name, raw in headers.items():
                caller = Caller.from_headers(raw)
                hit = chain.cached_token(mcp, caller=caller)
                assert hit is not None
                assert hit.token == issued[name]
                assert chain.cached_token(mcp, caller=caller) is hit
                assert caller.user_id == name  # filled by the same read
        assert missed == 0
        assert scans == 6  # one read (and hash) per Caller
        monkeypatch.setattr(caller_module, "sha256_hex", real_hash)
        twice = [*headers["alice"], (b"authorization", f"Bearer {idp.user_token('bob')}".encode())]
        caller = Caller.from_headers(twice)
        assert chain.cached_token(mcp, caller=caller) is None
        assert caller.presented
        assert caller.assertion is None
    finally:
        chain.close()
