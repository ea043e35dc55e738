"""The token cache above every source: bounded LRU, refresh-ahead, single-flight (sync and async).

Decisions (docs/sources-and-policy.md explains them to users):

* **Key.** Built by the chain: ``(source name, cache partition, sorted scopes, claims, client
  capabilities)``; the partition is the source's (e.g. client and sha256 of the assertion, or
  client, tenant and user key). The cache never sees an assertion, only its hash.
* **Lifetime.** An entry is *usable* until ``expires_on - skew`` (skew = min(30 s, 1/10 of the
  lifetime)) and never past the ``cap`` given when it is stored (the caller's assertion ``exp``).
* **Capped entries live to the cap, with no refresh.** A downstream (OBO) token is issued after
  the user's token, so its own expiry is almost always past the assertion's: the cap applies.
  Every token acquired later for that assertion would end at the same cap, so nothing fresher can
  be had: such an entry is served until the cap (the token itself is still valid then) and is
  never refreshed ahead nor dropped early. One round trip per assertion, over its whole life.
  A token that ends just short of the cap (an identity provider that caps it at the assertion
  itself, in whole seconds) counts as capped too, served to its own expiry.
* **Refresh ahead**, for the other entries (an app token, a downstream token that expires before
  its assertion): once less than min(5 min, 1/2 of the lifetime) is left, the *first* request
  that sees the entry starts a refresh in the background (a task on its loop, or a daemon thread
  for a sync caller) and, like every other request, gets the cached token without waiting. If
  that refresh fails, the still-valid token keeps being served and the failure is logged; the
  next attempt waits half of the time the token has left (a refresh never turns a working token
  into an error, and a failing Entra is not asked once per request). When it failed because the
  provider throttles or is down, the entry is served past the skew, to its token's own expiry
  less ``_UNAVAILABLE_MARGIN``. One refresh per key at a time.
* **Single-flight.** One acquisition per key at a time, in threads and in tasks (one
  ``concurrent.futures.Future`` per key is awaitable from any loop and waitable from any thread).
  Waiters get the leader's result or its error; errors are never stored.
* **Bounded.** ``max_entries`` (LRU). The hit path is a dict lookup under a lock: no I/O, no
  hashing, no allocation beyond the key tuple the chain builds. A capped entry is stored as its
  result alone (no timing object: it is usable until ``expires_on`` and never refreshed).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import logging
import math
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Generator, Hashable
from dataclasses import dataclass

from ._checks import seconds, whole_number
from ._drive import drive, drive_async, loop_running_here
from ._errors import SourceUnavailable, Throttled
from ._l2 import SharedCache
from ._types import Cap, TokenResult, cap_value, entry_timing, token_exp

logger = logging.getLogger("entra_passthrough.cache")

#: How long a thread waits for another thread's acquisition of the same key.
_SYNC_WAIT_SECONDS = 120.0
#: A waiter whose leader is gone for good (its event loop closed under it, its acquisition
#: cancelled, a sync leader interrupted) takes over; bounded. (An async leader that is
#: cancelled hands its running acquisition over instead: ``_hand_over``.)
_MAX_TAKEOVERS = 3
#: How often a waiter looks whether its leader's event loop is still there (a loop closed
#: without cancelling its tasks strands the leader: it never finishes).
_LEADER_CHECK = 0.5
#: After a failed refresh, the next one is due after this share of the time the token has left.
_RETRY_SHARE = 0.5
#: While refreshes fail because the identity provider is throttling or down, an entry is served
#: to its token's own expiry less this (a resource's clock a little ahead, a request in flight).
_UNAVAILABLE_MARGIN = 5.0
#: A new token for a capped key (one bound to an assertion) that ends no later than this past
#: the one it replaces gained nothing: the identity provider ends this assertion's tokens
#: there (it caps them itself, and this host's clock is behind its clock by more than the
#: slack above, so the cap did not show). Refreshing again would get the same end again.
_NO_GAIN = 1.0
#: A resource that refuses the token acquired to replace one it refused, within this many
#: seconds, refuses every token of that caller (a wrong audience or issuer in its checks, a key
#: set it cannot fetch): a third token would be refused too. Until the window ends that refusal
#: stands (no entry dropped, no token request), so a misconfigured resource costs one token
#: request per caller and scopes per window, not one per request (a POST storm that gets the
#: tenant throttled for every user).
REFUSAL_WINDOW = 30.0
#: How many expired entries each store removes from the least recently used end (``_sweep``):
#: more than one, so that the dead entries of callers who left go faster than new ones come.
_SWEEP = 2
#: A token refused with less than this many seconds left (or already expired) on this host's
#: clock was refused for its expiry, as far as can be told (a resource whose clock runs ahead of
#: this one's, a request that took its last moments to arrive): that says nothing about the
#: resource refusing every token, and the refusal is neither weighed nor recorded (its entry is
#: dropped and the request retried once, as for any first refusal). Only a token served to its
#: own end is refused this late: one that expires with its assertion (its entry's cap), so at
#: most a few requests per assertion; the others are replaced before the skew. Short (a clock
#: ahead by more is not covered), so that a source whose tokens live only seconds, behind a
#: resource that refuses every token, costs a token request per request only in each token's
#: last 2 s, not over its whole life.
EXPIRY_REFUSAL = 2.0


def _retrieved(future: asyncio.Future[TokenResult | None]) -> None:
    if not future.cancelled():
        future.exception()


#: Every ``TokenCache`` of the process, for ``_after_fork_in_child``.
_CACHES: weakref.WeakSet[TokenCache] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for cache in list(_CACHES):
        cache._forked()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _leader_stranded(future: concurrent.futures.Future[TokenResult | None]) -> bool:
    """The acquisition ``future`` was led from an event loop that is now closed: closed without
    cancelling its tasks (a loop managed by hand, a thread's loop stopped and dropped), so the
    leader never runs again and never finishes it."""
    loop: asyncio.AbstractEventLoop | None = getattr(future, "leader_loop", None)
    return loop is not None and loop.is_closed() and not future.done()


class _Acquire:
    """Step: call ``acquire`` and send back its result."""

    __slots__ = ()


_ACQUIRE = _Acquire()


class _Lead(_Acquire):
    """Step: call ``acquire`` as the leader of ``future``'s acquisition. A driver whose caller
    goes away (cancelled) may let the acquisition run on for the waiters and the cache
    (``handed_over``): the flow then leaves ``future`` to it."""

    __slots__ = ("future", "handed_over")

    def __init__(self, future: concurrent.futures.Future[TokenResult | None]) -> None:
        self.future = future
        self.handed_over = False


#: Sent back for a ``_Wait`` by a driver that must not block: the flow acquires on its own.
_OWN = object()


class _Wait:
    """Step: wait for another caller's acquisition of the same key."""

    __slots__ = ("future",)

    def __init__(self, future: concurrent.futures.Future[TokenResult | None]) -> None:
        self.future = future


class _Refresh:
    """Step: start a background refresh of ``cached`` (no request waits on it)."""

    __slots__ = ("cached",)

    def __init__(self, cached: TokenResult) -> None:
        self.cached = cached


_Step = _Acquire | _Wait | _Refresh


class _LeaderGone(Exception):
    """The task or thread acquiring this key was cancelled; a waiter should take over."""


@dataclass(slots=True)
class _Entry:
    result: TokenResult
    refresh_at: float
    usable_until: float
    refreshing: bool = False
    #: ``usable_until`` as stored (with the skew): what a failure other than throttling or an
    #: outage brings it back to, after refreshes that failed for those had extended it.
    skewed_until: float = 0.0


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters for benchmarks and diagnostics."""

    hits: int
    misses: int
    refreshes: int
    evictions: int
    size: int
    #: Refreshes running in the background right now (no request waits on them).
    refreshing: int = 0
    #: Refreshes that failed (the cached token was served on).
    refresh_failures: int = 0


class TokenCache:
    """A bounded in-memory token cache with refresh-ahead and single-flight acquisition.

    A ``TokenChain`` makes one by default; pass your own to share it between chains or to size
    it (``max_entries``). It holds access tokens only, in process memory.

    >>> chain = TokenChain([OnBehalfOf.from_env()], cache=TokenCache(max_entries=50_000))
    """

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.time,
        shared: SharedCache | None = None,
        refusal_window: float = REFUSAL_WINDOW,
    ) -> None:

        self.max_entries = whole_number(
            max_entries,
            what="TokenCache(max_entries=...)",
            low=1,
            fix="pass max_entries= how many tokens the cache may hold (default 10000).",
        )
        self.refusal_window = seconds(refusal_window, what="refusal_window", low=0, high=86_400)
        self._clock = clock
        # key -> (when the resource last refused that key's token, hash of the refused token):
        # a refusal of the token that replaced it, within ``refusal_window``, is not retried.
        self._refusals: OrderedDict[Hashable, tuple[float, int]] = OrderedDict()
        #: L2 shared by replicas (``SharedTokenCache``), asked on a miss or a due refresh only.
        self.shared = shared
        # key -> the result alone (an entry capped by its assertion) or an _Entry (timing)
        self._entries: OrderedDict[Hashable, TokenResult | _Entry] = OrderedDict()
        self._inflight: dict[Hashable, concurrent.futures.Future[TokenResult | None]] = {}
        self._lock = threading.Lock()
        self._hits = self._misses = self._refreshes = self._evictions = 0
        self._refresh_failures = 0
        # Background refreshes in flight (strong references: a task is otherwise only weakly
        # held by its loop); one per key at most.
        self._background: set[asyncio.Task[None] | threading.Thread] = set()
        # Invalidations reaching the shared cache (L2) in the background (strong references).
        self._dropping: set[asyncio.Task[None]] = set()
        # Acquisitions whose leader went away, running on for their waiters (``_hand_over``).
        self._handed: set[asyncio.Future[TokenResult | None]] = set()
        _CACHES.add(self)

    def _forked(self) -> None:
        """In a forked child: the parent's acquisitions and refreshes in flight never finish
        here (their threads and loops are the parent's). A caller joining one waited 120 s
        (sync) or for ever (async); a refresh marked in flight was never made again. The child
        keeps the tokens and starts its own flights."""
        self._lock = threading.Lock()
        self._inflight = {}
        self._background = set()
        self._dropping = set()
        self._handed = set()
        for entry in self._entries.values():
            if isinstance(entry, _Entry):
                entry.refreshing = False

    def __repr__(self) -> str:
        return f"TokenCache(size={len(self._entries)}, max_entries={self.max_entries})"

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                self._hits,
                self._misses,
                self._refreshes,
                self._evictions,
                len(self._entries),
                len(self._background),
                self._refresh_failures,
            )

    def wait_refreshes(self, timeout: float = 30.0) -> bool:
        """Block until the background refreshes started by *sync* callers are done (tests,
        shutdown); ``False`` if some still run after ``timeout``. Async refreshes are tasks:
        await ``wait_refreshes_async``."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                threads = [t for t in self._background if isinstance(t, threading.Thread)]
            if not threads:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            threads[0].join(left)

    async def wait_refreshes_async(self) -> None:
        """Await the background refreshes started on this event loop, the invalidations on
        their way to the shared cache, and the acquisitions whose leader went away (tests,
        shutdown)."""
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                tasks = [
                    t
                    for t in (*self._background, *self._dropping, *self._handed)
                    if isinstance(t, asyncio.Task) and t.get_loop() is loop and not t.done()
                ]
            if not tasks:
                return
            await asyncio.wait(tasks)

    # -- the hit path ----------------------------------------

    def _lookup(
        self, key: Hashable, now: float, *, claim: bool = True
    ) -> tuple[TokenResult | None, bool]:
        """(usable result or None, whether this caller must refresh it). ``claim=False``
        never takes the refresh on (a plain read would leave the entry marked refreshing)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None, False
            if isinstance(entry, TokenResult):  # capped: usable to its cap, never refreshed
                if now >= entry.expires_on:
                    del self._entries[key]
                    return None, False
                self._entries.move_to_end(key)
                self._hits += 1
                return entry, False
            if now >= entry.usable_until:
                del self._entries[key]
                return None, False
            self._entries.move_to_end(key)
            self._hits += 1
            if not claim or now < entry.refresh_at or entry.refreshing or key in self._inflight:
                return entry.result, False
            entry.refreshing = True
            return entry.result, True

    def peek(self, key: Hashable) -> TokenResult | None:
        """The cached result if it is usable and not due for a refresh nobody started yet; no
        side effect but recency. The chain's hot path; anything else goes through
        ``get_or_acquire*``."""
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if isinstance(entry, TokenResult):
                if now >= entry.expires_on:
                    return None
                result = entry
            elif now >= entry.usable_until or (now >= entry.refresh_at and not entry.refreshing):
                return None
            else:
                result = entry.result
            self._entries.move_to_end(key)
            self._hits += 1
            return result

    def get(self, key: Hashable) -> TokenResult | None:
        """The cached, usable result for ``key`` (no refresh, no acquisition)."""
        return self._lookup(key, self._clock(), claim=False)[0]

    # -- storing ----------------------------------------

    def _store(self, key: Hashable, result: TokenResult, cap: Cap) -> TokenResult:
        cap = cap_value(cap)
        now = self._clock()
        refresh_at, usable_until = entry_timing(result.expires_on, cap, now)
        if cap is not None and refresh_at != math.inf:
            # Not capped on this host's clock: compared on the issuer's (the token's own
            # ``exp`` against the assertion's), it may be, when this host's clock is behind
            # (``entry_timing``). Decoded here only, once per token acquired.
            own = token_exp(result.token)
            if own is not None:
                refresh_at, usable_until = entry_timing(result.expires_on, cap, now, own_exp=own)
        if cap is not None and result.expires_on > cap:
            result = dataclasses.replace(result, expires_on=cap, cache_key=key)
        else:
            result = dataclasses.replace(result, cache_key=key)
        if usable_until <= now:
            return result  # already (nearly) expired: hand it out once, do not keep it
        # A capped entry needs no timing of its own (usable until ``expires_on``, which is the
        # cap, and never refreshed): the result is stored alone, 64 B less per OBO entry.
        capped = refresh_at == math.inf and usable_until == result.expires_on
        with self._lock:
            if not capped and cap is not None:
                before = self._entries.get(key)
                if (
                    isinstance(before, _Entry)
                    and before.result.expires_on >= result.expires_on - _NO_GAIN
                ):
                    capped = True  # served to its own end, never refreshed ahead again
            self._entries[key] = (
                result if capped else _Entry(result, refresh_at, usable_until, False, usable_until)
            )
            self._entries.move_to_end(key)
            self._sweep(now)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
                self._evictions += 1
        return result

    def _sweep(self, now: float) -> None:
        """Under the lock, at each store: drop up to ``_SWEEP`` expired entries from the least
        recently used end. A caller who never comes back (a new assertion per user per hour)
        leaves an expired entry that no lookup removes: without this the cache fills with
        dead tokens up to ``max_entries`` and keeps them. O(1) per store; the least recently
        used entries are, under such churn, the first to expire."""
        entries = self._entries
        for _ in range(_SWEEP):
            oldest = next(iter(entries), None)
            if oldest is None:
                return
            entry = entries[oldest]
            end = entry.expires_on if isinstance(entry, TokenResult) else entry.usable_until
            if now < end:
                return
            del entries[oldest]

    def invalidate(
        self,
        key: Hashable,
        *,
        rejected: TokenResult | None = None,
        where: Hashable | None = None,
    ) -> bool:
        """Drop the entry (e.g. after the resource answered 401 to its token). Returns
        ``False``, and drops nothing, when the resource at ``where`` refuses ``rejected``
        although it is the token that replaced one it refused less than ``refusal_window``
        seconds ago, and it has not accepted it since (``accepted``): that resource refuses
        this caller's every token, and the 401 is not worth a token request. Without
        ``where`` (a claims challenge, or a caller that names no resource) nothing is weighed.

        With a shared cache (L2), the refused token (``rejected``; by default the entry
        dropped here) is dropped there too while L2 still holds it (never a newer token
        another replica wrote), so that no replica is served it again; this replica never
        takes it from L2 again even if the store fails. On an event loop the store call runs
        as a task (``wait_refreshes_async`` awaits it): no I/O here. Never raises."""
        with self._lock:
            if (
                rejected is not None
                and where is not None
                and self._refused_again((key, where), key, rejected)
            ):
                return False
            entry = self._entries.get(key)
            held = (
                None if entry is None else entry if isinstance(entry, TokenResult) else entry.result
            )
            if held is not None and rejected is not None and held.token != rejected.token:
                # A newer token already replaced the refused one (another request's retry, a
                # refresh): it stays. Requests that still carried the old one must not evict it.
                entry = None
            elif entry is not None:
                del self._entries[key]
        shared = self.shared
        if shared is None:
            return True
        if rejected is None and entry is not None:
            rejected = entry if isinstance(entry, TokenResult) else entry.result
        if rejected is None:
            return True  # nothing cached here: no token to tell L2 about
        try:
            pending = shared.invalidate(key, rejected)
            if pending is not None:
                task = asyncio.get_running_loop().create_task(pending)
                with self._lock:
                    self._dropping.add(task)
                task.add_done_callback(self._dropped)
        except Exception as exc:  # the 401 retry goes on; the L2 entry expires by itself
            logger.warning(
                "could not drop the refused token %s from the shared cache (%s)",
                rejected.fingerprint,
                type(exc).__name__,
            )
        return True

    def _refused_again(self, slot: Hashable, key: Hashable, rejected: TokenResult) -> bool:
        """Under the lock: whether the resource (``slot``: the entry's key and the resource)
        refuses the token that replaced the one it refused last, within the window, while that
        token is still the entry. Otherwise this refusal is recorded (the next one is measured
        from it), unless ``rejected`` was refused for its expiry (``EXPIRY_REFUSAL``)."""
        now = self._clock()
        if rejected.expires_on - now < EXPIRY_REFUSAL:
            return False
        mark = hash(rejected.token)
        last = self._refusals.get(slot)
        # (a clock stepped back counts as the window over: it never lasts longer than set)
        if last is not None and last[1] != mark and 0 <= now - last[0] < self.refusal_window:
            entry = self._entries.get(key)
            held = entry if isinstance(entry, TokenResult) else getattr(entry, "result", None)
            if held is not None and held.token == rejected.token:
                return True
        if last is not None and last[1] == mark:
            # Another request that carried the same refused token (the entry holds its
            # replacement, or nothing yet: it goes on), or a source that handed the very same
            # token back (azure-identity, a managed identity endpoint, az cache their own):
            # refused again, and nothing new to be had within the window.
            entry = self._entries.get(key)
            held = entry if isinstance(entry, TokenResult) else getattr(entry, "result", None)
            return (
                held is not None
                and held.token == rejected.token
                and 0 <= now - last[0] < self.refusal_window
            )
        self._refusals[slot] = (now, mark)
        self._refusals.move_to_end(slot)
        while len(self._refusals) > self.max_entries:
            self._refusals.popitem(last=False)
        return False

    def accepted(self, key: Hashable, *, where: Hashable) -> None:
        """The resource at ``where`` accepted the token that replaced one it refused: it does
        not refuse every token of this caller, and its next refusal is retried."""
        with self._lock:
            self._refusals.pop((key, where), None)

    def _dropped(self, task: asyncio.Task[None]) -> None:
        with self._lock:
            self._dropping.discard(task)

    def adopt(self, key: Hashable, result: TokenResult) -> None:
        """Serve ``result`` (a token for the same caller and scopes, acquired with a claims
        challenge) under ``key``, whose own token the resource refused for want of those
        claims: until ``result`` expires, the requests that look ``key`` up carry it instead
        of acquiring a token the resource refuses again, and the claims retry each time. No
        refresh ahead (a refresh without the claims would get a refused token back); once it
        expires, one request meets the challenge again."""
        self._store(key, result, result.expires_on)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def _end_refresh(
        self, key: Hashable, *, failed: bool, unavailable: bool = False, declined: bool = False
    ) -> None:
        with self._lock:
            if failed:
                self._refresh_failures += 1
            entry = self._entries.get(key)
            if isinstance(entry, _Entry) and entry.refreshing:
                entry.refreshing = False
                if failed:  # next attempt after half of what is left, not on the next request
                    now = self._clock()
                    if unavailable:
                        # The identity provider is throttling or down (nothing about this
                        # token): serve it on to its own expiry, less a margin, rather than
                        # turn a working token into ``Throttled`` for the skew's last seconds
                        # (up to 30 s of errors for every request of the key).
                        entry.usable_until = max(
                            entry.usable_until, entry.result.expires_on - _UNAVAILABLE_MARGIN
                        )
                    else:  # any other failure: the skew stands again
                        entry.usable_until = min(entry.usable_until, entry.skewed_until)
                    entry.refresh_at = now + (entry.usable_until - now) * _RETRY_SHARE
                elif declined:
                    now = self._clock()
                    entry.refresh_at = now + (entry.usable_until - now) * _RETRY_SHARE

    # -- single flight ----------------------------------------

    def _join(
        self, key: Hashable, loop: asyncio.AbstractEventLoop | None = None
    ) -> tuple[concurrent.futures.Future[TokenResult | None], bool]:
        """The in-flight future for ``key`` and whether the caller leads the acquisition
        (``loop``: the leader's event loop, for its waiters to see it closed)."""
        with self._lock:
            fut = self._inflight.get(key)
            if fut is not None:
                return fut, False
            fut = concurrent.futures.Future()
            fut.leader_loop = loop  # type: ignore[attr-defined]
            self._inflight[key] = fut
            self._misses += 1
            return fut, True

    def _abandon(self, key: Hashable, fut: concurrent.futures.Future[TokenResult | None]) -> None:
        """A waiter found ``fut``'s leader stranded (``_leader_stranded``): the key is free for a
        new leader, and every waiter of ``fut`` takes over (``_LeaderGone``) instead of waiting
        for a leader that will never finish."""
        with self._lock:
            if self._inflight.get(key) is fut:
                del self._inflight[key]
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            fut.set_exception(_LeaderGone())

    def _finish(
        self,
        key: Hashable,
        fut: concurrent.futures.Future[TokenResult | None],
        result: TokenResult | None = None,
        error: BaseException | None = None,
    ) -> None:
        with self._lock:
            if self._inflight.get(key) is fut:
                del self._inflight[key]
        if fut.done():
            return  # defensive: a future cancelled from outside has no one left to tell
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)

    # -- one decision flow, two drivers ----------------------------------------
    #
    # ``_flow`` makes every decision of a lookup (hit, refresh due, lead, wait, take over) and
    # never does I/O: it yields steps and its driver does them (encode/httpx's ``auth_flow``
    # idea, as the apply stage's ``_flow.py``). ``_ACQUIRE``: call ``acquire`` and send back
    # its result (or throw its error in). ``_Wait``: wait for another caller's future and send
    # back its result (or throw its error in); a sync driver that must not block sends
    # ``_OWN`` instead. ``_Refresh``: start a background refresh, send back ``None``.

    def _flow(
        self,
        key: Hashable,
        cap: Cap,
        due: TokenResult | None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> Generator[_Step, object, TokenResult | None]:
        """``due``: the cached result this caller must refresh (``_lookup`` claimed it for
        this caller), else ``None``. A plain hit never gets here: the drivers return it.
        ``loop``: the async driver's event loop."""
        if due is not None:
            yield _Refresh(due)
            return due
        for _ in range(_MAX_TAKEOVERS):
            fut, leader = self._join(key, loop)
            if not leader:
                try:
                    shared = yield _Wait(fut)
                except _LeaderGone:
                    continue
                if shared is not _OWN:
                    return shared  # type: ignore[return-value]
            step = _Lead(fut) if leader else _ACQUIRE
            try:
                result = yield step
            except BaseException as exc:
                if isinstance(step, _Lead) and not step.handed_over:
                    # Cancelled, or finalized where it stood (GeneratorExit: its loop was
                    # closed under it): the waiters take over, never handed a BaseException.
                    gone = not isinstance(exc, Exception)
                    self._finish(key, fut, error=_LeaderGone() if gone else exc)
                raise
            stored = self._store(key, result, cap) if result is not None else None  # type: ignore[arg-type]
            if leader:
                self._finish(key, fut, result=stored)
            return stored
        raise SourceUnavailable(
            "Token acquisition was cancelled repeatedly by other requests for the same key."
        )

    async def get_or_acquire_async(
        self,
        key: Hashable,
        acquire: Callable[[], Awaitable[TokenResult | None]],
        *,
        cap: Cap = None,
    ) -> TokenResult | None:
        """The cached result, or one acquisition shared by every concurrent caller of ``key``.

        ``acquire`` returns ``None`` when the source does not apply; that is not cached.
        """
        cached, refresh = self._lookup(key, self._clock())
        if cached is not None and not refresh:
            return cached  # the hit: no flow
        if self.shared is not None:  # no I/O here: the wrapped call runs only if L1 misses
            acquire = self.shared.wrap(self, key, acquire, cap)

        async def do(step: _Step) -> object:
            if isinstance(step, _Lead):
                # In a task of its own: a leader that goes away (its client disconnected, the
                # app's timeout) hands it over rather than cancel it. Its waiters then get the
                # answer Entra is computing anyway; before, each took over with a new request
                # to Entra, and a request that stayed failed after three such takeovers.
                running: asyncio.Future[TokenResult | None] = asyncio.ensure_future(acquire())
                try:
                    return await asyncio.shield(running)
                except asyncio.CancelledError:
                    if running.cancelled():
                        raise  # the acquisition itself was cancelled: the waiters take over
                    step.handed_over = True
                    self._hand_over(key, step.future, running, cap)
                    raise
            if isinstance(step, _Acquire):
                return await acquire()
            if isinstance(step, _Wait):
                # Not cancelled with this waiter (a client went away): cancelling the shared
                # future would fail the leader and every other waiter (``asyncio.wait`` leaves
                # it alone).
                shared = asyncio.wrap_future(step.future)
                shared.add_done_callback(_retrieved)  # no "exception never retrieved" noise
                while True:
                    done, _ = await asyncio.wait((shared,), timeout=_LEADER_CHECK)
                    if done:
                        return shared.result()
                    if _leader_stranded(step.future):
                        self._abandon(key, step.future)
            flow = self._refresh_flow(key, step.cached, cap, in_thread=False)
            self._start_refresh_async(drive_async(flow, do))
            return None

        loop = asyncio.get_running_loop()
        return await drive_async(self._flow(key, cap, cached, loop), do)

    def get_or_acquire(
        self,
        key: Hashable,
        acquire: Callable[[], TokenResult | None],
        *,
        cap: Cap = None,
    ) -> TokenResult | None:
        """Sync driver of the same flow as ``get_or_acquire_async`` (threads wait for the
        leading thread)."""
        cached, refresh = self._lookup(key, self._clock())
        if cached is not None and not refresh:
            return cached  # the hit: no flow
        if self.shared is not None:  # no I/O here: the wrapped call runs only if L1 misses
            acquire = self.shared.wrap_sync(self, key, acquire, cap)

        def do(step: _Step) -> object:
            if isinstance(step, _Acquire):
                return acquire()
            if isinstance(step, _Wait):
                if loop_running_here():
                    # Blocking this thread would stall the event loop that may be running
                    # the leader (a sync call inside async code): acquire on our own instead.
                    return _OWN
                end = time.monotonic() + _SYNC_WAIT_SECONDS
                while True:
                    try:
                        return step.future.result(timeout=_LEADER_CHECK)
                    except concurrent.futures.TimeoutError:
                        if _leader_stranded(step.future):
                            self._abandon(key, step.future)
                        elif time.monotonic() >= end:
                            raise SourceUnavailable(
                                "Timed out waiting for another thread's token acquisition for "
                                "the same key."
                            ) from None
            flow = self._refresh_flow(key, step.cached, cap, in_thread=True)
            self._start_refresh_sync(key, functools.partial(drive, flow, do))
            return None

        return drive(self._flow(key, cap, cached), do)

    def _refresh_flow(
        self, key: Hashable, cached: TokenResult, cap: Cap, *, in_thread: bool
    ) -> Generator[_Step, object, None]:
        """A background refresh of ``cached``: one ``_ACQUIRE`` step, then its bookkeeping."""
        try:
            result = yield _ACQUIRE
        except Exception as exc:
            self._refresh_failed(key, cached, exc)
            return
        except BaseException as exc:
            if in_thread:  # nobody to raise it to in this thread
                self._refresh_failed(key, cached, exc)
                return
            self._end_refresh(key, failed=False)  # cancelled (its loop is closing): the next
            raise  # request may retry
        if result is None:
            # The source did not apply this time: the next attempt after half of what is left,
            # as after a failure, not on the next request (one refresh per request until the
            # token ran out, each through the shared cache's lease).
            self._end_refresh(key, failed=False, declined=True)
        else:
            self._store(key, result, cap)  # type: ignore[arg-type]

    def _hand_over(
        self,
        key: Hashable,
        fut: concurrent.futures.Future[TokenResult | None],
        running: asyncio.Future[TokenResult | None],
        cap: Cap,
    ) -> None:
        """The leader of ``fut`` went away while ``running`` acquires: when it lands, its token
        is cached and handed to the waiters (or its error; if it is cancelled in turn, the
        waiters take over)."""

        def landed(task: asyncio.Future[TokenResult | None]) -> None:
            with self._lock:
                self._handed.discard(task)
            if task.cancelled():
                self._finish(key, fut, error=_LeaderGone())
                return
            error = task.exception()
            if error is not None:
                gone = not isinstance(error, Exception)
                self._finish(key, fut, error=_LeaderGone() if gone else error)
                return
            result = task.result()
            stored = self._store(key, result, cap) if result is not None else None
            self._finish(key, fut, result=stored)

        with self._lock:
            # (a loop closed by hand with acquisitions running never ends them: not kept)
            self._handed = {t for t in self._handed if not t.get_loop().is_closed()}
            self._handed.add(running)
        running.add_done_callback(landed)

    def _start_refresh_async(self, refresh: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(refresh)
        with self._lock:
            self._refreshes += 1
            self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, done: asyncio.Task[None] | threading.Thread) -> None:
        with self._lock:
            self._background.discard(done)

    def _refresh_failed(self, key: Hashable, cached: TokenResult, exc: BaseException) -> None:
        logger.warning(
            "refresh ahead failed (%s); serving the cached token %s until it expires",
            type(exc).__name__,
            cached.fingerprint,
        )
        unavailable = isinstance(exc, SourceUnavailable | Throttled)
        self._end_refresh(key, failed=True, unavailable=unavailable)

    def _start_refresh_sync(self, key: Hashable, refresh: Callable[[], None]) -> None:
        thread = threading.Thread(
            target=self._in_thread,
            args=(refresh,),
            name="entra-passthrough-refresh",
            daemon=True,
        )
        with self._lock:
            self._refreshes += 1
            self._background.add(thread)
        try:
            thread.start()
        except BaseException:  # no thread to be had: the next request may try again
            self._background_done(thread)
            self._end_refresh(key, failed=False)
            raise

    def _in_thread(self, refresh: Callable[[], None]) -> None:
        try:
            refresh()
        finally:
            self._background_done(threading.current_thread())
