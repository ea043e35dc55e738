"""A cancelled acquisition or request ends its span exactly once, as a cancellation, and the
metrics count it as one (docs/observability.md, "Cancellations").

A cancellation is the caller giving up (``CancelledError``: the client went away, a deadline of
its own; ``KeyboardInterrupt``): OpenTelemetry's HTTP semantic conventions say a cancellation by
the caller "SHOULD NOT be treated as an error" (status left unset, no ``error.type``), so the
span says ``entra_passthrough.cancellation`` instead, and the metrics count it with
``outcome="cancelled"``, never among the errors. Before, the acquisition's span was never ended
(never exported, kept referenced by the SDK) and the request's looked like a success. A request
that went out and got no response (a transport error) is an error: ``error.type`` ``_OTHER``.

Real components: real MSAL's OBO against the emulator over HTTPS with a slow token endpoint
(``token_latency``), EntraAuth on httpx2 against uvicorn, the SDK's span processors and an
in-memory metric reader."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx2
import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from _support.otel import export_spans_to
from _support.servers import serve_in_thread
from entra_passthrough import Caller, EntraAuth, OnBehalfOf, TokenChain, _otel, bind_caller
from entra_passthrough.testing import EntraEmulator

from ._hygiene import leaks

SPANS = InMemorySpanExporter()
ACQUIRE = "entra_passthrough.acquire"
REQUEST = "entra_passthrough.request"
CANCELLATION = "entra_passthrough.cancellation"  # docs/observability.md
LATENCY = 0.6  # the slow token endpoint / resource
CANCEL_AT = 0.2  # well inside it


class _Open(SpanProcessor):
    """The spans started and not ended while a test of this module runs."""

    def __init__(self) -> None:
        self.on = False
        self.open: dict[int, str] = {}

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        if self.on:
            self.open[span.context.span_id] = span.name

    def on_end(self, span: ReadableSpan) -> None:
        if span.context is not None:
            self.open.pop(span.context.span_id, None)


OPEN = _Open()


@pytest.fixture(scope="module", autouse=True)
def _tracer() -> None:
    export_spans_to(SPANS)
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    provider.add_span_processor(OPEN)


@pytest.fixture(autouse=True)
def _every_span_ends_once(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    SPANS.clear()
    OPEN.open.clear()
    OPEN.on = True
    caplog.set_level(logging.WARNING, logger="opentelemetry")
    caplog.set_level(logging.DEBUG, logger="entra_passthrough")  # last: the handler's level
    try:
        yield
    finally:
        OPEN.on = False
    assert OPEN.open == {}, "a span was started and never ended"
    assert "ended span" not in caplog.text  # the SDK's "Calling end() on an ended span"


@pytest.fixture
def reader(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    monkeypatch.setattr(_otel._metrics, "get_meter", provider.get_meter)
    monkeypatch.setattr(_otel, "_instruments", _otel._Instruments())
    yield reader
    provider.shutdown()


@pytest.fixture
def idp(entra_emulator: EntraEmulator) -> Iterator[EntraEmulator]:
    entra_emulator.token_latency = LATENCY
    try:
        yield entra_emulator
    finally:
        entra_emulator.token_latency = 0.0
        entra_emulator.wait_idle(10.0)  # the abandoned token requests: not in the next test


class Rig:
    def __init__(self, idp: EntraEmulator) -> None:
        self.idp = idp
        self.http = idp.msal_http_client()
        self.chain = TokenChain(
            [
                OnBehalfOf(
                    client_id=idp.agent.client_id,
                    tenant_id=idp.tenant_id,
                    client_secret=idp.agent.secret,
                    authority_host=idp.url,
                    http_client=self.http,
                )
            ]
        )
        self.scope = f"{idp.mcp.app_id_uri}/.default"
        self.user_token = idp.user_token("alice", audience=idp.agent.client_id)

    def close(self) -> None:
        self.chain.close()
        self.http.close()


@pytest.fixture
def rig(idp: EntraEmulator) -> Iterator[Rig]:
    rig = Rig(idp)
    yield rig
    rig.close()


def _spans(name: str) -> list[ReadableSpan]:
    return [s for s in SPANS.get_finished_spans() if s.name == name]


def _assert_cancelled(span: ReadableSpan, by: str = "CancelledError") -> dict[str, Any]:
    attrs = dict(span.attributes or {})
    assert attrs.get(CANCELLATION) == by
    assert "error.type" not in attrs  # not a failure (semantic conventions)
    assert span.status.status_code == trace.StatusCode.UNSET
    return attrs


def _points(reader: InMemoryMetricReader, name: str) -> list[tuple[dict[str, Any], Any]]:
    data = reader.get_metrics_data()
    out = []
    for rm in data.resource_metrics if data is not None else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == name:
                    out.extend((dict(p.attributes or {}), p) for p in metric.data.data_points)
    return out


def _acquisitions(reader: InMemoryMetricReader) -> dict[str, int]:
    """outcome -> count of ``entra_passthrough.token.acquisitions`` for misses."""
    out: dict[str, int] = {}
    for attrs, point in _points(reader, "entra_passthrough.token.acquisitions"):
        if attrs.get("cache") == "miss":
            out[attrs["outcome"]] = out.get(attrs["outcome"], 0) + int(point.value)
    return out


def _durations(reader: InMemoryMetricReader) -> dict[tuple[str, str], int]:
    return {
        (attrs["source"], attrs["outcome"]): int(point.count)
        for attrs, point in _points(reader, "entra_passthrough.token.acquire.duration")
    }


def _no_token_in(spans: list[ReadableSpan], rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    blob = repr([dict(s.attributes or {}) for s in spans]) + caplog.text
    assert leaks(blob, rig.idp.issued() | {rig.user_token}) == []


@pytest.mark.parametrize("how", ["task.cancel", "asyncio.timeout"])
async def test_a_cancelled_acquisition_ends_its_span_as_a_cancellation(
    rig: Rig, reader: InMemoryMetricReader, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    caller = Caller.from_token(rig.user_token)
    if how == "task.cancel":
        task = asyncio.create_task(rig.chain.get_token_async([rig.scope], caller=caller))
        await asyncio.sleep(CANCEL_AT)  # Entra is still answering
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    else:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(CANCEL_AT):
                await rig.chain.get_token_async([rig.scope], caller=caller)
    (span,) = _spans(ACQUIRE)
    attrs = _assert_cancelled(span)
    assert "entra_passthrough.source" not in attrs  # no source answered
    assert _acquisitions(reader) == {"cancelled": 1}
    assert _points(reader, "entra_passthrough.token.errors") == []  # not a failure
    # The source's own call: cancelled with it, or (a cache that hands a cancelled leader's
    # acquisition over to its waiters) still running; never an error.
    assert set(_durations(reader)) <= {("obo", "cancelled")}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "cancelled (CancelledError) [source obo]" in caplog.text  # DEBUG

    # The next acquisition is an ordinary success, with a span and counts of its own.
    result = await rig.chain.get_token_async([rig.scope], caller=caller)
    assert result.source == "obo"
    spans = _spans(ACQUIRE)
    assert len(spans) == 2
    assert spans[1].status.status_code == trace.StatusCode.UNSET
    assert dict(spans[1].attributes or {}).get(CANCELLATION) is None
    assert _acquisitions(reader) == {"cancelled": 1, "ok": 1}
    _no_token_in(spans, rig, caplog)


async def test_a_cancelled_waiter_and_its_leader_each_end_one_span(
    rig: Rig, reader: InMemoryMetricReader, caplog: pytest.LogCaptureFixture
) -> None:
    caller = Caller.from_token(rig.user_token)
    leader = asyncio.create_task(rig.chain.get_token_async([rig.scope], caller=caller))
    await asyncio.sleep(0.05)
    waiter = asyncio.create_task(rig.chain.get_token_async([rig.scope], caller=caller))
    await asyncio.sleep(CANCEL_AT)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (await leader).source == "obo"
    spans = _spans(ACQUIRE)
    assert len(spans) == 2
    cancelled = [s for s in spans if CANCELLATION in (s.attributes or {})]
    assert len(cancelled) == 1
    _assert_cancelled(cancelled[0])
    assert _acquisitions(reader) == {"cancelled": 1, "ok": 1}
    assert _durations(reader) == {("obo", "ok"): 1}  # the waiter never asked Entra itself
    _no_token_in(spans, rig, caplog)


MAIN_THREAD_SIGNALS = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"),
    reason="a signal handler runs in the main thread",
)


@contextmanager
def _ctrl_c_after(seconds: float) -> Iterator[None]:
    """A ``KeyboardInterrupt`` in this (the main) thread after ``seconds``, as Ctrl-C."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, seconds)
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@MAIN_THREAD_SIGNALS
def test_an_interrupted_sync_acquisition_ends_its_span(
    rig: Rig, reader: InMemoryMetricReader, caplog: pytest.LogCaptureFixture
) -> None:
    caller = Caller.from_token(rig.user_token)
    with _ctrl_c_after(CANCEL_AT), pytest.raises(KeyboardInterrupt):  # while Entra answers
        rig.chain.get_token([rig.scope], caller=caller)
    (span,) = _spans(ACQUIRE)
    _assert_cancelled(span, "KeyboardInterrupt")
    assert _acquisitions(reader) == {"cancelled": 1}
    assert _durations(reader) == {("obo", "cancelled"): 1}
    assert _points(reader, "entra_passthrough.token.errors") == []


@pytest.fixture(scope="module")
def slow_resource() -> Iterator[str]:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/slow":
            await asyncio.sleep(LATENCY)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    with serve_in_thread(app, lifespan="off") as url:
        yield url


def _requests(reader: InMemoryMetricReader) -> list[dict[str, Any]]:
    return [
        {**attrs, "count": int(point.value)}
        for attrs, point in _points(reader, "entra_passthrough.requests")
    ]


async def test_a_request_cancelled_while_the_resource_answers(
    rig: Rig,
    slow_resource: str,
    reader: InMemoryMetricReader,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig.idp.token_latency = 0.0
    auth = EntraAuth(rig.chain, scopes=[rig.scope], origins=[slow_resource])
    async with httpx2.AsyncClient(auth=auth) as client:
        with bind_caller(token=rig.user_token):
            assert (await client.get(f"{slow_resource}/fast")).status_code == 200
            task = asyncio.create_task(client.get(f"{slow_resource}/slow"))
            await asyncio.sleep(CANCEL_AT)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    first, second = _spans(REQUEST)
    assert first.status.status_code == trace.StatusCode.UNSET
    assert dict(first.attributes or {})["http.response.status_code"] == 200
    assert CANCELLATION not in (first.attributes or {})
    attrs = _assert_cancelled(second)
    assert attrs["entra_passthrough.applied"] is True  # the token went out; no answer came
    assert "http.response.status_code" not in attrs
    assert sorted(
        (r["outcome"], r["status"], r.get("error.type"), r["count"]) for r in _requests(reader)
    ) == [("cancelled", "none", None, 1), ("ok", "200", None, 1)]
    _no_token_in(SPANS.get_finished_spans(), rig, caplog)


async def test_a_request_cancelled_while_its_token_is_acquired(
    rig: Rig,
    slow_resource: str,
    reader: InMemoryMetricReader,
    caplog: pytest.LogCaptureFixture,
) -> None:
    auth = EntraAuth(rig.chain, scopes=[rig.scope], origins=[slow_resource])
    async with httpx2.AsyncClient(auth=auth) as client:
        with bind_caller(token=rig.user_token):
            task = asyncio.create_task(client.get(f"{slow_resource}/fast"))
            await asyncio.sleep(CANCEL_AT)  # Entra is answering the OBO request
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    (acquire,) = _spans(ACQUIRE)
    _assert_cancelled(acquire)
    (request,) = _spans(REQUEST)
    attrs = _assert_cancelled(request)
    assert "entra_passthrough.applied" not in attrs
    assert [(r["outcome"], r["applied"]) for r in _requests(reader)] == [("cancelled", False)]
    assert _acquisitions(reader) == {"cancelled": 1}
    _no_token_in(SPANS.get_finished_spans(), rig, caplog)


def _refusing_origin() -> str:
    """An origin where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_request_that_got_no_response_is_an_error(
    rig: Rig, reader: InMemoryMetricReader, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    # Not a cancellation: the transport failed (the client closes the auth flow the same way,
    # without saying why; its own exception and span name the error).
    rig.idp.token_latency = 0.0
    origin = _refusing_origin()
    auth = EntraAuth(rig.chain, scopes=[rig.scope], origins=[origin])

    async def send_async() -> None:
        async with httpx2.AsyncClient(auth=auth) as client:
            await client.get(f"{origin}/x")

    def send_sync() -> None:  # in a thread with no event loop, as a sync client is used
        with httpx2.Client(auth=auth) as client:
            client.get(f"{origin}/x")

    send = send_async() if mode == "async" else asyncio.to_thread(send_sync)
    with bind_caller(token=rig.user_token), pytest.raises(httpx2.ConnectError):
        await send
    (span,) = _spans(REQUEST)
    attrs = dict(span.attributes or {})
    assert span.status.status_code == trace.StatusCode.ERROR
    assert attrs["error.type"] == "_OTHER"
    assert CANCELLATION not in attrs
    assert attrs["entra_passthrough.applied"] is True
    assert [(r["outcome"], r.get("error.type")) for r in _requests(reader)] == [("error", "_OTHER")]
    (acquire,) = _spans(ACQUIRE)  # the token itself was acquired: an ordinary span
    assert acquire.status.status_code == trace.StatusCode.UNSET
    _no_token_in(SPANS.get_finished_spans(), rig, caplog)


@MAIN_THREAD_SIGNALS
def test_a_sync_request_interrupted_while_its_token_is_acquired(
    rig: Rig, slow_resource: str, reader: InMemoryMetricReader
) -> None:
    # The sync client closes the auth flow on the KeyboardInterrupt without saying why; before
    # the request went out, nothing but a cancellation can close it (the drivers hand every
    # Exception of an acquisition back to the flow).
    auth = EntraAuth(rig.chain, scopes=[rig.scope], origins=[slow_resource])
    with (
        httpx2.Client(auth=auth) as client,
        bind_caller(token=rig.user_token),
        _ctrl_c_after(CANCEL_AT),
        pytest.raises(KeyboardInterrupt),
    ):
        client.get(f"{slow_resource}/fast")
    (acquire,) = _spans(ACQUIRE)
    _assert_cancelled(acquire, "KeyboardInterrupt")
    (request,) = _spans(REQUEST)
    _assert_cancelled(request, "GeneratorExit")
    assert [r["outcome"] for r in _requests(reader)] == ["cancelled"]
