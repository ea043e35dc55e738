"""A custom source that misbehaves (answers with a kind it did not declare, a key function that
raises, an answer that is not a ``TokenResult``) gets a typed error naming it, what it did and
the fix, through both drivers; it counts as that source's failure, so the app never stands in
for a user the platform identified (docs/sources-and-policy.md rules 5 and 7)."""

from __future__ import annotations

import asyncio
import gc
import secrets
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from _support.tokens import unsigned_jwt
from entra_passthrough import (
    Caller,
    ConfigurationError,
    IdentityKind,
    Policy,
    PolicyViolation,
    SourceUnavailable,
    TokenAcquisitionError,
    TokenChain,
    TokenRequest,
    TokenResult,
)
from entra_passthrough.testing import EntraEmulator

from .conftest import make_mi, mcp_scope

SCOPES = ["api://x/.default"]
USER, APP = IdentityKind.USER, IdentityKind.APP


def _run(
    chain: TokenChain, driver: str, caller: Caller | None, scopes: list[str] = SCOPES
) -> TokenResult:
    if driver == "sync":
        return chain.get_token(scopes, caller=caller)
    return asyncio.run(chain.get_token_async(scopes, caller=caller))


def _msi(idp: EntraEmulator) -> int:
    return int(idp.stats()["endpoints"]["msi"])


class _Custom:
    """A user source keyed by the platform user id, answering what ``answer`` makes."""

    name = "custom"

    def __init__(self, answer: Callable[[], Any], kind: IdentityKind = USER) -> None:
        self.kind = kind
        self.answer = answer
        self.calls = 0

    def cache_partition(self, request: TokenRequest) -> tuple[str, ...] | None:
        caller = request.caller
        return ("u", caller.user_id) if caller is not None and caller.user_id else None

    def get_token(self, request: TokenRequest) -> Any:
        self.calls += 1
        return self.answer()

    async def get_token_async(self, request: TokenRequest) -> Any:
        self.calls += 1
        return self.answer()


def _result(kind: Any, lifetime: float = 3600.0) -> TokenResult:
    return TokenResult(
        token="eyJwrong.kind.token", expires_on=time.time() + lifetime, kind=kind, source="custom"
    )


@pytest.mark.parametrize("driver", ["sync", "async"])
@pytest.mark.parametrize("order", ["user-first", "app-first"])
@pytest.mark.parametrize("kind", [APP, "user"], ids=["app", "str"])
def test_a_wrong_kind_from_a_user_source_stops_the_chain_for_a_platform_user(
    idp: EntraEmulator, driver: str, order: str, kind: Any
) -> None:
    """A caller known only by the platform's user id (x-agent-user-id) under user_or_app: the
    user source answers with a kind it did not declare. Before, the refusal was a note, and the
    managed identity's token was served in the identified user's place."""
    user = _Custom(lambda: _result(kind))
    mi = make_mi(idp)
    sources = [user, mi] if order == "user-first" else [mi, user]
    chain = TokenChain(sources, policy=Policy.USER_OR_APP)  # type: ignore[list-item]
    before = _msi(idp)
    try:
        with pytest.raises(PolicyViolation) as info:
            _run(chain, driver, Caller(user_id="platform-user-1"), mcp_scope(idp))
    finally:
        chain.close()
    text = str(info.value)
    assert "custom" in text
    got = "app" if kind is APP else "of type str"
    assert f"returned kind {got}, declared user" in text
    assert info.value.fix
    assert "kind=" in info.value.fix
    assert "eyJwrong" not in text
    assert _msi(idp) == before  # the app was never asked
    assert chain.cache.stats().size == 0  # never cached
    # A request with no caller at all still gets the app (rule 5 is about identified users).
    chain = TokenChain([user, make_mi(idp)], policy=Policy.USER_OR_APP)  # type: ignore[list-item]
    try:
        assert _run(chain, driver, None, mcp_scope(idp)).kind is APP
    finally:
        chain.close()


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_a_refresh_answered_with_the_wrong_kind_is_never_served_from_the_cache(
    idp: EntraEmulator, driver: str
) -> None:
    """The first answer is a user token; the refresh ahead answers kind app. Before, the
    refresh stored it and the hit path served it under user_or_app (app allowed for a platform
    user): the app's token where the user's was cached."""
    kinds = iter([USER, APP, APP, APP])
    user = _Custom(lambda: _result(next(kinds), lifetime=3.0))
    chain = TokenChain([user, make_mi(idp)], policy=Policy.USER_OR_APP)  # type: ignore[list-item]
    caller = Caller(user_id="platform-user-1")

    def sync() -> tuple[TokenResult, TokenResult]:
        first = chain.get_token(SCOPES, caller=caller)
        time.sleep(1.7)  # past half of its 3 s: the next hit starts a refresh
        assert chain.get_token(SCOPES, caller=caller).kind is USER
        chain.cache.wait_refreshes()
        return first, chain.get_token(SCOPES, caller=caller)

    async def async_() -> tuple[TokenResult, TokenResult]:
        first = await chain.get_token_async(SCOPES, caller=caller)
        await asyncio.sleep(1.7)
        assert (await chain.get_token_async(SCOPES, caller=caller)).kind is USER
        await chain.cache.wait_refreshes_async()
        return first, await chain.get_token_async(SCOPES, caller=caller)

    try:
        first, again = sync() if driver == "sync" else asyncio.run(async_())
    finally:
        chain.close()
    assert first.kind is USER
    assert user.calls >= 2  # the refresh asked the source
    assert again.kind is USER
    assert again.token == first.token


class _PartitionRaises:
    name = "custom"
    kind = USER

    def cache_partition(self, request: TokenRequest) -> tuple[str, ...] | None:
        caller = request.caller
        raise ValueError(f"cannot key {caller.assertion if caller else None}")

    def get_token(self, request: TokenRequest) -> TokenResult | None:
        raise AssertionError("never asked")

    async def get_token_async(self, request: TokenRequest) -> TokenResult | None:
        raise AssertionError("never asked")


def _chain_texts(exc: BaseException) -> str:
    parts = []
    seen: BaseException | None = exc
    while seen is not None:
        parts.append(f"{seen!s} {seen!r}")
        seen = seen.__cause__ or seen.__context__
    return " ".join(parts)


@pytest.mark.parametrize("driver", ["sync", "async"])
@pytest.mark.parametrize("policy", [Policy.USER_ONLY, Policy.USER_OR_APP])
def test_a_cache_partition_that_raises_is_a_typed_scrubbed_error(
    idp: EntraEmulator, driver: str, policy: Policy
) -> None:
    assertion = unsigned_jwt(tid="t1", oid="u1")
    chain = TokenChain([_PartitionRaises(), make_mi(idp)], policy=policy)  # type: ignore[list-item]
    before = _msi(idp)
    try:
        with pytest.raises(SourceUnavailable) as info:
            _run(chain, driver, Caller.from_token(assertion), mcp_scope(idp))
    finally:
        chain.close()
    text = str(info.value)
    assert "cache_partition" in text
    assert "ValueError" in text
    assert info.value.source == "custom"
    assert info.value.fix
    assert assertion not in _chain_texts(info.value)
    assert _msi(idp) == before


def _closed_coroutine_warnings(run: Callable[[], Any]) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run()
        gc.collect()
    return [str(w.message) for w in caught if "never awaited" in str(w.message)]


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_an_answer_that_is_not_a_token_result_is_named_with_the_fix(driver: str) -> None:
    source = _Custom(lambda: "eyJ-a-raw-token-string", kind=APP)
    source.cache_partition = lambda request: ("a",)  # type: ignore[method-assign]
    chain = TokenChain([source], policy=Policy.APP_ONLY)  # type: ignore[list-item]
    with pytest.raises(TokenAcquisitionError) as info:
        _run(chain, driver, None)
    text = str(info.value)
    assert "AttributeError" not in text
    assert "str" in text
    assert "TokenResult" in text
    assert "[source custom]" in text
    assert "eyJ-a-raw-token-string" not in text
    assert info.value.fix
    assert "TokenResult" in info.value.fix


class _AsyncGetToken:
    """``get_token`` written as ``async def``: the sync API gets a coroutine."""

    name = "custom"
    kind = APP

    def cache_partition(self, request: TokenRequest) -> tuple[str, ...]:
        return ("a",)

    async def get_token(self, request: TokenRequest) -> TokenResult:  # type: ignore[override]
        return _result(APP)

    async def get_token_async(self, request: TokenRequest) -> TokenResult:
        return _result(APP)


def test_an_async_get_token_on_the_sync_api_says_to_use_get_token_async() -> None:
    chain = TokenChain([_AsyncGetToken()], policy=Policy.APP_ONLY)  # type: ignore[list-item]
    errors: list[TokenAcquisitionError] = []

    def run() -> None:
        try:
            chain.get_token(SCOPES, caller=None)
        except TokenAcquisitionError as exc:
            errors.append(exc)

    assert _closed_coroutine_warnings(run) == []  # the coroutine was closed
    assert len(errors) == 1
    text = str(errors[0])
    assert "coroutine" in text
    assert "AttributeError" not in text
    assert "[source custom]" in text
    assert errors[0].fix
    assert "get_token_async" in errors[0].fix
    # The async API, which awaits get_token_async, is served.
    assert asyncio.run(chain.get_token_async(SCOPES, caller=None)).kind is APP


class _PlainGetTokenAsync:
    """``get_token_async`` written without ``async``: the async API cannot await its answer."""

    name = "custom"
    kind = APP

    def cache_partition(self, request: TokenRequest) -> tuple[str, ...]:
        return ("a",)

    def get_token(self, request: TokenRequest) -> TokenResult:
        return _result(APP)

    def get_token_async(self, request: TokenRequest) -> TokenResult:
        return _result(APP)


def test_a_get_token_async_that_is_not_async_is_named_with_the_fix() -> None:
    chain = TokenChain([_PlainGetTokenAsync()], policy=Policy.APP_ONLY)  # type: ignore[list-item]
    with pytest.raises(TokenAcquisitionError) as info:
        asyncio.run(chain.get_token_async(SCOPES, caller=None))
    text = str(info.value)
    assert "TypeError" not in text
    assert "[source custom]" in text
    assert "TokenResult" in text
    assert "eyJwrong" not in text
    assert info.value.fix
    assert "async def get_token_async" in info.value.fix
    assert chain.get_token(SCOPES, caller=None).kind is APP


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_a_result_whose_headers_are_none_is_named_with_the_fix(driver: str) -> None:
    def answer() -> TokenResult:
        return TokenResult(
            token="abc", expires_on=time.time() + 3600, kind=APP, source="custom", headers=None
        )  # type: ignore[arg-type]

    source = _Custom(answer, kind=APP)
    source.cache_partition = lambda request: ("a",)  # type: ignore[method-assign]
    chain = TokenChain([source], policy=Policy.APP_ONLY)  # type: ignore[list-item]
    with pytest.raises(TokenAcquisitionError) as info:
        _run(chain, driver, None)
    assert "AttributeError" not in str(info.value)
    assert "headers" in str(info.value)
    assert info.value.fix
    assert "TokenResult.headers" in info.value.fix


class _Raises:
    """A user source whose ``get_token`` raises what ``make(assertion)`` builds."""

    name = "custom"
    kind = USER

    def __init__(self, make: Callable[[str], BaseException]) -> None:
        self.make = make

    def cache_partition(self, request: TokenRequest) -> tuple[str, ...] | None:
        caller = request.caller
        return ("u", caller.assertion_sha256) if caller is not None else None

    def get_token(self, request: TokenRequest) -> TokenResult | None:
        assert request.caller is not None
        raise self.make(request.caller.assertion or "")

    async def get_token_async(self, request: TokenRequest) -> TokenResult | None:
        return self.get_token(request)


_OPAQUE_SECRET = "Q" * 12 + "~" + "s3cr3tV4lu3" * 4  # a client secret's shape, not a JWT


def _one_of_a_kind_token() -> str:
    """A caller's token no other test of the run shares a fragment with: these sources put it
    in errors on purpose, and the secret-hygiene run (``make hygiene``) records every error as
    built, before the chain redacts it, and searches it for fragments of the tokens the
    emulators saw (an unsigned JWT's header is the same in every test)."""
    import jwt

    claims = {"jti": secrets.token_hex(16), "tid": "t1", "oid": "u1", "exp": 4102444800}
    return jwt.encode(claims, secrets.token_bytes(32), algorithm="HS256", headers={"kid": "x"})


_OURS_WITH_A_TOKEN: dict[str, Callable[[str], BaseException]] = {
    "unavailable": lambda a: SourceUnavailable(
        f"the backend refused {a}", source="custom", fix=f"send {a} again"
    ),
    "configuration": lambda a: ConfigurationError(f"bad assertion {a}", fix=f"not {a}"),
    "secret": lambda a: SourceUnavailable(
        f"login with {_OPAQUE_SECRET} failed", source="custom", failure=f"{_OPAQUE_SECRET}"
    ),
    # a span attribute (entra_passthrough.correlation_id) reads this one
    "correlation": lambda a: SourceUnavailable(
        "the backend refused it", source="custom", correlation_id=a, trace_id=a
    ),
}


@pytest.mark.leaky_source
@pytest.mark.parametrize("driver", ["sync", "async"])
@pytest.mark.parametrize("case", sorted(_OURS_WITH_A_TOKEN))
def test_a_custom_source_raising_our_error_with_a_token_in_it_is_redacted(
    driver: str, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A custom source that puts the caller's assertion (or a secret) in one of the library's
    own error types: the app gets that error's type and words, with the value redacted, in the
    message, the fix and every attribute it can print (log lines were already clean)."""
    assertion = _one_of_a_kind_token()
    chain = TokenChain([_Raises(_OURS_WITH_A_TOKEN[case])], policy=Policy.USER_ONLY)  # type: ignore[list-item]
    with caplog.at_level("DEBUG"), pytest.raises(TokenAcquisitionError) as info:
        _run(chain, driver, Caller.from_token(assertion))
    error = info.value
    texts = (
        _chain_texts(error)
        + " "
        + " ".join(
            str(getattr(e, name, ""))
            for e in (error, error.__cause__)
            for name in ("fix", "failure", "correlation_id", "trace_id")
        )
    )
    for secret in (assertion, _OPAQUE_SECRET):
        assert secret not in texts
        assert secret not in caplog.text
    assert "[redacted]" in texts
    assert error.source == "custom"
    assert ("refused" in texts) or ("bad assertion" in texts) or ("login with" in texts)


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_any_other_exception_from_a_custom_source_is_named_with_the_fix(driver: str) -> None:
    assertion = _one_of_a_kind_token()
    chain = TokenChain(
        [_Raises(lambda a: KeyError(f"no entry for {a}"))],  # type: ignore[list-item]
        policy=Policy.USER_ONLY,
    )
    with pytest.raises(SourceUnavailable) as info:
        _run(chain, driver, Caller.from_token(assertion))
    text = str(info.value)
    assert "KeyError" in text
    assert assertion not in _chain_texts(info.value)
    assert info.value.fix is not None
    assert "TokenAcquisitionError" in info.value.fix
    assert "your-own-source" in info.value.fix


def test_which_sources_count_as_written_outside_the_library() -> None:
    """A custom source (also one declaring the TokenSource protocol as its base) is foreign:
    its errors are redacted; a subclass of one of the library's sources is not (its errors are
    that source's, whose texts keep what their fix needs, e.g. AADSTS700027's thumbprint)."""
    from entra_passthrough import ManagedIdentity, OnBehalfOf
    from entra_passthrough._chain import _foreign
    from entra_passthrough._types import TokenSource as Protocol

    class MyObo(OnBehalfOf):
        pass

    class Declared(Protocol):
        name = "declared"
        kind = USER

    assert _foreign(_Custom(lambda: None))
    assert _foreign(Declared())  # type: ignore[abstract]
    assert not _foreign(ManagedIdentity())
    assert not _foreign(
        MyObo(client_id="11111111-1111-1111-1111-111111111111", tenant_id="t", client_secret="s")
    )
