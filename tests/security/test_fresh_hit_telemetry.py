"""What a fresh cache hit through ``TokenChain.get_token`` leaves in telemetry, as
docs/observability.md says: no ``entra_passthrough.acquire`` span (a span per hit would cost
every request on the hot path), one ``acquisitions{cache="hit"}`` count.

Real MSAL against the emulator over HTTPS; the SDK's in-memory span exporter and a
``MeterProvider`` with an in-memory reader local to the test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from _support.otel import export_spans_to
from entra_passthrough import Caller, OnBehalfOf, TokenChain, _otel
from entra_passthrough.testing import EntraEmulator

SPANS = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def _tracer() -> None:
    export_spans_to(SPANS)


@pytest.fixture
def reader(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    monkeypatch.setattr(_otel._metrics, "get_meter", provider.get_meter)
    monkeypatch.setattr(_otel, "_instruments", _otel._Instruments())
    # the hot path counts a hit only when an application configured a meter provider
    monkeypatch.setattr(_otel, "metering", lambda: True)
    yield reader
    provider.shutdown()


def _hits(reader: InMemoryMetricReader) -> int:
    data = reader.get_metrics_data()
    total = 0
    for rm in data.resource_metrics if data is not None else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == "entra_passthrough.token.acquisitions":
                    total += sum(
                        int(p.value)
                        for p in metric.data.data_points
                        if dict(p.attributes or {}).get("cache") == "hit"
                    )
    return total


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_fresh_hit_through_get_token_is_counted_not_traced(
    entra_emulator: EntraEmulator, reader: InMemoryMetricReader, mode: str
) -> None:
    idp = entra_emulator
    http = idp.msal_http_client()
    chain = TokenChain(
        [
            OnBehalfOf(
                client_id=idp.agent.client_id,
                tenant_id=idp.tenant_id,
                client_secret=idp.agent.secret,
                authority_host=idp.url,
                http_client=http,
            )
        ]
    )
    scopes = [f"{idp.mcp.app_id_uri}/.default"]
    caller = Caller.from_token(
        idp.user_token("alice", audience=idp.agent.client_id, extra_claims={"uti": f"hit-{mode}"})
    )
    SPANS.clear()
    try:
        first = chain.get_token(scopes, caller=caller)  # a miss: a source is asked
        acquire = [s for s in SPANS.get_finished_spans() if s.name == "entra_passthrough.acquire"]
        assert len(acquire) == 1
        assert dict(acquire[0].attributes or {})["entra_passthrough.cache"] == "miss"
        for _ in range(3):
            if mode == "sync":
                hit = chain.get_token(scopes, caller=caller)
            else:
                hit = await chain.get_token_async(scopes, caller=caller)
            assert hit.token == first.token
    finally:
        chain.close()
        http.close()
    after = [s for s in SPANS.get_finished_spans() if s.name == "entra_passthrough.acquire"]
    assert len(after) == 1  # no span for the three hits
    assert _hits(reader) == 3
