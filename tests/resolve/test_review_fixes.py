"""Regression tests from the security review of the resolve stage."""

from __future__ import annotations

from pathlib import Path

import pytest
from azure.core.credentials import AccessToken

from entra_passthrough import (
    AzureCredential,
    ConfigurationError,
    IdentityKind,
)


class _FixedCredential:
    """An azure-identity-shaped credential that always answers one identity's token."""

    def __init__(self) -> None:
        self.calls = 0

    def get_token(self, *scopes: str, claims: str | None = None, **_: object) -> AccessToken:
        self.calls += 1
        return AccessToken("eyJ.fixed-user-a.sig", 4_102_444_800)


@pytest.mark.parametrize("kind", [IdentityKind.USER, "user"])
def test_azure_credential_cannot_declare_the_user_kind(kind: IdentityKind | str) -> None:
    # An azure-identity credential is one fixed identity and its results are cached per source,
    # not per caller: declared as "user" it would hand user A's token to every caller (and to
    # caller-less, stale contexts) under user_only.
    with pytest.raises(ConfigurationError, match="user"):
        AzureCredential(_FixedCredential(), kind=kind)


def test_azure_credential_kinds_app_and_developer_still_work() -> None:
    for kind in (IdentityKind.APP, IdentityKind.DEVELOPER):
        source = AzureCredential(_FixedCredential(), kind=kind, name=f"c_{kind.value}")
        assert source.kind is kind
        source.close()


@pytest.mark.parametrize("token", ["eyJ\ud800.e30.sig", "\udcff", "a.\ud83d.b"])
async def test_a_token_with_lone_surrogates_is_a_typed_error(token: str) -> None:
    # Tokens bound from JSON bodies can carry lone surrogates (json.loads accepts "\\ud800").
    # Hashing them for the cache key must not raise UnicodeEncodeError (untyped, and its
    # ``.object`` attribute is the whole token).
    from entra_passthrough import AssertionMalformed, OnBehalfOf, TokenChain, bind_caller
    from entra_passthrough._jwt import fingerprint, sha256_hex

    assert fingerprint(token).startswith("sha256:")
    assert sha256_hex(token) != sha256_hex(token + "x")
    chain = TokenChain([OnBehalfOf(client_id="c", tenant_id="t", client_secret="s")])
    try:
        with bind_caller(token=token):
            with pytest.raises(AssertionMalformed):
                await chain.get_token_async(["api://x/.default"])
            with pytest.raises(AssertionMalformed):
                chain.get_token(["api://x/.default"])
    finally:
        chain.close()


def test_a_user_key_with_lone_surrogates_hashes() -> None:
    from entra_passthrough._store import hash_key

    assert hash_key("platform:\ud800") != hash_key("platform:\ud801")


class _NamedCredential:
    def __init__(self, token: str) -> None:
        self.token = token

    def get_token(self, *scopes: str, claims: str | None = None, **_: object) -> AccessToken:
        return AccessToken(self.token, 4_102_444_800)


def test_two_azure_credentials_sharing_a_cache_never_swap_identities() -> None:
    # TokenCache is documented as shareable between chains; two AzureCredential sources with
    # the default name and the same credential class must not read each other's entries.
    from entra_passthrough import Policy, TokenCache, TokenChain

    cache = TokenCache()
    one = TokenChain(
        [AzureCredential(_NamedCredential("eyJ.app-one.sig"))], policy=Policy.APP_ONLY, cache=cache
    )
    two = TokenChain(
        [AzureCredential(_NamedCredential("eyJ.app-two.sig"))], policy=Policy.APP_ONLY, cache=cache
    )
    try:
        assert one.get_token(["api://x/.default"]).token == "eyJ.app-one.sig"
        assert two.get_token(["api://x/.default"]).token == "eyJ.app-two.sig"
    finally:
        one.close()
        two.close()


async def test_a_cancelled_waiter_does_not_break_the_leader_or_other_waiters() -> None:
    # A client that disconnects while waiting for another request's acquisition of the same
    # key cancels its own wait only: the leader and the other waiters still get the token.
    import asyncio
    import time

    from entra_passthrough import TokenCache, TokenResult

    cache = TokenCache()
    gate = asyncio.Event()
    calls = 0

    async def acquire() -> TokenResult:
        nonlocal calls
        calls += 1
        await gate.wait()
        return TokenResult("eyJ.t.s", time.time() + 3600, IdentityKind.USER, "src")

    leader = asyncio.create_task(cache.get_or_acquire_async("k", acquire))
    await asyncio.sleep(0)
    gone = asyncio.create_task(cache.get_or_acquire_async("k", acquire))
    other = asyncio.create_task(cache.get_or_acquire_async("k", acquire))
    for _ in range(5):
        await asyncio.sleep(0)
    gone.cancel()
    for _ in range(5):
        await asyncio.sleep(0)
    gate.set()
    first, second = await asyncio.gather(leader, other)
    assert first is not None
    assert second is not None
    assert first.token == second.token == "eyJ.t.s"
    assert gone.cancelled()
    assert calls == 1


async def test_a_cancelled_waiter_does_not_stop_the_leaders_error_reaching_others() -> None:
    import asyncio

    from entra_passthrough import SourceUnavailable, TokenCache, TokenResult

    cache = TokenCache()
    gate = asyncio.Event()

    async def acquire() -> TokenResult:
        await gate.wait()
        raise SourceUnavailable("down", source="src")

    leader = asyncio.create_task(cache.get_or_acquire_async("k", acquire))
    await asyncio.sleep(0)
    gone = asyncio.create_task(cache.get_or_acquire_async("k", acquire))
    other = asyncio.create_task(cache.get_or_acquire_async("k", acquire))
    for _ in range(5):
        await asyncio.sleep(0)
    gone.cancel()
    for _ in range(5):
        await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(leader, other, return_exceptions=True)
    assert [type(r) for r in results] == [SourceUnavailable, SourceUnavailable]
    assert gone.cancelled()


async def test_a_cancelled_azure_cli_call_kills_the_az_process(tmp_path: Path) -> None:
    # A client that goes away while `az` runs must not leave the process behind.
    import asyncio
    import os
    import stat
    import sys

    from entra_passthrough import AzureCli, TokenRequest

    started = tmp_path / "pid"
    script = tmp_path / "az"
    script.write_text(
        f"#!{sys.executable}\n"
        "import os, pathlib, time\n"
        f"pathlib.Path({str(started)!r}).write_text(str(os.getpid()))\n"
        "time.sleep(60)\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    az = AzureCli(executable=str(script))
    task = asyncio.create_task(az.get_token_async(TokenRequest(("api://x/.default",))))
    for _ in range(2000):  # until the stand-in runs (bounded)
        if started.exists() and started.read_text():
            break
        await asyncio.sleep(0.005)
    pid = int(started.read_text())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped by the source, not left running
