"""A wrong argument to a source, the chain, the cache, ``Timeouts``, ``bind_caller`` or the
emulator is a ``ConfigurationError`` with a fix when the object is built: never a bare
``TypeError``/``ValueError``/``AttributeError`` from a comparison, and never a NaN, negative or
unbounded value taken silently. ``OnBehalfOf(timeouts=5)`` and ``max_tenants="5"`` used to be
built, then fail every request as ``SourceUnavailable`` (an outage at the first user, not a
refusal at start-up)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from entra_passthrough import (
    AzureCli,
    ConfigurationError,
    DelegatedConsent,
    Keyring,
    MemoryStore,
    Timeouts,
    TokenCache,
    TokenChain,
    bind_caller,
)
from entra_passthrough.testing import EntraEmulator

from .conftest import make_mi, make_obo, mcp_scope, obo_posts

Build = Callable[[EntraEmulator], Any]


def _delegated(idp: EntraEmulator, link_lifetime: Any) -> DelegatedConsent:
    return DelegatedConsent(
        client_id=idp.agent.client_id,
        tenant_id=idp.tenant_id,
        client_secret=idp.agent.secret,
        authority_host=idp.url,
        store=MemoryStore(),
        keyring=Keyring.generate(),
        broker_url="https://broker.contoso.com",
        link_lifetime=link_lifetime,
    )


def _latency(idp: EntraEmulator, value: Any) -> None:
    # The setter of a running emulator, as the tests' own fixtures use it.
    idp.token_latency = value


#: (id, build, the parameter the message must name)
CASES: list[tuple[str, Build, str]] = [
    ("timeouts-connect-str", lambda idp: Timeouts(connect="5"), "connect"),  # type: ignore[arg-type]
    ("timeouts-backoff-str", lambda idp: Timeouts(backoff="0.2"), "backoff"),  # type: ignore[arg-type]
    ("timeouts-read-bool", lambda idp: Timeouts(read=True), "read"),
    ("timeouts-retries-str", lambda idp: Timeouts(retries="2"), "retries"),  # type: ignore[arg-type]
    ("timeouts-retries-float", lambda idp: Timeouts(retries=2.5), "retries"),  # type: ignore[arg-type]
    ("timeouts-retries-bool", lambda idp: Timeouts(retries=True), "retries"),
    ("timeouts-retries-11", lambda idp: Timeouts(retries=11), "retries"),
    ("cache-max-entries-0", lambda idp: TokenCache(max_entries=0), "max_entries"),
    ("cache-max-entries-str", lambda idp: TokenCache(max_entries="10"), "max_entries"),  # type: ignore[arg-type]
    ("cache-max-entries-float", lambda idp: TokenCache(max_entries=2.5), "max_entries"),  # type: ignore[arg-type]
    ("cache-refusal-window-inf", lambda idp: TokenCache(refusal_window=math.inf), "refusal_window"),
    ("cache-refusal-window-neg", lambda idp: TokenCache(refusal_window=-1), "refusal_window"),
    ("obo-timeouts-int", lambda idp: make_obo(idp, timeouts=5), "timeouts"),
    ("obo-timeouts-dict", lambda idp: make_obo(idp, timeouts={"read": 5.0}), "timeouts"),
    ("obo-max-tenants-0", lambda idp: make_obo(idp, max_tenants=0), "max_tenants"),
    ("obo-max-tenants-str", lambda idp: make_obo(idp, max_tenants="5"), "max_tenants"),
    ("mi-timeout-str", lambda idp: make_mi(idp, timeout="10"), "timeout"),
    ("mi-timeout-nan", lambda idp: make_mi(idp, timeout=math.nan), "timeout"),
    ("mi-timeout-neg", lambda idp: make_mi(idp, timeout=-1), "timeout"),
    ("mi-timeouts-int", lambda idp: make_mi(idp, timeouts=5), "timeouts"),
    ("cli-timeout-nan", lambda idp: AzureCli(timeout=math.nan), "timeout"),
    ("cli-timeout-neg", lambda idp: AzureCli(timeout=-1), "timeout"),
    ("cli-timeout-str", lambda idp: AzureCli(timeout="30"), "timeout"),  # type: ignore[arg-type]
    ("cli-timeout-inf", lambda idp: AzureCli(timeout=math.inf), "timeout"),
    ("delegated-link-nan", lambda idp: _delegated(idp, math.nan), "link_lifetime"),
    ("delegated-link-neg", lambda idp: _delegated(idp, -1), "link_lifetime"),
    ("delegated-link-0", lambda idp: _delegated(idp, 0), "link_lifetime"),
    ("delegated-link-str", lambda idp: _delegated(idp, "1800"), "link_lifetime"),
    ("chain-none", lambda idp: TokenChain(None), "TokenChain"),  # type: ignore[arg-type]
    ("chain-one-source", lambda idp: TokenChain(AzureCli()), "TokenChain"),  # type: ignore[arg-type]
    ("chain-none-entry", lambda idp: TokenChain([None]), "TokenSource"),  # type: ignore[list-item]
    ("chain-class-entry", lambda idp: TokenChain([AzureCli]), "AzureCli"),  # type: ignore[list-item]
    ("chain-cache-not-cache", lambda idp: TokenChain([], cache={}), "cache"),  # type: ignore[arg-type]
    ("bind-caller-int", lambda idp: bind_caller(token=5), "token"),  # type: ignore[arg-type]
    ("bind-caller-positional-str", lambda idp: bind_caller("eyJ.a.b"), "Caller"),  # type: ignore[arg-type]
    ("emulator-latency-nan", lambda idp: EntraEmulator(token_latency=math.nan), "token_latency"),
    ("emulator-latency-neg", lambda idp: EntraEmulator(token_latency=-1), "token_latency"),
    ("emulator-latency-str", lambda idp: EntraEmulator(token_latency="0.1"), "token_latency"),  # type: ignore[arg-type]
    ("emulator-latency-setter-nan", lambda idp: _latency(idp, math.nan), "token_latency"),
    ("credential-assertion-bytes", lambda idp: _assertion(idp, b"eyJ.a.b"), "client_assertion"),
    ("credential-assertion-str", lambda idp: _assertion(idp, "eyJ.a.b"), "client_assertion"),
    ("mi-header-bytes", lambda idp: _mi_endpoint(idp, b"secret"), "IDENTITY_HEADER"),
    ("mi-header-int", lambda idp: _mi_endpoint(idp, 5), "IDENTITY_HEADER"),
]


def _assertion(idp: EntraEmulator, value: Any) -> Any:
    from entra_passthrough import AppCredential

    return AppCredential(
        client_id=idp.agent.client_id, tenant_id=idp.tenant_id, client_assertion=value
    )


def _mi_endpoint(idp: EntraEmulator, header: Any) -> Any:
    from entra_passthrough import ManagedIdentity

    return ManagedIdentity(endpoint="http://127.0.0.1:1/msi/token", header=header)


@pytest.mark.parametrize(("build", "name"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_wrong_argument_is_refused_at_build_with_a_fix(
    idp: EntraEmulator, build: Build, name: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        build(idp)
    assert info.value.fix, str(info.value)
    assert name in str(info.value), str(info.value)
    assert idp.token_latency == 0.0  # the setter case left the shared emulator as it was


def test_the_typed_errors_keep_the_types_callers_caught() -> None:
    """``TokenCache`` raised ``ValueError`` and ``bind_caller`` ``TypeError``: code catching
    those still does (a ``ConfigurationError`` is a ``ValueError``; the caller's is a
    ``TypeError`` too)."""
    with pytest.raises(ValueError, match="max_entries") as cache_error:
        TokenCache(max_entries=0)
    with pytest.raises(TypeError, match="must be the bearer token as a str") as caller_error:
        bind_caller(token=b"abc.def.ghi")  # type: ignore[arg-type]
    assert isinstance(cache_error.value, ConfigurationError)
    assert isinstance(caller_error.value, ConfigurationError)
    assert caller_error.value.fix


async def test_obo_built_with_good_arguments_works_against_the_emulator(
    idp: EntraEmulator,
) -> None:
    """The edges the checks keep: one tenant, no retries, whole numbers and floats."""
    obo = make_obo(idp, max_tenants=1, timeouts=Timeouts(connect=5, read=10.0, retries=0))
    chain = TokenChain([obo], cache=TokenCache(max_entries=1, refusal_window=0))
    before = obo_posts(idp)
    try:
        with bind_caller(token=idp.user_token("alice", audience=idp.agent.client_id)):
            assert (await chain.get_token_async(mcp_scope(idp))).token
    finally:
        chain.close()
    assert obo_posts(idp) == before + 1


def test_a_count_written_as_a_whole_float_is_taken_as_before() -> None:
    assert TokenCache(max_entries=1e6).max_entries == 1_000_000  # type: ignore[arg-type]
    assert "max_entries=50000" in repr(MemoryStore(max_entries=5e4))  # type: ignore[arg-type]
