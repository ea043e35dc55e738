"""OpenTelemetry spans and metrics, when ``opentelemetry-api`` is installed (the ``otel`` extra).

Without the package every hook is a no-op: nothing is imported and nothing allocated. With it,
the library uses the global tracer and meter providers the application configured; while none
is configured, the hot paths (a cache hit, an applied request) skip the bookkeeping entirely.

What is recorded, never a token: the source name, the identity kind, cache hit or miss, the
policy, the outcome (``ok``, ``error`` with the error's type, or ``cancelled``), the AADSTS code
and correlation id of an Entra error, the HTTP status of an applied request, and the caller as a
*salted* hash of the user key (``ENTRA_PASSTHROUGH_TELEMETRY_SALT``; a random per-process salt by
default, so the hash links the spans of one process and nothing across processes or to a user).

A cancellation (a ``BaseException`` that is not an ``Exception``: ``CancelledError`` when the
client went away or a deadline of the caller's ran out, ``GeneratorExit``, ``KeyboardInterrupt``)
is the caller giving up, not a failure: its span ends with status UNSET, no ``error.type``, and
``entra_passthrough.cancellation`` naming the exception's type (OpenTelemetry's HTTP semantic
conventions: a cancellation by the caller "SHOULD NOT be treated as an error"; the API's own
``use_span`` does not mark one as an error either), and the metrics count it with
``outcome="cancelled"``, not among the errors.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ._user_key import UserKey

if TYPE_CHECKING:
    from ._caller import Caller
    from ._errors import TokenAcquisitionError

try:  # the otel extra
    from opentelemetry import metrics as _metrics
    from opentelemetry import trace as _trace
    from opentelemetry.metrics import _internal as _metrics_internal
    from opentelemetry.trace import Status, StatusCode
except ImportError:  # pragma: no cover - exercised without the extra
    _trace = None  # type: ignore[assignment]
    _metrics = None  # type: ignore[assignment]
    _metrics_internal = None  # type: ignore[assignment]

ENABLED = _trace is not None
NAME = "entra_passthrough"


#: Whether the API keeps its providers in the module globals read below (checked once: the
#: hot paths then read them as plain attributes, no ``getattr`` call per request).
_TRACE_GLOBAL = _trace is not None and hasattr(_trace, "_TRACER_PROVIDER")
_METER_GLOBAL = _metrics_internal is not None and hasattr(_metrics_internal, "_METER_PROVIDER")


def tracing() -> bool:
    """Whether the application configured a tracer provider (checked per call: it may do so
    after import). Without one, the hot paths skip the span bookkeeping entirely. Reads the
    API's global directly (``get_tracer_provider()`` also consults the environment, ~3 us);
    falls back to the public call if a future API renames it."""
    if not ENABLED:  # the switch (the benchmark turns it off)
        return False
    if _TRACE_GLOBAL:
        provider = _trace._TRACER_PROVIDER
        if provider is None:
            return False  # none configured (the usual case on the hot path)
    else:
        provider = _trace.get_tracer_provider()
        if isinstance(provider, _trace.ProxyTracerProvider):
            return False
    return not isinstance(provider, _trace.NoOpTracerProvider)


def metering() -> bool:
    """Whether the application configured a meter provider (the API's own are no-ops)."""
    if not ENABLED:  # the switch (the benchmark turns it off)
        return False
    if _METER_GLOBAL:
        provider = _metrics_internal._METER_PROVIDER
        if provider is None:
            return False
    else:
        provider = _metrics.get_meter_provider()
        if type(provider).__name__ == "_ProxyMeterProvider":
            return False
    return not isinstance(provider, _metrics.NoOpMeterProvider)


#: The user hash's salt, read from ``ENTRA_PASSTHROUGH_TELEMETRY_SALT`` the first time a hash
#: is made (``_salt``), not at import: an application that loads its settings after importing
#: the library (python-dotenv, a settings module) still gets its salt. Then kept for the process.
_SALT: bytes | None = None
_SALT_LOCK = threading.Lock()


def _salt() -> bytes:
    salt = _SALT
    if salt is None:
        salt = _read_salt()
    return salt


def _read_salt() -> bytes:
    global _SALT
    with _SALT_LOCK:  # one salt per process, also when the first spans start on two threads
        if _SALT is None:
            _SALT = (
                os.environ.get("ENTRA_PASSTHROUGH_TELEMETRY_SALT") or secrets.token_hex(16)
            ).encode()
        return _SALT


def user_hash(caller: Caller | None) -> str | None:
    """A salted, truncated hash of who the caller is (its ``UserKey``: verified tid/oid or the
    platform user id, else the assertion's hash); ``None`` without a caller."""
    if caller is None:
        return None
    # ``UserKey.from_caller``'s choice of key, without its sign-in hints: those decode the
    # caller's claims, and a span starts in the iteration that made the call (a burst of new
    # users would decode them all there, the very iteration the cold path keeps short).
    user = None
    if caller.active:
        if caller.verified is not None:
            user = UserKey.from_verified_claims(caller.verified)
        if user is None and caller.user_id:
            user = UserKey.for_platform_user(caller.user_id)
    if user is not None:
        key = user.value
    elif caller.assertion_sha256 is not None:
        key = f"assertion:{caller.assertion_sha256}"
    else:
        return None
    return hashlib.sha256(_salt() + key.encode("utf-8", "surrogatepass")).hexdigest()[:16]


class _Instruments:
    def __init__(self) -> None:
        meter = _metrics.get_meter(NAME)
        self.acquisitions = meter.create_counter(
            "entra_passthrough.token.acquisitions",
            description="Token requests answered by a TokenChain, by source, cache and outcome",
        )
        self.errors = meter.create_counter(
            "entra_passthrough.token.errors",
            description="Failed token acquisitions, by error type and AADSTS code",
        )
        self.throttled = meter.create_counter(
            "entra_passthrough.token.throttled",
            description="Acquisitions refused because Entra asked to retry later",
        )
        self.duration = meter.create_histogram(
            "entra_passthrough.token.acquire.duration",
            unit="s",
            description="Time to acquire a token that was not cached",
        )
        self.requests = meter.create_counter(
            "entra_passthrough.requests",
            description="HTTP requests EntraAuth handled, by whether a token was applied",
        )


_instruments: _Instruments | None = None


def instruments() -> _Instruments | None:
    global _instruments
    if not ENABLED:
        return None
    if _instruments is None:
        _instruments = _Instruments()
    return _instruments


def tracer() -> Any:
    return _trace.get_tracer(NAME) if ENABLED else None


def start_span(name: str, attributes: Mapping[str, Any]) -> Any:
    """A span (not made current: the caller ends it), or ``None`` without the extra."""
    if not ENABLED:
        return None
    return _trace.get_tracer(NAME).start_span(
        name, attributes={k: v for k, v in attributes.items() if v is not None}
    )


#: The span attribute of a cancelled operation: the type of what cancelled it.
CANCELLATION = "entra_passthrough.cancellation"
#: ``error.type`` of a request that ended without a response for a reason the HTTP client does
#: not tell its auth (semantic conventions' fallback value).
OTHER = "_OTHER"


def cancelled(error: BaseException) -> bool:
    """Whether ``error`` is a cancellation (the caller gave up) rather than a failure."""
    return not isinstance(error, Exception)


def why_closed(*, sent: bool) -> BaseException | str:
    """Why an HTTP client closed a request's flow before its end. The client does it in a
    ``finally``, with a ``GeneratorExit`` that does not say why: a ``CancelledError`` while the
    current asyncio task is being cancelled (the client went away, a deadline of the caller's);
    a cancellation (the ``GeneratorExit``) before the request was ``sent`` (the drivers hand
    every ``Exception`` of an acquisition back to the flow: only a ``KeyboardInterrupt`` or the
    like gets past them); else ``OTHER``: a transport error (connect, read, a reset) ended the
    request, a failure the client's own span and exception name."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no event loop in this thread: the sync client
        task = None
    if task is not None and task.cancelling():
        return asyncio.CancelledError()
    if not sent:
        return GeneratorExit()
    return OTHER


def error_attributes(error: BaseException) -> dict[str, Any]:
    """Safe attributes of an error: its type, AADSTS code, correlation id (never its text)."""
    attrs: dict[str, Any] = {"error.type": type(error).__name__}
    code = getattr(error, "code", None)
    if code is not None and hasattr(code, "code"):
        attrs["entra_passthrough.aadsts"] = int(code.code)
    correlation = getattr(error, "correlation_id", None)
    if isinstance(correlation, str):
        attrs["entra_passthrough.correlation_id"] = correlation
    return attrs


def end_span(span: Any, error: BaseException | str | None = None, /, **attributes: Any) -> None:
    """End ``span``: a success (``error`` None), a failure (an ``Exception``, or an
    ``error.type`` value with no exception: ``OTHER``), or a cancellation (any other
    ``BaseException``: status left UNSET, ``CANCELLATION`` set)."""
    if span is None:
        return
    for key, value in attributes.items():
        if value is not None:
            span.set_attribute(key, value)
    if isinstance(error, str):
        span.set_attribute("error.type", error)
        span.set_status(Status(StatusCode.ERROR, "no response"))
    elif error is not None and cancelled(error):
        span.set_attribute(CANCELLATION, type(error).__name__)
    elif error is not None:
        for key, value in error_attributes(error).items():
            span.set_attribute(key, value)
        # The description is the type only: an exception's text is not for telemetry.
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
    span.end()


def count_hit(source: str, kind: str) -> None:
    inst = instruments()
    if inst is not None:
        inst.acquisitions.add(1, {"source": source, "kind": kind, "cache": "hit", "outcome": "ok"})


def count_acquired(source: str, kind: str, seconds: float) -> None:
    inst = instruments()
    if inst is not None:
        inst.acquisitions.add(1, {"source": source, "kind": kind, "cache": "miss", "outcome": "ok"})
        inst.duration.record(seconds, {"source": source, "outcome": "ok"})


def time_failed(source: str, seconds: float, error: BaseException | None = None) -> None:
    """A source asked for a token and failed after ``seconds``: the time lost to timeouts,
    stalls and retries belongs in the latency histogram as much as a success's. A cancelled
    request (``error`` a cancellation) is recorded with ``outcome="cancelled"``."""
    inst = instruments()
    if inst is not None:
        outcome = "error" if error is None else _outcome(error)[0]
        inst.duration.record(seconds, {"source": source, "outcome": outcome})


def count_failed(source: str | None, error: BaseException) -> None:
    inst = instruments()
    if inst is None:
        return
    attrs = {"source": source or "none", "error.type": type(error).__name__}
    code = getattr(error, "code", None)
    if code is not None and hasattr(code, "code"):
        attrs["aadsts"] = str(code.code)
    inst.acquisitions.add(1, {**attrs, "cache": "miss", "outcome": "error"})
    inst.errors.add(1, attrs)
    if type(error).__name__ == "Throttled":
        inst.throttled.add(1, {"source": source or "none"})


def count_cancelled(source: str | None) -> None:
    """An acquisition its caller gave up on (``source``: the one being asked): counted, with
    ``outcome="cancelled"``, never among the errors."""
    inst = instruments()
    if inst is not None:
        inst.acquisitions.add(
            1, {"source": source or "none", "cache": "miss", "outcome": "cancelled"}
        )


def count_request(
    applied: bool, status: int | None, error: BaseException | str | None = None
) -> None:
    """A request ``EntraAuth`` handled: ``outcome`` ``ok`` (a response reached it), ``error``
    (with the span's ``error.type``) or ``cancelled``."""
    inst = instruments()
    if inst is None:
        return
    outcome, error_type = _outcome(error)
    attrs: dict[str, Any] = {
        "applied": applied,
        "status": str(status) if status is not None else "none",
        "outcome": outcome,
    }
    if error_type is not None:
        attrs["error.type"] = error_type
    inst.requests.add(1, attrs)


def _outcome(error: BaseException | str | None) -> tuple[str, str | None]:
    """(``outcome``, ``error.type``) of an operation that ended with ``error`` (as ``end_span``
    reads it): ``ok``, ``cancelled``, or ``error`` with its type."""
    if error is None:
        return "ok", None
    if isinstance(error, str):
        return "error", error
    if cancelled(error):
        return "cancelled", None
    return "error", type(error).__name__


#: What ``describe`` takes of an error's ``failure``: a few words, never free text.
_FAILURE = re.compile(r"[A-Za-z0-9 .:_-]{1,48}")


def describe(error: TokenAcquisitionError | BaseException) -> str:
    """``Type (<failure>, AADSTS<code>, correlation_id <id>)``: the safe summary a WARNING
    carries. ``failure`` (``HTTP 503``, ``timeout``...) is in it so that two different failures
    of one source are two different records, never coalesced into one another."""
    attrs = error_attributes(error)
    parts = []
    failure = getattr(error, "failure", None)
    if isinstance(failure, str) and _FAILURE.fullmatch(failure):
        parts.append(failure)
    if "entra_passthrough.aadsts" in attrs:
        parts.append(f"AADSTS{attrs['entra_passthrough.aadsts']}")
    if "entra_passthrough.correlation_id" in attrs:
        parts.append(f"correlation_id {attrs['entra_passthrough.correlation_id']}")
    return type(error).__name__ + (f" ({', '.join(parts)})" if parts else "")


# -- coalescing repeated warnings ---------------------------------------------------------------

#: Seconds between two records of one repeated warning, after its first ``WARNING_BURST``
#: (``ENTRA_PASSTHROUGH_WARNING_INTERVAL``; ``0`` logs every one). A throttled endpoint or an
#: outage fails every acquisition the same way: without this, a 30 s ``Retry-After`` under load
#: wrote one WARNING per call (~1,300 lines), each saying the same thing.
WARNING_BURST = 5
_UUID = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
#: A request id as ``describe`` writes it: a failure refused without a request (the fast-fail
#: window) has none, the one that was sent has one; they are the same warning.
_REQUEST_ID = re.compile(r"(?:, )?(?:correlation_id|trace_id) [A-Za-z0-9_.:-]{1,64}")


#: ``ENTRA_PASSTHROUGH_WARNING_INTERVAL`` unset, or not a number it takes.
DEFAULT_WARNING_INTERVAL = 10.0
#: Its largest value: a day, as the timeout variables (``inf`` would hold back an identical
#: warning for the process's life after its first ``WARNING_BURST``).
MAX_WARNING_INTERVAL = 86400.0


def _interval_from_env(environ: Mapping[str, str] | None = None) -> float:
    raw = (os.environ if environ is None else environ).get("ENTRA_PASSTHROUGH_WARNING_INTERVAL")
    text = (raw or "").strip()
    if not text:
        return DEFAULT_WARNING_INTERVAL
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if math.isfinite(value) and 0 <= value <= MAX_WARNING_INTERVAL:
        return value
    # Read when the library is imported, where a ConfigurationError would stop every import
    # (``doctor`` included): a warning instead, naming the variable, never the value (a secret
    # pasted into the wrong variable must not reach a log).
    logging.getLogger("entra_passthrough").warning(
        "ENTRA_PASSTHROUGH_WARNING_INTERVAL is not a number of seconds from 0 to %g; repeated "
        "warnings are coalesced every %g s instead. Fix: set it to a number in that range "
        "(0 logs every warning), or unset it.",
        MAX_WARNING_INTERVAL,
        DEFAULT_WARNING_INTERVAL,
    )
    return DEFAULT_WARNING_INTERVAL


class WarningCoalescer(logging.Filter):
    """A filter on the library's loggers: identical WARNING/ERROR records (same logger, message
    and arguments, request ids and other UUIDs aside) pass ``burst`` at once, then one per
    ``interval`` seconds; the one that passes after a pause says how many were suppressed.
    Records below WARNING pass untouched. Bounded: at most ``MAX_KEYS`` kinds are tracked (the
    oldest forgotten first)."""

    MAX_KEYS = 1024

    def __init__(
        self,
        interval: float | None = None,
        burst: int = WARNING_BURST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.interval = _interval_from_env() if interval is None else interval
        self.burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        # key -> [tokens left, last refill time, suppressed since the last record that passed]
        self._state: OrderedDict[tuple[Any, ...], list[float]] = OrderedDict()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or self.interval <= 0:
            return True
        key = _record_key(record)
        now = self._clock()
        with self._lock:
            state = self._state.get(key)
            if state is None:
                state = self._state[key] = [float(self.burst), now, 0.0]
                if len(self._state) > self.MAX_KEYS:
                    self._state.popitem(last=False)
            else:
                self._state.move_to_end(key)
                state[0] = min(float(self.burst), state[0] + (now - state[1]) / self.interval)
                state[1] = now
            if state[0] < 1.0:
                state[2] += 1
                return False
            state[0] -= 1.0
            suppressed = int(state[2])
            state[2] = 0.0
        if suppressed:
            text = record.getMessage()
            record.msg = f"{text} ({suppressed} identical warnings suppressed before this one)"
            record.args = ()
        return True

    def reset(self) -> None:
        with self._lock:
            self._state.clear()


def _record_key(record: logging.LogRecord) -> tuple[Any, ...]:
    args = record.args
    if isinstance(args, tuple):
        parts: tuple[Any, ...] = tuple(
            _UUID.sub("*", _REQUEST_ID.sub("", a).replace(" ()", "")) if isinstance(a, str) else a
            for a in args
            if isinstance(a, str | int | float | type(None))
        )
    else:
        parts = ()
    return (record.name, record.levelno, str(record.msg), parts)


#: The library's loggers that write warnings; the filter is on each (a logger's filter does not
#: see its children's records).
COALESCED_LOGGERS = (
    "entra_passthrough.chain",
    "entra_passthrough.cache",
    "entra_passthrough.cache.shared",
    "entra_passthrough.verify",
    "entra_passthrough.apply",
    "entra_passthrough.capture",
    "entra_passthrough.consent",
    "entra_passthrough.obo",
    "entra_passthrough.managed_identity",
    "entra_passthrough.mcp",
    "entra_passthrough.agent_framework",
)
COALESCER = WarningCoalescer()
for _name in COALESCED_LOGGERS:
    if COALESCER not in logging.getLogger(_name).filters:
        logging.getLogger(_name).addFilter(COALESCER)
