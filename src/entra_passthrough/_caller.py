"""Capture: the per-request ``Caller`` scope object, ``current_caller()`` and ``bind_caller``.

The Caller is *mutable* on purpose: it is deactivated when its request (or run) ends, so a
long-lived task that copied the context earlier (an MCP connection's lifecycle task) sees an
inactive Caller and never uses its token (docs/platform-facts.md, Agent Framework).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Iterable, Mapping, MutableMapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._asgi import ASGIApp, Message, Receive, Scope, Send
from ._errors import ConfigurationError
from ._jwt import (
    MAX_TOKEN_BYTES,
    JwtDecodeError,
    UnverifiedClaims,
    fingerprint,
    sha256_hex,
    sha256_hex_of,
)
from ._www_auth import authorization_token

#: Foundry's platform headers (azure-ai-agentserver-core).
USER_ID_HEADER = "x-agent-user-id"
CALL_ID_HEADER = "x-agent-foundry-call-id"
_MAX_PLATFORM_VALUE = 256
_USER_ID, _CALL_ID = USER_ID_HEADER.encode(), CALL_ID_HEADER.encode()
_PLATFORM_HEADERS = (_USER_ID, _CALL_ID)
_PLATFORM_LENGTHS = frozenset(len(name) for name in _PLATFORM_HEADERS)
_BEARER_PREFIXES = (b"Bearer ", b"bearer ")

caller_var: ContextVar[Caller | None] = ContextVar("entra_passthrough.caller", default=None)


class _CallerTypeError(ConfigurationError, TypeError):
    """``bind_caller``/``Caller.from_token`` got an argument of the wrong type. A
    ``ConfigurationError`` like every configuration mistake, and still the ``TypeError``
    these calls raised before, for code that catches that."""


@dataclass(eq=False, slots=True)
class Caller:
    """Who is calling, for one request or one background run.

    ``assertion`` is the bearer token from the first configured header that carried one;
    ``presented`` is true whenever the request carried a bearer at all — even one that cannot be
    decoded — so that a presented-but-unusable assertion can never let a chain fall back to an
    app identity. ``claims`` are *unverified* (routing only) unless ``verified`` is set by a
    verifying middleware. ``repr`` never shows a token.

    >>> with bind_caller(token=user_token) as caller:
    ...     assert current_caller() is caller
    """

    assertion: str | None = field(default=None, repr=False)
    assertions: Mapping[str, str] = field(default_factory=dict, repr=False)
    presented: bool = False
    claims: UnverifiedClaims | None = None
    decode_error: str | None = None
    user_id: str | None = None
    call_id: str | None = None
    verified: Mapping[str, Any] | None = field(default=None, repr=False)
    not_after: float | None = None
    _active: bool = True
    errors: list[BaseException] = field(default_factory=list, repr=False)
    # (assertion, sha256 hex) memo so a cache lookup hashes the assertion once per request;
    # keyed on the assertion object itself, so reassigning ``assertion`` recomputes it.
    _digest: tuple[str, str] | None = field(default=None, repr=False)
    # ``from_headers``: (a copy of the headers, the wanted names) until they are read.
    _pending: tuple[tuple[tuple[bytes, bytes], ...], dict[bytes, str]] | None = field(
        default=None, init=False, repr=False
    )
    # ``copy``: the Caller copied, whose claims (decoded once, by either) this one shares.
    _twin: Caller | None = field(default=None, init=False, repr=False)

    @property
    def active(self) -> bool:
        """False once the request or run ended, or past ``not_after`` (the assertion's expiry
        for a bound background run)."""
        if not self._active:
            return False
        return self.not_after is None or time.time() < self.not_after

    def end(self) -> None:
        self._active = False

    def copy(self) -> Caller:
        """An independent Caller for the same identity, with its own ``active`` flag and no
        recorded errors: end it without ending this one (a background run, a connect). Its
        claims, if this one has not decoded them yet, are decoded on first use, once for both
        (a copy costs no decode: the chain copies the caller of every acquisition, a cold
        burst's included)."""
        self.read_headers()  # (a no-op once read: as another thread may be reading them now)
        cls = type(self)
        copied = object.__new__(cls)
        for slot in _copied_slots(cls):
            try:
                value = slot.__get__(self, cls)
            except AttributeError:
                continue  # unset: ``claims``/``decode_error``, decoded on first use
            slot.__set__(copied, value)
        if _claims_unset(self):
            # Shared with the first original (never a chain of copies, each keeping the one
            # before it alive); dropped once the copy has its claims.
            twin = self._twin
            copied._twin = self if twin is None else twin
        return copied

    @property
    def assertion_sha256(self) -> str | None:
        """sha256 (hex) of ``assertion``, computed once per assertion (cache keys)."""
        assertion = self.assertion
        if assertion is None:
            return None
        memo = self._digest
        if memo is not None and memo[0] is assertion:
            return memo[1]
        digest = sha256_hex(assertion)
        self._digest = (assertion, digest)
        return digest

    @property
    def fingerprint(self) -> str | None:
        return fingerprint(self.assertion) if self.assertion else None

    def record(self, error: BaseException) -> None:
        """Keep an acquisition error for the integration to re-raise after the call."""
        if len(self.errors) < 16:
            self.errors.append(error)

    def take_errors(self) -> list[BaseException]:
        errors, self.errors = self.errors, []
        return errors

    @classmethod
    def from_token(
        cls,
        token: str | None,
        *,
        user_id: str | None = None,
        call_id: str | None = None,
        not_after: float | None = None,
    ) -> Caller:
        if token is not None and not isinstance(token, str):
            # bytes from a raw header, say: the decode would fail with a TypeError about str
            raise _CallerTypeError(
                f"token must be the bearer token as a str, not {type(token).__name__}.",
                fix="pass the token without its 'Bearer ' prefix, as a str (decode a header's "
                "bytes as latin-1 first).",
            )
        caller = cls(user_id=user_id, call_id=call_id, not_after=not_after)
        if token is not None:
            caller._set_assertion("authorization", token)
        return caller

    @classmethod
    def from_headers(
        cls,
        headers: Iterable[tuple[bytes, bytes]],
        *,
        assertion_headers: Iterable[str] = ("authorization",),
    ) -> Caller:
        """Build a Caller from raw ASGI headers. Never raises on bad input.

        A header named in ``assertion_headers`` that appears more than once is ambiguous: it
        counts as *presented* but unusable (fail closed). ``Authorization`` must use the
        ``Bearer`` scheme; other named headers (e.g. ``X-MS-TOKEN-AAD-ACCESS-TOKEN``) carry the
        bare token.

        The headers are read on first use of what they carry (``assertion``, ``presented``,
        ``user_id``...; the claims on first use of ``claims``): a request whose handler never
        asks (health checks, tools/list, streams) pays no header scan. The first read fills
        all of these fields at once, so assign one only after reading one. The Caller keeps a
        copy of the header list, so a later change to the list (another middleware's) is never
        seen; headers that cannot be read make a malformed caller (presented, unusable).
        """
        return caller_from_asgi(cls, headers, wanted_headers(assertion_headers))

    def _fill(self, headers: Iterable[tuple[bytes, bytes]], wanted: dict[bytes, str]) -> None:
        """Fill the header-borne fields from ``headers`` (any number of assertion headers)."""
        # Names are compared as bytes: this loop runs on every request that reads them, and
        # decoding each name costs more than the rest of it. ``bytes.lower`` (not
        # ``raw_name.lower``) raises on a name that is not bytes, so junk fails closed instead
        # of a str "authorization" going unnoticed. Header names are ASCII tokens (RFC 9110).
        seen: dict[bytes, list[bytes]] = {}
        platform: dict[bytes, list[bytes]] = {}
        for raw_name, raw_value in headers:
            key = bytes.lower(raw_name)
            if key in wanted:
                seen.setdefault(key, []).append(raw_value)
            elif key in _PLATFORM_HEADERS:
                platform.setdefault(key, []).append(raw_value)
        # Decided on a Caller of its own, then copied: another thread reading this one
        # meanwhile never sees a half-made decision (e.g. ``claims`` None before it is unset).
        read = Caller(
            user_id=_platform_value(platform.get(_USER_ID)),
            call_id=_platform_value(platform.get(_CALL_ID)),
        )
        repeated = [
            (name, len(seen[key])) for key, name in wanted.items() if len(seen.get(key, ())) > 1
        ]
        if repeated:
            # Any assertion header sent twice makes the whole request ambiguous: no assertion
            # from another header stands in for it (presented, unusable: fail closed).
            name, count = repeated[0]
            read._mark_malformed(f"header {name!r} sent {count} times")
            wanted = {}
        for key, name in wanted.items():
            values = seen.get(key)
            if not values:
                continue
            token = _bearer(name, values[0])
            if token is None:
                continue  # e.g. "Basic ..." — not an assertion at all
            read._set_assertion(name, token)
            if not token and len(values[0]) > _OVERSIZED and read.assertion == "":
                read.claims = None
                read.decode_error = OVERSIZED_TOKEN
        for slot in _HEADER_SLOTS:
            try:
                value = slot.__get__(read, Caller)
            except AttributeError:
                continue  # the claims, pending: decoded from ``assertion`` on first use
            slot.__set__(self, value)

    def _set_assertion(self, header: str, token: str) -> None:
        self.presented = True
        if header not in self.assertions:
            self.assertions = {**self.assertions, header: token}
        if self.assertion is not None:
            return
        self.assertion = token
        # Decoded on first use: most requests (tools/list, streams, health checks, routes that
        # never call out) never read the claims, and the decode is ~80% of capture's cost.
        # Unset slots send the first read of ``claims``/``decode_error`` to ``__getattr__``.
        del self.claims
        del self.decode_error

    def read_headers(self) -> None:
        """Read the headers ``from_headers`` kept, now: every header-borne field is filled (the
        claims decode on first use), and the usual ``Bearer`` assertion hashed for the cache
        key (``assertion_sha256``) from the header's bytes. The first read of a field does the
        same; the token lookup calls this first. A no-op for a Caller already read or not
        built from headers."""
        pending = self._pending
        if pending is None:
            return
        headers, wanted = pending
        try:
            if len(wanted) != 1:
                self._fill(headers, wanted)
            else:
                # One assertion header (the usual configuration): ``_fill``'s decisions,
                # counted in locals instead of lists, in this one frame (this runs once per
                # request that calls out; calls and lists here cost it ~1 us through a client).
                ((want, name),) = wanted.items()
                size = len(want)
                value: bytes | None = None
                count = 0
                platform: dict[bytes, list[bytes]] | None = None
                for raw_name, raw_value in headers:
                    # Only a name of a length we look for is lower-cased (a new bytes per name):
                    # any other name is none of ours, whatever its case or type. ``bytes.lower``
                    # raises on a name that is not bytes: junk fails closed (below).
                    length = len(raw_name)
                    if length == size:
                        key = bytes.lower(raw_name)
                        if key == want:
                            value = raw_value
                            count += 1
                            continue
                    elif length not in _PLATFORM_LENGTHS:
                        continue
                    key = bytes.lower(raw_name)
                    if key in _PLATFORM_HEADERS:
                        if platform is None:
                            platform = {}
                        platform.setdefault(key, []).append(raw_value)
                if platform is None:
                    self.user_id = self.call_id = None
                else:
                    self.user_id = _platform_value(platform.get(_USER_ID))
                    self.call_id = _platform_value(platform.get(_CALL_ID))
                rest = None
                if value is None or count > 1:
                    token = None
                elif (
                    want == b"authorization"
                    and len(value) <= MAX_TOKEN_BYTES + 16
                    and value.startswith(_BEARER_PREFIXES)
                ):
                    rest = value[7:]  # ``_bearer``'s usual case, inlined
                    try:
                        token = rest.decode("ascii").strip()
                    except UnicodeDecodeError:
                        token, rest = _bearer(name, value), None
                else:
                    token = _bearer(name, value)
                if token is None:  # none, duplicated, or not a bearer (e.g. "Basic ...")
                    self.assertion = None
                    self.assertions = {}
                    self.presented = count > 1
                    self.claims = None
                    self.decode_error = f"header {name!r} sent {count} times" if count > 1 else None
                else:
                    # what ``_set_assertion`` does, in one go; ``claims``/``decode_error`` stay
                    # unset: decoded on first use
                    self.assertion = token
                    self.assertions = {name: token}
                    self.presented = True
                    if not token and value is not None and len(value) > _OVERSIZED:
                        self.claims = None
                        self.decode_error = OVERSIZED_TOKEN
                    if rest is not None and len(rest) == len(token):
                        # ASCII, nothing stripped: the bytes are the token's UTF-8. Keyed on
                        # this str, as ``assertion_sha256``'s memo is (a later assignment is
                        # hashed anew).
                        self._digest = (token, sha256_hex_of(rest))
        except Exception:
            # Headers an ASGI server would never produce (wrong types...): fail closed.
            self.assertion = None
            self.assertions = {}
            self.presented = True
            self.user_id = self.call_id = None
            self.claims = None
            self.decode_error = "request headers could not be read"
        # Cleared once every field is set: a thread reading meanwhile fills them too (the
        # same values), never finds one unset with nothing left to fill it from.
        self._pending = None

    if not TYPE_CHECKING:  # hidden from mypy: a typed __getattr__ would make typos type-check

        def __getattr__(self, name: str) -> Any:
            # Reached only for an unset slot: a header-borne field of a ``from_headers``
            # Caller not read yet, or ``claims``/``decode_error`` not decoded yet.
            slot = _LAZY_SLOTS.get(name)
            if slot is None:
                if name == "_twin":
                    return None  # not a copy (the capture's Callers leave the slot unset)
                raise AttributeError(name)
            if name == "errors":
                with _ERRORS_LOCK:  # two first records at once: one list, neither error lost
                    try:
                        return slot.__get__(self, Caller)
                    except AttributeError:
                        self.errors = []
                        return self.errors
            if self._pending is not None:
                self.read_headers()
                return getattr(self, name)
            # Another thread may have filled the slot since it was found unset here: it clears
            # ``_pending`` only once every field is set, so the slot is read again before
            # anything is concluded from the headers being read (a sync tool in a worker
            # reading the caller beside the loop).
            try:
                return slot.__get__(self, Caller)
            except AttributeError:
                pass
            if name not in ("claims", "decode_error"):
                raise AttributeError(name)
            if not self.assertion:
                # ``_bearer``'s presented-but-unusable: nothing after "Bearer", or a header
                # that is not "Bearer <token>" at all (a raw token, "Bearer:<token>").
                self.claims = None
                self.decode_error = "no token in the form 'Authorization: Bearer <token>'"
                return getattr(self, name)
            twin = self._twin
            if twin is not None:
                self._twin = None  # (it is not kept alive by this copy any longer)
                if twin.assertion == self.assertion:
                    # A copy: the claims its original decoded, or decodes now for both (once).
                    self.claims = twin.claims
                    self.decode_error = twin.decode_error
                    return getattr(self, name)
            try:
                self.claims = UnverifiedClaims.from_token(self.assertion)
                self.decode_error = None
            except JwtDecodeError as exc:
                self.claims = None
                self.decode_error = str(exc)
            return getattr(self, name)  # both slots are set now: a plain read

    def _mark_malformed(self, reason: str) -> None:
        self.presented = True
        if self.decode_error is None:
            self.decode_error = reason


#: The fields ``from_headers`` fills when one of them is first read, and their slots.
_HEADER_FIELDS = (
    "assertion",
    "assertions",
    "presented",
    "user_id",
    "call_id",
    "claims",
    "decode_error",
)
_LAZY_SLOTS = {name: Caller.__dict__[name] for name in (*_HEADER_FIELDS, "errors")}
_HEADER_SLOTS = tuple(_LAZY_SLOTS[name] for name in _HEADER_FIELDS)
_ERRORS_LOCK = threading.Lock()
#: What ``Caller.copy`` copies, per class: every field but the recorded errors (a new list on
#: first use) and the twin (a subclass's own fields included).
_SLOTS_OF: dict[type, tuple[Any, ...]] = {}


def _copied_slots(cls: type) -> tuple[Any, ...]:
    slots = _SLOTS_OF.get(cls)
    if slots is None:
        names: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            declared = klass.__dict__.get("__slots__", ())
            for name in (declared,) if isinstance(declared, str) else declared:
                if name not in ("errors", "_twin", "__dict__", "__weakref__"):
                    names[name] = klass.__dict__[name]
        if cls.__dictoffset__:  # a subclass without slots: its fields live in its __dict__
            names["__dict__"] = _DictCopy()
        slots = _SLOTS_OF[cls] = tuple(names.values())
    return slots


class _DictCopy:
    """``_copied_slots``' stand-in for an instance ``__dict__`` (a subclass without slots)."""

    def __get__(self, instance: Any, owner: type) -> dict[str, Any]:
        return dict(object.__getattribute__(instance, "__dict__"))

    def __set__(self, instance: Any, value: dict[str, Any]) -> None:
        object.__getattribute__(instance, "__dict__").update(value)


def _claims_unset(caller: Caller) -> bool:
    """Whether ``caller``'s claims are still to be decoded (read without decoding them)."""
    try:
        _CLAIMS_SLOT.__get__(caller, Caller)
    except AttributeError:
        return True
    return False


_CLAIMS_SLOT = Caller.__dict__["claims"]

_WANTED: dict[tuple[str, ...], dict[bytes, str]] = {}
_MAX_WANTED = 64


def caller_from_asgi(
    cls: type[Caller], headers: Iterable[tuple[bytes, bytes]], wanted: dict[bytes, str]
) -> Caller:
    """``Caller.from_headers`` with the names already looked up (``wanted_headers``): the
    middleware's per-request path. The headers are copied, read on first use."""
    caller = cls.__new__(cls)
    caller._pending = (tuple(headers), wanted)
    caller.verified = None
    caller.not_after = None
    caller._active = True
    caller._digest = None  # ``errors``: a list on first use (most requests record none)
    return caller


#: Key of the Caller in ``scope["state"]`` (Starlette: ``request.state.entra_caller``).
STATE_KEY = "entra_caller"


class CaptureASGI:
    """The per-request path of ``CallerMiddleware`` (its base class): a ``Caller`` from the
    request's raw headers, bound for the app, ended as the response completes.

    It lives here, beside ``Caller``, because it builds and ends the ``Caller`` field by field:
    what ``caller_from_asgi`` and ``Caller.end`` do, without the calls. This runs on every
    request, and under a real server every call costs its cache misses as well as its
    instructions. Counted under uvicorn (``python -m bench._mw_floor``, the median of three
    hash seeds), inlining them took the middleware from 17.5k to 14.5k instructions a request.

    ``CallerMiddleware`` sets ``app``, ``_wanted`` (``wanted_headers``), ``require_caller`` and
    ``verifier``, and decides in ``_admit`` whether a request may go on.
    """

    app: ASGIApp
    _wanted: dict[bytes, str]
    require_caller: bool
    verifier: Any

    async def _admit(self, caller: Caller, scope: Scope, send: Send) -> bool:
        """Check the caller; on refusal answer the request (through ``send``) and return
        ``False``. Reached only when ``require_caller`` or a ``verifier`` is set."""
        return True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)  # lifespan and others: nothing to capture
            return
        headers = scope.get("headers")
        try:
            # ``caller_from_asgi``, inlined (``test_middleware_builds_what_caller_from_asgi_
            # builds`` compares the two): the headers copied, read on first use.
            caller = _new_caller(Caller)
            caller._pending = (tuple(headers), self._wanted)  # type: ignore[arg-type]
            caller.verified = None
            caller.not_after = None
            caller._active = True
            caller._digest = None
        except Exception:
            # No headers (a plain Caller), or headers an ASGI server would never produce:
            # fail closed, never crash.
            unreadable = "request headers could not be read"
            caller = Caller() if headers is None else malformed_caller(unreadable)
        if (self.require_caller or self.verifier is not None) and not await self._admit(
            caller, scope, send
        ):
            caller._active = False
            return
        state = scope.get("state")
        if type(state) is not dict and not isinstance(state, MutableMapping):
            state = {} if state is None else dict(state)
            scope["state"] = state
        state[STATE_KEY] = caller
        reset = caller_var.set(caller)  # set without ending: ended below, or as the response ends
        to_server = send
        if kind == "http":

            def ending(message: Message) -> Awaitable[None]:
                """The server's ``send``, ending the caller as its response completes (before
                the last body chunk goes out), not when the app returns: an app may go on
                after the client has its answer (cleanup, a saturated loop), and no request
                made then may act for this user. The last message also goes out with the
                Caller unbound (the variable reset to what it was before the request, which
                stays: an ended Caller and none are the same to every reader). What the server
                schedules while it handles that message (uvicorn: the keep-alive timer, reads
                resumed) copies the current context, and would keep the ended Caller, and its
                token, alive until those handles are dropped: under load ~100 ended Callers per
                server, each one more object for every garbage collection to walk
                (tests/capture/test_caller_retention_uvicorn.py).

                Unbound by resetting the variable here, so that the ``finally`` below has
                nothing left to do: one context-variable operation a request instead of two
                (``set(None)`` here, ``reset`` there), ~3k instructions under uvicorn
                (``python -m bench._mw_floor``). From another context (an app that sends from
                a task of its own) the reset is refused; that context then gets ``None``, and
                the ``finally`` resets the request's own.

                A plain function handing back the server's own awaitable (no coroutine per
                message), defined here (no factory call per request): this runs on every
                message of every response."""
                if message["type"] == "http.response.body" and not message.get("more_body"):
                    caller._active = False  # ``caller.end()``, inlined
                    try:
                        caller_var.reset(reset)
                    except (ValueError, RuntimeError):  # another context; a second last chunk
                        caller_var.set(None)
                return send(message)

            to_server = ending
        try:
            await self.app(scope, receive, to_server)
        finally:
            caller._active = False  # ``caller.end()``, inlined
            if caller_var.get() is caller:  # not unbound at the last chunk, in this context
                try:
                    caller_var.reset(reset)
                except RuntimeError:  # unbound then, and bound again by the app since
                    before = reset.old_value
                    caller_var.set(None if before is Token.MISSING else before)


_new_caller = object.__new__


def wanted_headers(assertion_headers: Iterable[str]) -> dict[bytes, str]:
    """Lower-case header name (bytes) -> name, for ``from_headers``; memoised for the tuples a
    middleware passes on every request (bounded: a memo, not a registry). Do not mutate."""
    if isinstance(assertion_headers, tuple):
        found = _WANTED.get(assertion_headers)
        if found is not None:
            return found
    wanted = {n.encode(): n for h in assertion_headers if (n := h.lower()).isascii()}
    if isinstance(assertion_headers, tuple):
        if len(_WANTED) >= _MAX_WANTED:
            _WANTED.clear()
        _WANTED[assertion_headers] = wanted
    return wanted


def _platform_value(values: list[bytes] | None) -> str | None:
    # A platform header sent twice (a client's copy beside the ingress's) is ambiguous: the
    # user id keys consent grants, so neither copy is trusted.
    if values is None or len(values) != 1:
        return None
    return platform_value(values[0])


def platform_value(raw: bytes) -> str | None:
    """A platform header's one value as the capture reads it: Latin-1 (HTTP's reading, and the
    one every earlier version keyed grants and bindings by: kept, so that no user's key
    changes), and, when that reading holds control characters (a UTF-8 name such as "Жанна",
    whose bytes 0x80-0x9F are C1 controls in Latin-1: such a value was dropped), UTF-8 if it
    holds a character no Latin-1 reading has (above U+00FF: one byte string, one user);
    stripped, printable, at most ``_MAX_PLATFORM_VALUE`` bytes; ``None`` when it is not such a
    value (then the request has no platform user: ``ResponseOwners`` refuses it rather than
    store its response as the shared "anonymous" owner's)."""
    if not raw or len(raw) > _MAX_PLATFORM_VALUE:
        return None
    value = raw.decode("latin-1").strip()
    if value.isprintable():
        return value or None
    try:
        value = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    # Only a UTF-8 reading that no Latin-1 reading can give (a character above U+00FF): else
    # two byte strings would be one user ("MÜLLER" in UTF-8 and in Latin-1, "José" in UTF-8
    # and "JosÃ©" in UTF-8), sharing grants, connections and stored responses.
    if value.isprintable() and max(map(ord, value), default=0) > 0xFF:
        return value
    return None


#: A header value longer than this is refused unread (``_bearer``), and said so.
_OVERSIZED = MAX_TOKEN_BYTES + 16
OVERSIZED_TOKEN = f"the bearer token is larger than {MAX_TOKEN_BYTES // 1024} KiB"


def _bearer(header: str, raw: bytes) -> str | None:
    """The token in ``raw``; ``""`` for a bearer that is present but empty or unreadable."""
    if len(raw) > _OVERSIZED:
        return ""  # presented, oversized: fails closed (``OVERSIZED_TOKEN`` says why)
    if header == "authorization" and raw[:7].lower() == b"bearer ":
        # The usual form, without the general path's decode of the whole value: the same
        # result (``authorization_token`` strips the spaces after "Bearer " and around the
        # token the same way), and the token is decoded on its own (ASCII, the usual case, is
        # the cheaper codec and gives the same str as latin-1 for ASCII bytes).
        rest = raw[7:]
        return (rest.decode("ascii") if rest.isascii() else rest.decode("latin-1")).strip()
    if header == "authorization":
        # The reading the MCP server's has (RFC 6750 2.1, "Bearer" 1*SP token): a token in
        # another form ("Bearer<TAB><token>", the raw token, "Bearer:<token>", DPoP) is
        # presented and unusable (""), so that it fails closed instead of letting the app's
        # identity act for the request; another scheme (Basic, an API key) carries no user
        # token: no assertion (None).
        return authorization_token(raw.decode("latin-1"))
    return raw.decode("latin-1").strip()


def malformed_caller(reason: str) -> Caller:
    """A Caller for a request whose headers could not be read at all: presented and
    undecodable, so that it fails closed everywhere (capture's last resort)."""
    caller = Caller()
    caller._mark_malformed(reason)
    return caller


def current_caller() -> Caller | None:
    """The Caller bound to this context, active or not (check ``.active``)."""
    return caller_var.get()


def active_caller() -> Caller | None:
    """The Caller bound to this context if it is still active, else ``None``. Internal (the
    library's integrations); the public API is ``current_caller()`` and ``Caller.active``."""
    caller = caller_var.get()
    return caller if caller is not None and caller.active else None


class bind_caller:
    """Bind a Caller to the current context, as a sync or async context manager.

    Use it where there is no ASGI request: workers, tests, Azure Functions, background runs.
    For a background run, bind for the run's whole life; the Caller stays active until the run
    ends, capped at the assertion's expiry (``cap_at_expiry=True``). On exit the Caller is ended
    and the caller bound before it is bound again. One object binds once: a second enter
    (nested, another task, after its block) is a ``ConfigurationError``.

    >>> async with bind_caller(token=user_token):
    ...     await client.get("https://api.contoso.com/me")
    """

    def __init__(
        self,
        caller: Caller | None = None,
        *,
        token: str | None = None,
        user_id: str | None = None,
        call_id: str | None = None,
        cap_at_expiry: bool = True,
    ) -> None:
        if caller is None:
            caller = Caller.from_token(token, user_id=user_id, call_id=call_id)
        elif not isinstance(caller, Caller):
            # A token passed positionally: an AttributeError on .claims below.
            raise _CallerTypeError(
                f"bind_caller's first argument must be a Caller, not {type(caller).__name__}.",
                fix="pass the bearer token by keyword: bind_caller(token=...).",
            )
        elif token is not None or user_id is not None or call_id is not None:
            raise _CallerTypeError(
                "bind_caller got both a Caller and token/user_id/call_id.",
                fix="pass either a Caller or token/user_id/call_id, not both.",
            )
        if cap_at_expiry and caller.claims is not None and caller.claims.exp is not None:
            cap = caller.claims.exp
            caller.not_after = cap if caller.not_after is None else min(caller.not_after, cap)
        self.caller = caller
        self._token: Token[Caller | None] | None = None
        # Taken by the first ``__enter__`` and never released: one bind per object, checked
        # atomically (two threads or tasks entering one object at once: one of them is refused).
        self._used = threading.Lock()

    def __enter__(self) -> Caller:
        if not self._used.acquire(blocking=False):
            # Nested, shared by two tasks, or entered again after its block: its exit ends the
            # Caller (a second block would run with it ended, or end it under the first), and
            # one reset token cannot restore two contexts.
            raise ConfigurationError(
                "This bind_caller was entered a second time (nested, by another task or "
                "after its block); it binds once: its exit ends the Caller and restores one "
                "context.",
                fix="create a new bind_caller(token=...) for each block and each task.",
            )
        self._token = caller_var.set(self.caller)
        return self.caller

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.caller.end()
        token, self._token = self._token, None
        if token is None:
            return
        try:
            caller_var.reset(token)
        except ValueError:
            # Exited in another context than the one it was entered in (an async fixture's
            # teardown, an ExitStack closed from another task): that context cannot be reset
            # from here, and keeps the Caller, ended (every reader treats it as none). Here,
            # the caller bound before it is bound again if this one is.
            if caller_var.get() is self.caller:
                before = token.old_value
                caller_var.set(None if before is Token.MISSING else before)

    async def __aenter__(self) -> Caller:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


def set_current(caller: Caller | None) -> Token[Caller | None]:
    """For the middleware: set without ending (the middleware ends the caller itself)."""
    return caller_var.set(caller)


def reset_current(token: Token[Caller | None]) -> None:
    caller_var.reset(token)
