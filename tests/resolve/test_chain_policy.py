"""Pure chain/policy unit tests with a fake source (no Entra)."""

from __future__ import annotations

import pytest

from entra_passthrough import (
    AssertionAudienceMismatch,
    Caller,
    ConsentRequired,
    IdentityKind,
    NoCallerError,
    Policy,
    PolicyViolation,
    SourceUnavailable,
    TokenChain,
    bind_caller,
)

from ._fakes import FakeSource, make_jwt

USER, APP, DEV = IdentityKind.USER, IdentityKind.APP, IdentityKind.DEVELOPER
SCOPES = ["api://mcp/.default"]


def chain_of(*sources: FakeSource, policy: Policy = Policy.USER_ONLY, **kw: object) -> TokenChain:
    return TokenChain(sources, policy=policy, **kw)  # type: ignore[arg-type]


def test_default_policy_is_user_only() -> None:
    assert TokenChain([FakeSource("a", USER)]).policy is Policy.USER_ONLY


async def test_user_only_never_yields_app_even_with_app_sources() -> None:
    obo = FakeSource("obo", USER, needs_caller=True)
    mi = FakeSource("mi", APP)
    cred = FakeSource("cred", APP)
    chain = chain_of(obo, mi, cred)
    with pytest.raises(NoCallerError) as info:
        await chain.get_token_async(SCOPES)
    text = str(info.value)
    assert "obo: " in text
    assert "mi: kind app not allowed by policy user_only" in text
    assert "cred: kind app not allowed" in text
    assert mi.calls == cred.calls == 0

    with bind_caller(token=make_jwt()):
        result = await chain.get_token_async(SCOPES)
    assert result.kind is USER
    assert result.source == "obo"
    assert mi.calls == cred.calls == 0


async def test_user_only_user_source_error_propagates_and_no_app_fallback() -> None:
    err = AssertionAudienceMismatch(audience="https://ai.azure.com", expected=["api://x"])
    obo = FakeSource("obo", USER, needs_caller=True, error=err)
    mi = FakeSource("mi", APP)
    for policy in (Policy.USER_ONLY, Policy.USER_OR_APP, Policy.DEVELOPER):
        chain = chain_of(obo, mi, policy=policy)
        foundry = make_jwt(aud="https://ai.azure.com")
        with bind_caller(token=foundry), pytest.raises(AssertionAudienceMismatch) as info:
            chain.get_token(SCOPES)
        assert info.value is err
        assert "Foundry" in str(info.value)
    assert mi.calls == 0


async def test_user_or_app_uses_app_only_when_nothing_presented() -> None:
    obo = FakeSource("obo", USER, needs_caller=True)
    mi = FakeSource("mi", APP)
    chain = chain_of(obo, mi, policy=Policy.USER_OR_APP)
    # no caller at all -> app
    result = await chain.get_token_async(SCOPES)
    assert (result.kind, result.source) == (APP, "mi")
    # a caller without any assertion (e.g. only platform headers) -> app
    result = await chain.get_token_async(SCOPES, caller=Caller(user_id="x"))
    assert result.kind is APP
    # an assertion presented -> user, never app
    with bind_caller(token=make_jwt()):
        result = await chain.get_token_async(SCOPES)
    assert result.kind is USER


async def test_user_or_app_presented_but_undecodable_fails_closed() -> None:
    obo = FakeSource("obo", USER, needs_caller=True, returns_none=True)
    mi = FakeSource("mi", APP)
    chain = chain_of(obo, mi, policy=Policy.USER_OR_APP)
    with bind_caller(token="not-a-jwt"), pytest.raises(PolicyViolation) as info:
        await chain.get_token_async(SCOPES)
    assert "mi: kind app not allowed by policy user_or_app (an assertion was presented)" in str(
        info.value
    )
    assert mi.calls == 0


async def test_consent_error_from_user_source_blocks_app_even_without_assertion() -> None:
    consent = FakeSource(
        "delegated", USER, error=ConsentRequired("consent needed", link="https://x/consent")
    )
    mi = FakeSource("mi", APP)
    chain = chain_of(consent, mi, policy=Policy.USER_OR_APP)
    with pytest.raises(ConsentRequired):
        await chain.get_token_async(SCOPES, caller=Caller(user_id="platform-user"))
    assert mi.calls == 0


async def test_next_user_source_tried_after_user_error() -> None:
    err = AssertionAudienceMismatch(audience="https://ai.azure.com", expected=["api://x"])
    obo = FakeSource("obo", USER, needs_caller=True, error=err)
    delegated = FakeSource("delegated", USER, needs_caller=True)
    chain = chain_of(obo, delegated)
    with bind_caller(token=make_jwt(aud="https://ai.azure.com")):
        result = await chain.get_token_async(SCOPES)
    assert result.source == "delegated"


async def test_actionable_error_outranks_an_earlier_dead_end() -> None:
    # [OnBehalfOf, DelegatedConsent] with a Foundry token: OBO refuses it, the user has no grant
    # yet. The consent link is what the user can act on, so it is what the chain raises.
    err = AssertionAudienceMismatch(audience="https://ai.azure.com", expected=["api://x"])
    obo = FakeSource("obo", USER, needs_caller=True, error=err)
    delegated = FakeSource(
        "delegated", USER, error=ConsentRequired("consent needed", link="https://x/consent")
    )
    with bind_caller(token=make_jwt(aud="https://ai.azure.com")):
        with pytest.raises(ConsentRequired):
            await chain_of(obo, delegated).get_token_async(SCOPES)
        # ...but a later non-actionable error never hides the first one.
        later = FakeSource("other", USER, error=SourceUnavailable("down", source="other"))
        with pytest.raises(AssertionAudienceMismatch):
            await chain_of(obo, later).get_token_async(SCOPES)


async def test_inactive_caller_is_no_caller() -> None:
    obo = FakeSource("obo", USER, needs_caller=True)
    chain = chain_of(obo)
    caller = Caller.from_token(make_jwt())
    caller.end()
    with pytest.raises(NoCallerError):
        await chain.get_token_async(SCOPES, caller=caller)
    assert obo.calls == 0
    with bind_caller(caller=Caller.from_token(make_jwt())) as bound:
        pass
    assert not bound.active
    with pytest.raises(NoCallerError):
        chain.get_token(SCOPES, caller=bound)


async def test_app_only_never_calls_user_sources() -> None:
    obo = FakeSource("obo", USER, needs_caller=True)
    mi = FakeSource("mi", APP)
    chain = chain_of(obo, mi, policy=Policy.APP_ONLY)
    with bind_caller(token=make_jwt()):
        result = await chain.get_token_async(SCOPES)
    assert result.kind is APP
    assert obo.calls == 0


async def test_developer_only_by_opt_in_and_only_without_assertion() -> None:
    obo = FakeSource("obo", USER, needs_caller=True)
    az = FakeSource("az", DEV)
    for policy in (Policy.USER_ONLY, Policy.USER_OR_APP, Policy.APP_ONLY):
        with pytest.raises((PolicyViolation, NoCallerError)):
            await chain_of(obo, az, policy=policy).get_token_async(SCOPES)
    assert az.calls == 0
    chain = chain_of(obo, az, policy=Policy.DEVELOPER)
    assert (await chain.get_token_async(SCOPES)).kind is DEV
    with bind_caller(token=make_jwt()):
        assert (await chain.get_token_async(SCOPES)).kind is USER


async def test_source_lying_about_kind_is_rejected() -> None:
    liar = FakeSource("liar", USER)
    liar.kind = USER

    class Lies(FakeSource):
        def _answer(self, request):  # type: ignore[no-untyped-def]
            result = super()._answer(request)
            assert result is not None
            import dataclasses

            return dataclasses.replace(result, kind=APP)

    chain = chain_of(Lies("liar", USER))
    with pytest.raises(PolicyViolation):
        await chain.get_token_async(SCOPES)
    with bind_caller(token=make_jwt()), pytest.raises(PolicyViolation) as info:
        await chain.get_token_async(SCOPES)
    assert "returned kind app" in str(info.value)


async def test_unexpected_exception_becomes_typed() -> None:
    class Boom(FakeSource):
        def _answer(self, request):  # type: ignore[no-untyped-def]
            raise RuntimeError("secret-ish detail")

    chain = chain_of(Boom("boom", APP), policy=Policy.APP_ONLY)
    with pytest.raises(SourceUnavailable) as info:
        await chain.get_token_async(SCOPES)
    assert "secret-ish" not in str(info.value)
    assert "RuntimeError" in str(info.value)


async def test_lifecycle_token() -> None:
    mi = FakeSource("mi", APP)
    obo = FakeSource("obo", USER, needs_caller=True)
    assert await chain_of(obo, mi).lifecycle_token_async(SCOPES) is None
    assert mi.calls == 0
    lc = await chain_of(obo, mi, lifecycle_app=True).lifecycle_token_async(SCOPES)
    assert lc is not None
    assert lc.kind is APP
    # lifecycle never uses the current caller, even an active one
    with bind_caller(token=make_jwt()):
        lc = await chain_of(obo, mi, policy=Policy.USER_OR_APP).lifecycle_token_async(SCOPES)
    assert lc is not None
    assert lc.kind is APP
    assert obo.calls == 0
    assert chain_of(obo, mi, policy=Policy.USER_OR_APP).lifecycle_token(SCOPES) is not None


@pytest.mark.parametrize(
    ("policy", "ended_presented", "kinds"),
    [
        (Policy.USER_ONLY, None, set()),
        (Policy.USER_ONLY, True, set()),
        (Policy.USER_OR_APP, None, {APP}),
        (Policy.USER_OR_APP, False, {APP}),
        (Policy.USER_OR_APP, True, set()),  # the user presented one: no stand-in
        (Policy.APP_ONLY, None, {APP}),
        (Policy.APP_ONLY, True, {APP}),
        (Policy.DEVELOPER, None, {DEV}),
        (Policy.DEVELOPER, True, set()),
    ],
)
def test_call_kinds(policy: Policy, ended_presented: bool | None, kinds: set[IdentityKind]) -> None:
    assert policy.call_kinds(ended_presented=ended_presented) == kinds


async def test_call_token_never_takes_the_lifecycle_allowance() -> None:
    """``lifecycle_app=True`` lets connection-lifetime requests go as the app; a call with no
    caller (or whose caller ended) is not one of them."""
    mi = FakeSource("mi", APP)
    obo = FakeSource("obo", USER, needs_caller=True)
    chain = chain_of(obo, mi, lifecycle_app=True)
    assert await chain.lifecycle_token_async(SCOPES) is not None
    assert await chain.call_token_async(SCOPES) is None
    with bind_caller(token=make_jwt()) as caller:
        pass
    assert await chain.call_token_async(SCOPES, ended=caller) is None
    either = chain_of(obo, mi, policy=Policy.USER_OR_APP)
    assert await either.call_token_async(SCOPES, ended=caller) is None
    found = await either.call_token_async(SCOPES)
    assert found is not None
    assert found.kind is APP
    assert obo.calls == 0


def test_bad_configuration() -> None:
    from entra_passthrough import ConfigurationError

    with pytest.raises(ConfigurationError):
        TokenChain([FakeSource("a", USER)], policy="everything")
    with pytest.raises(ConfigurationError):
        TokenChain([FakeSource("a", USER), FakeSource("a", APP)])
    assert TokenChain([], policy="app_only").policy is Policy.APP_ONLY


async def test_invalidate_drops_the_entry() -> None:
    obo = FakeSource("obo", USER, needs_caller=True)
    chain = chain_of(obo)
    with bind_caller(token=make_jwt()):
        first = await chain.get_token_async(SCOPES)
        again = await chain.get_token_async(SCOPES)
        assert again.token == first.token
        chain.invalidate(first)
        fresh = await chain.get_token_async(SCOPES)
    assert fresh.token != first.token
    assert obo.calls == 2


async def test_cache_key_separates_scopes_claims_and_users() -> None:
    obo = FakeSource("obo", USER, needs_caller=True)
    chain = chain_of(obo)
    alice, bob = make_jwt(oid="alice"), make_jwt(oid="bob")
    with bind_caller(token=alice):
        a1 = await chain.get_token_async(["s1", "s2"])
        a2 = await chain.get_token_async(["s2", "s1"])  # order does not matter
        a3 = await chain.get_token_async(["s1", "s2"], claims='{"access_token":{}}')
        a4 = await chain.get_token_async(["s1", "s2"], client_capabilities=["CP1"])
    with bind_caller(token=bob):
        b1 = await chain.get_token_async(["s1", "s2"])
    assert a1.token == a2.token
    assert len({a1.token, a3.token, a4.token, b1.token}) == 4
    assert "alice" in a1.token
    assert "bob" in b1.token


def test_reprs_show_no_tokens() -> None:
    chain = chain_of(FakeSource("obo", USER, needs_caller=True))
    token = make_jwt()
    with bind_caller(token=token) as caller:
        result = chain.get_token(SCOPES)
    for text in (repr(chain), repr(result), repr(caller), repr(chain.cache)):
        assert token not in text
        assert result.token not in text


async def test_first_error_wins_without_an_actionable_one() -> None:
    mismatch = AssertionAudienceMismatch(audience="https://ai.azure.com", expected=["api://x"])
    other = AssertionAudienceMismatch(audience="x", expected=["y"])
    obo = FakeSource("obo", USER, needs_caller=True, error=mismatch)
    chain = chain_of(obo, FakeSource("other", USER, needs_caller=True, error=other))
    with bind_caller(token=make_jwt()), pytest.raises(AssertionAudienceMismatch) as first:
        await chain.get_token_async(SCOPES)
    assert first.value is mismatch
