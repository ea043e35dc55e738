"""Consent grants on top of a ``TokenStore``: grant records, consent-link tickets (keyed by the
hashed ``UserKey``).

Shared by the ``DelegatedConsent`` source (reads and rotates grants, builds links) and the
consent broker (verifies links, stores grants). Everything written to the store is sealed with
AES-GCM, with the record's whole name (the store's namespace and the key: ``record_aad``) as
associated data so a value cannot be moved to another user's slot, or to another deployment's
namespace, by whoever administers the backend. Records sealed before with the key alone still
open and are re-sealed at their next write.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Awaitable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

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
from ._user_key import KeyKind

logger = logging.getLogger("entra_passthrough.consent")

#: Entra refresh tokens live up to 90 days (sliding); a grant unused that long is dead anyway.
GRANT_TTL = 90 * 24 * 3600.0
#: A platform-id -> (tid, oid) binding never expires (``None``: no TTL). Signing out must not let
#: the platform id be bound to someone else afterwards, and neither may memory pressure: Redis'
#: ``volatile-*`` maxmemory policies evict only keys that have an expiry
#: (https://redis.io/docs/latest/develop/reference/eviction/), so under ``volatile-lru`` (Azure
#: Cache for Redis' default) a binding with a TTL went before the shared cache's tokens. The
#: cost: one small record per platform user and consent app, kept until an operator deletes it
#: (docs/consent.md names the key).
BINDING_TTL: float | None = None
#: In a binding's record: written without a TTL, and the key id it was sealed with then. One
#: without it (an earlier version wrote bindings with a 400-day TTL), or naming another key id
#: (an earlier version re-sealed it, with a TTL, after a key switch: a fleet mid-upgrade), is
#: rewritten without a TTL when it is next read.
_NO_TTL_MARK = "persist"
_MAX_SCOPES = 20
_MAX_SCOPE_CHARS = 256
#: The most a record's fields this version does not know (a newer version's, during a rolling
#: upgrade) may take, as compact JSON, for them to be written back as read (``unknown_fields``):
#: 16 KiB, several times a whole grant. A record with more keeps its own fields, and loses those
#: at its next write (a WARNING, naming their count and size only, says so): a record cannot
#: grow without bound through the replicas that carry what they do not know.
MAX_UNKNOWN_CHARS = 16 * 1024
#: The longest sealed link ticket the broker accepts (every parameter of its requests is bounded
#: by it): a link whose ticket is longer is refused when it is made, not at the broker.
MAX_TICKET_CHARS = 4096

#: The store's key layout, in one place (a store shared with the L2 token cache, whose keys
#: are ``ep:v1:tok:...``): ``ep:<v>:<record>:<id>``; for grants and bindings the id is the
#: sha256 of the consent app's client id and the hashed ``UserKey`` (``_app_id``), for sign-in
#: flows and used states a random id. Changing it orphans stored grants.
_GRANT, _BINDING, _FLOW, _USED = "ep:v2:grant:", "ep:v2:bind:", "ep:v1:flow:", "ep:v1:used:"
#: Bindings written before they were per app (0.x): still honoured (read, then copied to the
#: app's own key), so an upgrade does not let a platform user be bound to another account.
_LEGACY_BINDING = "ep:v1:bind:"

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class StoredGrant:
    """What the user granted, as the store keeps it: a refresh token (sealed at rest) and who
    signed in. (``entra_passthrough.testing.Grant`` is another thing: a consent in the
    emulated tenant.)"""

    refresh_token: str = field(repr=False)
    scopes: tuple[str, ...]
    tid: str
    oid: str
    upn: str | None
    key_kind: KeyKind
    created: float
    updated: float
    #: Cross-replica refresh lease: the replica rotating the refresh token right now.
    lease_owner: str | None = None
    lease_until: float = 0.0
    #: The consent app the refresh token was issued to (``GrantStore.put_grant`` sets it): a
    #: grant of another app is never redeemed, rotated or deleted by this one.
    client_id: str = ""
    #: The record's fields this version does not know (a newer version's, during a rolling
    #: upgrade), as the compact JSON of an object ("": none): written back as read by every
    #: write of the record (``dataclasses.replace`` keeps them), so a refresh, a lease or a
    #: re-seal by an older replica does not drop what a newer one stored. They may hold
    #: secrets: never shown (``repr``), and no part of equality. Bounded: ``MAX_UNKNOWN_CHARS``.
    unknown_fields: str = field(default="", repr=False, compare=False)

    @property
    def stamp(self) -> str:
        """Which consent this record is: the same for as long as it exists (a refresh, a lease
        and a re-seal keep its creation time and account), another for the grant of any later
        consent (a sign-out and a new consent, or a consent given again: the broker writes a
        new record). The shared token cache binds the tokens it holds to it
        (``_l2.from_grant``). Not secret: a digest of the creation time and the account."""
        seed = f"{self.created!r}\x00{self.tid.lower()}\x00{self.oid.lower()}"
        return hashlib.sha256(seed.encode()).hexdigest()[:32]

    def to_json(self) -> bytes:
        data = asdict(self)
        unknown = data.pop("unknown_fields")
        # This version's fields first, and theirs win: an unknown field never stands in for
        # one this version writes.
        for name, value in _fields_of(unknown).items():
            data.setdefault(name, value)
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> StoredGrant:
        """A record this version or another wrote: fields it does not know (a newer version's,
        during a rolling upgrade) are kept as read (``unknown_fields``), so the user's grant is
        still served and they survive its next write; a record missing a field this version
        needs is unreadable (``TypeError``/``KeyError``/``ValueError``)."""
        data = _loads(raw)
        if not isinstance(data, dict):
            raise TypeError("a grant record is a JSON object")
        known = {name: value for name, value in data.items() if name in _GRANT_FIELDS}
        known["scopes"] = tuple(known["scopes"])
        return cls(**known, unknown_fields=_unknown_fields(data, _GRANT_FIELDS, what="grant"))


#: The fields a grant record is written with (``unknown_fields`` is not one: it holds the others).
_GRANT_FIELDS = frozenset(
    each.name for each in dataclasses.fields(StoredGrant) if each.name != "unknown_fields"
)
#: The fields a binding record is written with (``_binding``).
_BINDING_FIELDS = frozenset({"tid", "oid", _NO_TTL_MARK})


def _loads(raw: bytes) -> Any:
    """A record's JSON; one nested too deeply to read is malformed (``ValueError``), not a
    ``RecursionError`` that would fail the request (the record is taken as unreadable)."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("a record nested too deeply to read") from None


def _fields_of(unknown: str) -> dict[str, Any]:
    """The fields ``_unknown_fields`` kept, to write back (none if ``unknown`` is not theirs)."""
    fields = _loads(unknown.encode()) if unknown.startswith("{") else None
    return fields if isinstance(fields, dict) else {}


def _unknown_fields(data: Mapping[str, Any], known: frozenset[str], *, what: str) -> str:
    """The fields of the record ``data`` not in ``known`` (a newer version's), as the compact
    JSON of an object to write back with the record; "" when it has none, or when they take
    more than ``MAX_UNKNOWN_CHARS`` (then they are dropped at the record's next write, and a
    WARNING says so, naming their count and size only: they may hold secrets)."""
    unknown = {name: value for name, value in data.items() if name not in known}
    if not unknown:
        return ""
    try:
        text = json.dumps(unknown, separators=(",", ":"))
    except (RecursionError, ValueError):
        text = None
    if text is None or len(text) > MAX_UNKNOWN_CHARS:
        logger.warning(
            "a stored consent %s holds %d fields this version does not know (written by "
            "another version), %s: more than the %d characters it keeps, so they are dropped "
            "when it next writes the record. Fix: run one version of the library on every "
            "replica and the broker",
            what,
            len(unknown),
            "too deeply nested to copy" if text is None else f"{len(text)} characters in all",
            MAX_UNKNOWN_CHARS,
        )
        return ""
    return text


@dataclass(frozen=True, slots=True)
class LinkTicket:
    """What a consent link carries, sealed (AES-GCM) so it is unforgeable and reveals nothing:
    the hashed user key, the scopes to ask for, sign-in hints, a claims challenge, an expiry."""

    key_hash: str
    key_kind: KeyKind
    scopes: tuple[str, ...]
    exp: float
    login_hint: str | None = None
    domain_hint: str | None = None
    claims: str | None = None
    tid: str | None = None
    oid: str | None = None
    expected_tid: str | None = None
    expected_oid: str | None = None

    def seal(self, keyring: Keyring) -> str:
        return keyring.seal("link", json.dumps(asdict(self), separators=(",", ":")).encode())

    @classmethod
    def open(cls, keyring: Keyring, sealed: str, *, now: float | None = None) -> LinkTicket:
        """Raises ``KeyringError`` (forged/tampered) or ``ValueError`` (expired, bad shape)."""
        data = json.loads(keyring.open("link", sealed))
        if not isinstance(data, dict):
            raise ValueError("ticket is not an object")
        ticket = cls(**{**data, "scopes": tuple(data.get("scopes") or ())})
        if ticket.exp < (time.time() if now is None else now):
            raise ValueError("expired")
        return ticket


def check_scopes(scopes: tuple[str, ...]) -> tuple[str, ...]:
    if not scopes or len(scopes) > _MAX_SCOPES:
        raise ValueError("1 to 20 scopes")
    for s in scopes:
        if not s or len(s) > _MAX_SCOPE_CHARS or not s.isprintable() or " " in s:
            raise ValueError("bad scope")
    return scopes


class _Failures:
    """When (``time.monotonic()``) a call to the store last failed (down, timeout, full)."""

    __slots__ = ("at",)

    def __init__(self) -> None:
        self.at = -math.inf


class BlockingStore:
    """A blocking store (``RedisStore.sync()``) behind the async ``TokenStore`` methods. Its
    coroutines never await, so they finish on whatever event loop runs them: what a sync
    driver needs, which runs each call on a loop of its own (redis-py's asyncio connections
    belong to the loop that opened them)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def __repr__(self) -> str:
        return f"BlockingStore({self.store!r})"

    @property
    def namespace(self) -> str:
        """The twin's key prefix (sealed records bind it: ``record_aad``)."""
        namespace = getattr(self.store, "namespace", "")
        return namespace if isinstance(namespace, str) else ""

    async def get(self, key: str) -> Entry | None:
        entry: Entry | None = self.store.get(key)
        return entry

    async def put(
        self, key: str, value: bytes, *, ttl: float | None, expect: str | AnyVersion | None = ANY
    ) -> str | None:
        version: str | None = self.store.put(key, value, ttl=ttl, expect=expect)
        return version

    async def delete(self, key: str, *, expect: str | AnyVersion = ANY) -> bool:
        return bool(self.store.delete(key, expect=expect))


def _app_id(client_id: str, key_hash: str) -> str:
    """A grant's or binding's id: per consent app, so that two agents (two app registrations)
    sharing one store and keyring without a namespace never read each other's grants (the
    other app cannot redeem the refresh token, and its refusal would delete the grant). An app
    id (client id) is unique across tenants: the tenant, which the broker and an agent may
    spell differently (GUID, domain name), is not part of it."""
    return hashlib.sha256(f"{client_id.strip().lower()}\x00{key_hash}".encode()).hexdigest()


def grant_key(client_id: str, key_hash: str) -> str:
    """The store key of a user's grant for one consent app."""
    return _GRANT + _app_id(client_id, key_hash)


class GrantStore:
    """Typed, sealed records over a ``TokenStore``, for one consent app (``client_id``): its
    grants and bindings are keyed by the app too. Internal to the source and the broker."""

    def __init__(self, store: TokenStore, keyring: Keyring, *, client_id: str) -> None:
        if not client_id:
            raise ValueError("GrantStore needs the consent app's client id")
        self.store = store
        self.keyring = keyring
        self.client_id = client_id
        self._failures = _Failures()
        self._blocking: GrantStore | None = None
        self._lock = threading.Lock()

    def failed_within(self, seconds: float) -> bool:
        """Whether a store call (this one's or its blocking twin's) failed in the last
        ``seconds``: after an outage the refresh leases of other replicas are honoured that
        long (``DelegatedConsent``)."""
        return time.monotonic() - self._failures.at < seconds

    def failed_since(self, moment: float) -> bool:
        """Whether a store call failed at or after ``moment`` (``time.monotonic()``)."""
        return self._failures.at >= moment

    def held(self) -> None:
        """Count a store call that succeeded only after the store held it (a Redis that paused
        its writes: a failover, patching, ``CLIENT PAUSE WRITE``) as a failure now: other
        replicas' writes were held as well, so their refresh leases are honoured for as long as
        after any failure (``failed_within``)."""
        self._failures.at = time.monotonic()

    def blocking(self) -> GrantStore:
        """The same records for a sync driver (each call on an event loop of its own): through
        the store's blocking twin when it has one (``RedisStore.sync()``), else this store
        (``MemoryStore`` works on any loop). Failures are counted for both."""
        with self._lock:
            if self._blocking is None:
                twin = getattr(self.store, "sync", None)
                if not callable(twin):
                    self._blocking = self
                else:
                    blocking = GrantStore(
                        BlockingStore(twin()), self.keyring, client_id=self.client_id
                    )
                    blocking._failures = self._failures
                    self._blocking = blocking
            return self._blocking

    async def _call(self, call: Awaitable[_T]) -> _T:
        try:
            return await call
        except Exception:
            self._failures.at = time.monotonic()
            raise

    async def _get(self, key: str) -> tuple[bytes, str] | None:
        found = await self._get_sealed(key)
        return None if found is None else (found[0], found[1])

    async def _get_sealed(self, key: str) -> tuple[bytes, str, bool] | None:
        """(plain, version, whether it is stale: sealed with a key other than the current one,
        or the earlier way, without the namespace: ``legacy_aad``)."""
        entry = await self._call(self.store.get(key))
        if entry is None:
            return None
        try:
            sealed = entry.value.decode("ascii")
            plain, legacy = open_record(self.keyring, "store", sealed, self.store, key)
        except (KeyringError, UnicodeDecodeError):
            _cannot_open(self.keyring, entry.value)
            return None  # sealed under a retired key or tampered: as good as absent
        return plain, entry.version, legacy or not self.keyring.sealed_with_current(sealed)

    async def _put(
        self, key: str, plain: bytes, *, ttl: float | None, expect: str | AnyVersion | None = ANY
    ) -> str | None:
        aad = record_aad(self.store, key)
        sealed = self.keyring.seal("store", plain, aad=aad).encode("ascii")
        return await self._call(self.store.put(key, sealed, ttl=ttl, expect=expect))

    # grants ---------------------------------------------------------------------------------
    async def get_grant(self, key_hash: str) -> tuple[StoredGrant, str] | None:
        found = await self._get(grant_key(self.client_id, key_hash))
        if found is None:
            return None
        try:
            grant = StoredGrant.from_json(found[0])
        except (ValueError, TypeError, KeyError) as exc:
            # Sealed by our key, so ours, yet unreadable (a record shape this version does not
            # know): absent for this version, and said, never silently "no consent".
            logger.warning(
                "a stored consent grant could not be read (%s): it is taken as absent, and the "
                "user is asked to consent again. Fix: run one version of the library on every "
                "replica and the broker (a record written by another version)",
                type(exc).__name__,
            )
            return None
        if grant.client_id.lower() != self.client_id.lower():
            return None  # another app's grant: absent for this one (and never deleted by it)
        return grant, found[1]

    async def put_grant(
        self, key_hash: str, grant: StoredGrant, *, expect: str | AnyVersion | None = ANY
    ) -> str | None:
        grant = dataclasses.replace(grant, client_id=self.client_id)
        key = grant_key(self.client_id, key_hash)
        version = await self._put(key, grant.to_json(), ttl=GRANT_TTL, expect=expect)
        if version is not None and grant.key_kind == "platform" and grant.lease_owner is None:
            # A grant is re-sealed with the current key by each refresh (this write, the lease
            # released); its user's binding is written once: re-seal it with the grant (one
            # read; a write only after a key switch), so it follows the keyring as the grant
            # does, whichever replica refreshes after a rolling switch.
            with contextlib.suppress(Exception):  # the grant is written either way
                await self.get_binding(key_hash)
        return version

    async def put_grant_under_lease(
        self,
        key_hash: str,
        grant: StoredGrant,
        *,
        version: str,
        lease: str | None,
        redeemed: str | None = None,
    ) -> str | None:
        """``put_grant`` by the holder of the refresh lease ``lease``, whose last known version
        of the record is ``version``; the new version, or ``None`` when the grant is not the
        holder's any more. A record that changed but still holds ``lease`` changed under a write
        of the holder's own that the store ran without its answer arriving (it died, or timed
        out, while answering: a lease renewal): the lease, so the grant, is still the holder's,
        and the write compares with the version read. Without this a rotated grant was dropped
        as another replica's, and once the lease ran out another replica redeemed the refresh
        token Entra had already redeemed; and a renewal was refused, so renewals stopped.

        ``redeemed``: the refresh token the holder redeemed at Entra, when ``grant`` holds its
        successor (the rotated grant; never for a renewal). A record that still holds that
        refresh token under another replica's lease (taken once the holder's ran out, while the
        store held or refused the holder's write: a failover, a pause) is older than ``grant``:
        it is replaced (compare-and-set on the version read), and the other replica's lease
        with it, so that replica reads the rotated grant rather than redeem the redeemed refresh
        token again (a lease it holds is checked right before its POST)."""
        written = await self.put_grant(key_hash, grant, expect=version)
        if written is not None or lease is None:
            return written
        found = await self.get_grant(key_hash)
        if found is None:
            return None
        current = found[0]
        if current.lease_owner != lease and (
            redeemed is None or grant.refresh_token == redeemed or current.refresh_token != redeemed
        ):
            return None
        return await self.put_grant(key_hash, grant, expect=found[1])

    async def delete_grant(self, key_hash: str, *, expect: str | AnyVersion = ANY) -> bool:
        key = grant_key(self.client_id, key_hash)
        return await self._call(self.store.delete(key, expect=expect))

    # platform-id -> (tid, oid) bindings -----------------------------------------------------
    async def get_binding(self, key_hash: str) -> tuple[str, str] | None:
        """The (tid, oid) a platform user is bound to. A binding sealed with an older key is
        re-sealed with the current one (compare-and-set on its version), so it stays readable
        once the old key is dropped: a binding is written once, and one that no longer opens
        would refuse its user's every sign-in (it exists: ``bind`` cannot replace it). One an
        earlier version wrote with a TTL is rewritten without one (``BINDING_TTL``)."""
        key = _BINDING + _app_id(self.client_id, key_hash)
        found = await self._get_sealed(key)
        if found is None:
            legacy = await self._get_sealed(_LEGACY_BINDING + key_hash)
            if legacy is None:
                return None
            # A binding from before bindings were per app: copied to this app's key (once;
            # best effort, the next read tries again), so it keeps constraining the sign-in.
            data = _loads(legacy[0])
            with contextlib.suppress(Exception):
                await self._put(
                    key, _binding(data, self.keyring.current), ttl=BINDING_TTL, expect=None
                )
        else:
            plain, version, stale = found
            data = _loads(plain)
            if stale or data.get(_NO_TTL_MARK) != self.keyring.current:
                # Re-sealed with the current key, and without the TTL an earlier version gave
                # it (evictable); best effort: the next read tries again.
                with contextlib.suppress(Exception):
                    await self._put(
                        key, _binding(data, self.keyring.current), ttl=BINDING_TTL, expect=version
                    )
        return str(data["tid"]), str(data["oid"])

    async def bind(self, key_hash: str, tid: str, oid: str) -> bool:
        """Record the first binding; ``False`` if one exists already (check it). A binding
        written before bindings were per app exists too, whether it opens or not: one sealed
        under a key since dropped must refuse the sign-in (``binding_unreadable``) as the
        per-app one does, never let the platform user be bound to another account."""
        if await self._call(self.store.get(_LEGACY_BINDING + key_hash)) is not None:
            return False
        plain = _binding({"tid": tid, "oid": oid}, self.keyring.current)
        key = _BINDING + _app_id(self.client_id, key_hash)
        version = await self._put(key, plain, ttl=BINDING_TTL, expect=None)
        return version is not None

    # pending sign-ins (PKCE verifier, nonce) and used states --------------------------------
    async def put_flow(self, flow_id: str, data: Mapping[str, Any], *, ttl: float) -> None:
        await self._put(_FLOW + flow_id, json.dumps(data).encode(), ttl=ttl, expect=None)

    async def peek_flow(self, flow_id: str) -> dict[str, Any] | None:
        """Read without consuming (the broker checks the browser binding first)."""
        found = await self._get(_FLOW + flow_id)
        if found is None:
            return None
        data = json.loads(found[0])
        return data if isinstance(data, dict) else None

    async def take_flow(self, flow_id: str) -> dict[str, Any] | None:
        """Read and delete atomically (compare-and-delete): one caller wins, across replicas."""
        key = _FLOW + flow_id
        found = await self._get(key)
        if found is None or not await self._call(self.store.delete(key, expect=found[1])):
            return None
        data = json.loads(found[0])
        return data if isinstance(data, dict) else None

    async def mark_used(self, state_id: str, *, ttl: float) -> bool:
        """``True`` the first time only: a state is single-use until it expires."""
        version = await self._call(self.store.put(_USED + state_id, b"1", ttl=ttl, expect=None))
        return version is not None


def _binding(data: Mapping[str, Any], kid: str) -> bytes:
    """A binding's record: its (tid, oid), marked as written without a TTL under key ``kid``
    (the key it is sealed with: ``_NO_TTL_MARK``), and the fields of the record ``data`` it
    rewrites that this version does not know (a newer version's), as read (bounded:
    ``MAX_UNKNOWN_CHARS``)."""
    record: dict[str, Any] = {"tid": str(data["tid"]), "oid": str(data["oid"]), _NO_TTL_MARK: kid}
    unknown = _unknown_fields(data, _BINDING_FIELDS, what="binding")
    for name, value in _fields_of(unknown).items():
        record.setdefault(name, value)
    return json.dumps(record).encode()


def _cannot_open(keyring: Keyring, value: bytes) -> None:
    """Say why a stored record is treated as absent: most often the replicas (or the broker)
    do not share the same keys. Names the key id only (not secret)."""
    kid = value.split(b".", 1)[0].decode("ascii", "replace")[:32]
    if kid and kid not in keyring.keys:
        logger.warning(
            "a consent record is sealed with key id %r, which this keyring does not hold: it "
            "is treated as absent (the user is asked again). Give every replica and the broker "
            "the same ENTRA_PASSTHROUGH_CONSENT_KEYS; when rotating, list a new key second "
            "everywhere before making it first.",
            kid,
        )
    else:
        logger.warning(
            "a consent record did not verify (tampered, or sealed by another keyring with the "
            "same key id %r): it is treated as absent.",
            kid,
        )


def seal_revoke_ticket(keyring: Keyring, key_hash: str, *, lifetime: float) -> str:
    """A sign-out ticket: lets its holder delete one user's grant, nothing else."""
    payload = {"k": key_hash, "e": time.time() + lifetime}
    return keyring.seal("revoke", json.dumps(payload).encode())


def open_revoke_ticket(keyring: Keyring, sealed: str) -> str:
    """The hashed user key. Raises ``KeyringError``/``ValueError``."""
    data = json.loads(keyring.open("revoke", sealed))
    if not isinstance(data, dict) or float(data["e"]) < time.time():
        raise ValueError("expired")
    return str(data["k"])
