"""OpenTelemetry spans and metrics, and azure-identity-style logs: informative, never a token.

Real components: the emulator over HTTPS, MSAL's OBO, EntraAuth on httpx2 against uvicorn.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from _support.otel import export_spans_to
from _support.servers import serve_in_thread
from entra_passthrough import (
    Caller,
    ConsentRequired,
    EntraAuth,
    EntraPassthroughError,
    OnBehalfOf,
    TokenChain,
    _otel,
    bind_caller,
)
from entra_passthrough.testing import EntraEmulator

from ._hygiene import leaks

SPANS = InMemorySpanExporter()
READER = InMemoryMetricReader()


@pytest.fixture(scope="module", autouse=True)
def _providers() -> None:
    # The global providers can be set once per process: reuse an SDK provider already there
    # (the hygiene harness sets one), else install ours.
    export_spans_to(SPANS)
    if not isinstance(metrics.get_meter_provider(), MeterProvider):
        metrics.set_meter_provider(MeterProvider(metric_readers=[READER]))


@pytest.fixture(scope="module")
def resource() -> Iterator[str]:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    with serve_in_thread(app) as url:
        yield url


def _metric_points() -> dict[str, list[Any]]:
    data = READER.get_metrics_data()
    out: dict[str, list[Any]] = {}
    if data is None:
        return out
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                out.setdefault(metric.name, []).extend(metric.data.data_points)
    return out


def _obo(idp: EntraEmulator, http: Any) -> OnBehalfOf:
    return OnBehalfOf(
        client_id=idp.agent.client_id,
        tenant_id=idp.tenant_id,
        client_secret=idp.agent.secret,
        authority_host=idp.url,
        http_client=http,
    )


async def test_one_tool_call_traces_acquisition_and_request(
    entra_emulator: EntraEmulator, resource: str, caplog: pytest.LogCaptureFixture
) -> None:
    idp = entra_emulator
    caplog.set_level(logging.INFO, logger="entra_passthrough")
    SPANS.clear()
    http = idp.msal_http_client()
    chain = TokenChain([_obo(idp, http)])
    scope = f"{idp.mcp.app_id_uri}/.default"
    auth = EntraAuth(chain, scopes=[scope], origins=[resource])
    user_token = idp.user_token("alice", audience=idp.agent.client_id)
    try:
        async with httpx2.AsyncClient(auth=auth) as client:
            with bind_caller(token=user_token):
                first = await client.get(f"{resource}/mcp?secret-looking=query")
                second = await client.get(f"{resource}/mcp")
    finally:
        chain.close()
        http.close()
    assert (first.status_code, second.status_code) == (200, 200)
    spans = SPANS.get_finished_spans()
    acquire = [s for s in spans if s.name == "entra_passthrough.acquire"]
    requests = [s for s in spans if s.name == "entra_passthrough.request"]
    assert len(acquire) == 1  # the second request was a cache hit on the apply hot path
    attrs = dict(acquire[0].attributes or {})
    assert attrs["entra_passthrough.source"] == "obo"
    assert attrs["entra_passthrough.kind"] == "user"
    assert attrs["entra_passthrough.cache"] == "miss"
    assert attrs["entra_passthrough.policy"] == "user_only"
    assert len(str(attrs["entra_passthrough.user"])) == 16
    assert len(requests) == 2
    for span in requests:
        rattrs = dict(span.attributes or {})
        assert rattrs["entra_passthrough.applied"] is True
        assert rattrs["http.response.status_code"] == 200
        assert rattrs["server.address"].startswith("http://127.0.0.1:")
        assert "query" not in str(rattrs)
    # the same caller: one user hash across spans
    assert {
        dict(s.attributes or {})["entra_passthrough.user"]
        for s in spans
        if s.attributes and "entra_passthrough.user" in s.attributes
    } == {attrs["entra_passthrough.user"]}
    points = _metric_points()
    caches = {p.attributes.get("cache") for p in points["entra_passthrough.token.acquisitions"]}
    assert {"hit", "miss"} <= caches
    assert points["entra_passthrough.token.acquire.duration"]
    info = [r for r in caplog.records if r.levelno == logging.INFO and "acquired" in r.getMessage()]
    assert info
    blob = "\n".join([repr([dict(s.attributes or {}) for s in spans]), caplog.text, repr(points)])
    assert leaks(blob, idp.issued() | {user_token}) == []


async def test_a_failure_is_a_warning_and_an_error_span_with_the_code(
    entra_emulator: EntraEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    idp = entra_emulator
    caplog.set_level(logging.INFO, logger="entra_passthrough")
    SPANS.clear()
    # Identical warnings are coalesced process-wide: tests that ran before in this worker may
    # have logged this same failure five times in the last 10 s (then it would be held back).
    _otel.COALESCER.reset()
    http = idp.msal_http_client()
    chain = TokenChain([_obo(idp, http)])
    wrong_audience = idp.user_token("alice", audience=idp.mcp.client_id)  # not for the agent
    try:
        with pytest.raises(EntraPassthroughError) as info:
            await chain.get_token_async(
                [f"{idp.mcp.app_id_uri}/.default"], caller=Caller.from_token(wrong_audience)
            )
    finally:
        chain.close()
        http.close()
    assert not isinstance(info.value, ConsentRequired)
    (span,) = [s for s in SPANS.get_finished_spans() if s.name == "entra_passthrough.acquire"]
    assert span.status.status_code == trace.StatusCode.ERROR
    assert span.status.description == type(info.value).__name__  # the type, never the text
    attrs = dict(span.attributes or {})
    assert attrs["error.type"] == type(info.value).__name__
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings
    assert type(info.value).__name__ in warnings[0].getMessage()
    if info.value.code is not None:  # type: ignore[attr-defined]
        assert f"AADSTS{info.value.code.code}" in warnings[0].getMessage()  # type: ignore[attr-defined]
    blob = repr(attrs) + caplog.text
    assert leaks(blob, idp.issued() | {wrong_audience}) == []
    assert "alice" not in caplog.text  # no PII: no upn, no name


async def test_a_tool_call_through_the_mcp_client_traces_as_documented(
    entra_emulator: EntraEmulator,
) -> None:
    """The trace of docs/observability.md ("A trace of one tool call"), recorded from a real
    tool call: the plain mcp SDK client through ``entra_http_client`` to an MCP server that
    verifies Entra tokens. One acquisition (a miss, in the connect's first request), then one
    ``entra_passthrough.request`` span per HTTP request, each the child of the mcp SDK's span
    for that request, all under the host's span, one user hash, no token."""
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    from _support.mcp_world import Recorder, agent_token, build_mcp_app, make_chain, mcp_scopes
    from _support.servers import ServerThread
    from entra_passthrough.mcp import entra_call, entra_http_client

    idp = entra_emulator
    SPANS.clear()
    recorder = Recorder()
    server = ServerThread(
        lambda base: build_mcp_app(idp, base_url=base, recorder=recorder), name="otel-mcp"
    ).start()
    user_token = agent_token(idp, idp.users["alice"])
    host = trace.get_tracer("the-host")
    try:
        http = entra_http_client(
            chain=make_chain(idp), scopes=mcp_scopes(idp), origins=[server.base]
        )
        try:
            with host.start_as_current_span("agent POST /responses") as root:
                async with (
                    bind_caller(token=user_token),
                    Client(streamable_http_client(f"{server.base}/mcp", http_client=http)) as c,
                    entra_call(http),
                ):
                    result = await c.call_tool("whoami", {"who": "alice"})
        finally:
            await http.aclose()
    finally:
        server.stop()
    assert not result.is_error, result
    spans = SPANS.get_finished_spans()
    by_id = {s.context.span_id: s for s in spans}

    def ancestors(span: Any) -> list[str]:
        names, parent = [], span.parent
        while parent is not None and parent.span_id in by_id:
            names.append(by_id[parent.span_id].name)
            parent = by_id[parent.span_id].parent
        return names

    ours = [s for s in spans if s.name.startswith("entra_passthrough.")]
    for span in ours:  # every span of the library is in the host's trace, under its span
        assert span.context.trace_id == root.get_span_context().trace_id
        assert "agent POST /responses" in ancestors(span), (span.name, ancestors(span))
        assert by_id[span.parent.span_id].name.startswith("MCP send ")  # the SDK's span
    acquire = [s for s in ours if s.name == "entra_passthrough.acquire"]
    requests = [s for s in ours if s.name == "entra_passthrough.request"]
    assert len(acquire) == 1  # every later request is a hit on the apply path
    a = dict(acquire[0].attributes or {})
    assert (a["entra_passthrough.source"], a["entra_passthrough.kind"]) == ("obo", "user")
    assert (a["entra_passthrough.cache"], a["entra_passthrough.decision"]) == ("miss", "user")
    assert a["entra_passthrough.presented"] is True
    seen = recorder.snapshot()
    assert len(requests) == len(seen)  # one span per HTTP request the server got
    assert "tools/call" in [s.rpc for s in seen]
    for span in requests:
        r = dict(span.attributes or {})
        assert r["entra_passthrough.applied"] is True
        assert r["entra_passthrough.source"] == "obo"
        assert r["http.response.status_code"] == 200
        assert r["server.address"] == server.base
    users = {dict(s.attributes or {})["entra_passthrough.user"] for s in ours}
    assert len(users) == 1
    blob = repr([(s.name, dict(s.attributes or {})) for s in spans])
    assert leaks(blob, idp.issued() | {user_token}) == []
