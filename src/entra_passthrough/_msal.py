"""MSAL plumbing shared by the Entra sources: worker pool, neutralised caches, app pool, creds.

Why each piece exists (docs/platform-facts.md, MSAL Python 1.39):

* MSAL is synchronous; every call runs in a *dedicated*, bounded ``ThreadPoolExecutor`` (never
  ``asyncio.to_thread``'s shared default pool, which a burst would starve).
* ``acquire_token_on_behalf_of`` never reads MSAL's token cache but writes every result into it
  (access, refresh and id token, account): unbounded growth. ``NullTokenCache`` stores nothing;
  our own ``TokenCache`` sits above.
* MSAL's ``http_cache`` keeps HTTP 400 answers for 60 s keyed on the whole POST, so the retry
  right after a user consents would get the cached AADSTS65001 without a request.
  ``DiscoveryOnlyHttpCache`` keeps the discovery GETs (24 h) and drops every POST.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import logging
import math
import os
import re
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import msal

from . import _redact
from ._errors import NEW_CERTIFICATE_FIX, ConfigurationError
from ._http import (
    DEFAULT_TIMEOUTS,
    ExchangeGroup,
    GuardedHttpClient,
    Throttle,
    Timeouts,
    TransportFailure,
    current_deadline,
    size_pool,
)

if TYPE_CHECKING:
    from ._credential import AppCredential

T = TypeVar("T")

logger = logging.getLogger("entra_passthrough.credential")

#: A client certificate this close to its end date is logged at start-up (WARNING): once it
#: has expired, Entra refuses every assertion it signs (AADSTS700027, "The key used is expired").
CERTIFICATE_WARNING_DAYS = 14


# MSAL logs a token response it cannot parse whole (tokens included) at ERROR: every logger of
# the packages the library drives gets the redacting filter, before any request goes out.
_redact.install()

PUBLIC_AUTHORITY_HOST = "https://login.microsoftonline.com"
#: The fixed tenant of personal Microsoft accounts, what the ``consumers`` authority stands for
#: (its discovery document's issuer: https://login.microsoftonline.com/<this>/v2.0;
#: https://learn.microsoft.com/entra/identity-platform/id-token-claims-reference, ``tid``).
MSA_TENANT_ID = "9188040d-6c67-4c5b-b112-36a304b66dad"

#: Worker threads per source. A thread waiting on Entra holds no GIL, so idle capacity is cheap;
#: 64 lets a cold burst be on the wire together (8 capped it at 8 requests per round trip; the
#: starts are spaced by ``_GilSchedule``) and keeps room for healthy users while a few requests
#: stall up to their deadline.
DEFAULT_MAX_WORKERS = 64
#: The most worker threads one pool may have (more is a typo, not a deployment).
MAX_WORKERS_LIMIT = 1024

#: The federated-credential audience per cloud, from the authority host (docs/platform-facts.md).
_FEDERATION_AUDIENCES = {
    "login.microsoftonline.us": "api://AzureADTokenExchangeUSGov",
    "login.microsoftonline.de": "api://AzureADTokenExchange",
    "login.chinacloudapi.cn": "api://AzureADTokenExchangeChina",
    "login.partner.microsoftonline.cn": "api://AzureADTokenExchangeChina",
}
PUBLIC_FEDERATION_AUDIENCE = "api://AzureADTokenExchange"


def federation_audience(authority_host: str) -> str:
    """``api://AzureADTokenExchange`` for the public cloud (and any other host, e.g. the
    emulator), the USGov/China variants for those clouds' authority hosts.

    The host is compared without its default port (``:443``) and without a trailing dot (the
    fully qualified form): both name the same cloud, and the public audience for a sovereign
    cloud made every managed identity assertion fail (AADSTS700212)."""
    host = authority_host.strip().split("://", 1)[-1].split("/", 1)[0].lower()
    if host.endswith(":443"):
        host = host[: -len(":443")]
    host = host.rstrip(".")
    return _FEDERATION_AUDIENCES.get(host, PUBLIC_FEDERATION_AUDIENCE)


#: The fix for an authority host that is not a bare ``https://host[:port]``.
AUTHORITY_HOST_FIX = (
    "set AZURE_AUTHORITY_HOST (or authority_host=) to the host only, e.g. "
    "https://login.microsoftonline.com (your cloud's login host, or the emulator's URL); the "
    "tenant is AZURE_TENANT_ID."
)


def normalize_authority_host(authority_host: str, *, what: str = "authority host") -> str:
    """``https://host[:port]`` (lower-case scheme, no trailing ``/``), or a
    ``ConfigurationError`` (``what`` names the setting): the library appends ``/{tenant}`` to
    it, so anything else (a tenant or ``/organizations`` path, a query, a fragment, user info,
    no host) built a URL MSAL refused on every call with a bare ``ValueError``. A value that
    is not a string (``authority_host=5``) ended in an ``AttributeError``; a host that cannot be
    a host name (``{GUID}``, ``-1``) failed every request as "the connection failed"."""
    if not isinstance(authority_host, str):
        raise ConfigurationError(
            f"the {what} (authority_host=) must be a string, not {type(authority_host).__name__}.",
            fix=AUTHORITY_HOST_FIX,
        )
    host = authority_host.strip()
    if "://" not in host:
        host = f"https://{host}"
    scheme, rest = host.split("://", 1)
    rest = rest.rstrip("/")  # after the split: "https://" is no host, not the host "https:"
    host = f"{scheme.lower()}://{rest}"  # "HTTPS://..." is HTTPS (schemes ignore case)
    netloc = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if "@" in netloc:
        # Not echoed: user info may carry a password.
        raise ConfigurationError(
            f"the {what} has user info (user@ or user:password@); it is a host, not a URL "
            "with credentials.",
            fix=AUTHORITY_HOST_FIX,
        )
    if scheme.lower() != "https":
        raise ConfigurationError(
            f"the {what} is not HTTPS ({scheme.lower()[:16]}://...); MSAL and Entra require HTTPS.",
            fix="use https://login.microsoftonline.com (or your cloud's / the emulator's URL).",
        )
    problem = _authority_host_problem(host, netloc)
    if problem:
        raise ConfigurationError(
            # The value is not echoed: a secret pasted into the wrong variable must not reach a
            # log line (the problem names what is wrong, not what was written).
            f"the {what} {problem}; it must be the host only.",
            fix=AUTHORITY_HOST_FIX,
        )
    return host


def _authority_host_problem(host: str, netloc: str) -> str | None:
    """What makes ``host`` (``https://...``, no user info) more or less than a host."""
    parts = urlsplit(host)
    if not netloc or not parts.hostname:
        return "names no host"
    if not netloc.isascii() or any(c.isspace() or not c.isprintable() for c in netloc):
        return "has spaces or characters outside ASCII in its host (use the punycode form)"
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return "has a port that is not a number"
    if netloc.endswith(":"):
        return "has an empty port"
    if not _host_name(parts.hostname):
        return "is not a host name (letters, digits, '-' and '.', or an IP address)"
    if parts.path not in ("", "/"):
        return "has a path (a tenant goes in AZURE_TENANT_ID)"
    if "?" in host:
        return "has a query"
    if "#" in host:
        return "has a fragment"
    return None


_HOST_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def _host_name(host: str) -> bool:
    """A DNS name (labels of letters, digits, '-', and '_' as container names have it; a
    trailing dot allowed) or an IP address: what a connection can be made to."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return True
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    return len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)


def app_service_token(
    session: Any, endpoint: str, header: str, identity: Any, resource: str
) -> dict[str, Any]:
    """A token from an App Service-shaped endpoint given explicitly, through MSAL's own code.

    One of the two private names of MSAL the library touches (``tests/resolve/test_msal_seams.py``
    fails loudly when one moves): MSAL's public ``ManagedIdentityClient`` reads the endpoint from
    ``os.environ`` only, and an explicit ``endpoint=``/``header=`` must not mutate the process
    environment. The request and the parsing of the answer stay MSAL's.
    """
    from msal import managed_identity as msal_mi

    obtain = getattr(msal_mi, "_obtain_token_on_app_service", None)
    if obtain is None:
        raise ConfigurationError(
            f"This MSAL ({msal.__version__}) no longer has the App Service helper the explicit "
            "managed identity endpoint uses.",
            fix="set IDENTITY_ENDPOINT and IDENTITY_HEADER in the environment instead of passing "
            "endpoint= and header=, or install a supported MSAL (msal>=1.37,<2).",
        )
    result: dict[str, Any] = obtain(session, endpoint, header, identity, resource)
    return result


#: Service Fabric's managed identity protocol version (the one MSAL and azure-identity send).
SERVICE_FABRIC_API_VERSION = "2019-07-01-preview"

#: Service Fabric's error codes as OAuth2 errors (MSAL's mapping, msal/managed_identity.py).
_SERVICE_FABRIC_ERRORS = {
    "SecretHeaderNotFound": "unauthorized_client",
    "ManagedIdentityNotFound": "invalid_client",
    "ArgumentNullOrEmpty": "invalid_scope",
}


def service_fabric_session(session: Any, endpoint: str, thumbprint: str) -> Any:
    """The ``requests.Session`` that talks to a Service Fabric identity endpoint: MSAL's own,
    which authenticates the endpoint by its certificate's SHA-1 thumbprint
    (``IDENTITY_SERVER_THUMBPRINT``) at connect time, before the ``Secret`` header is sent.

    The second private name of MSAL the library touches (``tests/resolve/test_msal_seams.py``
    fails loudly when it moves). Why not MSAL's ``ManagedIdentityClient`` for this host: MSAL
    derives this session *inside* each request from the ``requests.Session`` it was given and
    refuses any other ``http_client``, so nothing the library wraps around a client (timeouts,
    the acquisition deadline, retries, ``Retry-After``) reaches the request; a stalled endpoint
    held the call and its worker thread for ever. The library derives the pinned session once
    with MSAL's function, wraps it in ``GuardedHttpClient`` and sends the request itself
    (``service_fabric_token``): the pinning stays MSAL's.
    """
    import requests
    from msal import managed_identity as msal_mi

    derive = getattr(msal_mi, "_create_service_fabric_http_client", None)
    if derive is None:
        raise ConfigurationError(
            f"This MSAL ({msal.__version__}) cannot pin a Service Fabric identity endpoint by its "
            "certificate thumbprint (MSAL 1.38 added it); the library does not send the "
            "endpoint's secret without that check.",
            fix="install msal>=1.38,<2 on Service Fabric.",
        )
    if not isinstance(session, requests.Session):
        raise ConfigurationError(
            "On Service Fabric, ManagedIdentity's http_client must be a requests.Session (the "
            "certificate-pinning session is derived from it).",
            fix="pass a requests.Session as http_client, or none.",
        )
    scheme, _, rest = endpoint.partition("://")
    if scheme.lower() != "https" or not rest.split("/", 1)[0]:
        raise ConfigurationError(
            "IDENTITY_ENDPOINT must be an https:// URL on Service Fabric (the endpoint is "
            "authenticated by its certificate).",
            fix="check IDENTITY_ENDPOINT; Service Fabric sets it for the application.",
        )
    pin = "".join(c for c in thumbprint if c not in " \t\r\n:").lower()
    if len(pin) != 40 or any(c not in "0123456789abcdef" for c in pin):
        raise ConfigurationError(
            "IDENTITY_SERVER_THUMBPRINT is not a SHA-1 certificate thumbprint (40 hex digits).",
            fix="check IDENTITY_SERVER_THUMBPRINT; Service Fabric sets it for the application.",
        )
    return derive(session, endpoint, pin)


class MissingExpiry(Exception):
    """A managed identity endpoint answered a token with no ``expires_on`` (missing, 0 or
    empty). Carries nothing of the answer."""


class UnreadableExpiry(Exception):
    """A managed identity endpoint answered a token whose ``expires_on`` is not a number.
    Carries nothing of the answer."""


def service_fabric_token(http_client: Any, endpoint: str, secret: str, resource: str) -> Any:
    """A token from a Service Fabric identity endpoint through ``http_client`` (the guarded,
    pinned session of ``service_fabric_session``), in MSAL's result shape.

    The protocol (https://learn.microsoft.com/azure/service-fabric/how-to-managed-identity-service-fabric-app-code):
    ``GET {IDENTITY_ENDPOINT}?api-version=2019-07-01-preview&resource=R`` with header
    ``Secret: {IDENTITY_HEADER}``; the answer has ``access_token``, ``expires_on`` (epoch
    seconds, a number or a string) and ``token_type``, or ``{"error": {"code", "message"}}``.
    The normalisation is MSAL's (msal/managed_identity.py ``_obtain_token_on_service_fabric``).
    Like MSAL, no identity selector is sent: the cluster assigns the application's identity.
    """
    import json
    import time

    from ._http import TransportFailure

    response = http_client.get(
        endpoint,
        params={"api-version": SERVICE_FABRIC_API_VERSION, "resource": resource},
        headers={"Secret": secret},
    )
    status = int(getattr(response, "status_code", 0) or 0)
    try:
        payload = json.loads(response.text)
    except ValueError:
        raise TransportFailure("malformed", status=status) from None
    if not isinstance(payload, dict):
        raise TransportFailure("malformed", status=status)
    if payload.get("access_token") and not payload.get("expires_on"):
        # MSAL's normalisation calls this an error, with the whole body (the token) as its
        # description: it is a malformed answer, and the body is not kept.
        raise MissingExpiry
    if payload.get("access_token"):
        if isinstance(payload["expires_on"], bool):
            raise UnreadableExpiry  # int(true) is 1: epoch 1, not an expiry
        try:
            expires_in = int(payload["expires_on"]) - int(time.time())
        except (TypeError, ValueError, OverflowError):
            raise UnreadableExpiry from None
        return {
            "access_token": payload["access_token"],
            "expires_in": expires_in,
            "resource": payload.get("resource"),
            "token_type": payload.get("token_type", "Bearer"),
        }
    error = payload.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    return {
        "error": _SERVICE_FABRIC_ERRORS.get(code, "invalid_request")
        if isinstance(code, str)
        else "invalid_request",
        "error_description": response.text,
    }


class NullTokenCache(msal.TokenCache):  # type: ignore[misc]
    """An MSAL token cache that never stores anything (our ``TokenCache`` is above MSAL)."""

    def add(self, event: Any, **kwargs: Any) -> None:
        return None

    def modify(self, credential_type: Any, old_entry: Any, new_key_value_pairs: Any = None) -> None:
        return None


class DiscoveryOnlyHttpCache(dict[str, Any]):
    """An MSAL ``http_cache`` that keeps discovery GETs and drops every POST answer.

    MSAL's throttling layer keys POSTs as ``"POST <url> ..."``; dropping them means a retry is
    always a real request (consent just granted, a transient 5xx). Its index entry is kept so
    MSAL's bookkeeping stays consistent; MSAL caps it at 1024 entries.
    """

    def __setitem__(self, key: str, value: Any) -> None:
        if isinstance(key, str) and key.startswith("POST "):
            return
        super().__setitem__(key, value)


def confidential_app(
    client_id: str,
    *,
    credential: Any,
    authority: str,
    http_client: Any,
    client_capabilities: tuple[str, ...] = (),
    timeouts: Timeouts = DEFAULT_TIMEOUTS,
    throttle: Throttle | None = None,
) -> Any:
    """An MSAL confidential client with both caches neutralised (see above). The authority is
    configuration, not input: no instance discovery. Builds do a discovery GET (worker thread).

    Every request goes through ``GuardedHttpClient`` (timeouts, deadline, retries, Retry-After:
    MSAL sets no timeout and its throttling lived in the cache neutralised here); with
    ``http_client=None`` it wraps a new ``requests.Session`` (closed with the app's client)."""
    if not isinstance(http_client, GuardedHttpClient):
        http_client = GuardedHttpClient(http_client, timeouts=timeouts, throttle=throttle)
    return msal.ConfidentialClientApplication(
        client_id,
        client_credential=credential,
        authority=authority,
        instance_discovery=False,
        token_cache=NullTokenCache(),
        http_cache=DiscoveryOnlyHttpCache(),
        http_client=http_client,
        client_capabilities=list(client_capabilities) or None,
        # MSAL adds openid, profile and offline_access to every user-flow request; these apps
        # only exchange assertions (OBO) or use client credentials, and the refresh token that
        # offline_access brings is discarded (nothing here redeems it). MSAL's public option
        # drops both; openid cannot be dropped.
        exclude_scopes=["offline_access", "profile"],
    )


class _GilSchedule:
    """When the next blocking token call may start, for the whole process.

    A cold token request costs its worker thread ~1-2 ms of Python under the GIL (MSAL building
    the request, requests/urllib3/http.client, parsing the answer). A burst of new users started
    all at once puts dozens of such threads in the GIL's queue together, and the event loop,
    which must take the GIL back each time ``epoll`` returns, waits behind them: tens of ms of
    loop lag for every coroutine of the process (bench/README.md, "Event-loop lag"). Spacing the
    starts by the CPU one call costs keeps about one worker running Python at a time while the
    others wait on the network without the GIL, so the burst still goes out at the speed of one
    core (the most the GIL allows anyway) and the loop gets the GIL as soon as it asks.

    One schedule per process (the GIL is per process); each pool books its own learned cost on it.
    A call is never held back more than ``MAX_DELAY``: past that the machine is saturated, and
    queueing longer would add latency without saving the loop anything.
    """

    #: Slots are a little wider than the measured CPU, for the loop's own share of each call.
    HEADROOM = 1.5
    MAX_DELAY = 1.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._next = 0.0
        self._lock = threading.Lock()

    def book(self, cost: float) -> float:
        """Reserve the next slot for a call costing ``cost`` s of CPU; seconds to wait for it."""
        now = self._clock()
        with self._lock:
            slot = self._next if self._next > now else now
            delay = slot - now
            if delay > self.MAX_DELAY:
                return 0.0  # saturated: start now rather than queue without bound
            self._next = slot + cost * self.HEADROOM
        return delay


_SCHEDULE = _GilSchedule()

#: Every ``WorkerPool`` of the process, for ``_after_fork_in_child``.
_POOLS: weakref.WeakSet[WorkerPool] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child (gunicorn ``--preload``, multiprocessing's ``fork``) inherits each pool's
    executor without its threads: ``ThreadPoolExecutor`` still counts the parent's idle workers,
    so it starts none, and every job submitted in the child waited out its deadline. The
    child's pools start afresh (their workers started again on first use), with fresh locks (a
    parent thread may have held one at the fork)."""
    _SCHEDULE._lock = threading.Lock()
    for pool in list(_POOLS):
        pool._forked()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


class WorkerPool:
    """A dedicated, bounded thread pool for blocking token calls, created on first use.

    Calls from the event loop (``run``) start spaced on the process' GIL schedule by the CPU a
    call of this pool costs (its worker's ``time.thread_time()``, averaged); blocking I/O and
    subprocesses cost their thread no CPU, so a pool of those is hardly spaced at all.

    Stalled calls do not hold healthy ones back. When every worker is busy, a call that would
    queue behind calls in flight for longer than ``STALL_AFTER`` (an endpoint that accepts and
    never answers, up to the deadline) runs on an overflow thread instead, one per stalled call
    and at most ``max_workers`` of them: the healthy users of the source (another tenant, a
    request that is answered) keep ``max_workers`` threads between them. A burst of healthy
    calls that merely outnumbers the workers queues as before (nothing there is stalled).

    ``close`` cuts the pool's token exchanges in flight (``_http.ExchangeGroup``: their sockets
    shut down, as at their deadline) and drops its queued calls: their callers get
    ``TransportFailure("closed")`` (the sources say the source was closed), and no worker is
    left blocked on a stalled endpoint for the interpreter to wait for at exit. The pool starts
    again on its next use; another pool's exchanges are not touched.
    """

    #: Before a pool has measured a call: a cold OBO exchange over a new TLS connection.
    INITIAL_COST = 0.0015
    _ALPHA = 0.2
    #: A call in flight this long is taken for stalled: Entra answers a token request in well
    #: under a second, a slow one in one or two; a stalled one holds its thread to the deadline.
    STALL_AFTER = 2.0
    #: How often a call queued behind a full pool looks again for a stalled worker to replace.
    STALL_CHECK = 0.25

    def __init__(
        self,
        *,
        max_workers: int = DEFAULT_MAX_WORKERS,
        name: str = "entra-passthrough",
        default: int | None = None,
    ) -> None:
        # ``default``: the owning source's default, named in the errors (each source has its
        # own: 64 for on-behalf-of, 4 for a managed identity); the value given is never shown
        # (configuration.md: a pasted secret must not reach a log line).
        unset = f"default {default}" if default is not None else "the source's default"
        if isinstance(max_workers, bool) or not isinstance(max_workers, int):
            raise ConfigurationError(
                f"max_workers must be an integer, not {type(max_workers).__name__}.",
                fix=f"pass max_workers= a whole number from 1 to {MAX_WORKERS_LIMIT} ({unset}).",
            )
        if not 1 <= max_workers <= MAX_WORKERS_LIMIT:
            raise ConfigurationError(
                f"max_workers (ENTRA_PASSTHROUGH_MAX_WORKERS) must be between 1 and "
                f"{MAX_WORKERS_LIMIT}.",
                fix="a pool's threads wait on the network, so a few dozen serve hundreds of "
                f"cold users at once; set ENTRA_PASSTHROUGH_MAX_WORKERS / max_workers= in that "
                f"range, or leave it unset ({unset}).",
            )
        self.max_workers = max_workers
        self._name = name
        self._executor: ThreadPoolExecutor | None = None
        self._overflow: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        # Under ``_lock``: the pool's calls submitted and not started, its running calls (their
        # worker's id -> when they started), and the overflow's calls not finished.
        self._queued = 0
        self._running: dict[int, float] = {}
        self._lent = 0
        self.schedule = _SCHEDULE
        #: CPU seconds one call costs its worker (moving average of ``time.thread_time()``)
        self.cost = self.INITIAL_COST
        self._started = False  # ``start()`` ran: a forked child starts its workers again
        #: The token exchanges of the calls running now: ``close`` cuts them.
        self._group = ExchangeGroup()
        _POOLS.add(self)

    def _forked(self) -> None:
        """In a forked child: the parent's executors have no threads here (see
        ``_after_fork_in_child``); drop them, uncounted, and start again on first use."""
        self._lock = threading.Lock()
        self._executor = None
        self._overflow = None
        self._group = ExchangeGroup()  # its lock may have been held at the fork
        self._queued = 0
        self._running = {}
        self._lent = 0

    def start(self) -> None:
        """Create the executor and start every worker now (call it at start-up).

        Started lazily, each worker is started by a ``submit`` inside the first burst of cold
        requests, where ``Thread.start()`` waits for the new thread while the workers already
        started hold the GIL running MSAL: most of that burst's event-loop lag
        (bench/README.md, "where the time goes").
        """
        executor = self._get()
        self._started = True
        barrier = threading.Barrier(self.max_workers)
        try:
            for _ in range(self.max_workers):
                executor.submit(barrier.wait, 10.0)  # N concurrent jobs force N threads
        except RuntimeError as exc:  # "can't start new thread": the host's thread limit
            barrier.abort()
            raise ConfigurationError(
                f"could not start the {self.max_workers} worker threads of {self._name} ({exc})",
                fix="lower max_workers / ENTRA_PASSTHROUGH_MAX_WORKERS, or raise the host's "
                "thread limit (ulimit -u, the container's pids limit)",
            ) from None

    def _get(self) -> ThreadPoolExecutor:
        executor = self._executor
        if executor is None:
            with self._lock:
                executor = self._executor
                created = executor is None
                if executor is None:
                    executor = self._executor = ThreadPoolExecutor(
                        max_workers=self.max_workers, thread_name_prefix=self._name
                    )
            if created and self._started:
                # A forked child's first use of a pool its parent started: start every worker
                # now, as the parent did, not one per call of the first burst.
                self.start()
        return executor

    async def pace(self) -> None:
        """Wait for this call's slot on the GIL schedule (at most ``_GilSchedule.MAX_DELAY``).

        Even a call due now starts on the loop's next iteration: a worker woken in this one
        would take the GIL from the loop while it is still running the other tasks' steps.
        """
        await asyncio.sleep(self.schedule.book(self.cost))

    async def run(
        self,
        fn: Callable[..., T],
        /,
        *args: Any,
        wait_at_most: float | None = None,
        paced: bool = False,
    ) -> T:
        """``fn(*args)`` in a worker, once its slot on the GIL schedule has come (``paced``:
        the caller awaited ``pace()`` itself, e.g. to check its input after the wait). With
        ``wait_at_most``, the caller stops waiting for the worker then (``TimeoutError``) even
        if the thread is still blocked; a job still queued is dropped. Behind a pool full of
        stalled calls, it runs on an overflow thread (see the class)."""
        if not paced:
            await self.pace()
        group = self._group
        try:
            return await self._run(fn, args, wait_at_most)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if group.closed and (task is None or not task.cancelling()):
                # Not this caller's cancellation: ``close`` dropped the call before a worker
                # took it. Said as what it is, not as a cancelled task.
                raise TransportFailure("closed") from None
            raise

    async def _run(
        self, fn: Callable[..., T], args: tuple[Any, ...], wait_at_most: float | None
    ) -> T:
        loop = asyncio.get_running_loop()
        end = None if wait_at_most is None else loop.time() + wait_at_most
        with self._lock:
            full = self._queued + len(self._running) >= self.max_workers
            lend = full and self._may_lend(time.monotonic())
        if lend:
            return await self._until(self._lend(fn, args), end)
        queued = self._submit(fn, args)
        if not full:
            return await self._until(asyncio.wrap_future(queued), end)
        return await self._behind_a_full_pool(queued, fn, args, end)

    def _submit(self, fn: Callable[..., T], args: tuple[Any, ...]) -> Future[T]:
        executor = self._get()
        with self._lock:
            self._queued += 1
        try:
            future = executor.submit(self._timed, fn, args, True, self._group)
        except BaseException:
            with self._lock:
                self._queued -= 1
            raise
        future.add_done_callback(self._dropped)
        return future

    def _dropped(self, future: Future[Any]) -> None:
        if future.cancelled():  # never started: it is no longer queued
            with self._lock:
                self._queued -= 1

    def _next_stall(self, now: float) -> float:
        """Under ``_lock``: how long a queued call may sleep before a worker can have stalled
        that is not lent out yet (the oldest running call beyond those already replaced), at
        least ``STALL_CHECK``: a queue of thousands behind a healthy pool wakes each call about
        once per ``STALL_AFTER``, not four times a second."""
        starts = sorted(self._running.values())
        if self._lent < len(starts):
            return max(self.STALL_CHECK, starts[self._lent] + self.STALL_AFTER - now)
        return max(self.STALL_CHECK, self.STALL_AFTER)

    def _may_lend(self, now: float) -> bool:
        """Under ``_lock``: a stalled call's place is free for an overflow thread."""
        if self._lent >= self.max_workers:
            return False
        stalled = sum(1 for start in self._running.values() if now - start > self.STALL_AFTER)
        return stalled > self._lent

    def _lend(self, fn: Callable[..., T], args: tuple[Any, ...]) -> asyncio.Future[T]:
        with self._lock:
            self._lent += 1
            overflow = self._overflow
            if overflow is None:
                overflow = self._overflow = ThreadPoolExecutor(
                    max_workers=self.max_workers, thread_name_prefix=f"{self._name}-overflow"
                )
        try:
            future = overflow.submit(self._timed, fn, args, False, self._group)
        except BaseException:
            with self._lock:
                self._lent -= 1
            raise
        future.add_done_callback(self._returned)
        return asyncio.wrap_future(future)

    def _returned(self, _future: Future[Any]) -> None:
        with self._lock:
            self._lent -= 1

    @staticmethod
    async def _until(future: asyncio.Future[T], end: float | None) -> T:
        if end is None:
            return await future
        # Not ``asyncio.wait_for``: on Python 3.11 it returns the result when a cancel lands as
        # the worker's answer arrives (python/cpython#86296), and the request ran on.
        async with asyncio.timeout_at(end):
            return await future

    async def _behind_a_full_pool(
        self, queued: Future[T], fn: Callable[..., T], args: tuple[Any, ...], end: float | None
    ) -> T:
        """Wait for a call queued behind a full pool; if the calls ahead of it stall, move it
        to an overflow thread (while it has not started)."""
        loop = asyncio.get_running_loop()
        future = asyncio.wrap_future(queued)
        try:
            while True:
                left = math.inf if end is None else end - loop.time()
                if left <= 0:
                    raise TimeoutError
                with self._lock:
                    pause = self._next_stall(time.monotonic())
                done, _ = await asyncio.wait({future}, timeout=min(pause, left))
                if done:
                    return future.result()
                if queued.running():
                    return await self._until(future, end)
                with self._lock:
                    lend = self._may_lend(time.monotonic())
                if lend and queued.cancel():
                    return await self._until(self._lend(fn, args), end)
        except BaseException:
            # Still queued: dropped now (a running call cannot be stopped). Cancelling only the
            # asyncio wrapper reaches the queued job at the loop's next iteration, and a worker
            # freed meanwhile could start the call whose caller had given up.
            queued.cancel()
            future.cancel()
            raise

    #: ``respace`` takes at most this share of what is left of the token request's deadline
    #: (a user-set 2 s deadline keeps 1.8 s for the POST, not half of it).
    RESPACE_SHARE = 0.1

    def respace(self) -> None:
        """In a worker held back together with others (a shared build they all waited for):
        wait for a fresh slot, so that they do not all resume running Python at once. The wait
        is scheduling, not network: it takes at most ``RESPACE_SHARE`` of the time left before
        the request's deadline (``_http.deadline``), which it runs under."""
        delay = self.schedule.book(self.cost)
        if delay <= 0.0:
            return
        left = current_deadline(math.inf) - time.monotonic()
        time.sleep(min(delay, max(0.0, left) * self.RESPACE_SHARE))

    def _timed(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        main: bool = True,
        group: ExchangeGroup | None = None,
    ) -> T:
        # ``group``: the pool's when the call was submitted (a call submitted before ``close``
        # and started after it is refused by the group it belongs to, not sent under the next).
        group = group if group is not None else self._group
        worker = threading.get_ident()
        if main:  # the overflow's calls never count as stalled: they stand in for stalled ones
            with self._lock:
                self._queued -= 1
                self._running[worker] = time.monotonic()
        start = time.thread_time()
        try:
            with group.running():
                return fn(*args)
        finally:
            # a float store is atomic under the GIL; a lost update between two workers only
            # drops one sample of an average
            self.cost += (time.thread_time() - start - self.cost) * self._ALPHA
            if main:
                with self._lock:
                    self._running.pop(worker, None)

    def exchanges(self) -> contextlib.AbstractContextManager[None]:
        """The token requests made inside belong to this pool (``close`` cuts them): for a
        source's synchronous path, which runs in its caller's thread, not in a worker."""
        return self._group.running()

    def close(self) -> None:
        """Drop the queued calls, cut the token exchanges in flight (``ExchangeGroup``) and let
        the workers end (idempotent; the pool starts again on its next use)."""
        with self._lock:
            executor, self._executor = self._executor, None
            overflow, self._overflow = self._overflow, None
            group, self._group = self._group, ExchangeGroup()
        for each in (executor, overflow):
            if each is not None:
                each.shutdown(wait=False, cancel_futures=True)
        group.close()


class AppPool:
    """MSAL applications per (tenant, client capabilities), bounded (LRU).

    Building an MSAL app does the authority discovery GET, so ``get`` runs in a worker thread;
    a per-key lock makes concurrent first requests of one tenant build it once. The threads that
    waited for that build are released together: ``after_wait`` (``WorkerPool.respace``) spreads
    them out again instead of letting them all run MSAL at once.
    """

    def __init__(
        self,
        factory: Callable[[str, tuple[str, ...]], Any],
        *,
        max_apps: int,
        after_wait: Callable[[], None] | None = None,
    ) -> None:
        self._factory = factory
        self._after_wait = after_wait
        self._max_apps = max_apps
        self._apps: OrderedDict[Hashable, Any] = OrderedDict()
        self._locks: dict[Hashable, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, tenant: str, capabilities: tuple[str, ...]) -> Any:
        key = (tenant, capabilities)
        with self._lock:
            app = self._apps.get(key)
            if app is not None:
                self._apps.move_to_end(key)
                return app
            key_lock = self._locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                app = self._apps.get(key)
            if app is None:
                app = self._factory(tenant, capabilities)
                with self._lock:
                    self._apps[key] = app
                    self._locks.pop(key, None)
                    while len(self._apps) > self._max_apps:
                        self._apps.popitem(last=False)
                return app
        if self._after_wait is not None:
            self._after_wait()  # another thread built it while this one waited
        return app

    def apps(self) -> list[Any]:
        with self._lock:
            return list(self._apps.values())


def http_session(ca_file: str | None) -> Any:
    """A requests session for MSAL: ``None`` lets MSAL build its own (trust_env kept, so
    proxies and corporate CAs work); with ``ca_file``, a session that verifies with that CA
    even when ``REQUESTS_CA_BUNDLE`` is set (proxies still come from the environment)."""
    if ca_file is None:
        return None
    import requests

    class CaFileSession(requests.Session):
        def merge_environment_settings(self, *args: Any, **kwargs: Any) -> Any:
            settings = super().merge_environment_settings(*args, **kwargs)
            settings["verify"] = self.verify  # requests lets REQUESTS_CA_BUNDLE win otherwise
            return settings

    session = CaFileSession()
    session.verify = ca_file
    size_pool(session)
    return session


#: The most of a client certificate file (PEM or PFX) read: one is a few KB, a chain tens.
MAX_CERTIFICATE_FILE_BYTES = 1024 * 1024
#: The most of a federated (workload identity) token file read: it holds one token of a few KB.
MAX_FEDERATED_TOKEN_FILE_BYTES = 64 * 1024

_FEDERATED_TOKEN_FILE_FIX = (
    "check AZURE_FEDERATED_TOKEN_FILE (AppCredential(federated_token_file=...)): the path the "
    "platform projects the workload identity token to (Kubernetes: the azure-workload-identity "
    "webhook's volume), a regular file"
)


class FileRefused(Exception):
    """A credential file not read: ``why`` says so (e.g. "is larger than 1 MiB"), its content
    never."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def _size(limit: int) -> str:
    mib = 1024 * 1024
    return f"{limit // mib} MiB" if limit % mib == 0 else f"{limit // 1024} KiB"


def _refused(status: os.stat_result, limit: int) -> str | None:
    """Why a file with this ``os.stat`` result is not read (None: it is read)."""
    import stat

    if not stat.S_ISREG(status.st_mode):
        return "is not a regular file (a device, a pipe or a directory)"
    if status.st_size > limit:
        return f"is larger than {_size(limit)}"
    return None


def read_regular_file(path: str, limit: int) -> bytes:
    """The bytes of the regular file ``path``, of at most ``limit`` bytes: at most ``limit`` + 1
    are read. ``FileRefused`` for a device, a pipe or a directory (never read: /dev/zero has no
    end, a pipe without a writer blocks) and for a larger file; ``OSError`` as ``open`` raises
    it. Opened non-blocking, so a pipe is refused at once instead of waiting for a writer."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    descriptor = os.open(path, flags)
    try:
        handle = os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise
    with handle:
        why = _refused(os.fstat(handle.fileno()), limit)
        if why is not None:
            raise FileRefused(why)
        data = handle.read(limit + 1)
    if len(data) > limit:  # it grew since fstat
        raise FileRefused(f"is larger than {_size(limit)}")
    return data


def load_certificate(
    certificate: bytes | str, *, password: str | None = None, send_chain: bool = False
) -> dict[str, str]:
    """MSAL's ``client_credential`` for a client certificate, the way MSAL recommends it.

    ``certificate`` is a path to, or the bytes of, a PEM (private key + certificate, the key
    possibly encrypted) or a PFX/PKCS#12 file; ``password`` opens an encrypted key or a PFX.
    The key is loaded here, so a wrong password, a missing key, a key that is not RSA or an
    expired certificate is a ``ConfigurationError`` at start-up, before any request (one that
    expires within ``CERTIFICATE_WARNING_DAYS`` is logged). MSAL gets the public certificate
    (not a SHA-1 thumbprint), so it signs with PS256 and names the certificate with ``x5t#S256``
    (https://learn.microsoft.com/entra/identity-platform/certificate-credentials). The header
    ``x5c`` carries the leaf certificate, or the whole chain with ``send_chain`` (subject
    name/issuer authentication; that assertion is RS256 with ``x5t``, see below).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    if isinstance(certificate, str):
        fix = (
            "point the certificate path (AppCredential(client_certificate=...), "
            "ENTRA_PASSTHROUGH_CLIENT_CERTIFICATE_PATH or AZURE_CLIENT_CERTIFICATE_PATH; for "
            "the consent app ENTRA_PASSTHROUGH_CONSENT_CLIENT_CERTIFICATE_PATH) at a PEM or "
            "PFX file this process can read."
        )
        # Raised outside the ``except``: the OSError's filename is the path's value, which may
        # be a key pasted where its path belongs, and would stay on the error's __context__.
        refusal: ConfigurationError | None = None
        data = b""
        try:
            data = read_regular_file(os.fspath(certificate), MAX_CERTIFICATE_FILE_BYTES)
        except OSError as exc:
            refusal = ConfigurationError(
                f"cannot read the client certificate file ({type(exc).__name__}).", fix=fix
            )
        except FileRefused as exc:
            # A PEM or PFX is a few KB: read unbounded, a device (/dev/zero) or a huge file
            # took the process's memory, and a pipe with no writer blocked it for ever.
            refusal = ConfigurationError(
                f"the client certificate file {exc.why}, so it is not read: a PEM or PFX "
                "certificate file is a few KB.",
                fix=fix,
            )
        if refusal is not None:
            raise refusal
    else:
        data = certificate
    secret = password.encode() if password else None
    key: Any
    certs: list[Any]
    if b"-----BEGIN" in data:
        text = data.decode("ascii", errors="replace")
        key_pem = _pem_block(text, "PRIVATE KEY")
        if key_pem is None or "-----BEGIN CERTIFICATE-----" not in text:
            raise ConfigurationError(
                "the client certificate must be a PEM with both the private key and the "
                "certificate, or a PFX.",
                fix="concatenate the key and certificate PEM blocks into one file.",
            )
        try:
            key = serialization.load_pem_private_key(key_pem.encode(), password=secret)
            certs = x509.load_pem_x509_certificates(data)
        except TypeError:
            raise ConfigurationError(
                "the client certificate's private key is encrypted and no password was given "
                "(or a password was given for a key that is not encrypted).",
                fix="set AZURE_CLIENT_CERTIFICATE_PASSWORD (certificate_password=...), or "
                "remove it for an unencrypted key.",
            ) from None
        except ValueError:
            raise ConfigurationError(
                "the client certificate PEM cannot be parsed, or its password is wrong.",
                fix="check the file and AZURE_CLIENT_CERTIFICATE_PASSWORD.",
            ) from None
    else:
        try:
            key, leaf, extra = pkcs12.load_key_and_certificates(data, secret)
        except (ValueError, TypeError):
            if secret is None:
                raise ConfigurationError(
                    "the client certificate is not a PEM, and not a PFX that opens without a "
                    "password (a password-protected PFX needs its password).",
                    fix="set AZURE_CLIENT_CERTIFICATE_PASSWORD (certificate_password=...) for a "
                    "password-protected PFX; otherwise check that the file is the PEM or PFX.",
                ) from None
            raise ConfigurationError(
                "the client certificate is neither a PEM nor a PFX that opens with the given "
                "password.",
                fix="check the file and AZURE_CLIENT_CERTIFICATE_PASSWORD.",
            ) from None
        if key is None or leaf is None:
            raise ConfigurationError(
                "the PFX holds no private key or no certificate.",
                fix="export the PFX with its private key (openssl pkcs12 -export -inkey ...).",
            )
        certs = [leaf, *extra]
    _require_rsa(key)
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    matching = [
        c
        for c in certs
        if c.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        == public
    ]
    if not matching:
        raise ConfigurationError(
            "no certificate in the file matches the private key.",
            fix="put the key's own certificate in the file (first), then any chain.",
        )
    leaf = matching[0]
    _check_validity(leaf)
    chain = [leaf] + ([c for c in certs if c is not leaf] if send_chain else [])
    key_text = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_certificate = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in chain)
    if len(chain) > 1:
        # Measured with MSAL 1.39: given a PEM string as public_certificate, MSAL computes the
        # SHA-256 thumbprint from its *first* certificate and sets x5c to that one alone, so
        # the chain never leaves (msal/application.py, _extract_cert_and_thumbprints). With a
        # SHA-1 thumbprint given, MSAL sends x5c from the whole PEM (extract_certs): the chain
        # that subject name/issuer authentication needs, signed RS256 with x5t, which Entra
        # accepts. Without a chain to send, PS256 + x5t#S256 stays.
        from cryptography.hazmat.primitives import hashes

        thumbprint = leaf.fingerprint(hashes.SHA1()).hex()  # noqa: S303 - Entra's x5t
        return {
            "private_key": key_text,
            "thumbprint": thumbprint,
            "public_certificate": public_certificate,
        }
    return {"private_key": key_text, "public_certificate": public_certificate}


def _require_rsa(key: Any) -> None:
    """Entra's certificate credentials are RSA: MSAL signs the assertion with RS256/PS256, and
    with another key every request failed (``InvalidKeyError`` from PyJWT, no fix)."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    if isinstance(key, rsa.RSAPrivateKey):
        return
    from cryptography.hazmat.primitives.asymmetric import ec

    kind = (
        f"an EC key ({key.curve.name})"
        if isinstance(key, ec.EllipticCurvePrivateKey)
        else f"a {type(key).__name__.removeprefix('_').replace('PrivateKey', '')} key"
    )
    raise ConfigurationError(
        f"the client certificate has {kind}; Entra's certificate credentials need an RSA key "
        "(the client assertion is signed RS256/PS256).",
        fix=NEW_CERTIFICATE_FIX + ".",
    )


def _check_validity(leaf: Any) -> None:
    """Refuse an expired certificate before any request (Entra answers AADSTS700027, "The key
    used is expired", on every one); log one that expires soon. A certificate not valid yet is
    left to Entra (and ``doctor``): the clock of the machine that made it may be ahead."""
    end = leaf.not_valid_after_utc
    now = dt.datetime.now(dt.UTC)
    if end <= now:
        raise ConfigurationError(
            f"the client certificate expired on {end:%Y-%m-%d %H:%M} UTC: Entra refuses every "
            "assertion it signs (AADSTS700027, 'The key used is expired').",
            fix=NEW_CERTIFICATE_FIX + ".",
        )
    if end - now < dt.timedelta(days=CERTIFICATE_WARNING_DAYS):
        logger.warning(
            "the client certificate expires on %s UTC (in %d days): Entra refuses it from then "
            "on; create a new one and upload its public key before that",
            f"{end:%Y-%m-%d %H:%M}",
            (end - now).days,
        )


def _pem_block(text: str, label: str) -> str | None:
    # Accept "PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY" for the key.
    lines = text.splitlines()
    out: list[str] = []
    inside = False
    for line in lines:
        if line.startswith("-----BEGIN ") and line.rstrip("-").endswith(label) and not inside:
            if label == "CERTIFICATE" and "PRIVATE" in line:
                continue
            inside = True
        if inside:
            out.append(line)
            if line.startswith("-----END "):
                return "\n".join(out) + "\n"
    return None


class FederatedTokenFile:
    """A workload identity token file as a client-assertion callable, re-read when it changes
    (Kubernetes rotates it in place). Read at most ``MAX_FEDERATED_TOKEN_FILE_BYTES``: a file
    that is larger, or not a regular file (a device, a pipe), is refused, at construction
    (``ConfigurationError``) when it is so already, and at each read after a change
    (``SourceUnavailable``, as for a file that cannot be read). A file not there yet at
    construction is read when first needed."""

    def __init__(self, path: str) -> None:
        from ._env import path_may_be_shown

        self.path = path
        # The variable's value is echoed only when shaped like a path: a token or key pasted
        # there (a secret mapped as an environment variable rather than a file) never is.
        shown = path_may_be_shown(path) or (
            len(path) <= 260 and path.isprintable() and _redact.redact(path) == path
        )  # (a relative path, one with spaces: shown; a token or a key's text: not)
        self._shown = repr(path) if shown else "(not shown: it looks like a secret, not a path)"
        self._stamp: tuple[int, int] | None = None
        self._value: str | None = None
        self._lock = threading.Lock()
        try:
            status = os.stat(path)
        except (OSError, ValueError):
            return  # not there (yet): the first read says so
        why = _refused(status, MAX_FEDERATED_TOKEN_FILE_BYTES)
        if why is not None:
            raise ConfigurationError(
                f"the federated token file {self._shown} {why}, so it is not read: a workload "
                "identity token file holds one token of a few KB.",
                fix=_FEDERATED_TOKEN_FILE_FIX + ".",
            )

    def __repr__(self) -> str:
        return f"FederatedTokenFile({self._shown})"

    def __call__(self) -> str:
        from ._errors import SourceUnavailable

        fix = _FEDERATED_TOKEN_FILE_FIX
        # Raised outside the ``except``: an OSError's filename is the path's value (a token
        # pasted where its path belongs) and would stay on the error's __context__.
        refusal: SourceUnavailable | None = None
        value = ""
        try:
            status = os.stat(self.path)
            stamp = (status.st_mtime_ns, status.st_size)
            with self._lock:
                if stamp != self._stamp or self._value is None:
                    data = read_regular_file(self.path, MAX_FEDERATED_TOKEN_FILE_BYTES)
                    self._value = data.decode("ascii").strip()
                    self._stamp = stamp
                value = self._value
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            # (ValueError: a NUL byte in the value, which no path holds)
            refusal = SourceUnavailable(
                f"cannot read the federated token file {self._shown} ({type(exc).__name__}).",
                fix=fix,
            )
        except FileRefused as exc:
            refusal = SourceUnavailable(
                f"the federated token file {self._shown} {exc.why}, so it is not read: a "
                "workload identity token file holds one token of a few KB.",
                fix=fix,
            )
        if refusal is not None:
            raise refusal
        if not value:
            # Sent as it is, Entra would see no credential at all (AADSTS7000218, whose fix
            # names a secret): say what is wrong, before any request.
            raise SourceUnavailable(
                f"the federated token file {self._shown} is empty (not written yet?).", fix=fix
            )
        return value


class CheckedAssertion:
    """A ``client_assertion`` callable whose empty answer is refused before anything is sent:
    MSAL posted ``None`` or ``""`` as no client credential at all, and Entra's AADSTS7000218
    ("send client_secret or client_assertion") pointed away from the callable."""

    def __init__(self, get: Callable[[], Any]) -> None:
        self._get = get

    def __repr__(self) -> str:
        # The callable's type only: its repr may show what it was built with (a
        # ``functools.partial`` lists its arguments, a key among them), as AppCredential hides it.
        return f"CheckedAssertion({type(self._get).__name__})"

    def __call__(self) -> Any:
        from ._errors import SourceUnavailable

        value = self._get()
        if isinstance(value, (str, bytes)) and value.strip():
            return value
        if value is None:
            what = "None"
        elif isinstance(value, (str, bytes)):
            what = "an empty value"
        else:
            what = f"a value of type {type(value).__name__}"
        # The value itself is not shown: a callable may return a secret in the wrong shape.
        raise SourceUnavailable(
            f"the client_assertion callable returned {what}, not a signed assertion: sent as "
            "it is, Entra would see no client credential.",
            fix="make the callable return the signed client assertion (a JWT, as a string); it "
            "is called for every token request, so it must return a current one each time.",
        )


def client_credential(credential: AppCredential) -> Any:
    """MSAL's ``client_credential`` for an ``AppCredential`` (validated when it was built): the
    one place it is built, for every confidential client of the library. A managed identity
    becomes a client assertion for the cloud's federation audience (``authority_host``)."""
    if credential.client_secret is not None:
        return credential.client_secret
    if credential.client_certificate is not None:
        return load_certificate(
            credential.client_certificate,
            password=credential.certificate_password,
            send_chain=credential.send_certificate_chain,
        )
    if credential.client_assertion is not None:
        return {"client_assertion": CheckedAssertion(credential.client_assertion)}
    if credential.managed_identity is not None:
        audience = federation_audience(credential.authority_host)
        mi = credential.managed_identity

        def mi_assertion() -> str:
            return mi.token_for_resource(audience)

        return {"client_assertion": mi_assertion}
    assert credential.federated_token_file is not None
    return {"client_assertion": FederatedTokenFile(credential.federated_token_file)}
