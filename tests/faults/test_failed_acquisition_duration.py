"""``entra_passthrough.token.acquire.duration`` records failed acquisitions too, with
``outcome="error"``: the time lost to a stalled endpoint, timeouts and retries is what the
latency histogram is for.

Real MSAL against the emulator over HTTPS; the SDK's ``MeterProvider`` with an in-memory reader,
local to the test (the global one can be set once per process)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from entra_passthrough import (
    Caller,
    IdentityKind,
    Policy,
    SourceUnavailable,
    Timeouts,
    TokenAcquisitionError,
    TokenChain,
    TokenRequest,
    TokenResult,
    _otel,
)
from entra_passthrough.testing import EntraEmulator

from .conftest import get_token_as, mcp_scope

HISTOGRAM = "entra_passthrough.token.acquire.duration"


@pytest.fixture
def reader(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    monkeypatch.setattr(_otel._metrics, "get_meter", provider.get_meter)
    monkeypatch.setattr(_otel, "_instruments", _otel._Instruments())
    yield reader
    provider.shutdown()


def _durations(reader: InMemoryMetricReader) -> dict[tuple[str, str], tuple[int, float]]:
    """(source, outcome) -> (count, sum) of the histogram's points."""
    out: dict[tuple[str, str], tuple[int, float]] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data is not None else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name != HISTOGRAM:
                    continue
                for point in metric.data.data_points:
                    attrs = dict(point.attributes or {})
                    out[(str(attrs["source"]), str(attrs["outcome"]))] = (point.count, point.sum)
    return out


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_failed_acquisition_is_in_the_latency_histogram(
    idp: EntraEmulator, rig_factory: Any, reader: InMemoryMetricReader, mode: str
) -> None:
    rig = rig_factory(Timeouts(connect=2.0, read=5.0, deadline=1.0, retries=0))
    assert ("obo", "error") not in _durations(reader)
    get_token_as(mode, rig.chain, mcp_scope(idp), caller=Caller.from_token(rig.user_token()))
    idp.inject_fault("token", status=None, delay=3.0)  # Entra stalls past the deadline
    with pytest.raises(SourceUnavailable, match="deadline"):
        get_token_as(mode, rig.chain, mcp_scope(idp), caller=Caller.from_token(rig.user_token()))
    idp.wait_idle(15.0)  # the stalled request is counted when it ends: not in the next test
    points = _durations(reader)
    assert points[("obo", "ok")][0] == 2  # the rig's warm-up, then this test's first call
    count, total = points[("obo", "error")]
    assert count == 1
    assert total > 0.5  # the time the deadline took, not a zero entry


def test_a_value_that_is_no_bearer_credential_is_a_timed_failure(
    reader: InMemoryMetricReader,
) -> None:
    # The source answered, but with a token that cannot be sent (CR/LF in it): refused where it
    # is checked, which ran outside the timing of failures.
    class Broken:
        name = "broken"
        kind = IdentityKind.APP

        def cache_partition(self, request: TokenRequest) -> tuple[str, ...]:
            return ("broken",)

        def explain(self, request: TokenRequest) -> str:
            return ""

        def get_token(self, request: TokenRequest) -> TokenResult:
            return TokenResult("a\r\nb", time.time() + 3600, IdentityKind.APP, "broken")

        async def get_token_async(self, request: TokenRequest) -> TokenResult:
            return self.get_token(request)

        def close(self) -> None:
            pass

    chain = TokenChain([Broken()], policy=Policy.APP_ONLY)
    with pytest.raises(TokenAcquisitionError):
        chain.get_token(["api://x/.default"])
    chain.close()
    assert _durations(reader)[("broken", "error")][0] == 1
