"""The token store: where consent grants (refresh tokens) live, shared by replicas.

Two layers, so that a backend (memory now, Redis later) stays dumb and cannot get the security
wrong:

* ``TokenStore`` - the protocol a backend implements: async get/put/delete of *opaque bytes* under
  *opaque keys*, with a TTL and an atomic compare-and-set on a version (an etag). Nothing a backend
  sees is readable: keys hold ``UserKey.hashed`` (sha256) and values are AES-GCM ciphertexts.
* ``Keyring`` - the secret keys (by key id, the first is current) from which the AES-GCM store key
  and the HMAC state-signing key are derived (HKDF, one sub-key per purpose). Rotation: put a new
  key first, keep the old ones until what they sealed has expired; values are re-sealed with the
  current key on their next write.

``MemoryStore`` is the in-process backend: bounded (LRU), TTLs, CAS under one lock. It is only
shared by the replicas of one process; a multi-replica deployment needs a shared backend.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import hmac
import math
import os
import re
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ._checks import whole_number
from ._errors import ConfigurationError, EntraPassthroughError

__all__ = [
    "ANY",
    "Entry",
    "Keyring",
    "KeyringError",
    "MemoryStore",
    "TokenStore",
]


class AnyVersion:
    """Sentinel: write unconditionally (no compare-and-set)."""

    def __repr__(self) -> str:
        return "ANY"


#: ``put(..., expect=ANY)`` writes whatever is there; ``expect=None`` writes only if absent;
#: ``expect="<version>"`` writes only if the current version is that one.
ANY: Final = AnyVersion()

#: The ``failure`` of a store's ``SourceUnavailable`` when the store answered that it refused
#: the call (full, read-only, credentials or permission refused): the call did not run. Any
#: other failure (no answer in time, the connection lost) may have run it.
STORE_REFUSED: Final = "store refused the command"


@dataclass(frozen=True, slots=True)
class Entry:
    """A stored value and its version (an opaque etag that changes on every write)."""

    value: bytes = field(repr=False)
    version: str


@runtime_checkable
class TokenStore(Protocol):
    """What a grant store backend implements (memory, Redis...).

    Keys are already hashed and values already encrypted by the caller; a backend never needs
    to understand them. Every write takes a TTL in seconds, or ``None``: the record never
    expires and must not be evicted before records that do (a platform user's binding, whose
    loss would let the platform user be bound to another account). ``expect`` makes a write
    atomic:
    ``ANY`` (unconditional), ``None`` (only if absent) or a version (only if unchanged).
    ``put`` returns the new version, or ``None`` when the condition failed; ``delete`` returns
    whether it deleted something.

    >>> store = MemoryStore(max_entries=10_000)
    >>> version = await store.put("k", b"v", ttl=60, expect=None)
    >>> (await store.get("k")).version == version
    True
    """

    async def get(self, key: str) -> Entry | None: ...

    async def put(
        self, key: str, value: bytes, *, ttl: float | None, expect: str | AnyVersion | None = ANY
    ) -> str | None: ...

    async def delete(self, key: str, *, expect: str | AnyVersion = ANY) -> bool: ...


class MemoryStore:
    """An in-process ``TokenStore``: bounded, with TTLs.

    When full, the entry that expires soonest goes first (like Redis' ``volatile-ttl``): the
    short-lived sign-in records go before 90-day grants, so a flood of sign-in starts cannot
    push users' grants out. Entries written with ``ttl=None`` (bindings) never expire and go
    only after every entry that does (size ``max_entries`` for them too: one per platform
    user). Thread-safe (one lock, no awaits under it), so sync and async users can share it.
    Replicas in *different* processes need a shared backend (Redis).

    >>> source = DelegatedConsent(..., store=MemoryStore(max_entries=50_000), keyring=keys)
    """

    def __init__(self, *, max_entries: int = 10_000) -> None:
        self._max = whole_number(
            max_entries,
            what="MemoryStore(max_entries=...)",
            low=1,
            fix="pass max_entries= how many entries the store may hold (default 10000).",
        )
        self._data: dict[str, tuple[bytes, str, float]] = {}
        # (expiry, key, version); stale items (overwritten or deleted) are skipped lazily.
        self._heap: list[tuple[float, str, str]] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryStore(entries={len(self._data)}, max_entries={self._max})"

    def __len__(self) -> int:
        with self._lock:
            self._evict(time.monotonic(), limit=self._max)
            return len(self._data)

    def _evict(self, now: float, *, limit: int) -> None:
        """Drop expired entries, then the soonest-expiring ones while above ``limit``."""
        while self._heap:
            exp, key, version = self._heap[0]
            item = self._data.get(key)
            if item is None or item[1] != version:
                heapq.heappop(self._heap)  # stale
                continue
            if exp > now and len(self._data) <= limit:
                break
            heapq.heappop(self._heap)
            del self._data[key]
        if len(self._heap) > 4 * self._max + 64:  # too many stale items: rebuild
            self._heap = [(exp, k, v) for k, (_, v, exp) in self._data.items()]
            heapq.heapify(self._heap)

    def _live(self, key: str, now: float) -> tuple[bytes, str, float] | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[2] <= now:
            del self._data[key]
            return None
        return item

    async def get(self, key: str) -> Entry | None:
        with self._lock:
            item = self._live(key, time.monotonic())
            return None if item is None else Entry(item[0], item[1])

    async def put(
        self, key: str, value: bytes, *, ttl: float | None, expect: str | AnyVersion | None = ANY
    ) -> str | None:
        if ttl is not None and not ttl > 0:
            raise ValueError("ttl must be positive (or None: no expiry)")
        with self._lock:
            now = time.monotonic()
            item = self._live(key, now)
            if not isinstance(expect, AnyVersion):
                current = item[1] if item is not None else None
                if current != expect:
                    return None
            version = secrets.token_hex(8)
            # No expiry sorts after every expiry: evicted last, as with Redis' volatile-ttl.
            expires = math.inf if ttl is None else now + ttl
            self._data[key] = (bytes(value), version, expires)
            heapq.heappush(self._heap, (expires, key, version))
            self._evict(now, limit=self._max)
            return version

    async def delete(self, key: str, *, expect: str | AnyVersion = ANY) -> bool:
        with self._lock:
            item = self._live(key, time.monotonic())
            if item is None:
                return False
            if not isinstance(expect, AnyVersion) and item[1] != expect:
                return False
            del self._data[key]
            return True


_KEYRING_OPEN_FIX = (
    "keep every key id listed in the Keyring until what it sealed has expired (the first key "
    "is current), and pass sealed values unchanged; a value of another deployment's keys, or "
    "one that was altered, never opens."
)


class KeyringError(EntraPassthroughError, ValueError):
    """A sealed value or signature did not verify (wrong key, tampered, unknown key id):
    ``Keyring.open``/``verify``. An ``EntraPassthroughError``, and a ``ValueError`` as it
    always was. The message never holds the value."""

    fix = _KEYRING_OPEN_FIX

    def __init__(self, message: str) -> None:
        super().__init__(f"Keyring: the sealed or signed value is not valid: {message}.")


_MIN_KEY_BYTES = 32
_KID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


_MAKE_KEY = (
    'make a key with `python -c "import secrets,base64;print(base64.urlsafe_b64encode('
    'secrets.token_bytes(32)).decode())"`.'
)
#: The variable ``Keyring.from_env`` reads by default.
_KEYS_VAR: Final = "ENTRA_PASSTHROUGH_CONSENT_KEYS"
_KEYRING_FIX = (
    "build it with Keyring.generate() or Keyring.from_string('kid:<base64url of 32 bytes>'); "
    + _MAKE_KEY
)


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64d(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise KeyringError("it is not base64url") from exc


#: One key of ``Keyring.from_string``: base64url, with or without its ``=`` padding. The
#: decoder skips what is not in the alphabet, so ``k1:<key>;k2:<key>`` was one 66-byte key.
#: Standard base64's ``+`` and ``/`` are taken as ``-`` and ``_`` (the same bytes, as the
#: decoder always read them): ``openssl rand -base64 32`` makes such keys.
_B64URL_KEY = re.compile(r"[A-Za-z0-9_+/-]+={0,2}")


def _key_from_text(text: str) -> bytes | None:
    """The bytes of one key written in base64url or base64 (padded or not), or ``None``."""
    text = text.replace("+", "-").replace("/", "_")
    body = text.rstrip("=")
    if (
        not _B64URL_KEY.fullmatch(text)
        or len(body) % 4 == 1
        or (body != text and len(text) % 4 != 0)  # padding that does not complete a quantum
    ):
        return None
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


@dataclass(frozen=True)
class Keyring:
    """The consent secrets: key id -> at least 32 random bytes; ``current`` seals and signs.

    One secret per key id; sub-keys per purpose (store encryption, state signing, link sealing)
    are derived with HKDF so a leak of one derived key does not reveal the others. Keep old key
    ids listed until what they protected expired (links: minutes; grants: up to 90 days).

    >>> keys = Keyring.generate()                        # tests, the demo
    >>> keys = Keyring.from_string(os.environ["ENTRA_PASSTHROUGH_CONSENT_KEYS"])
    >>> # "2026-12:<base64url 32 bytes>,2026-11:<base64url 32 bytes>" - first is current
    """

    keys: Mapping[str, bytes] = field(repr=False)
    current: str
    _derived: dict[tuple[str, str], bytes] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if not isinstance(self.keys, Mapping):
            raise ConfigurationError(
                f"Keyring: keys must be a mapping of key id to bytes, not "
                f"{type(self.keys).__name__}.",
                fix=_KEYRING_FIX,
            )
        if not isinstance(self.current, str) or self.current not in self.keys:
            raise ConfigurationError(f"Keyring: the current key id {self.current!r} has no key.")
        for kid, key in self.keys.items():
            if not isinstance(kid, str) or not kid or len(kid) > 32 or not set(kid) <= _KID_CHARS:
                raise ConfigurationError("Keyring: key ids are 1-32 characters of [A-Za-z0-9_-].")
            if not isinstance(key, bytes | bytearray):
                # A str was taken and every seal or signature then raised a bare TypeError.
                raise ConfigurationError(
                    f"Keyring: key {kid!r} must be bytes (random bytes, not text), not "
                    f"{type(key).__name__}.",
                    fix=_KEYRING_FIX,
                )
            if len(key) < _MIN_KEY_BYTES:
                raise ConfigurationError(
                    f"Keyring: key {kid!r} is shorter than {_MIN_KEY_BYTES} bytes.",
                    fix='generate keys with `python -c "import secrets,base64;print(base64.'
                    'urlsafe_b64encode(secrets.token_bytes(32)).decode())"`.',
                )

    @classmethod
    def generate(cls, kid: str = "k1") -> Keyring:
        return cls({kid: secrets.token_bytes(32)}, current=kid)

    @classmethod
    def from_string(cls, text: str) -> Keyring:
        """``"kid:base64url,kid2:base64url"`` (items separated by commas, spaces around them
        ignored); the first key is current. Anything else is refused, never read as a key:
        no key is ever echoed."""
        if not isinstance(text, str):
            raise ConfigurationError(
                f"Keyring: the keys must be a string, not {type(text).__name__}.",
                fix=_KEYRING_FIX,
            )
        keys: dict[str, bytes] = {}
        order: list[str] = []
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            kid, sep, b64 = part.partition(":")
            kid, b64 = kid.strip(), b64.strip()
            if not sep:
                raise ConfigurationError(
                    f"Keyring: item {len(order) + 1} is not 'kid:base64url'.", fix=_KEYRING_FIX
                )
            if not kid or len(kid) > 32 or not set(kid) <= _KID_CHARS:
                raise ConfigurationError(
                    f"Keyring: the key id of item {len(order) + 1} is not 1-32 characters of "
                    "[A-Za-z0-9_-].",
                    fix=_KEYRING_FIX,
                )
            if kid in keys:
                raise ConfigurationError(
                    f"Keyring: key id {kid!r} is listed twice (the second would replace the "
                    "first).",
                    fix="give every key its own id; keep an old key under its old id until what "
                    "it sealed expired.",
                )
            key = _key_from_text(b64)
            if key is None:
                apart = (
                    " (items are separated by ',', not ';' or spaces)"
                    if any(c in b64 for c in ";: \t")
                    else ""
                )
                raise ConfigurationError(
                    f"Keyring: key {kid!r} is not base64url{apart}.", fix=_KEYRING_FIX
                )
            keys[kid] = key
            order.append(kid)
        if not order:
            raise ConfigurationError(
                "Keyring: no keys given (the text lists none).", fix=_KEYRING_FIX
            )
        return cls(keys, current=order[0])

    @classmethod
    def from_env(
        cls,
        variable: str | Mapping[str, str] = _KEYS_VAR,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> Keyring:
        """The keys in the environment variable ``variable`` (``from_string``'s text) of
        ``environ`` (default ``os.environ``). A mapping in place of ``variable`` is the
        environment, as the other ``from_env`` take it first: ``Keyring.from_env(env)``."""
        if isinstance(variable, Mapping):
            if environ is not None:
                raise ConfigurationError(
                    "Keyring.from_env was given two environments (a mapping first, and environ=).",
                    fix="pass the mapping once: Keyring.from_env(env) or "
                    "Keyring.from_env(environ=env).",
                )
            environ = variable
            variable = _KEYS_VAR
        if not isinstance(variable, str) or not variable:
            raise ConfigurationError(
                "Keyring.from_env takes the name of an environment variable or a mapping, "
                f"not {'an empty name' if variable == '' else type(variable).__name__}.",
                fix=f"call Keyring.from_env() for {_KEYS_VAR}, Keyring.from_env(env) with a "
                "mapping, or Keyring.from_env('NAME', environ=env).",
            )
        if environ is not None and not isinstance(environ, Mapping):
            raise ConfigurationError(
                f"Keyring.from_env: environ is a {type(environ).__name__}, not a mapping.",
                fix="pass environ= a mapping of variable names to values (like os.environ).",
            )
        value = (os.environ if environ is None else environ).get(variable)
        if not value:
            raise ConfigurationError(
                f"{variable} is not set.", fix=f"set {variable}='kid:<base64url of 32 bytes>'."
            )
        return keyring_from(value, variable=variable)

    def _subkey(self, kid: str, purpose: str) -> bytes:
        cached = self._derived.get((kid, purpose))
        if cached is None:
            cached = HKDF(
                algorithm=hashes.SHA256(),
                length=32,
                salt=b"entra-passthrough/consent/v1",
                info=purpose.encode(),
            ).derive(self.keys[kid])
            self._derived[(kid, purpose)] = cached
        return cached

    def seal(self, purpose: str, plaintext: bytes, *, aad: bytes = b"") -> str:
        """AES-256-GCM under the current key: ``"<kid>.<base64url(nonce|ciphertext)>"``."""
        nonce = secrets.token_bytes(12)
        ct = AESGCM(self._subkey(self.current, purpose)).encrypt(nonce, plaintext, aad)
        return f"{self.current}.{_b64e(nonce + ct)}"

    def sealed_with_current(self, sealed: str) -> bool:
        """Whether ``sealed`` (from ``seal``) names the current key: else it is re-sealed."""
        return sealed.partition(".")[0] == self.current

    def open(self, purpose: str, sealed: str, *, aad: bytes = b"") -> bytes:
        if not isinstance(sealed, str):
            raise KeyringError(f"it is a {type(sealed).__name__}, not a string")
        kid, sep, body = sealed.partition(".")
        if not sep or kid not in self.keys:
            raise KeyringError("it names a key id this Keyring does not list")
        raw = _b64d(body)
        if len(raw) < 12 + 16:
            raise KeyringError("it is too short to be a sealed value")
        try:
            return AESGCM(self._subkey(kid, purpose)).decrypt(raw[:12], raw[12:], aad)
        except InvalidTag as exc:
            raise KeyringError(
                "it does not verify (altered, or sealed with another key, purpose or record)"
            ) from exc

    def sign(self, purpose: str, payload: bytes) -> str:
        """HMAC-SHA256 under the current key: ``"<kid>.<base64url(payload)>.<base64url(mac)>"``."""
        body = _b64e(payload)
        mac = hmac.new(
            self._subkey(self.current, purpose), f"{self.current}.{body}".encode(), "sha256"
        )
        return f"{self.current}.{body}.{_b64e(mac.digest())}"

    def digest(self, purpose: str, data: bytes) -> str:
        """HMAC-SHA256 (hex) of ``data`` under the current key's sub-key for ``purpose``: a
        stable name that reveals nothing without the key, and changes when the current key
        does (the shared token cache's record names)."""
        return hmac.new(self._subkey(self.current, purpose), data, "sha256").hexdigest()

    def verify(self, purpose: str, signed: str) -> bytes:
        if not isinstance(signed, str):
            raise KeyringError(f"it is a {type(signed).__name__}, not a string")
        parts = signed.split(".")
        if len(parts) != 3 or parts[0] not in self.keys:
            raise KeyringError(
                "it is not <key id>.<payload>.<signature>, or names a key id this Keyring does "
                "not list"
            )
        kid, body, mac = parts
        expected = hmac.new(self._subkey(kid, purpose), f"{kid}.{body}".encode(), "sha256")
        if not hmac.compare_digest(expected.digest(), _b64d(mac)):
            raise KeyringError(
                "its signature does not verify (altered, or signed with another key)"
            )
        return _b64d(body)


def record_aad(store: object, key: str) -> bytes:
    """The associated data a record at ``key`` in ``store`` is sealed with: its whole name in
    the backend, the store's ``namespace`` (``RedisStore``) included, so that a value moved to
    another key, or to another deployment's namespace, does not open. Length-prefixed and
    tagged, so it is never the bare key that records written before were sealed with
    (``legacy_aad``)."""
    namespace = getattr(store, "namespace", "")
    if not isinstance(namespace, str):
        namespace = ""
    return f"ep-record/2:{len(namespace)}:{namespace}{key}".encode("utf-8", "surrogatepass")


def legacy_aad(key: str) -> bytes:
    """What records written by earlier versions were sealed with: the key without the store's
    namespace. Still opened (re-sealed with ``record_aad`` at their next write); a record
    sealed with ``record_aad`` never opens with it."""
    return key.encode()


def open_record(
    keyring: Keyring, purpose: str, sealed: str, store: object, key: str
) -> tuple[bytes, bool]:
    """(plain, whether it was sealed the earlier way, ``legacy_aad``). Raises
    ``KeyringError`` when it opens neither way."""
    try:
        return keyring.open(purpose, sealed, aad=record_aad(store, key)), False
    except KeyringError:
        return keyring.open(purpose, sealed, aad=legacy_aad(key)), True


def keyring_from(text: str, *, variable: str) -> Keyring:
    """``Keyring.from_string(text)`` for the value of the environment variable ``variable``:
    its refusals name the variable (they said "Keyring: ..." and left the reader to guess
    where the value came from). The value is never echoed."""
    try:
        return Keyring.from_string(text)
    except ConfigurationError as exc:
        message = str(exc).split(" Fix: ", 1)[0].removeprefix("Keyring: ")
        raise ConfigurationError(
            f"{variable}: {message}",
            fix=f"set {variable}='kid:<base64url of 32 bytes>[,older-kid:...]' (the first key "
            f"seals; keep old ones listed until what they sealed expired); {_MAKE_KEY}",
        ) from None
