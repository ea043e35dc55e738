"""Signing keys for the JWT verifier: fetch, cache, rotate, and refuse to be hammered.

One ``KeySet`` per key source (a JWKS URI, or an OpenID discovery document naming one). Keys are
cached for ``ttl`` seconds. A token whose ``kid`` is unknown triggers *one* refetch (a rotation
happened), but at most one per ``min_refetch_interval``: forged tokens with random ``kid`` values
must not turn the server into a JWKS fetch amplifier. Refreshes are single-flight: 100 concurrent
tokens that need a refresh cause one HTTP request (async: one task per event loop that every
caller awaits; sync: a lock plus a generation counter). A caller with an unknown ``kid`` also
waits for a fetch that the other driver or another event loop has in flight (``_State.fetching``,
awaited without holding a thread), rather than answering "unknown kid" while it runs.

A failed TTL refresh keeps the previous keys (Entra publishes keys weeks before using them), and
retries after ``min_refetch_interval``. With no keys at all, verification fails closed. While
the latest fetch has failed, a ``kid`` the held keys lack is not judged either
(``SigningKeysUnavailable``, 503): the issuer may have published it since.

A TTL refresh never holds a request whose ``kid`` the cached keys have: the key is served and the
refresh runs in the background (stale-while-revalidate; async: a task on the loop, sync: a
thread), so a slow or hanging endpoint costs no request its fetch timeout. Only a request that
needs keys the cache does not have (none yet, or an unknown ``kid``) waits for a fetch.

Every fetch (the discovery document and the keys it names, together) ends within
``FETCH_TIMEOUT`` whatever the endpoint does, and no body is read past ``MAX_DOCUMENT_BYTES``: a
client's timeout is per read, so a body trickling a byte at a time held the fetch (and every
request waiting for keys) for as long as it trickled, and an endless body was read whole into
memory before its size was checked.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import math
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
import httpx2
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt import PyJWK
from jwt.exceptions import PyJWTError

from ._checks import seconds
from ._drive import loop_running_here
from ._errors import ConfigurationError, SigningKeysUnavailable, TokenVerificationError
from ._origins import is_loopback, shown_url

logger = logging.getLogger("entra_passthrough.verify")

#: A JWKS document is a few KiB; refuse anything absurd.
MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_KEYS = 64
#: Seconds one fetch may take in all (discovery and keys, connect to last byte); each socket
#: operation gets what is left of it.
FETCH_TIMEOUT = 10.0
#: Bytes asked of a ``requests`` response per read (``read1`` returns what has arrived).
_READ_SIZE = 64 * 1024


class _Response(Protocol):
    @property
    def status_code(self) -> int: ...
    @property
    def content(self) -> bytes: ...


class AsyncGetter(Protocol):
    """What the verifier needs from an async HTTP client (httpx2 or httpx ``AsyncClient``)."""

    def get(self, url: str, *, timeout: float) -> Awaitable[Any]: ...


class SyncGetter(Protocol):
    """What the verifier needs from a sync HTTP client (httpx or httpx2 ``Client``)."""

    def get(self, url: str, *, timeout: float) -> Any: ...


#: What a caller is told while no key can be fetched (the 503's description): the key URL is
#: the operator's business (it may carry a secret), and it is in the log line and ``str(error)``.
KEYS_UNAVAILABLE = "the signing keys could not be fetched; no token can be verified until they are."


def check_fetch_url(url: str, *, what: str) -> str:
    """Keys only over HTTPS (plain HTTP only on loopback, for tests). The refusal names the
    URL's origin at most (its path and query may carry a secret)."""
    shown = shown_url(url, path=False)
    if shown is not None:
        parts = urlsplit(url)
        if parts.scheme == "https" or (
            parts.scheme == "http" and is_loopback(parts.hostname or "")
        ):
            return url
    raise ConfigurationError(
        f"{what}{f' {shown!r}' if shown else ''} must be an https:// URL with a host "
        "(http:// only on loopback).",
        fix="use the authority host's https URL (AZURE_AUTHORITY_HOST).",
    )


def check_authority_host(url: str) -> str:
    """``check_fetch_url`` for an authority host, which the library extends with
    ``/<tenant>/...``: the host alone. A query or fragment would swallow that path; user info
    (a password would be in every issuer the verifier names, in answers to callers) or a
    backslash (clients disagree on where the host begins) is no host. A path (``/<tenant>``,
    ``/v2.0``) would be doubled in every issuer and key URL: each request a 503 whose fix
    points at the network, where ``OnBehalfOf`` refuses the same value at build."""
    fix = "use the authority host alone, e.g. https://login.microsoftonline.com."
    shown = shown_url(url, path=False)
    if shown is not None:
        parts = urlsplit(url)
        if parts.query or parts.fragment:
            raise ConfigurationError(
                f"authority_host {shown!r} must have no query or fragment.", fix=fix
            )
        if "@" in parts.netloc or "\\" in url:
            raise ConfigurationError(
                "authority_host must be a host only, with no user info or backslash.", fix=fix
            )
        if parts.path not in ("", "/"):
            raise ConfigurationError(
                f"authority_host {shown!r} has a path; it must be the host only (the tenant "
                "goes in tenants=, and the library adds /<tenant>/v2.0 itself).",
                fix=fix,
            )
    return check_fetch_url(url, what="authority_host")


def ssl_context(verify: ssl.SSLContext | str | bool) -> ssl.SSLContext | bool:
    """A CA bundle path becomes an SSLContext (httpx deprecates ``verify=<path>``)."""
    if not isinstance(verify, ssl.SSLContext | str | bool):
        # Anything else would fail only at the first key fetch, as a 503 for every request.
        raise ConfigurationError(
            f"verify must be an ssl.SSLContext, a CA bundle path or a bool, not "
            f"{type(verify).__name__}.",
            fix="pass verify= the path of a PEM file of CA certificates (the emulator's is "
            "idp.ca_file), an ssl.SSLContext, or True for the system CAs.",
        )
    if isinstance(verify, str):
        try:
            return ssl.create_default_context(cafile=verify)
        except (OSError, ssl.SSLError, ValueError) as exc:
            # The path is not shown (it is the caller's to know); the failure's type says
            # which of missing, unreadable or not PEM certificates it is.
            raise ConfigurationError(
                f"verify names a CA bundle that cannot be loaded ({type(exc).__name__}).",
                fix="pass verify= the path of a readable PEM file of CA certificates (the "
                "emulator's is idp.ca_file), an ssl.SSLContext, or True for the system CAs.",
            ) from None
    return verify


def parse_jwks(content: bytes) -> dict[str, tuple[Any, ...]]:
    """``{kid: public keys}`` for the RSA signing keys of a JWKS document, in the document's
    order. Raises ValueError.

    Several different keys under one ``kid`` (RFC 7517 section 4.5: different keys "SHOULD"
    have distinct ``kid`` values, not must; a gateway that merges key sets publishes them) are
    all kept: a token with that ``kid`` is verified with each in turn, as nimbus-jose-jwt and
    panva/jose do, and one WARNING names the ``kid``. The same key twice is kept once."""
    if len(content) > MAX_DOCUMENT_BYTES:
        raise ValueError("JWKS document larger than 1 MiB")
    doc = json.loads(content)
    raw_keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(raw_keys, list):
        raise ValueError("JWKS document has no 'keys' list")
    keys: dict[str, tuple[Any, ...]] = {}
    shared: list[str] = []  # the kids under which different keys are published
    for jwk in raw_keys[:MAX_KEYS]:
        if not isinstance(jwk, dict):
            continue
        kid = jwk.get("kid")
        if not isinstance(kid, str) or jwk.get("kty") != "RSA" or jwk.get("use", "sig") != "sig":
            continue
        try:
            key = PyJWK(jwk, algorithm="RS256").key
        except (PyJWTError, ValueError, TypeError):  # one bad key does not void the others
            # PyJWTError: PyJWK raises InvalidKeyError (not a PyJWKError) for an RSA key with
            # no 'n', an 'n' that is not base64url, or an x5c chain only.
            logger.warning("ignoring an unusable JWKS key (kid %r)", kid[:64])
            continue
        if not isinstance(key, RSAPublicKey):
            # A JWK with private members ('d'...) becomes a private key: a leaked one (anyone
            # who read the document can sign with it), and PyJWT cannot verify with it.
            logger.warning("ignoring a JWKS key that carries a private key (kid %r)", kid[:64])
            continue
        held = keys.get(kid)
        if held is None:
            keys[kid] = (key,)
        elif key.public_numbers() not in [k.public_numbers() for k in held]:
            if len(held) == 1:
                shared.append(kid)
            keys[kid] = (*held, key)
    if not keys:
        raise ValueError("JWKS document has no usable RSA signing key")
    if shared:
        logger.warning(
            "the signing keys document publishes different keys under one kid (%s): a token "
            "with that kid is verified with each of them",
            ", ".join(repr(kid[:64]) for kid in shared),
        )
    return keys


def _jwks_uri_from_discovery(content: bytes) -> str:
    if len(content) > MAX_DOCUMENT_BYTES:
        raise ValueError("discovery document larger than 1 MiB")
    doc = json.loads(content)
    uri = doc.get("jwks_uri") if isinstance(doc, dict) else None
    if not isinstance(uri, str):
        raise ValueError("discovery document has no jwks_uri")
    return check_fetch_url(uri, what="jwks_uri")


@dataclass(frozen=True, slots=True)
class KeySource:
    """Where keys come from: a JWKS URI, or an OpenID discovery document naming one."""

    url: str
    discovery: bool = False


@dataclass(eq=False)
class _State:
    keys: dict[str, tuple[Any, ...]] | None = None
    fetched_at: float = -math.inf
    retry_after: float = -math.inf  # after a failed refresh: no fetch before (old keys, or none)
    last_refetch: float = -math.inf  # last unknown-kid refetch (rate limit)
    generation: int = 0  # one more per fetch, failed or not (sync waiters: it happened)
    failure: str = ""  # the last failed fetch's exception type
    # The latest fetch failed: what the issuer publishes now is unknown, so a kid missing from
    # the keys held is not judged (503), not called unpublished (401).
    last_failed: bool = False
    inflight: tuple[asyncio.AbstractEventLoop, asyncio.Task[None]] | None = None
    sync_lock: threading.Lock = field(default_factory=threading.Lock)
    background: bool = False  # a sync background refresh is running
    # The latest fetch in flight, whichever driver runs it: resolved when it ends, so that a
    # caller of the other driver (or of another event loop) waits for it instead of answering
    # "unknown kid" (its own refetch would be rate limited). ``fetching_loop`` is the loop of an
    # async fetch (None: a thread's); ``fetching_since`` is ``time.monotonic()`` at its start.
    fetching: concurrent.futures.Future[None] | None = None
    fetching_loop: asyncio.AbstractEventLoop | None = None
    fetching_since: float = 0.0


class KeySet:
    """Cached signing keys for several sources, safe from many tasks and threads."""

    def __init__(
        self,
        *,
        verify: ssl.SSLContext | str | bool = True,
        http_client: AsyncGetter | None = None,
        sync_http_client: SyncGetter | None = None,
        ttl: float = 6 * 3600.0,
        min_refetch_interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        seconds(ttl, what="jwks_ttl", low=0, high=math.inf, above_low=True)
        seconds(min_refetch_interval, what="min_refetch_interval", low=0, high=math.inf)
        self._verify = ssl_context(verify)
        self._http_client = http_client
        self._sync_http_client = sync_http_client
        self._ttl = ttl
        self._min_refetch = min_refetch_interval
        self._clock = clock
        self._lock = threading.Lock()  # guards _states and every _State field
        self._states: dict[KeySource, _State] = {}
        self.fetches = 0  # JWKS documents fetched (for tests and metrics)

    def _state(self, source: KeySource) -> _State:
        with self._lock:
            state = self._states.get(source)
            if state is None:
                state = self._states[source] = _State()
            return state

    # --- decisions (no I/O) ---

    def _lookup(self, state: _State, kid: str) -> tuple[tuple[Any, ...] | None, bool, int, bool]:
        """(the keys published under ``kid`` or None, needs a refresh, generation looked at,
        whether any keys are held)."""
        with self._lock:
            now = self._clock()
            keys = state.keys
            stale = keys is None or now - state.fetched_at >= self._ttl
            if stale and now < state.retry_after:
                # The last fetch failed: for a while, the old keys, or no keys and no fetch
                # (every request meanwhile is refused at once: an endpoint that fails is not
                # asked again per request, whoever sends tokens).
                stale = False
            return (keys.get(kid) if keys else None), stale, state.generation, keys is not None

    def _claim_refetch_locked(self, state: _State) -> bool:
        """May an unknown kid trigger a refetch now? Claims the slot if so (lock held)."""
        now = self._clock()
        if now - state.last_refetch < self._min_refetch:
            return False
        state.last_refetch = now
        return True

    def _begin_locked(
        self, state: _State, loop: asyncio.AbstractEventLoop | None
    ) -> concurrent.futures.Future[None]:
        """Mark a fetch in flight (lock held); whoever runs it calls ``_end`` when it ends."""
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        done.set_running_or_notify_cancel()  # no waiter can cancel it
        state.fetching, state.fetching_loop, state.fetching_since = done, loop, time.monotonic()
        return done

    def _end(self, state: _State, done: concurrent.futures.Future[None]) -> None:
        with self._lock:
            if state.fetching is done:
                state.fetching = state.fetching_loop = None
        done.set_result(None)

    @staticmethod
    def _elsewhere_locked(state: _State) -> tuple[concurrent.futures.Future[None], float] | None:
        """The fetch in flight and the seconds to wait for it at most (lock held). A fetch
        ends within ``FETCH_TIMEOUT``; one older than that (and a grace) never will (its loop
        stopped with it pending), and is not waited for."""
        if state.fetching is None:
            return None
        left = state.fetching_since + FETCH_TIMEOUT + _GRACE - time.monotonic()
        if left > 0:
            return state.fetching, left
        # Dead: its loop stopped with it pending. It fetched nothing, so it gives back the
        # refetch it claimed (a rotated key is not refused for min_refetch_interval because of
        # it), and nobody waits for it again.
        state.fetching = state.fetching_loop = None
        state.last_refetch = -math.inf
        return None

    def _install(self, state: _State, keys: dict[str, tuple[Any, ...]]) -> None:
        with self._lock:
            state.keys = keys
            state.fetched_at = self._clock()
            state.generation += 1
            state.last_failed = False
            self.fetches += 1

    def _failed(
        self, state: _State, source: KeySource, exc: BaseException
    ) -> SigningKeysUnavailable | None:
        """Record the failed fetch; the error to raise when no keys are held (``None``: the
        cached keys are kept). Raised by the caller *outside* its ``except`` block: chained to
        ``exc`` (as cause or context), an HTTP client's error holds its request, whose URL may
        carry a secret (a SAS ``sig=`` key URL), and tools that walk an error's causes and
        their attributes (Sentry) would report it. The failure's type is in the text."""
        with self._lock:
            has_keys = state.keys is not None
            # With no keys the server refuses everything until a fetch works: ask again sooner
            # (what the 503's Retry-After says), but not once per request.
            wait = self._min_refetch if has_keys else min(self._min_refetch, _RETRY_WITHOUT_KEYS)
            state.retry_after = self._clock() + wait
            state.generation += 1
            state.failure = type(exc).__name__
            state.last_failed = True
        logger.warning(
            "fetching signing keys from %s failed (%s)%s",
            shown_url(source.url) or "(the key URL)",
            type(exc).__name__,
            "; keeping the cached keys" if has_keys else "",
        )
        return None if has_keys else self._down(state, source)

    def _down(self, state: _State, source: KeySource) -> SigningKeysUnavailable:
        # The operator's text names the endpoint (redacted) and the failure; ``reason``, what a
        # caller is told (the 503's description), names neither.
        error = SigningKeysUnavailable(
            f"the signing keys could not be fetched from {shown_url(source.url) or 'the key URL'} "
            f"({state.failure or 'no answer'}); no token can be verified until they are.",
            fix="check that the server can reach the authority host over HTTPS.",
        )
        error.reason = KEYS_UNAVAILABLE
        return error

    def _missing(self, state: _State, source: KeySource, kid: str) -> TokenVerificationError:
        """The answer for a ``kid`` the keys held lack, once the refetch (or the rate limit)
        has had its say: unpublished (401) if the latest fetch worked; not judged (503) if it
        failed, or no keys are held: the token may be signed with a key the issuer published
        since (a rotation while the endpoint is down), and a 401 makes its client drop it."""
        with self._lock:
            unknown = state.keys is not None and not state.last_failed
        return _unknown_kid(kid) if unknown else self._down(state, source)

    # --- async driver ---

    async def get_key_async(self, source: KeySource, kid: str) -> Any:
        """The first key published under ``kid`` (``get_keys_async`` for all of them)."""
        return (await self.get_keys_async(source, kid))[0]

    async def get_keys_async(self, source: KeySource, kid: str) -> tuple[Any, ...]:
        """The keys published under ``kid`` (one, unless the document repeats the kid), in the
        document's order; a typed error when there are none."""
        state = self._state(source)
        found, stale, _, held = self._lookup(state, kid)
        if found is not None:
            if stale:  # served now, refreshed behind it
                self._start_refresh(state, source)
            return found
        if not held and not stale:
            raise self._down(state, source)  # a fetch just failed: no other one yet
        refreshed = False
        if stale:
            await self._refresh_async(state, source)
            refreshed = True
            found, _, _, _ = self._lookup(state, kid)
        if found is None and not refreshed:
            await self._refetch_async(state, source)
            found, _, _, _ = self._lookup(state, kid)
        if found is None:
            raise self._missing(state, source, kid)
        return found

    async def _refetch_async(self, state: _State, source: KeySource) -> None:
        """An unknown kid: join this loop's fetch in flight, else wait for the one another
        driver or loop runs, else one rate-limited refetch. Decided under the lock, so that a
        refetch claimed elsewhere is seen from the moment its slot is taken."""
        loop = asyncio.get_running_loop()
        join: asyncio.Task[None] | None = None
        elsewhere: tuple[concurrent.futures.Future[None], float] | None = None
        done: concurrent.futures.Future[None] | None = None
        with self._lock:
            if state.inflight is not None and state.inflight[0] is loop:
                join = state.inflight[1]
            elif (elsewhere := self._elsewhere_locked(state)) is None:
                if not self._claim_refetch_locked(state):
                    return  # rate limited
                done = self._begin_locked(state, loop)
        if done is not None:
            join = self._spawn(state, source, loop, done)
        if join is not None:
            # shield: a cancelled caller must not cancel the fetch the others wait for.
            await asyncio.shield(join)
        elif elsewhere is not None:
            fetch, left = elsewhere
            # Awaited on this loop, no thread held. A cancelled waiter cancels only its own
            # wrapper (the fetch's future is running: it cannot be cancelled).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):  # (not ``wait_for``: see ``_msal._until``)
                    await asyncio.wrap_future(fetch)

    async def _refresh_async(self, state: _State, source: KeySource) -> None:
        # shield: a cancelled caller must not cancel the fetch the others wait for.
        await asyncio.shield(self._start_refresh(state, source))

    def _start_refresh(self, state: _State, source: KeySource) -> asyncio.Task[None]:
        """The refresh task of this loop: the one in flight, else a new one."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if state.inflight is not None and state.inflight[0] is loop:
                return state.inflight[1]
            done = self._begin_locked(state, loop)
        return self._spawn(state, source, loop, done)

    def _spawn(
        self,
        state: _State,
        source: KeySource,
        loop: asyncio.AbstractEventLoop,
        done: concurrent.futures.Future[None],
    ) -> asyncio.Task[None]:
        # Created outside the lock: an eager task factory runs the fetch (and ``_install``,
        # which takes the lock) inside ``create_task``.
        try:
            task = loop.create_task(self._fetch_task(state, source))
        except BaseException:  # a closed loop: no fetch, and nobody may wait for one
            self._end(state, done)
            raise
        with self._lock:
            state.inflight = (loop, task)

        def finished(task: asyncio.Task[None]) -> None:
            # A callback, not the task's ``finally``: a task cancelled before it ever ran
            # (its loop shut down) runs no ``finally``, and the waiters must still be told.
            _retrieve(task)
            with self._lock:
                if state.inflight is not None and state.inflight[1] is task:
                    state.inflight = None
                if task.cancelled():
                    # Its loop ended mid-fetch: nothing was fetched, so the refetch it claimed
                    # is given back (the next unknown kid may fetch at once).
                    state.last_refetch = -math.inf
            self._end(state, done)

        task.add_done_callback(finished)
        return task

    async def _fetch_task(self, state: _State, source: KeySource) -> None:
        try:
            keys = await self._fetch_async(source)
        except Exception as exc:
            down = self._failed(state, source, exc)
        else:
            self._install(state, keys)
            return
        if down is not None:
            raise down  # outside the except block: not chained to the fetch's error

    async def _fetch_async(self, source: KeySource) -> dict[str, tuple[Any, ...]]:
        if self._http_client is not None:
            return await self._fetch_with_async(self._http_client, source)
        async with httpx2.AsyncClient(
            verify=self._verify, follow_redirects=False, trust_env=True
        ) as client:
            return await self._fetch_with_async(client, source)

    async def _fetch_with_async(
        self, client: AsyncGetter, source: KeySource
    ) -> dict[str, tuple[Any, ...]]:
        deadline = time.monotonic() + FETCH_TIMEOUT
        try:
            # The one bound on the whole fetch: the client's own timeout is per read.
            async with asyncio.timeout(FETCH_TIMEOUT):
                url = source.url
                if source.discovery:
                    url = _jwks_uri_from_discovery(await _read_async(client, url, deadline))
                return parse_jwks(await _read_async(client, url, deadline))
        except TimeoutError:
            raise _past_deadline() from None

    # --- sync driver ---

    def get_key(self, source: KeySource, kid: str) -> Any:
        """The first key published under ``kid`` (``get_keys`` for all of them)."""
        return self.get_keys(source, kid)[0]

    def get_keys(self, source: KeySource, kid: str) -> tuple[Any, ...]:
        """The keys published under ``kid`` (one, unless the document repeats the kid), in the
        document's order; a typed error when there are none."""
        state = self._state(source)
        found, stale, seen, held = self._lookup(state, kid)
        if found is not None:
            if stale:  # served now, refreshed behind it
                self._refresh_in_thread(state, source, seen)
            return found
        if not held and not stale:
            raise self._down(state, source)  # a fetch just failed: no other one yet
        self._refresh_sync(state, source, seen, unknown_kid=not stale)
        found, _, _, _ = self._lookup(state, kid)
        if found is None:
            # The latest fetch (this one's, or another thread's done meanwhile) may have
            # failed: then the kid is not judged.
            raise self._missing(state, source, kid)
        return found

    def _refresh_sync(
        self, state: _State, source: KeySource, seen: int, *, unknown_kid: bool
    ) -> None:
        # ``sync_lock`` makes threads that need the same refresh wait for the one doing it;
        # the generation tells them it happened since they looked (worked or failed: either
        # way not again now). A thread that runs an event loop (a sync verify() called from
        # async code) never waits for a fetch another thread or loop runs: its loop, and every
        # request on it, would stop meanwhile (and with it a fetch that loop runs). It is
        # answered from the keys it finds, or fetches itself when nobody else is.
        on_loop = loop_running_here()
        if unknown_kid:
            with self._lock:
                if state.generation != seen:
                    return
                elsewhere = self._elsewhere_locked(state)
            if elsewhere is not None:
                # An async fetch in flight (a sync one holds ``sync_lock``): waited for
                # outside ``sync_lock``, so that no thread queues behind a waiter.
                if not on_loop:
                    concurrent.futures.wait([elsewhere[0]], timeout=elsewhere[1])
                return
        if not state.sync_lock.acquire(blocking=not on_loop):
            return  # another thread is fetching: a loop's thread does not wait for it
        try:
            with self._lock:
                if state.generation != seen:
                    return
                if unknown_kid:
                    if self._elsewhere_locked(state) is not None:
                        return  # an async fetch began meanwhile: not a second one now
                    if not self._claim_refetch_locked(state):
                        return  # rate limited
                done = self._begin_locked(state, None)
            down = None
            try:
                keys = self._fetch_sync(source)
            except Exception as exc:
                down = self._failed(state, source, exc)
            else:
                self._install(state, keys)
            finally:
                self._end(state, done)
        finally:
            state.sync_lock.release()
        if down is not None:
            raise down  # outside the except block: not chained to the fetch's error

    def _refresh_in_thread(self, state: _State, source: KeySource, seen: int) -> None:
        """One background thread per source refreshes the keys (the others are served)."""
        with self._lock:
            if state.background:
                return
            state.background = True

        def run() -> None:
            try:
                self._refresh_sync(state, source, seen, unknown_kid=False)
            except SigningKeysUnavailable:  # pragma: no cover - raised only with no keys held
                pass
            finally:
                with self._lock:
                    state.background = False

        threading.Thread(target=run, name="entra-passthrough-jwks", daemon=True).start()

    def _fetch_sync(self, source: KeySource) -> dict[str, tuple[Any, ...]]:
        """The fetch, run in a thread of its own so that the caller has its answer at the
        deadline: a blocking read cannot be cut short from here, only waited for. The thread
        ends by itself soon after (each read waits at most the time the fetch had left, and no
        read starts past the deadline)."""
        outcome: concurrent.futures.Future[dict[str, tuple[Any, ...]]] = concurrent.futures.Future()

        def run() -> None:
            try:
                outcome.set_result(self._fetch_sync_unbounded(source))
            except BaseException as exc:  # handed to the caller (who may have stopped waiting)
                outcome.set_exception(exc)

        threading.Thread(target=run, name="entra-passthrough-jwks-fetch", daemon=True).start()
        try:
            return outcome.result(timeout=FETCH_TIMEOUT)
        except concurrent.futures.TimeoutError:
            raise _past_deadline() from None

    def _fetch_sync_unbounded(self, source: KeySource) -> dict[str, tuple[Any, ...]]:
        if self._sync_http_client is not None:
            return self._fetch_with_sync(self._sync_http_client, source)
        with httpx.Client(verify=self._verify, follow_redirects=False, trust_env=True) as client:
            return self._fetch_with_sync(client, source)

    def _fetch_with_sync(self, client: SyncGetter, source: KeySource) -> dict[str, tuple[Any, ...]]:
        deadline = time.monotonic() + FETCH_TIMEOUT
        url = source.url
        if source.discovery:
            url = _jwks_uri_from_discovery(read_bounded(client, url, deadline))
        return parse_jwks(read_bounded(client, url, deadline))


#: After a failed fetch with no keys held, the next fetch waits this long (seconds, at most
#: ``min_refetch_interval``): the refusals meanwhile say ``Retry-After: 5``.
_RETRY_WITHOUT_KEYS = 5.0


#: How long past ``FETCH_TIMEOUT`` a caller of another driver waits for a fetch in flight (its
#: end reaches the waiter a loop iteration or a thread switch later).
_GRACE = 1.0


def _retrieve(task: asyncio.Task[None]) -> None:
    # Every waiter may have been cancelled; mark the outcome retrieved so asyncio does not
    # log "Task exception was never retrieved" (the waiters that remain still get it).
    if not task.cancelled():
        task.exception()


def _ok(response: _Response) -> bytes:
    """The body of a getter that offers no streaming (``get`` only): read by the getter itself,
    bounded in time by the fetch's deadline, in size only afterwards (``parse_jwks``)."""
    if response.status_code != 200:
        raise ValueError(f"HTTP {response.status_code}")
    return response.content


def _past_deadline() -> TimeoutError:
    # Only the type reaches the log and the 503's message (``KeySet._failed``).
    return TimeoutError(f"no complete answer within {FETCH_TIMEOUT:g} s")


def _left(deadline: float) -> float:
    """Seconds left before ``deadline``; ``TimeoutError`` when none are (no read starts late)."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise _past_deadline()
    return left


def _head(response: Any) -> None:
    """Refuse an answer before its body is read: not a 200, or announcing too large a body."""
    if response.status_code != 200:
        raise ValueError(f"HTTP {response.status_code}")
    length = response.headers.get("content-length")
    if length is not None and length.strip().isdigit() and int(length) > MAX_DOCUMENT_BYTES:
        raise ValueError("key document larger than 1 MiB")


def _gather(body: bytearray, chunk: bytes, deadline: float) -> None:
    """Add a chunk; stop past the size cap or the deadline (a body may be endless, or come a
    byte at a time: neither is read on)."""
    body += chunk
    if len(body) > MAX_DOCUMENT_BYTES:
        raise ValueError("key document larger than 1 MiB")
    _left(deadline)


async def _read_async(client: AsyncGetter, url: str, deadline: float) -> bytes:
    stream = getattr(client, "stream", None)
    if not callable(stream):
        return _ok(await client.get(url, timeout=_left(deadline)))
    body = bytearray()
    async with stream("GET", url, timeout=_left(deadline)) as response:
        _head(response)
        async for chunk in response.aiter_bytes():
            _gather(body, chunk, deadline)
    return bytes(body)


def read_bounded(client: SyncGetter, url: str, deadline: float) -> bytes:
    """The 200 body of ``GET url`` (``client``: httpx, ``requests`` or a session of either),
    read by ``deadline`` (``time.monotonic()``; ``TimeoutError`` past it) and at most
    ``MAX_DOCUMENT_BYTES`` (``ValueError``, as for a status other than 200)."""
    body = bytearray()
    if _is_requests(client):
        # requests: ``stream=True`` and ``read1`` (what has arrived, at most _READ_SIZE):
        # ``iter_content(n)`` blocks until n bytes have come, however slowly.
        response = client.get(url, timeout=_left(deadline), stream=True)  # type: ignore[call-arg]
        with response:
            _head(response)
            read1 = getattr(response.raw, "read1", None)
            chunks: Any = (
                iter(lambda: read1(_READ_SIZE, decode_content=True), b"")
                if callable(read1)
                else response.iter_content(1024)  # urllib3 1.x: no read1
            )
            for chunk in chunks:
                _gather(body, chunk, deadline)
        return bytes(body)
    stream = getattr(client, "stream", None)
    if not callable(stream):
        return _ok(client.get(url, timeout=_left(deadline)))
    with stream("GET", url, timeout=_left(deadline)) as response:
        _head(response)
        for chunk in response.iter_bytes():
            _gather(body, chunk, deadline)
    return bytes(body)


def _is_requests(client: object) -> bool:
    """The ``requests`` module or a ``requests.Session`` (the consent client's getters)."""
    import requests

    return client is requests or isinstance(client, requests.Session)


def _unknown_kid(kid: str) -> TokenVerificationError:
    return TokenVerificationError(
        f"the token is signed with key {kid[:64]!r}, which the issuer does not publish "
        "(forged, from another cloud or tenant, or a key rotation not yet visible)."
    )
