"""Time and throttling for every token request MSAL sends: timeouts, a deadline, retries,
``Retry-After`` and a short negative cache.

Why this layer exists (MSAL Python 1.39):

* MSAL sets no HTTP timeout, and neither does a ``requests.Session`` given to it: a stalled token
  endpoint would hold the call and a worker thread forever.
* MSAL honours ``Retry-After`` (and caches HTTP 400 answers for 60 s) inside its ``http_cache``.
  The library neutralises that cache on purpose (the retry right after a user consents must be a
  real request), which also removes MSAL's throttling. The throttling is rebuilt here, without
  caching any 400: a gate per client application and token endpoint (``gate_key``; per endpoint
  for a managed identity host) set by a ``Retry-After`` answer, and a short gate per request key
  after a transient failure exhausted its retries.

``GuardedHttpClient`` has MSAL's ``http_client`` interface (``post``/``get``/``close``) and wraps
whatever session the application gave (or a ``requests.Session`` with ``trust_env`` kept).
Failures leave it as ``TransportFailure``; the sources turn that into ``Throttled`` or
``SourceUnavailable`` with their own name and scopes (``_sources._base.unreachable``).
"""

from __future__ import annotations

import contextlib
import contextvars
import email.utils
import hashlib
import heapq
import json
import random
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from . import _env
from ._aadsts import is_answer
from ._checks import whole_number
from ._errors import ConfigurationError, SourceUnavailable, code_in_body, safe_request_id

#: HTTP statuses worth retrying: throttling and the gateway/server errors Entra documents as
#: transient (AADSTS90033 and friends). Nothing else is retried (a 400 is an answer), nor is a
#: 5xx whose body names a definite AADSTS answer (``_aadsts.is_answer``).
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})

#: The longest time limit ``Timeouts`` takes (seconds): a day. Longer is a typo or "no limit",
#: and an infinite one overflowed the deadline watchdog's wait.
MAX_SECONDS = 86_400.0


#: ``Timeouts`` field -> the environment variable ``Timeouts.from_env`` reads it from.
TIMEOUT_VARIABLES: Final = {
    "connect": "ENTRA_PASSTHROUGH_CONNECT_TIMEOUT",
    "read": "ENTRA_PASSTHROUGH_READ_TIMEOUT",
    "deadline": "ENTRA_PASSTHROUGH_TOKEN_DEADLINE",
    "retries": "ENTRA_PASSTHROUGH_TOKEN_RETRIES",
}


def _number(value: object) -> bool:
    """An int or a float, not a bool (``True`` is not one second)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Time limits for the token requests a source sends (docs/reliability.md).

    ``connect``/``read``: per socket operation (seconds to open the connection, to wait for
    each read). ``deadline``: the whole acquisition (every request, retry and wait inside one
    ``get_token``, and every phase of each request, from the connect to the body's last byte:
    ``RequestWatch``), after which the caller gets a typed error naming the phase.
    ``retries``: extra attempts for a retryable failure (429/5xx, connection reset, timeout),
    with exponential ``backoff`` and jitter, capped at ``max_backoff``. A ``Retry-After`` up
    to ``max_retry_wait`` is waited for within the call; a longer one raises ``Throttled`` at
    once. ``negative_ttl``: after a request failed for good, the same request fails fast for
    that long (no POST).

    >>> OnBehalfOf(..., timeouts=Timeouts(read=5.0, deadline=10.0))  # doctest: +SKIP
    """

    connect: float = 5.0
    read: float = 10.0
    deadline: float = 30.0
    retries: int = 2
    backoff: float = 0.2
    max_backoff: float = 2.0
    max_retry_wait: float = 2.0
    negative_ttl: float = 2.0

    def __post_init__(self) -> None:
        # A bound of its own too: "inf" (or 1e10) passed the positivity checks, and the
        # deadline watchdog's wait overflowed on it (every acquisition then had no deadline).
        # A string ("5") is refused by type: it ended in a TypeError from the comparison.
        for name in ("connect", "read", "deadline"):
            if not _number(getattr(self, name)) or not 0 < getattr(self, name) <= MAX_SECONDS:
                raise ConfigurationError(
                    f"Timeouts.{name} must be a positive number of seconds, at most "
                    f"{MAX_SECONDS:g} (a day).",
                    fix=f"use a finite number of seconds up to {MAX_SECONDS:g}.",
                )
        for name in ("backoff", "max_backoff", "max_retry_wait", "negative_ttl"):
            if not _number(getattr(self, name)) or not 0 <= getattr(self, name) <= MAX_SECONDS:
                raise ConfigurationError(
                    f"Timeouts.{name} must not be negative, and at most {MAX_SECONDS:g} "
                    "seconds (a day).",
                    fix=f"use a finite number of seconds from 0 to {MAX_SECONDS:g}.",
                )
        # A whole number: "2" ended in a TypeError, and 2.5 was taken (as if it were 2).
        whole_number(
            self.retries,
            what="Timeouts.retries",
            low=0,
            high=10,
            fix="pass Timeouts(retries=...) the extra attempts after the first: a whole number "
            "from 0 to 10 (default 2; ENTRA_PASSTHROUGH_TOKEN_RETRIES for from_env).",
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Timeouts:
        """``ENTRA_PASSTHROUGH_CONNECT_TIMEOUT``, ``..._READ_TIMEOUT``, ``..._TOKEN_DEADLINE``
        and ``..._TOKEN_RETRIES`` over the defaults (docs/configuration.md)."""
        values: dict[str, Any] = {}
        for field_name, var in TIMEOUT_VARIABLES.items():
            raw = _env.get(env, var)
            if raw is None:
                continue
            seconds = field_name != "retries"
            wanted = (
                f"a number of seconds, more than 0 and at most {MAX_SECONDS:g} (a day)"
                if seconds
                else "a whole number of retries from 0 to 10"
            )
            try:
                number = float(raw) if seconds else int(raw)
            except ValueError:
                number = None
            if number is None or not (0 < number <= MAX_SECONDS if seconds else 0 <= number <= 10):
                # Never the value, nor its start: a secret pasted into the wrong variable must
                # not reach an error message (or doctor's output).
                raise ConfigurationError(
                    f"{var} is not {wanted}.",
                    fix=f"set {var} to {wanted} (or unset it for the default).",
                )
            values[field_name] = number
        return cls(**values)


def check_timeouts(value: object) -> Timeouts | None:
    """A source's ``timeouts=``: ``None`` (the defaults) or a ``Timeouts``, else a
    ``ConfigurationError`` at build (``timeouts=5`` failed at every request, as an
    ``AttributeError`` turned into ``SourceUnavailable``)."""
    if value is None or isinstance(value, Timeouts):
        return value
    raise ConfigurationError(
        f"timeouts must be a Timeouts, not {type(value).__name__}.",
        fix="pass timeouts=Timeouts(connect=..., read=..., deadline=...) (seconds each), or "
        "leave it out for the defaults.",
    )


DEFAULT_TIMEOUTS = Timeouts()


class TransportFailure(Exception):
    """A token request that failed for good (raised through MSAL to the source).

    ``kind``: ``throttled`` (429, or a 5xx with ``Retry-After``), ``status`` (another retryable
    status), ``timeout``, ``connection``, ``malformed`` (a 2xx body that is not JSON), ``page``
    (a 3xx/4xx answer to a token request whose body is no OAuth error object: a proxy's,
    firewall's or gateway's page; not retried), ``tls`` (the peer's certificate failed
    verification: not trusted, e.g. a TLS-inspecting proxy's, or not for that host),
    ``ca_bundle`` (the CA bundle set to verify it could not be loaded), ``deadline``, or
    ``closed`` (its owner, the source's worker pool, was closed: ``ExchangeGroup``; not retried,
    not cached, closes no gate);
    ``tls`` and ``ca_bundle`` are this process's trust settings, not the peer's failure: not
    retried, and never put in the shared negative cache (another source's session may trust
    other CAs). ``retry_after``: seconds until a request may be sent again (``None`` if
    unknown). ``phase``: for ``deadline``, the part of the exchange the deadline cut
    (``PHASES``), when known. ``aadsts``, ``correlation_id``, ``trace_id``: what a 429/5xx
    answer's body named (Entra's ``error_codes``, its request ids), kept only as a code in
    range and short identifiers (``answer_ids``), for support and telemetry. Carries no URL,
    body or header value.
    """

    def __init__(
        self,
        kind: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        attempts: int = 1,
        cached: bool = False,
        peer: str = "Entra",
        phase: str | None = None,
        aadsts: int | None = None,
        correlation_id: str | None = None,
        trace_id: str | None = None,
    ) -> None:
        self.kind = kind
        self.peer = peer
        self.phase = phase
        self.status = status
        self.retry_after = retry_after
        self.attempts = attempts
        self.cached = cached
        self.aadsts = aadsts
        self.correlation_id = correlation_id
        self.trace_id = trace_id
        super().__init__(self.describe())

    def summary(self) -> str:
        """The failure in a few bounded words (``HTTP 503``, ``timeout``, ``deadline in
        headers``, ``connection failed``, ``not JSON``, ``HTTP 407 page``): what a WARNING line
        names so that an outage, a timeout and a proxy's page are told apart, and are not
        coalesced into one another (``_otel.WarningCoalescer``)."""
        status = f"HTTP {self.status}" if self.status else None
        if self.kind in ("throttled", "status"):
            return status or "throttled"
        if self.kind == "page":
            return f"{status or 'HTTP'} page"
        if self.kind == "malformed":
            return "not JSON"
        if self.kind == "timeout":
            return "timeout"
        if self.kind == "deadline":
            return f"deadline in {self.phase}" if self.phase in PHASES else "deadline"
        if self.kind == "tls":
            return "TLS certificate not trusted"
        if self.kind == "ca_bundle":
            return "CA bundle unreadable"
        if self.kind == "closed":
            return "source closed"
        return "connection failed"

    def describe(self) -> str:
        peer = self.peer
        if self.kind == "throttled":
            what = f"{peer} answered HTTP {self.status} asking to retry later"
        elif self.kind == "status":
            what = f"{peer} answered HTTP {self.status}"
        elif self.kind == "timeout":
            what = f"{peer} did not answer in time (connect or read timeout)"
        elif self.kind == "malformed":
            what = f"{peer}'s answer was not valid JSON (cut short, or a proxy's page)"
        elif self.kind == "page":
            what = (
                f"HTTP {self.status} came back without {peer}'s JSON error body (a page from "
                "a proxy, firewall or gateway on the way, or another server at that address?)"
            )
        elif self.kind == "tls":
            what = (
                f"the TLS certificate of {peer}'s host was not accepted: it is not signed by a "
                "CA this process trusts (a TLS-inspecting proxy's, or the wrong CA bundle), or "
                "not issued for that host name"
            )
        elif self.kind == "ca_bundle":
            what = (
                f"the CA bundle set to verify {peer}'s TLS certificate could not be loaded "
                "(missing, a folder, or no certificate in it); no connection was made"
            )
        elif self.kind == "closed":
            what = (
                "the token source was closed (TokenChain.close() or the source's close()) while "
                f"this request was in flight: it was stopped without an answer from {peer}"
            )
        elif self.kind == "deadline":
            what = f"the acquisition's deadline passed before {peer} answered"
            if self.phase is not None:
                what += f" (phase: {self.phase})"
        else:
            what = f"the connection to {peer} failed"
        if self.cached:
            what += " (a recent identical failure; no request was sent)"
        elif self.attempts > 1:
            what += f" after {self.attempts} attempts"
        return what


# -- the per-acquisition deadline ---------------------------------------------------------------

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "entra_passthrough_deadline", default=None
)


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[float]:
    """Bound every token request made inside (in this thread/context) by one deadline; a nested
    scope never extends an outer one (e.g. a client assertion fetched inside an OBO request)."""
    now = time.monotonic()
    outer = _DEADLINE.get()
    when = now + seconds if outer is None else min(outer, now + seconds)
    token = _DEADLINE.set(when)
    try:
        yield when
    finally:
        _DEADLINE.reset(token)


def current_deadline(default_seconds: float) -> float:
    when = _DEADLINE.get()
    return when if when is not None else time.monotonic() + default_seconds


def backoff_pause(backoff: float, attempt: int, most: float, rng: random.Random) -> float:
    """The pause before retry ``attempt`` (1 for the first): exponential from ``backoff``,
    at most ``most``, with equal jitter (half fixed, half random)."""
    base = min(most, backoff * 2.0 ** (attempt - 1))
    return base / 2 + rng.uniform(0, base / 2)


# -- throttling state, shared by every source of the process ---------------------------------------

_FOLLOWING: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "entra_passthrough_following", default=False
)
_ANY = object()  # ``Throttle.admit``: "waited already", whichever gate it meets


@contextlib.contextmanager
def following() -> Iterator[None]:
    """Requests made inside come from a caller that already waited for another caller's
    request to the same endpoint (a single flight, a queue): a closed gate is its answer
    (``Throttled`` / the cached failure with the time left), not a short wait to sit out again;
    a probe in flight is still waited for, and an open endpoint is sent to as usual."""
    token = _FOLLOWING.set(True)
    try:
        yield
    finally:
        _FOLLOWING.reset(token)


@dataclass(slots=True)
class _Gate:
    until: float
    failure: TransportFailure
    probe: object | None = None  # set while one request probes the endpoint after a lapse
    done: threading.Event = field(default_factory=threading.Event)


class Throttle:
    """``Retry-After`` gates per gate key and short negative entries per request key.

    A gate key (``gate_key``) is what Entra throttles: one client application at one token
    endpoint (tenant included), or one managed identity endpoint. A ``Retry-After`` answer to
    one user's request applies to every request of that application to that endpoint until it
    lapses, so they fail fast with ``Throttled`` instead of each sending a POST; another
    application of the same tenant, throttled separately by Entra, is not held back. When a
    gate lapses, exactly one request goes out (the probe); requests arriving meanwhile wait for
    its answer (within their deadline), then go out if the endpoint answered or fail fast if it
    closed again: no herd of POSTs the moment a wait ends. Only a request that will be sent
    takes the probe (one refused by its own negative entry does not), and the probe's own
    retries go out without waiting for it. Bounded: expired entries are dropped as new ones are
    added. (The ``authority`` parameters below are gate keys.)
    """

    MAX_ENTRIES = 4096

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._authority: dict[str, _Gate] = {}
        self._keys: dict[str, _Gate] = {}

    def admit(
        self,
        authority: str,
        key: str,
        *,
        probe_window: float,
        wait_until: float,
        max_wait: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
        held: object | None = None,
    ) -> tuple[TransportFailure | None, object | None]:
        """``(failure, None)``: raise it, no request. ``(None, probe)``: send; ``probe`` is not
        ``None`` when this request is the endpoint's probe (``release`` it when done). Never
        both: a request refused here holds no probe.
        ``wait_until`` (``time.monotonic()``) bounds every wait: for another request's probe,
        and for a gate that lapses within ``max_wait`` (a short ``Retry-After``, waited out).
        ``held``: the probe this request already holds (its retry): it is sent at once.

        A request waits one round at most: once it has waited (out a short gate, or for a
        probe's answer), a gate closed since is that answer, ``Throttled`` with the gate's time
        left, not another round to wait (a 429 without ``Retry-After`` closes 2 s gates one after
        the other: each round cost the waiters 2 s more, up to 8 of them). Inside ``following()``
        (a caller that waited for another's request to the endpoint) a closed gate is the answer
        at once."""
        # The gate this request waited on; ``_ANY`` when it waited before it came here.
        waited: object | None = _ANY if _FOLLOWING.get() else None
        for _ in range(8):  # bounded: each turn ends a wait, a probe or a gate
            now = self._clock()
            with self._lock:
                gate = self._authority.get(authority)
                if gate is None:
                    return self._key_failure(key, now), None
                if held is not None and gate.probe is held:
                    # The probe's own retry (its attempt failed without closing the gate again):
                    # waiting for the probe's answer would be waiting for itself, for the whole
                    # window. It goes out; the others keep waiting for its answer.
                    gate.until = now + probe_window
                    return None, None
                left = gate.until - now
                if gate.probe is None and left <= 0:  # lapsed: the next request sent probes
                    failure = self._key_failure(key, now)
                    if failure is not None:
                        # Refused by its own negative entry, this request sends nothing: had it
                        # taken the probe, no one would release it, and every other user of the
                        # endpoint would wait out the window, then fail with no request sent.
                        return failure, None
                    gate.probe = object()
                    gate.until = now + probe_window
                    return None, gate.probe
                if gate.probe is not None and left <= 0:  # the probe never answered
                    del self._authority[authority]
                    gate.done.set()
                    continue
                if gate.probe is None and waited is not None and gate is not waited:
                    # Closed again since this request began waiting (the probe it waited for
                    # got another 429): that is its answer, not a new round to wait out.
                    return _cached(gate, now), None
                budget = wait_until - time.monotonic()
                short = gate.failure.kind == "throttled" and left <= max_wait and left < budget
                if gate.probe is None and not short:
                    return _cached(gate, now), None
                event = gate.done
            waited = gate
            if gate.probe is None:
                sleep(left)  # a short Retry-After: wait it out, then compete for the probe
                continue
            if budget <= 0 or not event.wait(min(budget, left)):
                with self._lock:
                    return _cached(gate, self._clock(), hint=1.0), None
        return TransportFailure("throttled", retry_after=1.0, cached=True), None

    def _key_failure(self, key: str, now: float) -> TransportFailure | None:
        entry = self._keys.get(key)
        if entry is None:
            return None
        if entry.until > now:
            return _cached(entry, now)
        del self._keys[key]
        return None

    def release(self, authority: str, probe: object) -> None:
        """The probe ended without reopening or re-closing the endpoint (e.g. it timed out)."""
        with self._lock:
            gate = self._authority.get(authority)
            if gate is not None and gate.probe is probe:
                del self._authority[authority]
                gate.done.set()

    def answered(self, authority: str, key: str) -> None:
        """The endpoint answered (not 429/5xx): a probe's gate is lifted, the key's entry too."""
        with self._lock:
            gate = self._authority.get(authority)
            if gate is not None and gate.probe is not None:
                del self._authority[authority]
                gate.done.set()
            self._keys.pop(key, None)

    def block_authority(self, authority: str, seconds: float, failure: TransportFailure) -> None:
        self._put(self._authority, authority, seconds, failure)

    def block_key(self, key: str, seconds: float, failure: TransportFailure) -> None:
        self._put(self._keys, key, seconds, failure)

    def _put(
        self, table: dict[str, _Gate], name: str, seconds: float, failure: TransportFailure
    ) -> None:
        if seconds <= 0:
            return
        now = self._clock()
        with self._lock:
            current = table.get(name)
            until = now + seconds
            if current is None or current.probe is not None or current.until < until:
                table[name] = _Gate(until, failure)
                if current is not None:
                    current.done.set()  # waiters re-check and meet the new gate
            if len(table) > self.MAX_ENTRIES:
                for stale in [k for k, g in table.items() if g.until <= now]:
                    del table[stale]
                while len(table) > self.MAX_ENTRIES:
                    del table[next(iter(table))]

    def clear(self) -> None:
        """Forget every gate and negative entry (tests; an operator's "retry now")."""
        with self._lock:
            gates = [*self._authority.values(), *self._keys.values()]
            self._authority.clear()
            self._keys.clear()
        for gate in gates:
            gate.done.set()

    def __len__(self) -> int:
        with self._lock:
            return len(self._authority) + len(self._keys)


#: The throttle every source uses unless given its own: one per process, on purpose.
#:
#: Entra throttles an application in a tenant, and a managed identity endpoint throttles the
#: host; neither knows how many ``OnBehalfOf`` / ``AgentIdentityOnBehalfOf`` /
#: ``ManagedIdentity`` objects the process built. State kept per source object let each of them
#: take its own 429 before backing off (two sources for one tenant: two POSTs into a
#: ``Retry-After``). The gates are keyed by client application and token endpoint URL (tenant
#: included; ``gate_key``), so another application or another tenant is never blocked by this
#: one's 429, and the state is bounded (``Throttle.MAX_ENTRIES`` gates and as many negative
#: entries, expired ones dropped first). This is what MSAL.NET does too (a process-wide
#: throttling manager; its keys name the client id and the authority). A source that must not
#: share it (tests) gets its own through its ``_throttle`` attribute; ``SHARED_THROTTLE.clear()``
#: forgets every gate.
SHARED_THROTTLE = Throttle()


def _cached(gate: _Gate, now: float, hint: float | None = None) -> TransportFailure:
    remaining = max(gate.until - now, 0.0)
    # The code the endpoint gave stays (it is why the gate is closed); the request ids do not:
    # no request was sent, and another request's correlation id would send support astray.
    return TransportFailure(
        gate.failure.kind,
        status=gate.failure.status,
        retry_after=min(remaining, hint) if hint is not None else remaining,
        cached=True,
        peer=gate.failure.peer,
        aadsts=gate.failure.aadsts,
    )


def retry_after_seconds(
    headers: Mapping[str, str] | Any, *, now: float | None = None
) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date), bounded to an hour; ``None``
    when absent or unreadable."""
    try:
        raw = headers.get("Retry-After") or headers.get("retry-after")
    except Exception:  # a header mapping we do not know
        return None
    if not raw:
        return None
    text = str(raw).strip()[:64]
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), 3600.0)


def _request_key(method: str, url: str, data: Any, params: Any) -> str:
    # What identifies "the same request" for the negative cache: the URL, the client, the scope
    # and the user's part (assertion, refresh token, code), the agent identity a blueprint asks
    # for (``fmi_path``: one identity's failed T1 request is not another's) and the claims asked
    # for. Hashed: never kept in clear.
    parts = [method, url]
    if isinstance(data, Mapping):
        for name in (
            "client_id", "scope", "grant_type", "assertion", "refresh_token", "code", "fmi_path",
            "claims",
        ):  # fmt: skip
            value = data.get(name)
            if value is not None:
                parts.append(f"{name}={value}")
    elif data is not None:
        parts.append(str(data))
    if params:
        parts.append(str(params))
    return hashlib.sha256("\x00".join(parts).encode("utf-8", "replace")).hexdigest()


def gate_key(url: str, data: Any = None) -> str:
    """What one ``Retry-After`` closes: the endpoint (URL without its query) and, for a request
    that names its client (every token POST MSAL sends has ``client_id`` in its form), that
    client application. Entra throttles per application and tenant (AADSTS50196, HTTP 429 on
    ``/token``): a 429 to the agent app must not stop another app of the same tenant. A managed
    identity request (a GET whose identity is in the query) is keyed by its endpoint: the host
    throttles the endpoint, whichever identity asked."""
    endpoint = url.split("?", 1)[0]
    client = data.get("client_id") if isinstance(data, Mapping) else None
    if isinstance(client, str) and client:
        return f"{endpoint} client_id={client[:128]}"
    return endpoint


class GuardedHttpClient:
    """MSAL's ``http_client`` with timeouts, the acquisition deadline, bounded retries with
    backoff and jitter for retryable failures only, ``Retry-After`` and a negative cache.

    Nothing is cached from an answer: a 400 (consent missing, bad assertion) goes back to MSAL
    (its ``error`` made safe for MSAL's telemetry: ``oauth_error_body``), so the request right
    after the user fixes it is sent.
    """

    def __init__(
        self,
        inner: Any,
        *,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        throttle: Throttle | None = None,
        sleep: Callable[[float], None] = time.sleep,
        peer: str = "Entra",
    ) -> None:
        # A requests session's body is read by the layer, under the deadline (``_read_within``).
        self._stream = inner is None or _is_requests_session(inner)
        if inner is None:
            import requests

            inner = requests.Session()  # trust_env kept: proxies and corporate CAs work
            size_pool(inner)
        elif self._stream:
            from ._requests_tls import watch_session

            # The application's session: its adapters' connections are watched, so that the
            # deadline bounds every phase of a token request sent through it too.
            watch_session(inner)
        self.inner = inner
        self.timeouts = timeouts
        self.throttle = throttle if throttle is not None else SHARED_THROTTLE
        self._sleep = sleep
        self.peer = peer  # who the errors name: Entra, or the host's managed identity endpoint
        self._random = random.Random()  # noqa: S311 - backoff jitter, not a secret

    def __repr__(self) -> str:
        return f"GuardedHttpClient({type(self.inner).__name__}, {self.timeouts!r})"

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()

    def post(
        self,
        url: str,
        params: Any = None,
        data: Any = None,
        headers: Any = None,
        **kwargs: Any,
    ) -> Any:
        return self._send("POST", url, params=params, data=data, headers=headers, **kwargs)

    def get(self, url: str, params: Any = None, headers: Any = None, **kwargs: Any) -> Any:
        return self._send("GET", url, params=params, data=None, headers=headers, **kwargs)

    # -- the loop ----------------------------------------------------------------------------

    def _send(
        self, method: str, url: str, *, params: Any, data: Any, headers: Any, **kwargs: Any
    ) -> Any:
        t = self.timeouts
        group = _CURRENT_GROUP.get()
        if group is not None and group.closed:
            # Its owner was closed: nothing is sent (and no wait for a gate or a probe).
            raise TransportFailure("closed", peer=self.peer)
        end = current_deadline(t.deadline)
        authority = gate_key(url, data)
        key = _request_key(method, url, data, params)
        window = t.connect + t.read
        blocked, probe = self.throttle.admit(
            authority,
            key,
            probe_window=window,
            wait_until=end,
            max_wait=t.max_retry_wait,
            sleep=self._sleep,
        )
        if blocked is not None:
            if probe is not None:  # not sent: a probe held here would stall the endpoint
                self.throttle.release(authority, probe)
            if blocked.peer != self.peer:
                blocked = TransportFailure(
                    blocked.kind,
                    status=blocked.status,
                    retry_after=blocked.retry_after,
                    cached=blocked.cached,
                    peer=self.peer,
                    aadsts=blocked.aadsts,
                )
            raise blocked
        kwargs.pop("timeout", None)  # ours wins: MSAL passes none, a caller's could be unbounded
        if self._stream:
            # The body is read here, under the deadline (``_read_within``), not inside requests.
            kwargs["stream"] = True
            # Never followed: requests re-sends a POST's body on a 307/308 to wherever the
            # Location points (a client secret, an assertion, a user's token) and keeps custom
            # headers (the managed identity secret) across hosts. Entra never redirects these
            # requests; a 3xx comes back as an answer (``page``).
            kwargs["allow_redirects"] = False
        probes = [probe] if probe is not None else []
        try:
            return self._attempts(
                method, url, authority, key, end, probes, params, data, headers, kwargs, group
            )
        finally:
            for held in probes:
                self.throttle.release(authority, held)

    def _attempts(
        self,
        method: str,
        url: str,
        authority: str,
        key: str,
        end: float,
        probes: list[object],
        params: Any,
        data: Any,
        headers: Any,
        kwargs: dict[str, Any],
        group: ExchangeGroup | None = None,
    ) -> Any:
        t = self.timeouts
        send = self.inner.post if method == "POST" else self.inner.get
        attempt = 0
        while True:
            attempt += 1
            if group is not None and group.closed:  # closed during the pause before a retry
                raise TransportFailure("closed", attempts=attempt - 1 or 1, peer=self.peer)
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise TransportFailure("deadline", attempts=attempt - 1 or 1, peer=self.peer)
            timeout = (min(t.connect, remaining), min(t.read, remaining))
            failure: TransportFailure
            wait: float | None = None
            # The attempt's watch: the connection classes the layer installs hold its socket
            # from the first phase to the body's end, and the watchdog shuts it down at the
            # deadline (the timeouts above are per read or write, never a total).
            watch = _WATCHDOG.arm(end)
            if group is not None and not group._enter(watch):
                watch.finish()  # closed since the check above: this attempt is not sent
                raise TransportFailure("closed", attempts=attempt - 1 or 1, peer=self.peer)
            scope = _CURRENT_WATCH.set(watch)
            try:
                try:
                    if method == "POST":
                        response = send(
                            url,
                            params=params,
                            data=data,
                            headers=headers,
                            timeout=timeout,
                            **kwargs,
                        )
                    else:
                        response = send(
                            url, params=params, headers=headers, timeout=timeout, **kwargs
                        )
                    if kwargs.get("stream"):
                        _read_within(response, watch)
                    if watch.cut:
                        # Cut at the deadline: what arrived (headers ended by the shutdown, a
                        # body cut short) is no answer.
                        _close_quietly(response)
                        raise TimeoutError
                finally:
                    _CURRENT_WATCH.reset(scope)
                    watch.finish()
                    if group is not None:
                        group._leave(watch)
            except Exception as exc:  # requests' Timeout/ConnectionError, OSError, ...
                if watch.closed:
                    # Cut because its owner was closed (``ExchangeGroup``): not the endpoint's
                    # failure nor the deadline. Not retried, cached or gated: another owner's
                    # requests to this endpoint go on as before.
                    raise TransportFailure("closed", attempts=attempt, peer=self.peer) from None
                kind = "timeout" if _is_timeout(exc) else trust_failure(exc) or "connection"
                phase = None
                if watch.cut or time.monotonic() >= end:
                    kind = "deadline"
                    phase = watch.fired if watch.cut else (watch.phase if watch.bound else None)
                failure = TransportFailure(kind, attempts=attempt, peer=self.peer, phase=phase)
                if kind in ("tls", "ca_bundle"):
                    # This process's trust settings: the same on every retry, and not the
                    # endpoint's failure, so not retried and not cached for anyone else (a
                    # source with its own CA bundle, a reload with the right one).
                    raise failure from None
            else:
                status = int(getattr(response, "status_code", 0) or 0)
                body: Any = _UNREAD
                ids: dict[str, Any] = {}
                if 200 <= status < 300:
                    # Every answer MSAL asks for through this layer is a JSON object: a token,
                    # a managed identity endpoint's token, a discovery document.
                    body = _json_body(response)
                if status not in RETRYABLE_STATUSES and not (200 <= status < 300 and body is None):
                    self.throttle.answered(authority, key)
                    if method == "POST" and _is_token_request(data):
                        definite = False
                        if status >= 500:
                            # A 501/505/5xx not retried: still an answer when its body names a
                            # definite code (as a retryable 5xx's is), else an outage.
                            body = _json_body(response)
                            definite = body is not None and _names_answer(answer_ids(body))
                        return self._oauth_answer(response, status, body, definite=definite)
                    return self._other_answer(response, status, body)
                wait = retry_after_seconds(getattr(response, "headers", None) or {})
                if wait is not None and wait <= 0:
                    # "Retry-After: 0", or an HTTP date already past (a server clock behind
                    # ours): no wait to honour, so as if absent: backoff with jitter, the
                    # negative cache, a 429's gate for negative_ttl. Honoured as 0 it closed
                    # nothing and every retry went out at once (three POSTs per call).
                    wait = None
                throttled = status in RETRYABLE_STATUSES and (status == 429 or wait is not None)
                error_body = _json_body(response) if status in RETRYABLE_STATUSES else None
                if error_body is not None:
                    # Entra's 429/5xx carry the code (AADSTS90033...) and the request's ids:
                    # what Microsoft support asks for during an outage.
                    ids = answer_ids(error_body)
                if status in RETRYABLE_STATUSES and not throttled and _names_answer(ids):
                    # A 5xx whose body names a definite AADSTS answer is the same on every retry
                    # (App Service's managed identity endpoint answers an unknown resource with
                    # HTTP 500 + AADSTS500011, as MSAL notes): it goes back as an answer, is not
                    # retried and pauses no one. 5xx without a code, or with a transient one
                    # (AADSTS90033...), are retried.
                    self.throttle.answered(authority, key)
                    if method == "POST" and _is_token_request(data):
                        return self._oauth_answer(response, status, error_body, definite=True)
                    return self._other_answer(response, status, error_body)
                if status not in RETRYABLE_STATUSES:
                    # A success whose body is not a JSON object (cut short, or a proxy's page):
                    # retried like a reset. MSAL never sees it, so it never logs it (its parser
                    # logs an unparsable token response whole, tokens included).
                    wait = None
                failure = TransportFailure(
                    "throttled"
                    if throttled
                    else "status"
                    if status in RETRYABLE_STATUSES
                    else "malformed",
                    status=status,
                    retry_after=wait,
                    attempts=attempt,
                    peer=self.peer,
                    **ids,
                )
                _close_quietly(response)
                if throttled:
                    # Coalesce: every other request to this endpoint fails fast until it lapses.
                    self.throttle.block_authority(
                        authority, wait if wait is not None else t.negative_ttl, failure
                    )
            if attempt > t.retries:
                break
            if wait is not None:
                if wait > t.max_retry_wait or wait >= end - time.monotonic():
                    break  # too long to wait inside a call: the caller gets when to retry
                pause = wait
            else:
                pause = backoff_pause(t.backoff, attempt, t.max_backoff, self._random)
            if pause >= end - time.monotonic():
                break
            if group is not None and self._sleep is time.sleep:
                group.pause(pause)  # cut short when the owner closes (checked at the loop's top)
            else:
                self._sleep(pause)
            # After a Retry-After wait this request is the probe; after a backoff, a gate another
            # request set meanwhile (Retry-After, endpoint failing) is honoured.
            blocked, again = self.throttle.admit(
                authority,
                key,
                probe_window=t.connect + t.read,
                wait_until=end,
                held=probes[-1] if probes else None,
            )
            if again is not None:
                probes.append(again)  # this retry probes the endpoint; released when it ends
            if blocked is not None:
                # Not "a recent identical failure; no request was sent": this request sent
                # ``attempt`` of them, and only its retry is refused. A throttling gate wins
                # (the caller gets Throttled and when to retry), else this request's own failure.
                own = failure.kind != "throttled" and blocked.kind != "throttled"
                mine = own or failure.kind == "throttled"  # this request's answer is reported
                raise TransportFailure(
                    failure.kind if own else "throttled",
                    status=failure.status if mine else blocked.status,
                    retry_after=blocked.retry_after,
                    attempts=attempt,
                    peer=self.peer,
                    phase=failure.phase if own else None,
                    aadsts=failure.aadsts if mine else blocked.aadsts,
                    correlation_id=failure.correlation_id if mine else None,
                    trace_id=failure.trace_id if mine else None,
                )
        if failure.kind in ("status", "timeout", "connection", "malformed"):
            # A short negative cache: the same request fails fast for a moment. A server error,
            # reset or broken body that outlived every retry also pauses the endpoint for
            # everyone (it is the endpoint failing); a timeout may be one stalled request, and
            # must not make other users' requests fail.
            self.throttle.block_key(key, t.negative_ttl, failure)
            if failure.kind != "timeout":
                self.throttle.block_authority(authority, t.negative_ttl, failure)
        raise failure

    def _oauth_answer(
        self, response: Any, status: int, body: Any, *, definite: bool = False
    ) -> Any:
        """A token endpoint's answer as MSAL may read it (``oauth_error_body``): the response
        itself when its body is sane (every answer Entra sends), else one whose ``error`` is
        normalised. A 3xx/4xx whose body is no JSON object (an HTML page, text, a list) is no
        OAuth answer: ``TransportFailure("page")`` with the status, not retried (MSAL would
        raise its parser's error, or log the body)."""
        if body is _UNREAD:
            body = _json_body(response)
        if body is None:
            if 300 <= status < 500:
                _close_quietly(response)
                raise TransportFailure("page", status=status, peer=self.peer)
            return response  # 5xx: MSAL raises "HTTP Error" before reading any body
        fixed = oauth_error_body(body, status)
        if definite and status >= 500:
            # A 5xx whose body names a definite AADSTS answer: MSAL's token client raises
            # "HTTP Error" on any 5xx before reading its body, so the code, its fix and the
            # request ids would be lost. Handed over as the OAuth error it is (400), without a
            # token beside the error (``oauth_error_body`` drops it from any error status).
            return OAuthAnswer(response, json.dumps(fixed), status_code=400)
        if fixed is body:
            return response
        return OAuthAnswer(response, json.dumps(fixed))

    def _other_answer(self, response: Any, status: int, body: Any) -> Any:
        """A managed identity endpoint's (or a discovery document's) answer as MSAL may read
        it. An error status whose body is no JSON object (an HTML page, text, a list, nothing)
        is no answer of the endpoint's: ``TransportFailure("page")`` with the status, not
        retried (MSAL's ``json.loads`` raised ``JSONDecodeError``, an error with no status and
        no fix), except a challenge (``WWW-Authenticate``: Azure Arc's 401 names its key file
        there, with no body).

        An error status never carries a token: MSAL's managed identity client returns the
        ``access_token`` of an App Service answer whatever its status (HTTP 400, 500, 501
        beside an error), so one whose body has a token goes over without it."""
        if 200 <= status < 300:
            return response
        if body is _UNREAD:
            body = _json_body(response)
        if body is None:
            if status == 401 and _arc_challenge(getattr(response, "headers", None) or {}):
                return response
            _close_quietly(response)
            raise TransportFailure("page", status=status, peer=self.peer)
        if _TOKEN_FIELDS.isdisjoint(body):
            return response
        return OAuthAnswer(response, json.dumps(_without_tokens(body)))


def consent_timeouts(seconds: float) -> Timeouts:
    """The consent app's time limits (``OAuthBodies``): ``seconds`` to connect, for each read,
    and for the whole exchange (the deadline over every phase, as in the guarded layer), and no
    retry: a refresh token or an authorization code is redeemed once."""
    return Timeouts(connect=seconds, read=seconds, deadline=seconds, retries=0)


class OAuthBodies(GuardedHttpClient):
    """The consent app's MSAL ``http_client`` (``DelegatedConsent``'s refreshes, the broker's
    code redemption): the guarded layer with ``consent_timeouts`` (never a retry: a refresh
    token or a code is redeemed once).

    What it keeps of the guarded layer: every token endpoint answer handed to MSAL with its
    ``error`` made safe (``oauth_error_body``: one malformed answer must not stop the
    application for good); POSTs never redirected (a 307 would re-send the form, secret and
    code, elsewhere); one deadline over the whole exchange (``RequestWatch``: ``timeout`` is
    not only per read, a peer trickling its answer is cut at it); and ``Retry-After``: a 429 (or
    a 5xx with ``Retry-After``) is ``TransportFailure("throttled")`` and closes the consent
    app's token endpoint (``gate_key``, in ``SHARED_THROTTLE``) for every user of that app
    until it lapses. A failure is raised as ``TransportFailure`` (the caller names it).

    Unlike the guarded layer, a 3xx/4xx without a JSON body is handed to MSAL as it came (MSAL
    raises its parser's error, which the caller names)."""

    def __init__(self, inner: Any, *, timeout: float, throttle: Throttle | None = None) -> None:
        super().__init__(inner, timeouts=consent_timeouts(timeout), throttle=throttle)

    def _oauth_answer(
        self, response: Any, status: int, body: Any, *, definite: bool = False
    ) -> Any:
        if body is _UNREAD:
            body = _json_body(response)
        if body is None and 300 <= status < 500:
            return response  # no OAuth answer: MSAL's own error, named by the caller
        return super()._oauth_answer(response, status, body, definite=definite)

    def __repr__(self) -> str:
        return f"OAuthBodies({type(self.inner).__name__})"


#: An OAuth 2.0 error code as it may travel on (RFC 6749 section 5.2: ASCII, no spaces or
#: separators), bounded. Entra's are such words (``invalid_grant``, ``interaction_required``).
_OAUTH_WORD = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def _oauth_word(value: object) -> bool:
    return isinstance(value, str) and _OAUTH_WORD.fullmatch(value) is not None


#: What an error answer handed to MSAL as one never carries.
_TOKEN_FIELDS = frozenset({"access_token", "refresh_token", "id_token", "client_info"})


def _without_tokens(body: Mapping[str, Any]) -> dict[str, Any]:
    """``body`` without ``_TOKEN_FIELDS``: what an error status is handed over with."""
    return {k: v for k, v in body.items() if k not in _TOKEN_FIELDS}


def oauth_error_body(body: dict[str, Any], status: int) -> dict[str, Any]:
    """``body`` (a token endpoint's JSON object) with ``error`` and ``suberror`` made safe for
    MSAL; ``body`` itself (the same object) when they already are.

    Why: MSAL keeps the ``error`` of a failed answer in its application's telemetry buffer and
    puts it into the ``x-client-last-telemetry`` header of every later request of that
    application, clearing it only after a success (msal/telemetry.py). An ``error`` that is not
    a string (``{"code": ..}``, a number, ``null``) made every later request raise
    ``TypeError`` before sending; one with CR/LF or outside Latin-1 made requests refuse the
    header: one bad answer (a gateway's JSON, a proxy's rewrite) stopped every user of that
    app for good, since the success that clears the buffer could no longer come.

    So ``error`` is always a short ASCII word: kept when it is one, else ``invalid_request``
    (4xx) or ``server_error`` (any other status). A 2xx with an empty ``error`` (``null``,
    ``""``) says no error: the key is dropped. ``suberror`` that is not such a word is dropped
    (MSAL maps it through a dict). The other fields stay as they came (the typed errors keep
    only short identifiers and a redacted first line of them: ``_errors.error_from_entra``),
    except a description that is not a string (dropped) and, for an ``error`` that was an object
    (``{"code", "message"}``) without a description beside it, its ``message`` as the
    description, so that an AADSTS code in it is still decoded, and on an error status any
    token field (``_TOKEN_FIELDS``: dropped).
    """
    fixed: dict[str, Any] | None = None
    success = 200 <= status < 300
    if "error" in body or not success:
        error = body.get("error")
        if not _oauth_word(error):
            fixed = dict(body)
            if success and not error:
                del fixed["error"]
            else:
                fixed["error"] = "invalid_request" if 400 <= status < 500 else "server_error"
                message = error.get("message") if isinstance(error, Mapping) else None
                if isinstance(message, str) and "error_description" not in body:
                    fixed["error_description"] = message
    if "suberror" in body and not _oauth_word(body["suberror"]):
        fixed = fixed if fixed is not None else dict(body)
        del fixed["suberror"]
    if "error_description" in body and not isinstance(body["error_description"], str):
        fixed = fixed if fixed is not None else dict(body)
        del fixed["error_description"]
    if not success and not _TOKEN_FIELDS.isdisjoint(body):
        # An error status with a token beside it: MSAL reads ``access_token`` whatever the
        # status. No error answer of Entra's carries one; served, a gateway's or a proxy's body
        # would become a bearer token. Handed over without it.
        fixed = _without_tokens(fixed or body)
    return fixed if fixed is not None else body


class OAuthAnswer:
    """A token endpoint's response with a normalised body (``oauth_error_body``): what MSAL
    reads of a response (``status_code``, ``headers``, ``text``), the rest from the original."""

    __slots__ = ("_raw", "headers", "status_code", "text")

    def __init__(self, raw: Any, text: str, *, status_code: int | None = None) -> None:
        self._raw = raw
        self.status_code = (
            int(getattr(raw, "status_code", 0) or 0) if status_code is None else status_code
        )
        self.headers = getattr(raw, "headers", None) or {}
        self.text = text

    def __repr__(self) -> str:
        return f"OAuthAnswer(HTTP {self.status_code})"

    @property
    def content(self) -> bytes:
        return self.text.encode("utf-8")

    def json(self) -> Any:
        return json.loads(self.text)

    def raise_for_status(self) -> None:
        self._raw.raise_for_status()

    def close(self) -> None:
        _close_quietly(self._raw)


#: Connections kept per host by the sessions the library creates: as many as token requests can
#: be in flight (the default worker pool). requests keeps 10: in a burst of 64 the other 54
#: connections are closed after one use (urllib3 logs a warning for each) and the next burst
#: pays their TLS handshakes again.
POOL_SIZE = 64


def size_pool(session: Any, size: int = POOL_SIZE) -> None:
    """Mount HTTPS/HTTP adapters that keep ``size`` connections per host on a
    ``requests.Session`` the library created (never on one the application passed), and load
    each CA bundle once per process instead of once per new connection (``_requests_tls``)."""
    from ._requests_tls import SharedTlsAdapter

    for prefix in ("https://", "http://"):
        session.mount(prefix, SharedTlsAdapter(pool_connections=4, pool_maxsize=size))


def _is_requests_session(inner: Any) -> bool:
    try:
        import requests
    except ImportError:  # pragma: no cover - requests comes with MSAL
        return False
    return isinstance(inner, requests.Session)


#: The parts of an exchange, in order, as ``TransportFailure.phase`` names the one a deadline
#: cut: opening the TCP connection (every address the name resolves to shares the time left),
#: the TLS handshake (and a proxy's tunnel), writing the request, the status line, the headers,
#: the body.
PHASES = ("connect", "TLS handshake", "sending the request", "status line", "headers", "body")


class RequestWatch:
    """One attempt's deadline, bound to the exchange that attempt is in.

    The connect and read timeouts are per socket operation: a peer that keeps every read (or
    write) within them, a byte at a time, never times out, whatever the phase. The watch is the
    one bound on the whole attempt: the connection classes the guarded layer installs
    (``_requests_tls``) ``hold`` the attempt's socket from the moment it exists (a duplicate of
    it during the TLS handshake) and name each ``phase``; at ``end`` the watchdog shuts that
    socket down, the blocked read or write fails, and the attempt fails as ``deadline`` naming
    the phase.

    The watch is bound to the response, not to the connection: the response releases it
    (``release``) when its body has been read, before urllib3 puts the connection back into
    its pool, and the watchdog acts only under the lock ``release`` takes. A connection another
    request took from the pool is never shut down by this request's deadline.
    """

    __slots__ = (
        "_done",
        "_expired",
        "_idle",
        "_own",
        "_sock",
        "bound",
        "closed",
        "cut",
        "end",
        "fired",
        "phase",
    )

    def __init__(self, end: float) -> None:
        self.end = end
        self.phase = "connect"
        self.cut = False  # the deadline passed during an exchange
        self.fired: str | None = None  # the phase it cut (None: not a watched connection)
        self.closed = False  # cut (or to be cut) because its owner closed: ``ExchangeGroup``
        self.bound = False  # a watched connection (or the fallback) carries this attempt
        self._sock: socket.socket | None = None
        self._own = False  # _sock is a duplicate this watch closes
        self._idle = False  # between two exchanges (a response read whole, no request yet)
        self._expired = False  # the deadline passed
        self._done = False  # the attempt ended

    def enter(self, phase: str) -> None:
        self.phase = phase
        self.bound = True

    def hold(self, sock: socket.socket, *, own: bool = False) -> None:
        """Watch ``sock`` (``own``: a duplicate the watch closes when it lets go of it)."""
        drop: list[socket.socket] = []
        with _WATCHDOG.lock:
            self.bound = True
            if self._own and self._sock is not None and self._sock is not sock:
                drop.append(self._sock)
            if self._done:
                self._sock, self._own = None, False
                if own:
                    drop.append(sock)
            else:
                self._sock, self._own, self._idle = sock, own, False
                if self._expired:  # the deadline passed: no phase starts after it
                    if not self.cut:  # (it passed between two exchanges: this one is cut)
                        self.cut, self.fired = True, self.phase
                    _shutdown(sock)
        for extra in drop:
            extra.close()

    def release(self) -> None:
        """The exchange is over: its response was read whole. Called by the response before
        urllib3 puts its connection back into the pool: after this the watchdog never touches
        that socket, and a deadline passing now cuts nothing (the answer is complete)."""
        with _WATCHDOG.lock:
            sock, own = self._sock, self._own
            self._sock, self._own, self._idle = None, False, True
        if own and sock is not None:
            sock.close()

    def finish(self) -> None:
        """The attempt ended: the watch lets go of everything for good."""
        with _WATCHDOG.lock:
            self._done = True
        self.release()

    def _fire(self, *, closed: bool = False) -> None:  # holding ``_WATCHDOG.lock``
        """The deadline passed (the watchdog), or the owner closed (``ExchangeGroup.close``):
        the exchange in flight is cut, and any phase after it (``hold``)."""
        if self._done:
            return
        self._expired = True
        if closed:
            self.closed = True
        if self._idle:
            return
        self.cut = True
        self.fired = self.phase if self.bound else None
        if self._sock is not None:
            _shutdown(self._sock)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        # socket.socket's own shutdown, on the descriptor: an SSLSocket's would drop its SSL
        # object under the thread that is reading. A socket already closed has no descriptor
        # (OSError): a closed socket's number, reused by another, is never acted on.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


_CURRENT_WATCH: contextvars.ContextVar[RequestWatch | None] = contextvars.ContextVar(
    "entra_passthrough_request_watch", default=None
)


def current_watch() -> RequestWatch | None:
    """The watch of the attempt this thread is sending (``None`` outside the guarded layer)."""
    return _CURRENT_WATCH.get()


class ExchangeGroup:
    """The token exchanges of one owner (a ``WorkerPool``, so one source), for ``close``.

    A worker thread blocked on a stalled token endpoint cannot be stopped, and the interpreter
    joins a ``ThreadPoolExecutor``'s workers at exit: a source closed while one of its
    exchanges waited kept the process alive until that exchange's deadline. The owner runs its
    exchanges inside ``running()``; each attempt of the guarded layer made there is registered
    with the group, and ``close`` cuts the ones in flight the way the deadline watchdog does
    (their sockets shut down: the blocked read or write fails at once), refuses their later
    attempts and cuts short their pauses between retries. Each fails as
    ``TransportFailure("closed")``, which the sources turn into a ``SourceUnavailable`` saying the
    source was closed. Another owner's exchanges (another chain, another source) are never
    touched. The cost per attempt: a set add and discard under this group's lock; nothing on a
    cache hit (no exchange runs).
    """

    __slots__ = ("_closed", "_lock", "_watches")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watches: set[RequestWatch] = set()
        self._closed = threading.Event()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """The token requests made inside (in this thread/context) belong to this group."""
        token = _CURRENT_GROUP.set(self)
        try:
            yield
        finally:
            _CURRENT_GROUP.reset(token)

    def pause(self, seconds: float) -> None:
        """Sleep ``seconds`` (a retry's backoff), or less if the group is closed meanwhile."""
        self._closed.wait(seconds)

    def _enter(self, watch: RequestWatch) -> bool:
        """Register an attempt's watch; ``False`` (not registered) once the group is closed."""
        with self._lock:
            if self._closed.is_set():
                return False
            self._watches.add(watch)
            return True

    def _leave(self, watch: RequestWatch) -> None:
        with self._lock:
            self._watches.discard(watch)

    def close(self) -> None:
        """Cut every exchange of the group in flight and refuse its later attempts
        (idempotent)."""
        with self._lock:
            self._closed.set()
            watches = list(self._watches)
            self._watches.clear()
        if watches:
            with _WATCHDOG.lock:
                for watch in watches:
                    watch._fire(closed=True)


_CURRENT_GROUP: contextvars.ContextVar[ExchangeGroup | None] = contextvars.ContextVar(
    "entra_passthrough_exchange_group", default=None
)


def _read_within(response: Any, watch: RequestWatch) -> None:
    """Read a streamed ``requests`` response's body under the attempt's watch.

    A watched connection holds the socket already (and releases it when the body is read). For
    another connection (an adapter whose pools the layer could not watch) the watch holds the
    socket under the response from here on, released by the response the same way; if that
    cannot be arranged the body is read as before, each read bounded by the read timeout."""
    if not watch.bound:
        from ._requests_tls import watch_response

        watch_response(response, watch)
    response.content  # noqa: B018 - reads the body


class _Watchdog:
    """One daemon thread that fires the watches of attempts still running at their deadline (a
    thread per request cost ~0.13 ms of CPU; this costs a heap push). ``lock`` orders it with
    ``RequestWatch.hold``/``release``."""

    #: The heap is compacted (finished watches dropped) when it reaches twice the size it had
    #: after the last compaction, and at least this many entries: O(1) per watch, amortised.
    COMPACT_FROM = 64

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self._heap: list[tuple[float, int, RequestWatch]] = []
        self._seq = 0
        self._compact_at = self.COMPACT_FROM
        self._thread: threading.Thread | None = None

    def arm(self, end: float) -> RequestWatch:
        watch = RequestWatch(end)
        with self.lock:
            self._seq += 1
            heap = self._heap
            # Attempts end long before their deadline: drop the finished ones at the top (the
            # oldest, usually), and all of them now and then, so that the heap holds about the
            # attempts in flight, not every attempt of the last deadline's length.
            self._pop_finished()
            if len(heap) >= self._compact_at:
                heap[:] = [entry for entry in heap if not entry[2]._done]
                heapq.heapify(heap)
                self._compact_at = max(self.COMPACT_FROM, 2 * len(heap))
            heapq.heappush(heap, (end, self._seq, watch))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="entra-passthrough-deadline", daemon=True
                )
                self._thread.start()
            elif self._heap[0][2] is watch:
                self.lock.notify()  # the new watch is the next to come due
        return watch

    def _pop_finished(self) -> None:
        """Drop the watches at the top of the heap whose attempts ended in time (under
        ``lock``)."""
        heap = self._heap
        while heap and heap[0][2]._done:
            heapq.heappop(heap)

    def _run(self) -> None:
        with self.lock:
            while True:
                self._pop_finished()
                if not self._heap:
                    self.lock.wait(60.0)
                    if not self._heap:
                        self._thread = None  # idle: the next watch starts a new thread
                        return
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait > 0:
                    # Clamped: a wait past threading's limit (an end at inf, or 1e10 s away)
                    # raised OverflowError and ended this thread; the loop looks again.
                    self.lock.wait(min(wait, _WATCHDOG_MAX_WAIT))
                    continue
                _, _, watch = heapq.heappop(self._heap)
                watch._fire()


_WATCHDOG = _Watchdog()
#: The longest single wait of the watchdog (seconds; it waits again while a deadline is ahead).
_WATCHDOG_MAX_WAIT = 3600.0


#: The fix for a TLS certificate this process does not trust (``tls``), or a CA bundle it cannot
#: load (``ca_bundle``): the trust settings, not the network.
TLS_FIX = (
    "set ENTRA_PASSTHROUGH_CA_FILE (or REQUESTS_CA_BUNDLE, when it is unset) to a PEM bundle "
    "holding the CA that signs the authority's certificate: behind a TLS-inspecting proxy, the "
    "proxy's CA; check that the authority host is the name the certificate is for. Not "
    "retried: it fails the same way until the trust settings change."
)


#: The fix for a request cut because its source was closed (``TransportFailure("closed")``).
CLOSED_FIX = (
    "close() is for shutdown: it stops the source's worker threads and cuts its token requests "
    "in flight. Close the chain (or source) only once nothing asks it for tokens any more (after "
    "the server stopped taking requests), or build a new one to go on serving."
)


def trust_error(
    exc: BaseException, *, what: str, source: str, scopes: tuple[str, ...]
) -> SourceUnavailable | None:
    """The typed error for a ``tls``/``ca_bundle`` failure (``None`` for anything else): said
    as what it is, with the trust settings as the fix, not "nothing to configure if it is
    transient"."""
    if not isinstance(exc, TransportFailure) or exc.kind not in ("tls", "ca_bundle"):
        return None
    return SourceUnavailable(
        f"{what} failed: {exc.describe()}.",
        source=source,
        scopes=scopes,
        fix=TLS_FIX,
        failure=exc.summary(),
    )


def trust_failure(exc: BaseException) -> str | None:
    """``"tls"`` when ``exc`` (requests', urllib3's, or ssl's own, along its causes) is a
    certificate verification failure; ``"ca_bundle"`` when the CA bundle to verify with could
    not be loaded (raised before any connection: a missing file, a folder, no certificate);
    else ``None``."""
    if _unloadable_bundle(exc):
        return "ca_bundle"
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo and len(seen) < 16:  # bounded: causes, contexts and urllib3's ``reason``
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return "tls"
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None)]
        linked += [arg for arg in current.args if isinstance(arg, BaseException)]
        todo.extend(e for e in linked if isinstance(e, BaseException))
    return None


def _unloadable_bundle(exc: BaseException) -> bool:
    """A CA bundle that could not be loaded: raised as it is by the adapter before it connects
    (``ssl.SSLContext.load_verify_locations``, or requests' "Could not find a suitable TLS CA
    certificate bundle"), never wrapped in a connection error."""
    if isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLCertVerificationError):
        return getattr(exc, "library", None) in ("X509", "PEM")
    if type(exc) in (FileNotFoundError, IsADirectoryError, PermissionError):
        return True
    return type(exc) is OSError and "CA certificate bundle" in str(exc)


def _is_timeout(exc: BaseException) -> bool:
    name = type(exc).__name__
    if "Timeout" in name or isinstance(exc, TimeoutError):
        return True
    cause = exc.__context__
    return cause is not None and cause is not exc and _is_timeout_shallow(cause)


def _is_timeout_shallow(exc: BaseException) -> bool:
    return "Timeout" in type(exc).__name__ or isinstance(exc, TimeoutError)


def _names_answer(ids: Mapping[str, Any]) -> bool:
    """Whether a 5xx body's code (``answer_ids``) is a definite answer, not an outage
    (``_aadsts.is_answer``)."""
    code = ids.get("aadsts")
    return code is not None and is_answer(code)


def answer_ids(body: Mapping[str, Any]) -> dict[str, Any]:
    """The AADSTS code and request ids of a 429/5xx answer's body, as ``TransportFailure``
    keywords: the code only in range (``code_in_body``), the ids only when they look like
    request ids (``safe_request_id``, as ``error_from_entra`` keeps them). The body may be a
    proxy's: nothing else of it is kept, no description, no free text."""
    ids: dict[str, Any] = {}
    code = code_in_body(body)
    if code is not None:
        ids["aadsts"] = code
    for field_name in ("correlation_id", "trace_id"):
        value = safe_request_id(body.get(field_name))
        if value is not None:
            ids[field_name] = value
    return ids


#: ``_attempts``: a response body not parsed yet.
_UNREAD: Any = object()


def _json_body(response: Any) -> dict[str, Any] | None:
    """The response's body when it is a JSON object, else ``None``."""
    try:
        body = json.loads(response.text)
    except Exception:  # ValueError, a text that cannot be decoded, no .text at all
        return None
    return body if isinstance(body, dict) else None


def _arc_challenge(headers: Mapping[str, str]) -> bool:
    """Azure Arc's challenge: ``WWW-Authenticate: Basic realm=<the key file's path>``, which
    MSAL reads (its Arc client, and nothing else, handles a 401 without a body)."""
    value = headers.get("www-authenticate") or headers.get("WWW-Authenticate") or ""
    return isinstance(value, str) and value.lower().startswith("basic realm=")


def _is_token_request(data: Any) -> bool:
    """An OAuth 2.0 token request (every POST MSAL sends to a token endpoint names its grant;
    a managed identity endpoint's requests do not)."""
    return isinstance(data, Mapping) and "grant_type" in data


def _close_quietly(response: Any) -> None:
    close = getattr(response, "close", None)
    if callable(close):
        with contextlib.suppress(Exception):
            close()
