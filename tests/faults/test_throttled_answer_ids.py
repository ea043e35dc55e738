"""``Throttled`` and ``SourceUnavailable`` built from a 429/5xx answer keep what Entra's body
names for support: the AADSTS code (``error_codes``), the correlation id and the trace id, on
the error, in the WARNING and on the span; only a code in range and short identifiers, never the
body's free text.

Real MSAL against the emulator over HTTPS (its 429/503 bodies are Entra's shape), the SDK's
in-memory span exporter, and for bodies that are no Entra's a plain HTTP server on 127.0.0.1
that answers the token POSTs."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from _support.otel import export_spans_to
from _support.servers import serve_in_thread
from entra_passthrough import (
    Caller,
    EntraError,
    SourceUnavailable,
    Throttled,
    Timeouts,
    TokenAcquisitionError,
    _otel,
    bind_caller,
)
from entra_passthrough.testing import EntraEmulator

from .conftest import mcp_scope, routed_obo_chain

GUID = re.compile(r"[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}")
SPANS = InMemorySpanExporter()
ONCE = Timeouts(connect=2.0, read=5.0, deadline=20.0, retries=0)


@pytest.fixture(scope="module", autouse=True)
def _tracer() -> None:
    export_spans_to(SPANS)


def _failed_span() -> dict[str, Any]:
    spans = [s for s in SPANS.get_finished_spans() if s.name == "entra_passthrough.acquire"]
    assert spans
    return dict(spans[-1].attributes or {})


@pytest.mark.parametrize(
    ("status", "retry_after", "kind"),
    [(429, 30.0, Throttled), (503, None, SourceUnavailable)],
    ids=["429", "503"],
)
def test_an_entra_429_or_5xx_keeps_its_code_and_ids(
    idp: EntraEmulator,
    rig_factory: Any,
    caplog: pytest.LogCaptureFixture,
    status: int,
    retry_after: float | None,
    kind: type[TokenAcquisitionError],
) -> None:
    rig = rig_factory(ONCE)
    _otel.COALESCER.reset()
    SPANS.clear()
    caplog.set_level(logging.INFO, logger="entra_passthrough")
    idp.inject_fault("token", status=status, retry_after=retry_after)
    with bind_caller(token=rig.user_token()), pytest.raises(kind) as info:
        rig.chain.get_token(mcp_scope(idp))
    error = info.value
    assert error.code is not None
    assert error.code.code == 90033  # the emulator's, as Entra's: MsodsServiceUnavailable
    assert error.correlation_id is not None
    assert GUID.fullmatch(error.correlation_id)
    assert f"correlation_id {error.correlation_id}" in str(error)
    assert error.failure == f"HTTP {status}"
    attrs = _failed_span()
    assert attrs["entra_passthrough.aadsts"] == 90033
    assert attrs["entra_passthrough.correlation_id"] == error.correlation_id
    (line,) = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name == "entra_passthrough.chain"
    ]
    assert (
        f"{kind.__name__} (HTTP {status}, AADSTS90033, correlation_id {error.correlation_id})"
        in line
    )
    if status == 429:
        assert "HTTP 429: AADSTS90033" in str(error)
        # The fast-fail refusal that follows sent nothing: Entra's code (why the endpoint is
        # closed) stays, another request's correlation id does not.
        with bind_caller(token=rig.user_token()), pytest.raises(Throttled) as again:
            rig.chain.get_token(mcp_scope(idp))
        assert again.value.code is not None
        assert again.value.code.code == 90033
        assert again.value.correlation_id is None


#: Planted in the bodies below: never on an error, in a log line or a span.
PLANTED = "S3cr3tValue_" + "Q7w9" * 8


class Answers:
    def __init__(self) -> None:
        self.body: Any = {}
        self.hits = 0
        self.status = 503

    async def handle(self, request: Request) -> Response:
        await request.body()
        self.hits += 1
        return Response(
            json.dumps(self.body),
            status_code=self.status,
            headers={"Content-Type": "application/json"},
        )


@pytest.fixture(scope="module")
def answers() -> Iterator[tuple[Answers, int]]:
    server = Answers()
    app = Starlette(routes=[Route("/token", server.handle, methods=["POST"])])
    with serve_in_thread(app, name="503-answers") as url:
        yield server, int(url.rsplit(":", 1)[1])


BODIES = {
    "free_text_ids": {
        "error": "temporarily_unavailable",
        "error_codes": [90033],
        "correlation_id": f"see {PLANTED} for details",
        "trace_id": f"client_secret={PLANTED}",
    },
    "overlong_ids": {
        "error": "server_error",
        "error_codes": [90033],
        "correlation_id": PLANTED * 3,
        "trace_id": "x" * 65,
    },
    "token_shaped_ids": {
        # Short enough for a "word": a JWT-shaped value and a 44-character opaque one. Request
        # ids are GUIDs; these would be shown in messages and spans, unredacted.
        "error": "temporarily_unavailable",
        "error_codes": [90033],
        "correlation_id": "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
        "trace_id": "Zm9vYmFyYmF6cXV4UzNjcjN0VmFsdWVfUTd3OVE3dzk=",
    },
    "code_out_of_range": {
        "error": "server_error",
        "error_codes": [10**40],
        "error_description": f"AADSTS{PLANTED}",
        "correlation_id": ["a", "b"],
    },
}


@pytest.mark.parametrize("shape", sorted(BODIES))
def test_ids_that_are_not_short_identifiers_are_dropped(
    idp: EntraEmulator,
    answers: tuple[Answers, int],
    caplog: pytest.LogCaptureFixture,
    shape: str,
) -> None:
    server, port = answers
    server.body, server.hits = BODIES[shape], 0
    _otel.COALESCER.reset()
    SPANS.clear()
    caplog.set_level(logging.INFO, logger="entra_passthrough")
    with routed_obo_chain(idp, port, ONCE) as chain:
        caller = Caller.from_token(
            idp.user_token("bob", audience=idp.agent.client_id, extra_claims={"uti": shape})
        )
        with pytest.raises(SourceUnavailable) as info:
            chain.get_token(mcp_scope(idp), caller=caller)
    assert server.hits == 1
    error = info.value
    assert error.correlation_id is None
    assert error.trace_id is None
    expected = None if shape == "code_out_of_range" else 90033
    assert (error.code.code if error.code is not None else None) == expected
    attrs = _failed_span()
    assert "entra_passthrough.correlation_id" not in attrs
    blob = "\n".join([str(error), repr(error), repr(vars(error)), caplog.text, repr(attrs)])
    assert PLANTED not in blob
    assert PLANTED[:16] not in blob
    assert "eyJhbGciOiJSUzI1NiJ9" not in blob
    assert "Zm9vYmFyYmF6" not in blob


@pytest.mark.parametrize("status", [500, 503])
def test_a_5xx_that_names_a_definite_answer_is_that_answer_on_obo(
    idp: EntraEmulator, answers: tuple[Answers, int], status: int
) -> None:
    # MSAL's token client raises "HTTP Error" on any 5xx before reading its body: the code,
    # its fix and the ids were lost ("Entra answered HTTP 503 without an error body").
    server, port = answers
    server.hits = 0
    server.body = {
        "error": "invalid_resource",
        "error_codes": [500011],
        "error_description": "AADSTS500011: The resource principal named x was not found.",
        "correlation_id": "27e9b5a1-1111-2222-3333-444444444444",
        "trace_id": "9f1d2c3b-1111-2222-3333-444444444444",
    }
    server.status = status
    try:
        with routed_obo_chain(idp, port, ONCE) as chain:
            caller = Caller.from_token(
                idp.user_token("bob", audience=idp.agent.client_id, extra_claims={"uti": "d5"})
            )
            with pytest.raises(EntraError) as info:
                chain.get_token(mcp_scope(idp), caller=caller)
    finally:
        server.status = 503
    assert server.hits == 1  # an answer: not retried
    error = info.value
    assert error.code is not None
    assert error.code.code == 500011
    assert error.correlation_id == "27e9b5a1-1111-2222-3333-444444444444"
    assert "App ID URI" in str(error.fix)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        # A 5xx with a JSON body and no AADSTS code is an outage, as before (not retried: 501
        # is not a retryable status), never "Entra refused the token request".
        (501, {"error": "server_error", "error_description": "gateway says no"}, "outage"),
        (520, {"error": "server_error"}, "outage"),
        # A 5xx that is not retried is still an answer when it names a definite code.
        (501, {"error": "invalid_resource", "error_codes": [500011]}, "refusal"),
        # A definite answer never comes with a token served from it.
        (
            500,
            {"error": "invalid_resource", "error_codes": [500011], "access_token": "eyJ.e30.x"},
            "refusal",
        ),
        # Nor an error status of any kind: MSAL reads a 4xx body's access_token as a token.
        (
            400,
            {"error": "invalid_resource", "error_codes": [500011], "access_token": "eyJ.e30.x"},
            "refusal",
        ),
        (
            401,
            {"access_token": "eyJ.e30.x", "token_type": "Bearer", "expires_in": 3600},
            "refused",
        ),
        (
            403,
            {"error": "", "access_token": "eyJ.e30.x", "token_type": "Bearer", "expires_in": 60},
            "refused",
        ),
    ],
)
def test_only_a_definite_5xx_is_an_answer_and_never_a_token(
    idp: EntraEmulator,
    answers: tuple[Answers, int],
    status: int,
    body: dict[str, Any],
    expected: str,
) -> None:
    server, port = answers
    server.hits, server.body, server.status = 0, body, status
    try:
        with routed_obo_chain(idp, port, ONCE) as chain:
            caller = Caller.from_token(
                idp.user_token("bob", audience=idp.agent.client_id, extra_claims={"uti": "d6"})
            )
            with pytest.raises(TokenAcquisitionError) as info:
                chain.get_token(mcp_scope(idp), caller=caller)
    finally:
        server.status = 503
    if expected == "outage":
        assert isinstance(info.value, SourceUnavailable), info.value
    elif expected == "refused":
        assert "eyJ.e30.x" not in f"{info.value} {info.value!r}"
    else:
        assert isinstance(info.value, EntraError), info.value
        assert info.value.code is not None
        assert info.value.code.code == 500011
