"""The shared (L2) token cache: user tokens shared by N replicas through a ``TokenStore``.

``TokenCache`` (L1, in process) stays the hot path: a hit there never reaches this module, so an
L1 hit makes no round trip to the shared store. On an L1 miss (or a refresh due) the cache hands
its acquisition to ``SharedTokenCache.wrap``, which:

1. reads L2: a usable entry (newer than what L1 holds) is the answer, no request to Entra;
2. otherwise takes a short **lease** on the key (``put(expect=None)`` with a TTL: one holder
   across all replicas; the version it gets back is its fencing token) and acquires, writes L2,
   releases the lease (``delete(expect=version)``: never someone else's). While it acquires it
   renews the lease every third of its length (``put(expect=version)``), so a slow Entra does
   not let another replica in; a renewal the store fails is retried (sooner) while the lease
   may still be ours, a holder that died stops renewing. **Fencing**: before writing L2 the
   holder renews its lease once more, and a holder that lost it (it ran out and another replica
   took over) does not write: the new holder's result wins. The write itself is a
   compare-and-set on the L2 entry's version as the holder saw it when it took the lease, so
   nothing written meanwhile is overwritten. A cancel of the caller stops none of the lease's
   store calls (the lease write, then the L2 write and the release, run in tasks of their own):
   a lease taken for a caller already gone is released when Redis answers;
3. replicas that did not get the lease poll L2 with a bounded backoff until the holder wrote
   it; if the holder died, its lease runs out and one of them takes over. A sync call on a
   thread that runs an event loop never polls (a task of that loop may hold the lease): it
   acquires on its own and writes nothing.

``invalidate`` (the resource answered 401 to a token, ``TokenCache.invalidate``) drops the L2
entry too, but only while it still holds the rejected token (read, then a compare-and-delete on
the version that held it: a newer token another replica wrote meanwhile stays), and remembers
the rejected token's sha256 so that this replica never takes it from L2 again, even when the
store failed the delete.

A source that had to wait for another replica's refresh of the same user (``DelegatedConsent``
waiting out a consent grant's refresh lease) asks, before redeeming, whether that replica shared
a token for this acquisition meanwhile (``shared_result_async`` / ``shared_result_sync``): the
holder of the L2 lease reads L2 once; a replica that stopped waiting for the lease (``wait``
ran out, so it acquires on its own) also waits, while another replica holds the lease, for
that replica's entry. So after a replica died mid-refresh the survivors make one redemption,
not one each. Nothing is read unless the source waited: an L1 or L2 hit costs nothing more.

**Grant-bound entries.** A token a source got from a grant the user can revoke
(``DelegatedConsent``: the consent the user gave through the broker, deleted by a sign-out)
is written with the grant it came from (``from_grant``: a stamp of that consent, sealed in the
entry like the rest). The broker's sign-out deletes only the grant (it cannot find the user's
entries: their keys are HMACs), so on an L2 hit of such an entry the source is asked, through
the acquisition itself (``grant_check``: one read of the grant, no token request), whether
that grant still exists and is the same one. If it is not (signed out, or signed out and
consented again: another grant), the entry is not served: it is dropped (compare-and-delete on
the version read, as ``invalidate`` does; the replica also never takes that token from L2
again) and the source acquires as usual (no grant: ``ConsentRequired``). If the source cannot
tell (the grant store failed the read), the entry is not served either and the source acquires
as usual (it reads the grant too). A source that waited for another replica's refresh gets
only an entry of the grant it just read (``shared_result_async(grant=...)``). Only such L2
hits pay the read: an L1 hit, and every other source's entries, nothing more.

The shared cache is an optimisation: when the store fails (down, slow, full, refused), the
acquisition goes straight to Entra and L2 is skipped for ``retry_after`` seconds, so a dead
Redis costs one timeout, not one per request. Entries are sealed (AES-GCM, the consent keyring,
purpose ``l2``) with the entry's whole name (the store's namespace too: ``record_aad``) as
associated data; keys are an HMAC of the L1 key (source,
partition = client, tenant and sha256 of the assertion or user key, scopes, claims): a keyspace
scan shows neither a token nor whose it is. TTL = the entry's usable life (expiry capped by the
assertion's ``exp``, as in L1). The core never imports Redis: any ``TokenStore`` works
(``MemoryStore`` shares between caches of one process, for tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Hashable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol, cast

from ._checks import seconds
from ._drive import drive, drive_async, hold, loop_running_here
from ._errors import EntraPassthroughError
from ._jwt import sha256_hex
from ._store import (
    ANY,
    AnyVersion,
    Entry,
    Keyring,
    KeyringError,
    TokenStore,
    open_record,
    record_aad,
)
from ._types import Cap, IdentityKind, TokenResult, cap_value, entry_timing

if TYPE_CHECKING:
    from ._cache import TokenCache

__all__ = [
    "GrantCheck",
    "SharedCache",
    "SharedTokenCache",
    "SyncTokenStore",
    "from_grant",
    "grant_check",
    "renew_until",
    "renew_until_sync",
]

logger = logging.getLogger("entra_passthrough.cache.shared")

AcquireFn = Callable[[], Awaitable[TokenResult | None]]
AcquireFnSync = Callable[[], TokenResult | None]

_KEY_PREFIX: Final = "ep:v1:tok:"
_LEASE_PREFIX: Final = "ep:v1:tokl:"
_FIRST_POLL: Final = 0.01
_MAX_POLL: Final = 0.1
#: Rejected tokens remembered per ``SharedTokenCache`` (until they expire; oldest out first).
_MAX_REJECTED: Final = 10_000


class SharedCache(Protocol):
    """What ``TokenCache(shared=...)`` calls on an L1 miss or a due refresh: wrap the
    acquisition so that it is answered from, and shared through, a store other replicas see.
    ``wrap_sync`` is the same for the sync API (it may return ``acquire`` unchanged)."""

    def wrap(self, cache: TokenCache, key: Hashable, acquire: AcquireFn, cap: Cap) -> AcquireFn: ...

    def wrap_sync(
        self, cache: TokenCache, key: Hashable, acquire: AcquireFnSync, cap: Cap
    ) -> AcquireFnSync: ...

    def invalidate(self, key: Hashable, rejected: TokenResult) -> Coroutine[Any, Any, None] | None:
        """The resource refused ``rejected`` (cached under ``key``): never serve it again.
        No I/O on an event loop: the store call is returned, to run as a task; without a
        running loop, done here (blocking) or not at all. Never raises."""
        ...


class SyncTokenStore(Protocol):
    """``TokenStore``'s blocking twin, for the sync API (``RedisStore.sync()``)."""

    def get(self, key: str) -> Entry | None: ...

    def put(
        self, key: str, value: bytes, *, ttl: float, expect: str | AnyVersion | None = ANY
    ) -> str | None: ...

    def delete(self, key: str, *, expect: str | AnyVersion = ANY) -> bool: ...


#: The longest ``lease``, ``wait`` or ``retry_after`` taken (seconds): longer is a typo.
_DAY: Final = 86_400.0

Recheck = Callable[[str | None], Awaitable[TokenResult | None]]
RecheckSync = Callable[[str | None], TokenResult | None]
#: The acquisition ``SharedTokenCache`` is running in this context: how to read again what
#: another replica shared for it (``shared_result_async``, ``shared_result_sync``).
_RECHECK: ContextVar[Recheck | None] = ContextVar("entra_passthrough_l2_recheck", default=None)
_RECHECK_SYNC: ContextVar[RecheckSync | None] = ContextVar(
    "entra_passthrough_l2_recheck_sync", default=None
)


#: The grant stamps a source named for the result of the acquisition under way (``from_grant``).
_GRANTED: ContextVar[list[str] | None] = ContextVar("entra_passthrough_l2_granted", default=None)
#: The check an L2 hit of a grant-bound entry asks of its source (``grant_check``).
_CHECK: ContextVar[GrantCheck | None] = ContextVar("entra_passthrough_l2_check", default=None)


async def shared_result_async(*, grant: str | None = None) -> TokenResult | None:
    """For a source that just waited for another replica's refresh of the same user: the
    token that replica shared for the acquisition under way (the shared cache's entry), if
    any; ``None`` outside a shared cache's acquisition. ``grant``: the stamp of the grant the
    source just read (``from_grant``): only an entry written from that grant is returned.
    Never raises."""
    recheck = _RECHECK.get()
    return None if recheck is None else await recheck(grant)


def shared_result_sync(*, grant: str | None = None) -> TokenResult | None:
    """``shared_result_async`` for the sync API (a blocking read)."""
    recheck = _RECHECK_SYNC.get()
    return None if recheck is None else recheck(grant)


def from_grant(stamp: str) -> None:
    """For a source whose tokens come from a grant the user can revoke (``DelegatedConsent``):
    the result it is about to return came from the grant ``stamp`` names (a stamp that is the
    same for as long as that grant exists, and another for any later grant). The shared cache
    writes the stamp into the entry, and serves the entry on an L2 hit only once the source
    confirmed that grant still stands (``grant_check``). Outside a shared cache's acquisition:
    nothing."""
    granted = _GRANTED.get()
    if granted is not None:
        granted.append(stamp)


class GrantCheck:
    """What an L2 hit of a grant-bound entry asks its source (``grant_check``): whether the
    grant ``stamp`` names still stands. The source sets ``verdict`` (``True``: that very grant
    exists; ``False``: none, or another one) and returns ``None``, requesting no token; left
    ``None``, the answer is unknown (the grant store failed). Either way but ``True`` the entry
    is not served."""

    __slots__ = ("stamp", "verdict")

    def __init__(self, stamp: str) -> None:
        self.stamp = stamp
        self.verdict: bool | None = None

    def __repr__(self) -> str:
        return f"GrantCheck(verdict={self.verdict!r})"


def grant_check() -> GrantCheck | None:
    """For a source that writes ``from_grant``: the check its call is for, or ``None`` (a call
    for a token). Under a check the source reads the grant, sets the verdict and returns
    ``None``, whatever it would do for a token (no token request, no error for the caller)."""
    return _CHECK.get()


def _usable_ttl(expires_on: float, cap: float | None, now: float) -> float:
    """Seconds an entry is usable from ``now``, by the in-process cache's rule
    (``entry_timing``): an entry the assertion's expiry caps is usable to the cap, any other
    less the skew. A replica that reads a capped entry in its last tenth (a new replica, a
    restart, a request routed elsewhere) serves it instead of acquiring it again: nothing
    fresher can be had for that assertion."""
    return entry_timing(expires_on, cap, now)[1] - now


class SharedTokenCache:
    """L2 for ``TokenCache``: user tokens shared through a ``TokenStore`` (``RedisStore``).

    ``lease`` bounds how long a dead holder blocks the others (they take over after it);
    ``wait`` bounds how long a replica waits for another's acquisition before making its own.

    >>> shared = SharedTokenCache(RedisStore.from_env(), Keyring.from_env())
    >>> chain = TokenChain([OnBehalfOf.from_env()], cache=TokenCache(shared=shared))
    """

    def __init__(
        self,
        store: TokenStore,
        keyring: Keyring,
        *,
        lease: float = 10.0,
        wait: float = 15.0,
        retry_after: float = 5.0,
        kinds: frozenset[IdentityKind] = frozenset({IdentityKind.USER, IdentityKind.APP}),
        clock: Callable[[], float] = time.time,
        sync_store: SyncTokenStore | None = None,
    ) -> None:

        lease = seconds(lease, what="lease", low=0, high=_DAY, above_low=True)
        wait = seconds(wait, what="wait", low=0, high=_DAY, above_low=True)
        retry_after = seconds(retry_after, what="retry_after", low=0, high=_DAY)
        self.store = store
        #: The same store, blocking, for ``TokenChain.get_token`` (without it the sync API
        #: uses L1 only).
        self.sync_store = sync_store
        self.keyring = keyring
        self.lease = lease
        self.wait = wait
        self.retry_after = retry_after
        self.kinds = kinds
        self._clock = clock
        self._down_until = 0.0
        #: Counters for benchmarks and diagnostics (``fenced``: acquisitions whose holder had
        #: lost its lease, so their result was not shared).
        self.hits = self.misses = self.waits = self.takeovers = self.failures = 0
        self.fenced = 0
        #: Entries dropped from L2 after the resource refused their token (``invalidate``).
        self.invalidated = 0
        #: Grant-bound entries not served (and dropped) because their grant was gone or
        #: replaced (a sign-out: ``from_grant``), and those not served because the source
        #: could not tell (``unconfirmed``: the grant store failed the read).
        self.revoked = self.unconfirmed = 0
        # (entry name, sha256 of a token a resource refused) -> that token's expiry: never
        # served from L2 again by this replica, whatever became of the delete.
        self._rejected: dict[tuple[str, str], float] = {}
        self._rejected_lock = threading.Lock()
        # Lease releases in the background (after a failed write, or for a caller cancelled
        # while it took, used or released the lease): strong references, a task is otherwise
        # only weakly held by its loop.
        self._releasing: set[asyncio.Future[None]] = set()

    def __repr__(self) -> str:
        return f"SharedTokenCache(store={self.store!r}, lease={self.lease})"

    # -- keys and values -------------------------------------------------------------------

    def _hash(self, key: Hashable) -> str | None:
        try:
            text = json.dumps(key, separators=(",", ":"), sort_keys=True)
        except (TypeError, ValueError):
            return None  # not a key the chain builds: keep it in L1 only
        return self.keyring.digest("l2-key", text.encode("utf-8", "surrogatepass"))

    def _seal(self, name: str, result: TokenResult, grant: str | None = None) -> bytes:
        data: dict[str, Any] = {
            "t": result.token,
            "e": result.expires_on,
            "k": result.kind.value,
            "s": result.source,
            "h": dict(result.headers),
        }
        if grant is not None:
            data["g"] = grant  # the grant it came from (``from_grant``)
        plain = json.dumps(data, separators=(",", ":")).encode()
        return self.keyring.seal("l2", plain, aad=record_aad(self.store, name)).encode("ascii")

    def _open(self, name: str, raw: bytes) -> _Opened | None:
        try:
            plain = open_record(self.keyring, "l2", raw.decode("ascii"), self.store, name)[0]
            data = json.loads(plain)
            grant = data.get("g")
            result = TokenResult(
                token=str(data["t"]),
                expires_on=float(data["e"]),
                kind=IdentityKind(data["k"]),
                source=str(data["s"]),
                headers={str(k): str(v) for k, v in dict(data["h"]).items()},
            )
        except (KeyringError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
            return None  # sealed under a retired key, or tampered: a miss
        return _Opened(result, None if grant is None else str(grant))

    # -- store calls that never fail the acquisition -----------------------------------------

    def _up(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, what: str, exc: BaseException) -> None:
        self.failures += 1
        self._down_until = time.monotonic() + self.retry_after
        # Our typed errors say what failed and carry no secret; anything else: its type only.
        why = str(exc) if isinstance(exc, EntraPassthroughError) else type(exc).__name__
        logger.warning(
            "shared token cache: %s failed (%s); acquisitions go straight to Entra, L2 "
            "skipped for %.0f s",
            what,
            why,
            self.retry_after,
        )

    def _usable(self, name: str, entry: Entry | None, floor: float, cap: Cap) -> _Opened | None:
        """The entry's token (and the grant it came from) if it may be served: newer than
        ``floor``, usable under ``cap``, not refused by a resource. A grant-bound entry still
        needs its grant confirmed (``_confirmed_flow``)."""
        if entry is None:
            return None
        opened = self._open(name, entry.value)
        if opened is None:
            return None
        result = opened.result
        if result.expires_on <= floor:
            return None
        # The reader's cap is the writer's (the key is the assertion's): read only now, once an
        # entry is found (a callable decodes the caller's claims).
        if _usable_ttl(result.expires_on, cap_value(cap), self._clock()) <= 0:
            return None
        if self._rejected and (name, sha256_hex(result.token)) in self._rejected:
            return None  # the token a resource refused (invalidate): acquire a new one
        return opened

    # -- invalidation (the resource refused a token) -----------------------------------------

    def invalidate(self, key: Hashable, rejected: TokenResult) -> Coroutine[Any, Any, None] | None:
        """The resource answered 401 to ``rejected``, cached under ``key``. Remember it (this
        replica never takes it from L2 again, even if the store fails the delete), then drop
        the L2 entry if it still holds that token: on an event loop the returned coroutine
        does it (run it as a task: no I/O here), without one the blocking twin does it now
        (none: the mark alone). Never raises: a store that fails is counted and skipped."""
        digest = self._hash(key)
        if digest is None:
            return None
        name = _KEY_PREFIX + digest
        mark = sha256_hex(rejected.token)
        self._remember(name, mark, rejected.expires_on)
        if not self._up():
            return None  # L2 is skipped for now; the mark keeps the token out afterwards
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            if self.sync_store is not None:
                store = self.sync_store
                drive(self._drop_flow(name, mark), functools.partial(self._io_sync, store))
            return None
        return drive_async(self._drop_flow(name, mark), self._io)

    def _remember(self, name: str, mark: str, expires_on: float) -> None:
        now = self._clock()
        with self._rejected_lock:
            rejected = self._rejected
            if len(rejected) >= _MAX_REJECTED:
                for gone in [k for k, until in rejected.items() if until <= now]:
                    del rejected[gone]
                while len(rejected) >= _MAX_REJECTED:
                    del rejected[next(iter(rejected))]  # the oldest
            rejected.pop((name, mark), None)
            rejected[(name, mark)] = expires_on

    def _drop_flow(self, name: str, mark: str) -> Generator[_Op, object, None]:
        """Read the entry; delete it only if it holds the rejected token, compare-and-delete
        on the version read (a token written meanwhile by another replica stays)."""
        try:
            entry = yield _Op(name)
            if not isinstance(entry, Entry):
                return
            held = self._open(name, entry.value)
            if held is None or sha256_hex(held.result.token) != mark:
                return  # another replica's newer token (or nothing we can open): kept
            if (yield _Op(name, expect=entry.version, delete=True)):
                self.invalidated += 1
        except Exception as exc:  # the mark keeps the token out of this replica
            self._failed("invalidate", exc)

    def _to_write(
        self, name: str, result: TokenResult | None, cap: Cap, grant: str | None = None
    ) -> tuple[bytes, float] | None:
        """(sealed value, ttl) of a result worth sharing, else ``None``."""
        if result is None or result.kind not in self.kinds:
            return None
        cap = cap_value(cap)
        ttl = _usable_ttl(result.expires_on, cap, self._clock())
        if cap is not None and result.expires_on > cap:
            result = TokenResult(
                result.token, cap, result.kind, result.source, dict(result.headers)
            )
        return None if ttl < 1.0 else (self._seal(name, result, grant), ttl)

    def _write_flow(
        self,
        lease: _Lease,
        name: str,
        result: TokenResult | None,
        cap: Cap,
        seen: str | None,
        read: bool,
        grant: str | None = None,
    ) -> Generator[_Op, object, None]:
        """Share ``result`` if the holder still holds ``lease`` and the entry did not change
        since it saw it (version ``seen``, ``None``: absent). An entry that merely expired
        meanwhile is written. ``read=False``: the holder's read failed, so ``seen`` is a
        guess (no entry). ``grant``: the grant the result came from (``from_grant``), sealed
        with it. The store calls are yielded (``_Op``): ``_io`` and ``_io_sync`` run them on
        the async store and on the blocking one."""
        sealed = self._to_write(name, result, cap, grant)
        if sealed is None or not (yield from self._hold_flow(lease)):
            return
        try:
            done = yield _Op(name, sealed[0], sealed[1], seen)
            if done is None and seen is not None and (yield _Op(name)) is None:
                done = yield _Op(name, sealed[0], sealed[1], None)
        except Exception as exc:  # full, down: the token is still good for this call
            lease.failed = True
            self._failed("write", exc)
            return
        if done is None and read:
            self._lost()

    def _lost(self) -> None:
        self.fenced += 1
        logger.warning(
            "shared token cache: an acquisition lost its lease before it finished (it outlasted "
            "the lease of %.0f s while the store failed, or the store lost its data) and "
            "another replica acquired the same token; its result is returned to its caller but "
            "not shared: the other replica's wins.",
            self.lease,
        )

    def _hold_flow(self, lease: _Lease) -> Generator[_Op, object, bool]:
        """Fencing, right before the write: renew the lease (or take it again if it ran out
        and nobody took it). ``False``: another replica holds it, or the store failed."""
        try:
            if not lease.lost:
                renewed = yield _Op(lease.name, b"1", self.lease, lease.version)
                if isinstance(renewed, str):
                    lease.version = renewed
                    return True
            retaken = yield _Op(lease.name, b"1", self.lease, None)
        except Exception as exc:
            lease.failed = True
            self._failed("lease check", exc)
            return False
        if not isinstance(retaken, str):
            self._lost()
            return False
        lease.version = retaken  # free: whoever held it meanwhile wrote (the write's CAS sees)
        return True

    async def _take(self, lease_name: str) -> str | None:
        """Take the lease (write-if-absent): its version, or ``None`` while another holds it.
        The write runs in a task of its own that a cancel of the caller (a client gone, a
        timeout) does not stop: Redis may have run it already, and its version, lost with the
        cancelled call, left the lease to run out (every replica's requests for that user
        waited ``lease`` seconds). A lease taken for a caller that is gone is released as soon
        as the write's answer comes."""
        task = asyncio.ensure_future(self.store.put(lease_name, b"1", ttl=self.lease, expect=None))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(functools.partial(self._taken_for_nobody, lease_name))
            raise

    def _taken_for_nobody(self, lease_name: str, task: asyncio.Future[str | None]) -> None:
        """``_take``'s write ended after its caller was cancelled: release what it took."""
        if task.cancelled() or task.exception() is not None:
            return  # not taken (or unknown: then it runs out by itself)
        version = task.result()
        if version is not None:
            self._background(self._release_now(_Lease(lease_name, version)))

    async def _settle(
        self,
        lease: _Lease,
        renewing: asyncio.Future[None] | None,
        share: _Share | None,
    ) -> None:
        """After the holder's acquisition: let the renewal stop, write the result to L2
        (``share``) and release the lease, in a task of its own that a cancel of the caller
        does not stop (the caller waits for it unless it is cancelled). A cancel used to
        interrupt them: a renewal cut mid-write left the release a stale version, and under
        anyio's cancel scopes (which cancel every later await of a cancelled caller again) a
        release that had to reconnect never reached Redis: the lease stayed, and the other
        replicas' requests for that user waited it out."""
        task = asyncio.ensure_future(self._finish(lease, renewing, share))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                self._keep(task)
            raise

    async def _finish(
        self,
        lease: _Lease,
        renewing: asyncio.Future[None] | None,
        share: _Share | None,
    ) -> None:
        try:
            if renewing is not None:
                await renewing  # never cancelled mid-write: its last version is the lease's
            if share is not None:
                await drive_async(self._write_flow(lease, *share), self._io)
        finally:
            await self._release(lease)

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        self._keep(asyncio.get_running_loop().create_task(work))

    def _keep(self, task: asyncio.Future[None]) -> None:
        """Hold ``task`` until it ends; an error nobody awaits is logged (its type only)."""
        hold(self._releasing, task, _background_failed)

    async def _release(self, lease: _Lease) -> None:
        if lease.failed:
            # The store just failed this holder (down, stalled, a reply lost): a release would
            # cost its caller, who has the token, another timeout or two. It is tried in the
            # background instead: the other replicas' callers, waiting on this lease, then
            # acquire at once rather than wait it out (10 s by default). If it fails too, the
            # lease expires by itself.
            self._background(self._release_now(lease))
            return
        await self._release_now(lease)

    async def _release_now(self, lease: _Lease) -> None:
        try:
            await self.store.delete(lease.name, expect=lease.version)
        except Exception as exc:  # the lease expires by itself
            self._failed("lease release", exc)

    # -- the wrapped acquisition: one flow, two drivers ---------------------------------------
    #
    # ``_fetch_flow`` makes every decision of an acquisition through L2 (hit, take the lease,
    # wait for its holder, take over, acquire, share) and does no I/O: it yields steps
    # (``_Op`` reads, ``_Take``, ``_Sleep``, ``_ALONE``, ``_Run``, ``_Renew``, ``_Settle``)
    # that ``wrap`` runs on the async store and ``wrap_sync`` on the blocking one
    # (``drive_async``, ``drive``), each step's error thrown in where it was yielded (a
    # cancel too: the ``finally`` settles the lease). ``_recheck_flow`` is the same for
    # ``shared_result_async`` / ``shared_result_sync``.

    def wrap(self, cache: TokenCache, key: Hashable, acquire: AcquireFn, cap: Cap) -> AcquireFn:
        async def shared() -> TokenResult | None:
            start = self._start(cache, key)
            if start is None:
                return await acquire()
            digest, floor = start

            async def do(step: _Step) -> object:
                if isinstance(step, _Take):
                    return await self._take(step.key)
                if isinstance(step, _Alone):
                    return await acquire()
                if isinstance(step, _Run):
                    return await self._acquire(acquire, step)
                if isinstance(step, _Confirm):
                    return await self._confirm(acquire, step)
                if isinstance(step, _Renew):
                    done = asyncio.Event()
                    return _Renewal(done, asyncio.ensure_future(self._renew(step.lease, done)))
                if isinstance(step, _Settle):
                    renewing: asyncio.Future[None] | None = None
                    if step.renewal is not None:
                        step.renewal.done.set()
                        renewing = cast("asyncio.Future[None]", step.renewal.runner)
                    await self._settle(step.lease, renewing, step.share)
                    return None
                return await self._io(step)

            return await drive_async(self._fetch_flow(digest, floor, cap, on_loop=False), do)

        return shared

    def wrap_sync(
        self, cache: TokenCache, key: Hashable, acquire: AcquireFnSync, cap: Cap
    ) -> AcquireFnSync:
        store = self.sync_store
        if store is None:
            return acquire

        def shared() -> TokenResult | None:
            start = self._start(cache, key)
            if start is None:
                return acquire()
            digest, floor = start

            def do(step: _Step) -> object:
                if isinstance(step, _Take):
                    return store.put(step.key, b"1", ttl=self.lease, expect=None)
                if isinstance(step, _Alone):
                    return acquire()
                if isinstance(step, _Run):
                    return self._acquire_sync(store, acquire, step)
                if isinstance(step, _Confirm):
                    return self._confirm_sync(acquire, step)
                if isinstance(step, _Renew):
                    done = threading.Event()
                    renewing = threading.Thread(
                        target=self._renew_sync,
                        args=(store, step.lease, done),
                        name="ep-l2-lease",
                        daemon=True,
                    )
                    renewing.start()
                    return _Renewal(done, renewing)
                if isinstance(step, _Settle):
                    self._settle_sync(store, step)
                    return None
                return self._io_sync(store, step)

            # On a thread that runs an event loop (a sync call inside async code) the lease may
            # be held by a task of that very loop, which cannot go on (nor renew it) while this
            # thread sleeps: never wait for it (as L1 never waits for a leader there).
            flow = self._fetch_flow(digest, floor, cap, on_loop=loop_running_here())
            return drive(flow, do)

        return shared

    def _start(self, cache: TokenCache, key: Hashable) -> tuple[str, float] | None:
        """The digest of ``key`` and the floor (when what L1 holds expires: an older entry is
        no answer) of an acquisition through L2; ``None``: acquire alone (L2 is skipped for
        now, or ``key`` is not one it keeps)."""
        if not self._up():
            return None
        digest = self._hash(key)
        if digest is None:
            return None
        current = cache.get(key)
        return digest, current.expires_on if current is not None else 0.0

    def _waited_too_long(self) -> None:
        logger.warning(
            "shared token cache: another replica held the lease for %.0f s; acquiring directly",
            self.wait,
        )

    def _fetch_flow(
        self, digest: str, floor: float, cap: Cap, *, on_loop: bool
    ) -> Generator[_Step, object, TokenResult | None]:
        """L2's answer for the key of ``digest``, or the acquisition's (``_Run``), shared.
        ``on_loop``: a blocking driver on a thread that runs an event loop: it reads once,
        takes the lease if it is free, else acquires on its own and writes nothing (its
        ``shared_result_sync`` reads once too: no wait on the lease)."""
        name, lease_name = _KEY_PREFIX + digest, _LEASE_PREFIX + digest
        deadline = time.monotonic() + self.wait  # real time, whatever clock tokens use
        delay = _FIRST_POLL
        waited = False
        version: str | None = None
        # Versions of grant-bound entries whose grant was not confirmed: not asked again.
        refused: set[str] = set()
        try:
            while True:
                found = yield from self._hit_flow(name, floor, cap, refused)
                if found is not None:
                    return found
                version = cast("str | None", (yield _Take(lease_name)))
                if version is not None:
                    if waited:
                        self.takeovers += 1
                    break
                if on_loop:
                    break
                if time.monotonic() >= deadline:
                    self._waited_too_long()
                    break
                if not waited:
                    self.waits += 1
                    waited = True
                yield _Sleep(delay)
                delay = min(delay * 1.5, _MAX_POLL)
        except Exception as exc:
            self._failed("read", exc)
            return _result((yield _ALONE))  # the acquisition alone: L2 is skipped
        served: list[TokenResult] = []
        granted: list[str] = []
        if version is None:  # outside the try: an error of the acquisition is not the store's
            holder = None if on_loop else lease_name
            return _result((yield _Run(name, holder, floor, cap, served, granted)))
        lease = _Lease(lease_name, version)
        renewal: _Renewal | None = None
        share: _Share | None = None
        try:
            # The holder before us may have written just before our lease: read once more.
            # Its version is what the write compares with (after a failed read: written only
            # if there is no entry).
            read = True
            try:
                entry = _entry((yield _Op(name)))
            except Exception as exc:
                self._failed("read", exc)
                entry, read = None, False
            found = yield from self._confirmed_flow(name, entry, floor, cap, refused)
            if found is not None:
                self.hits += 1
                return found
            self.misses += 1
            renewal = cast("_Renewal", (yield _Renew(lease)))
            result = _result((yield _Run(name, None, floor, cap, served, granted)))
            if _from_l2(result, served):
                return result  # another replica's entry, read again by the source: in L2
            seen = None if entry is None else entry.version
            share = _Share(name, result, cap, seen, read, granted[-1] if granted else None)
            return result
        finally:
            # Stop the renewal, share the result, release the lease (whatever ended the
            # acquisition: an error of the source, a cancel thrown in).
            yield _Settle(lease, renewal, share)

    def _hit_flow(
        self, name: str, floor: float, cap: Cap, refused: set[str]
    ) -> Generator[_Op | _Confirm, object, TokenResult | None]:
        """Read the entry ``name``: a usable one is a hit (counted), else ``None``; a
        grant-bound one once its source confirmed the grant (``_confirmed_flow``)."""
        entry = _entry((yield _Op(name)))
        found = yield from self._confirmed_flow(name, entry, floor, cap, refused)
        if found is not None:
            self.hits += 1
        return found

    def _recheck_hit(
        self, name: str, floor: float, cap: Cap, grant: str | None
    ) -> Generator[_Op, object, TokenResult | None]:
        """``_hit_flow`` for the source's own read again (``shared_result_async``): the
        source has just read its grant, so a grant-bound entry is served if it came from the
        grant ``grant`` (``None``: any entry), without asking the source."""
        opened = self._usable(name, _entry((yield _Op(name))), floor, cap)
        if opened is None or (grant is not None and opened.grant != grant):
            return None
        self.hits += 1
        return opened.result

    def _confirmed_flow(
        self, name: str, entry: Entry | None, floor: float, cap: Cap, refused: set[str]
    ) -> Generator[_Op | _Confirm, object, TokenResult | None]:
        """The token of ``entry`` if it may be served (not counted). A grant-bound entry only
        once its source confirmed that the grant it came from still stands (``_Confirm``: one
        read of the grant store, by the source); one whose grant is gone or replaced (a
        sign-out) is dropped (compare-and-delete on the version read) and never taken from L2
        again by this replica; one the source could not confirm (the grant store failed) is
        not served either. Its version goes to ``refused``: not asked about again in this
        acquisition."""
        opened = self._usable(name, entry, floor, cap)
        if opened is None or opened.grant is None:
            return None if opened is None else opened.result
        assert entry is not None  # (``_usable`` found one)
        if entry.version in refused:
            return None
        verdict = yield _Confirm(opened.grant)
        if verdict is True:
            return opened.result
        refused.add(entry.version)
        if verdict is None:
            self.unconfirmed += 1
            return None  # fail closed: the source acquires as usual (it reads the grant too)
        self.revoked += 1
        token = opened.result
        self._remember(name, sha256_hex(token.token), token.expires_on)
        try:
            yield _Op(name, expect=entry.version, delete=True)
        except Exception as exc:  # the mark keeps it out of this replica; it expires anyway
            self._failed("drop of a signed-out grant's token", exc)
        return None

    def _recheck_flow(
        self, name: str, lease_name: str | None, floor: float, cap: Cap, grant: str | None
    ) -> Generator[_Op | _Sleep, object, TokenResult | None]:
        """The entry another replica wrote for ``name`` (from the grant ``grant``, when given:
        ``shared_result_async``); while that replica holds ``lease_name`` (``None``: we hold
        it), wait for it, up to ``wait``."""
        deadline = time.monotonic() + self.wait
        delay = _FIRST_POLL
        try:
            while True:
                found = yield from self._recheck_hit(name, floor, cap, grant)
                if found is not None:
                    return found
                if lease_name is None or time.monotonic() >= deadline:
                    return None
                if (yield _Op(lease_name)) is None:
                    return None  # nobody is acquiring it: the source goes on
                yield _Sleep(delay)
                delay = min(delay * 1.5, _MAX_POLL)
        except Exception as exc:  # the source goes on as it would have
            self._failed("read", exc)
            return None

    async def _io(self, step: _Op | _Sleep) -> Entry | str | bool | None:
        """A store call (``_Op``) or a pause of the flows, on the async store."""
        if isinstance(step, _Sleep):
            await asyncio.sleep(step.seconds)
            return None
        if step.delete and step.expect is not None:
            return await self.store.delete(step.key, expect=step.expect)
        if step.value is None:
            return await self.store.get(step.key)
        return await self.store.put(step.key, step.value, ttl=step.ttl, expect=step.expect)

    def _io_sync(self, store: SyncTokenStore, step: _Op | _Sleep) -> Entry | str | bool | None:
        """``_io``, blocking."""
        if isinstance(step, _Sleep):
            time.sleep(step.seconds)  # a thread waiting on another replica, bounded by `wait`
            return None
        if step.delete and step.expect is not None:
            return store.delete(step.key, expect=step.expect)
        if step.value is None:
            return store.get(step.key)
        return store.put(step.key, step.value, ttl=step.ttl, expect=step.expect)

    async def _acquire(self, acquire: AcquireFn, run: _Run) -> TokenResult | None:
        """``acquire()``, with ``shared_result_async`` reading L2 again for it (``run.holder``:
        the lease another replica may hold, for a replica that does not hold it); what the
        source took from there is appended to ``run.served``, the grant it named for its
        result (``from_grant``) to ``run.granted``."""

        async def recheck(grant: str | None) -> TokenResult | None:
            flow = self._recheck_flow(run.name, run.holder, run.floor, run.cap, grant)
            found = await drive_async(flow, self._io)
            if found is not None:
                run.served.append(found)
            return found

        with _acquiring(run):
            context = _RECHECK.set(recheck)
            try:
                return await acquire()
            finally:
                _RECHECK.reset(context)

    def _acquire_sync(
        self, store: SyncTokenStore, acquire: AcquireFnSync, run: _Run
    ) -> TokenResult | None:
        """``_acquire``, blocking."""

        def recheck(grant: str | None) -> TokenResult | None:
            flow = self._recheck_flow(run.name, run.holder, run.floor, run.cap, grant)
            found = drive(flow, functools.partial(self._io_sync, store))
            if found is not None:
                run.served.append(found)
            return found

        with _acquiring(run):
            context = _RECHECK_SYNC.set(recheck)
            try:
                return acquire()
            finally:
                _RECHECK_SYNC.reset(context)

    async def _confirm(self, acquire: AcquireFn, step: _Confirm) -> bool | None:
        """Ask the source, through ``acquire`` under a ``GrantCheck``, whether the grant of
        ``step`` still stands: its verdict, ``None`` when unknown. Never raises an
        ``Exception`` (a source that fails here fails the same way when asked for a token)."""
        check = GrantCheck(step.grant)
        with _checking(check):
            try:
                await acquire()
            except Exception:
                return None
        return check.verdict

    def _confirm_sync(self, acquire: AcquireFnSync, step: _Confirm) -> bool | None:
        """``_confirm``, blocking."""
        check = GrantCheck(step.grant)
        with _checking(check):
            try:
                acquire()
            except Exception:
                return None
        return check.verdict

    async def _renew(self, lease: _Lease, done: asyncio.Event) -> None:
        """Keep the lease while the acquisition runs; stop when it is done or lost
        (``renew_until``)."""

        async def renew() -> bool:
            renewed = await self.store.put(lease.name, b"1", ttl=self.lease, expect=lease.version)
            return self._renewed(lease, renewed)

        await renew_until(done, self.lease, renew, self._renewal_failed)

    def _renew_sync(self, store: SyncTokenStore, lease: _Lease, done: threading.Event) -> None:
        def renew() -> bool:
            renewed = store.put(lease.name, b"1", ttl=self.lease, expect=lease.version)
            return self._renewed(lease, renewed)

        renew_until_sync(done, self.lease, renew, self._renewal_failed)

    def _renewed(self, lease: _Lease, renewed: str | None) -> bool:
        if renewed is None:
            lease.lost = True  # it ran out and another replica holds it now
            return False
        lease.version = renewed
        return True

    def _renewal_failed(self, exc: BaseException, first: bool) -> None:
        """Count and log the first failure in a row."""
        if first:
            self._failed("lease renewal", exc)

    # -- the same, blocking (sync API: threads) -----------------------------------------------

    def _settle_sync(self, store: SyncTokenStore, settle: _Settle) -> None:
        """``_settle``, blocking: stop the renewal thread, write, release."""
        lease = settle.lease
        try:
            if settle.renewal is not None:
                settle.renewal.done.set()
                cast(threading.Thread, settle.renewal.runner).join()
            if settle.share is not None:
                flow = self._write_flow(lease, *settle.share)
                drive(flow, functools.partial(self._io_sync, store))
        finally:
            self._release_sync(store, lease)

    def _release_sync(self, store: SyncTokenStore, lease: _Lease) -> None:
        """``_release``, blocking: after a failed fencing check or write, in a thread of its
        own (the caller has its token; the other replicas' callers waiting on this lease
        acquire at once rather than wait it out)."""
        if lease.failed:
            # RuntimeError: no new threads (interpreter shutdown): it expires by itself.
            with contextlib.suppress(RuntimeError):
                threading.Thread(
                    target=self._release_now_sync,
                    args=(store, lease),
                    name="ep-l2-release",
                    daemon=True,
                ).start()
            return
        self._release_now_sync(store, lease)

    def _release_now_sync(self, store: SyncTokenStore, lease: _Lease) -> None:
        try:
            store.delete(lease.name, expect=lease.version)
        except Exception as exc:  # the lease expires by itself
            self._failed("lease release", exc)


@contextlib.contextmanager
def _acquiring(run: _Run) -> Generator[None, None, None]:
    """The context of an acquisition for a token: the grant its source names goes to
    ``run.granted`` (``from_grant``); no grant check is under way (``grant_check``)."""
    granted, check = _GRANTED.set(run.granted), _CHECK.set(None)
    try:
        yield
    finally:
        _CHECK.reset(check)
        _GRANTED.reset(granted)


@contextlib.contextmanager
def _checking(check: GrantCheck) -> Generator[None, None, None]:
    """The context of a grant check (``grant_check``): no acquisition's grant is noted, no
    entry is read again (``from_grant`` and ``shared_result_async`` do nothing)."""
    context = _CHECK.set(check), _GRANTED.set(None), _RECHECK.set(None), _RECHECK_SYNC.set(None)
    try:
        yield
    finally:
        _RECHECK_SYNC.reset(context[3])
        _RECHECK.reset(context[2])
        _GRANTED.reset(context[1])
        _CHECK.reset(context[0])


def _background_failed(exc: BaseException) -> None:
    logger.warning(
        "shared token cache: sharing a token or releasing a lease in the background failed (%s)",
        type(exc).__name__,
    )


def _from_l2(result: TokenResult | None, served: list[TokenResult]) -> bool:
    """Whether the source returned the entry it read from L2 again (nothing to write)."""
    return result is not None and any(result.token == found.token for found in served)


class _Lease:
    """A held lease: its key and its current version (the fencing token; each renewal makes a
    new one, the release compares with the last); ``lost`` once a renewal found it gone;
    ``failed`` once the store failed the fencing check or the write (released in the
    background then)."""

    __slots__ = ("failed", "lost", "name", "version")

    def __init__(self, name: str, version: str) -> None:
        self.name = name
        self.version = version
        self.lost = False
        self.failed = False


class _Op(NamedTuple):
    """One store call of a flow (``_fetch_flow``, ``_recheck_flow``, ``_write_flow``,
    ``_drop_flow``), run by ``_io`` or ``_io_sync``: a ``put`` of ``value``, a ``get`` (no
    value), or a compare-and-delete (``delete``, on version ``expect``)."""

    key: str
    value: bytes | None = None
    ttl: float = 0.0
    expect: str | None = None
    delete: bool = False


class _Take(NamedTuple):
    """Step of ``_fetch_flow``: take the lease ``key`` (write-if-absent); its version is sent
    back, or ``None`` while another replica holds it."""

    key: str


class _Sleep(NamedTuple):
    """Step: wait ``seconds`` before polling again (bounded by ``wait``)."""

    seconds: float


class _Alone:
    """Step: run the acquisition alone (the store failed: L2 is skipped); its result is sent
    back, its error thrown in."""

    __slots__ = ()


_ALONE: Final = _Alone()


class _Run(NamedTuple):
    """Step: run the acquisition, ``shared_result_async``/``shared_result_sync`` reading the
    entry ``name`` again for it (waiting while another replica holds the lease ``holder``);
    what the source took from there is appended to ``served``, the grant it named for its
    result (``from_grant``) to ``granted``."""

    name: str
    holder: str | None
    floor: float
    cap: Cap
    served: list[TokenResult]
    granted: list[str]


class _Renew(NamedTuple):
    """Step: start renewing ``lease`` (a task, or a thread); a ``_Renewal`` is sent back."""

    lease: _Lease


class _Renewal(NamedTuple):
    """A renewal under way: set ``done`` to stop it; ``runner`` is its task or thread."""

    done: asyncio.Event | threading.Event
    runner: asyncio.Future[None] | threading.Thread


class _Share(NamedTuple):
    """What the holder writes to L2: ``_write_flow``'s arguments but the lease."""

    name: str
    result: TokenResult | None
    cap: Cap
    seen: str | None
    read: bool
    grant: str | None


class _Confirm(NamedTuple):
    """Step of ``_fetch_flow``: ask the source whether the grant ``grant`` (an L2 entry's,
    ``from_grant``) still stands (``GrantCheck``); its verdict is sent back (``None``:
    unknown). Never raises."""

    grant: str


class _Opened(NamedTuple):
    """An L2 entry opened: its token, and the grant it came from (``from_grant``; ``None``:
    an entry of a source without one)."""

    result: TokenResult
    grant: str | None


class _Settle(NamedTuple):
    """Step, after the holder's acquisition (however it ended): stop ``renewal``, write
    ``share`` (``None``: nothing to share) and release ``lease``."""

    lease: _Lease
    renewal: _Renewal | None
    share: _Share | None


_Step = _Op | _Take | _Sleep | _Alone | _Run | _Confirm | _Renew | _Settle


def _entry(sent: object) -> Entry | None:
    """What a driver sent back for a read (``_Op`` with no value)."""
    return cast("Entry | None", sent)


def _result(sent: object) -> TokenResult | None:
    """What a driver sent back for an acquisition (``_ALONE``, ``_Run``)."""
    return cast("TokenResult | None", sent)


# -- lease renewal, shared by this cache's lease and the consent grants' refresh lease ---------

RenewalFailed = Callable[[BaseException, bool], None]


async def renew_until(
    done: asyncio.Event,
    length: float,
    renew: Callable[[], Awaitable[bool]],
    failed: RenewalFailed,
) -> None:
    """Keep a lease of ``length`` seconds: ``renew()`` every third of it until ``done`` is set
    or ``renew`` returns ``False`` (lost: another holder has it). A renewal that raises (the
    store failed) is reported to ``failed(exc, first_in_a_row)`` and retried every tenth of the
    lease: the lease is still ours until it runs out, and giving up would let another holder
    in."""

    async def do(wait: float | None) -> bool:
        if wait is None:
            return await renew()
        try:
            async with asyncio.timeout(wait):  # (not ``wait_for``: see ``_msal._until``)
                await done.wait()
        except TimeoutError:
            return False
        return True

    await drive_async(_renewal_flow(length, failed), do)


def renew_until_sync(
    done: threading.Event, length: float, renew: Callable[[], bool], failed: RenewalFailed
) -> None:
    """``renew_until`` in a thread (``done`` a ``threading.Event``, ``renew`` blocking)."""

    def do(wait: float | None) -> bool:
        return renew() if wait is None else done.wait(wait)

    drive(_renewal_flow(length, failed), do)


def _renewal_flow(length: float, failed: RenewalFailed) -> Generator[float | None, object, None]:
    """``renew_until``'s decisions, no I/O: it yields a wait (seconds; ``True`` is sent back
    once ``done`` is set) or ``None``, renew now (whether the lease is still held is sent
    back, or the store's error thrown in)."""
    interval = length / 3
    while not (yield interval):
        try:
            held = yield None
        except Exception as exc:
            failed(exc, interval == length / 3)
            interval = length / 10
            continue
        if not held:
            return
        interval = length / 3
