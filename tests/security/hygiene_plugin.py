"""pytest plugin: the secret-hygiene harness.

Runs any suites with every logger at DEBUG (the root's, and by name the library's, MSAL's,
azure's, httpx/httpx2/httpcore's, mcp's, uvicorn's, hypercorn/h2/hpack's, requests/urllib3's,
redis', asyncio's) and OpenTelemetry
spans captured in memory, records the message and repr of every typed error the library
constructs and of every ``TokenResult``/``Caller`` repr'd, then searches all of it for every
token, refresh token, secret, client assertion, PKCE verifier and authorization code any
``EntraEmulator`` of the run issued or received, whole and as any fragment of 16+ characters.
A find fails the run; the figures go to ``$HYGIENE_REPORT`` (JSON) when set.

    PYTHONPATH=tests .venv/bin/pytest -p security.hygiene_plugin tests/resolve tests/apply ...
"""

from __future__ import annotations

import json
import logging
import os
import traceback
from collections.abc import Callable
from typing import Any

import pytest

from entra_passthrough import Caller, EntraPassthroughError, TokenResult
from entra_passthrough.testing import EntraEmulator

from ._hygiene import leaks, where

LOGGERS = (
    "entra_passthrough",
    "msal",
    "azure",
    "httpx",
    "httpx2",
    "httpcore",
    "httpcore2",
    "mcp",
    "uvicorn",
    "uvicorn.access",
    "uvicorn.error",
    "requests",
    "urllib3",
    "agent_framework",
    "starlette",
    # Servers and protocol layers the tests start (hypercorn's h2/hpack once logged whole
    # Authorization headers), the Redis client, the event loop.
    "hypercorn",
    "h11",
    "h2",
    "hpack",
    "redis",
    "asyncio",
)


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []
        self.count = 0
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.count += 1
            self.texts.append(self.format(record))
        except Exception:  # a record that cannot be formatted is not a leak
            self.texts.append(f"(unformattable record from {record.name})")


class Harness:
    def __init__(self) -> None:
        self.capture = _Capture()
        self.secrets: set[str] = set()
        self.errors: list[str] = []
        self.reprs: list[str] = []
        self.spans: Any = None
        self.reports: list[str] = []
        self._undo: list[Callable[[], None]] = []
        #: Set during a test marked ``leaky_source``: its own custom source builds errors holding
        #: a token on purpose, and the test asserts what the library makes of them.
        self.errors_paused = False

    # -- set up ---------------------------------------------------------------------------
    def start(self) -> None:
        for name in LOGGERS:
            logger = logging.getLogger(name)
            old = logger.level
            logger.setLevel(logging.DEBUG)
            self._undo.append(lambda lg=logger, lv=old: lg.setLevel(lv))
        root = logging.getLogger()
        # Any other library's records too (a logger left at NOTSET takes the root's level).
        old_root = root.level
        root.setLevel(logging.DEBUG)
        self._undo.append(lambda: root.setLevel(old_root))
        root.addHandler(self.capture)
        self._undo.append(lambda: root.removeHandler(self.capture))
        self._start_otel()
        self._patch_emulator()
        self._patch_errors()
        self._patch_reprs()

    def _start_otel(self) -> None:
        try:
            from opentelemetry import trace
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import SimpleSpanProcessor
            from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
                InMemorySpanExporter,
            )
        except ImportError:
            return
        self.spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.spans))
        trace.set_tracer_provider(provider)

    def _patch_emulator(self) -> None:
        harness = self
        original_close = EntraEmulator.close
        original_issued = EntraEmulator.issued

        def close(self: EntraEmulator) -> None:
            if getattr(self, "_server", None) is not None:
                harness.secrets.update(original_issued(self))
            original_close(self)

        def issued(self: EntraEmulator) -> set[str]:
            out = original_issued(self)
            harness.secrets.update(out)
            return out

        EntraEmulator.close = close  # type: ignore[method-assign]
        EntraEmulator.issued = issued  # type: ignore[method-assign]
        self._undo.append(lambda: setattr(EntraEmulator, "close", original_close))
        self._undo.append(lambda: setattr(EntraEmulator, "issued", original_issued))

    def _patch_errors(self) -> None:
        harness = self
        original = EntraPassthroughError.__init__

        def init(self: EntraPassthroughError, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            if harness.errors_paused:
                return
            try:
                harness.errors.append(f"{self}\n{self!r}\n{vars(self)!r}")
            except Exception:
                harness.errors.append(f"(unprintable {type(self).__name__})")

        EntraPassthroughError.__init__ = init  # type: ignore[method-assign]
        self._undo.append(lambda: setattr(EntraPassthroughError, "__init__", original))

    def _patch_reprs(self) -> None:
        harness = self
        for cls in (TokenResult, Caller):
            original = cls.__repr__

            def wrapped(self: Any, _original: Any = original) -> str:
                text: str = _original(self)
                harness.reprs.append(text)
                return text

            cls.__repr__ = wrapped  # type: ignore[method-assign]
            self._undo.append(lambda c=cls, o=original: setattr(c, "__repr__", o))

    # -- the search -------------------------------------------------------------------------
    def span_texts(self) -> list[str]:
        if self.spans is None:
            return []
        out = []
        for span in self.spans.get_finished_spans():
            out.append(span.name)
            out.append(repr(dict(span.attributes or {})))
            for event in span.events:
                out.append(event.name)
                out.append(repr(dict(event.attributes or {})))
            if span.status.description:
                out.append(span.status.description)
        return out

    def finish(self) -> dict[str, Any]:
        for undo in reversed(self._undo):
            undo()
        spans = self.span_texts()
        sources = {
            "logs": self.capture.texts,
            "spans": spans,
            "errors": self.errors,
            "reprs": self.reprs,
            "test reports": self.reports,
        }
        # A test's junk value sent to the emulator ("x" * 43) is no secret of anyone's.
        secrets = {s for s in self.secrets if s and len(s) >= 8 and len(set(s)) >= 8}
        found: dict[str, list[str]] = {}
        examples: dict[str, list[str]] = {}
        for name, texts in sources.items():
            blob = "\n".join(texts)
            found[name] = leaks(blob, secrets)
            if found[name]:
                examples[name] = where(blob, secrets)
        return {
            "secrets searched": len(secrets),
            "log records": self.capture.count,
            "spans": len(spans) and len(self.spans.get_finished_spans()),
            "errors recorded": len(self.errors),
            "reprs recorded": len(self.reprs),
            "found": {k: len(v) for k, v in found.items()},
            "examples": examples,
        }


_HARNESS = Harness()


def pytest_configure(config: pytest.Config) -> None:
    _HARNESS.start()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    _HARNESS.errors_paused = item.get_closest_marker("leaky_source") is not None
    try:
        yield
    finally:
        _HARNESS.errors_paused = False


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report = outcome.get_result()
    if report.longrepr is not None:
        _HARNESS.reports.append(str(report.longrepr))
    if call.excinfo is not None:
        _HARNESS.reports.append("".join(traceback.format_exception(call.excinfo.value)))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    result = _HARNESS.finish()
    path = os.environ.get("HYGIENE_REPORT")
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    summary = {k: v for k, v in result.items() if k != "examples"}
    print(f"\nsecret hygiene: {json.dumps(summary)}")
    if any(result["found"].values()):
        print("secret hygiene: LEAKS FOUND (context of the first finds):")
        for name, snippets in result["examples"].items():
            for snippet in snippets:
                print(f"  [{name}] ...{snippet!r}...")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    elif result["secrets searched"] == 0:
        print("secret hygiene: no emulator secrets were issued: nothing was checked")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
