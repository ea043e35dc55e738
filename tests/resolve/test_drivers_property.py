"""The chain's and the cache's decisions run under two drivers (``get_token`` and
``get_token_async``): the same scenario through both must end the same way.

Each generated scenario is a chain (sources of every kind and behaviour, a policy, a caller or
none) and a short script of steps (requests for a few scopes, with or without claims;
lifecycle requests; invalidations after a 401; the clock moving into the refresh window or past
expiry). It runs twice, on fresh sources and a fresh cache: once through the sync API (no event
loop in the thread), once through the async API. Per step the trace records the result (token,
kind, source) or the error type; at the end, each source's call count and the cache's stats.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from entra_passthrough import (
    AssertionAudienceMismatch,
    IdentityKind,
    Policy,
    SourceUnavailable,
    TokenCache,
    TokenChain,
    TokenRequest,
    TokenResult,
    bind_caller,
)

from ._fakes import make_jwt

KINDS = list(IdentityKind)
MODES = ("ok", "none", "unavailable", "audience", "bad_value", "lies", "crash")
SCOPES = (("api://a/.default",), ("api://b/.default",), ("api://b/x", "api://b/y"))
#: One assertion for the whole run: it expires an hour after START and caps user entries (a
#: 7200 s token is capped, a 900 s one is refreshed ahead).
START = float(int(time.time()))
ASSERTION = make_jwt(exp=START + 3600)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Spec:
    kind: IdentityKind
    mode: str
    needs_caller: bool
    cached: bool
    lifetime: float


class Source:
    """A scripted source on the scenario's clock; counts its calls."""

    def __init__(self, name: str, spec: Spec, clock: Clock) -> None:
        self.name = name
        self.kind = spec.kind
        self.spec = spec
        self.clock = clock
        self.calls = 0
        self.invalidated = 0
        self.closed = 0
        self._lock = threading.Lock()
        if not spec.cached:
            self.cache_results = False

    def cache_partition(self, request: TokenRequest) -> tuple[str, ...] | None:
        if self.spec.needs_caller:
            caller = request.caller
            if caller is None or not caller.presented:
                return None
            return (caller.assertion_sha256 or "-",)
        return ("fixed",)

    def explain(self, request: TokenRequest) -> str:
        return "needs a caller"

    def invalidate(self, result: TokenResult) -> None:
        self.invalidated += 1

    def close(self) -> None:
        self.closed += 1

    def _answer(self, request: TokenRequest) -> TokenResult | None:
        with self._lock:
            self.calls += 1
            n = self.calls
        mode = self.spec.mode
        if mode == "none":
            return None
        if mode == "unavailable":
            raise SourceUnavailable("down", source=self.name, scopes=request.scopes)
        if mode == "audience":
            raise AssertionAudienceMismatch(audience="https://ai.azure.com", expected=["api://x"])
        if mode == "crash":
            raise RuntimeError("a bug in a custom source")
        token = f"{self.name}.t{n}" if mode != "bad_value" else f"{self.name} t{n}\r\n"
        kind = self.kind
        if mode == "lies":
            kind = IdentityKind.APP if kind is not IdentityKind.APP else IdentityKind.USER
        return TokenResult(token, self.clock() + self.spec.lifetime, kind, self.name)

    def get_token(self, request: TokenRequest) -> TokenResult | None:
        return self._answer(request)

    async def get_token_async(self, request: TokenRequest) -> TokenResult | None:
        await asyncio.sleep(0)
        return self._answer(request)


specs = st.builds(
    Spec,
    kind=st.sampled_from(KINDS),
    mode=st.sampled_from(("ok",) * 6 + MODES),  # most of them answer
    needs_caller=st.sampled_from((False, False, True)),
    cached=st.sampled_from((True, True, False)),
    lifetime=st.sampled_from([900.0, 7200.0, 60.0]),
)
#: The steps a script is drawn from (a request for the first scopes, and the clock moving into
#: a 900 s token's refresh window, are the most frequent: they reach the cache's refresh).
STEPS = (
    [("get", 0, False)] * 4
    + [("get", 1, False), ("get", 2, False), ("get", 0, True), ("get", 1, True)]
    + [("lifecycle", 0, False), ("lifecycle", 1, False), ("invalidate", 0, False)]
    # 700 s lands a 900 s token in its refresh window; 3000 s is past most expiries
    + [("advance", 700.0, False)] * 2
    + [("advance", 100.0, False), ("advance", 3000.0, False)]
)
steps = st.sampled_from(STEPS)
scenarios = st.fixed_dictionaries(
    {
        "specs": st.lists(specs, min_size=1, max_size=4),
        "policy": st.sampled_from(list(Policy)),
        "caller": st.booleans(),
        "lifecycle_app": st.booleans(),
        "steps": st.lists(steps, min_size=1, max_size=10),
    }
)


def build(scenario: dict[str, Any]) -> tuple[TokenChain, list[Source], Clock]:
    clock = Clock()
    sources = [Source(f"s{i}", spec, clock) for i, spec in enumerate(scenario["specs"])]
    chain = TokenChain(
        sources,
        policy=scenario["policy"],
        cache=TokenCache(clock=clock),
        lifecycle_app=scenario["lifecycle_app"],
    )
    return chain, sources, clock


def shown(result: TokenResult | None) -> object:
    return None if result is None else (result.token, result.kind.value, result.source)


@contextmanager
def maybe_caller(scenario: dict[str, Any]) -> Iterator[None]:
    if scenario["caller"]:
        with bind_caller(token=ASSERTION):
            yield
    else:
        yield


def finish(chain: TokenChain, sources: list[Source], trace: list[object]) -> list[object]:
    stats = chain.cache.stats()
    chain.close()
    trace.append([(s.calls, s.invalidated, s.closed) for s in sources])
    trace.append((stats.hits, stats.misses, stats.refreshes, stats.refresh_failures, stats.size))
    return trace


def run_sync(scenario: dict[str, Any]) -> list[object]:
    chain, sources, clock = build(scenario)
    trace: list[object] = []
    last: TokenResult | None = None
    with maybe_caller(scenario):
        for op, arg, claims in scenario["steps"]:
            try:
                if op == "get":
                    last = chain.get_token(SCOPES[arg], claims='{"c":1}' if claims else None)
                    trace.append(shown(last))
                elif op == "lifecycle":
                    trace.append(shown(chain.lifecycle_token(SCOPES[arg])))
                elif op == "invalidate" and last is not None:
                    chain.invalidate(last)
                elif op == "advance":
                    clock.now += arg
            except Exception as exc:  # the type is what both drivers must agree on
                trace.append(type(exc).__name__)
            assert chain.cache.wait_refreshes(30.0)
    return finish(chain, sources, trace)


async def run_async(scenario: dict[str, Any]) -> list[object]:
    chain, sources, clock = build(scenario)
    trace: list[object] = []
    last: TokenResult | None = None
    with maybe_caller(scenario):
        for op, arg, claims in scenario["steps"]:
            try:
                if op == "get":
                    last = await chain.get_token_async(
                        SCOPES[arg], claims='{"c":1}' if claims else None
                    )
                    trace.append(shown(last))
                elif op == "lifecycle":
                    trace.append(shown(await chain.lifecycle_token_async(SCOPES[arg])))
                elif op == "invalidate" and last is not None:
                    chain.invalidate(last)
                elif op == "advance":
                    clock.now += arg
            except Exception as exc:  # the type is what both drivers must agree on
                trace.append(type(exc).__name__)
            await chain.cache.wait_refreshes_async()
    return finish(chain, sources, trace)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios)
def test_sync_and_async_drivers_agree(scenario: dict[str, Any]) -> None:
    sync = run_sync(scenario)
    asynchronous = asyncio.run(run_async(scenario))
    assert sync == asynchronous


def test_the_scenarios_reach_every_branch() -> None:
    """The generator is not vacuous: these hand-picked scenarios hit a cache hit, a refresh
    ahead, the fail-closed rule, a refused token value and a lying source, through both."""
    user_fails = {
        "specs": [
            Spec(IdentityKind.USER, "audience", True, True, 900.0),
            Spec(IdentityKind.APP, "ok", False, True, 900.0),
        ],
        "policy": Policy.USER_OR_APP,
        "caller": True,
        "lifecycle_app": False,
        "steps": [("get", 0, False), ("get", 0, False)],
    }
    trace = run_sync(user_fails)
    assert trace[:2] == ["AssertionAudienceMismatch", "AssertionAudienceMismatch"]
    assert trace[2] == [(2, 0, 1), (0, 0, 1)]  # fail closed: the app was never asked
    assert asyncio.run(run_async(user_fails)) == trace

    refresh = {
        "specs": [Spec(IdentityKind.APP, "ok", False, True, 900.0)],
        "policy": Policy.APP_ONLY,
        "caller": False,
        "lifecycle_app": False,
        "steps": [("get", 0, False)] * 2 + [("advance", 700.0, False)] + [("get", 0, False)] * 2,
    }
    trace = run_sync(refresh)
    # miss, hit, (refresh due: cached token served, one background refresh), fresh hit
    first, second = ("s0.t1", "app", "s0"), ("s0.t2", "app", "s0")
    assert trace[:4] == [first, first, first, second]
    assert trace[4] == [(2, 0, 1)]
    assert trace[5][2] == 1  # one refresh
    assert asyncio.run(run_async(refresh)) == trace

    refused = {
        "specs": [
            Spec(IdentityKind.USER, "bad_value", False, True, 900.0),
            Spec(IdentityKind.USER, "lies", False, True, 900.0),
            Spec(IdentityKind.USER, "ok", False, False, 900.0),
        ],
        "policy": Policy.USER_ONLY,
        "caller": True,
        "lifecycle_app": False,
        "steps": [("get", 2, True), ("invalidate", 0, False), ("get", 2, True)],
    }
    trace = run_sync(refused)
    assert trace[0] == ("s2.t1", "user", "s2")
    assert trace[1] == ("s2.t2", "user", "s2")
    assert trace[2] == [(2, 0, 1), (2, 0, 1), (2, 1, 1)]
    assert asyncio.run(run_async(refused)) == trace
