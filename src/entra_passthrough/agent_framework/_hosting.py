"""Capture on ``ResponsesHostServer``: ``install(app)`` and background runs.

``install(app)`` adds, with the host's own ``add_middleware`` (pure ASGI, before start):

* ``CallerMiddleware`` (outermost): one ``Caller`` per request, ended when the request ends.
* ``BackgroundRunCallers`` (inside it): a ``POST .../responses`` with ``"background": true``
  outlives its request, so the run gets its *own* Caller, a copy of the request's, that stays
  active after the POST returns and ends when the run releases its pooled connection, and at
  the latest at the assertion's expiry (``bind_caller``'s cap) or after ``max_run_seconds``.
  A run resumed after a restart (``resilient_background``) has no request at all, hence no
  Caller: its tool calls fail closed with ``NoCallerError``. It also notes a request sent with
  ``"store": false`` (``unstored_request()``): the host cannot continue a consent there, and
  a consent met in its run fails it with an explanation instead (``_signals``).

* ``ResponseOwners`` (between them, on a ``ResponsesHostServer``): a stored response, and a
  conversation, is read, continued, cancelled or deleted only by the user who created it.

The documented alternative, for hosts you assemble yourself::

    app = ResponsesHostServer(agent)
    app.add_middleware(BackgroundRunCallers)           # inner first: Starlette prepends
    app.add_middleware(ResponseOwners)
    app.add_middleware(CallerMiddleware, verifier=verifier)
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import json
import logging
import math
import os
import re
import time
from collections.abc import Sequence
from contextvars import ContextVar
from importlib import metadata
from typing import Any

from .._asgi import ASGIApp, Message, Receive, Scope, Send
from .._caller import Caller, current_caller, platform_value, reset_current, set_current
from .._checks import seconds
from .._errors import ConfigurationError, safe_text
from .._store import MemoryStore, TokenStore
from .._user_key import UserKey
from ._af_seams import shutdown_handler_of

__all__ = [
    "RESPONSE_OWNER_SECONDS",
    "BackgroundRunCallers",
    "ResponseOwners",
    "end_run_caller",
    "install",
    "unstored_request",
]

_log = logging.getLogger("entra_passthrough.agent_framework")


#: The largest ``POST .../responses`` body read, by ``BackgroundRunCallers`` (for
#: ``"background"`` and ``"store"``) and by ``ResponseOwners`` (for the ids it continues): one
#: limit, so a body one of them reads is never one the other cannot. A larger one is refused
#: (413): neither can be checked.
_MAX_BODY = 32 * 1024 * 1024

#: The run-bound Caller of a background response, visible to the run's task.
_run_caller: ContextVar[Caller | None] = ContextVar("entra_passthrough.run_caller", default=None)
#: Whether the Responses request being served was sent with ``"store": false``.
_unstored: ContextVar[bool] = ContextVar("entra_passthrough.unstored_request", default=False)


def unstored_request() -> bool:
    """True while serving a ``POST .../responses`` sent with ``"store": false`` (as noted by
    ``BackgroundRunCallers``; false where it is not installed). ``ResponsesHostServer`` cannot
    continue a consent (``oauth_consent_request``) in such a response."""
    return _unstored.get()


def end_run_caller() -> None:
    """End the background run's own Caller, if this task runs one (called when a run releases
    its pooled connection; safe to call anywhere)."""
    caller = _run_caller.get()
    if caller is not None and caller is current_caller():
        caller.end()


def _run_copy(caller: Caller, *, max_run_seconds: float) -> Caller:
    copy = caller.copy()
    cap = time.time() + max_run_seconds
    if caller.claims is not None and caller.claims.exp is not None:
        cap = min(cap, caller.claims.exp)
    copy.not_after = cap if copy.not_after is None else min(copy.not_after, cap)
    return copy


class BackgroundRunCallers:
    """Pure ASGI middleware (install it *inside* ``CallerMiddleware``): gives a
    ``background: true`` Responses request a run-lifetime Caller. Other requests pass through.
    A create body over 32 MiB (``ResponseOwners``' limit too) is refused, 413: its
    ``background`` cannot be read.

    >>> app.add_middleware(BackgroundRunCallers)
    """

    def __init__(self, app: ASGIApp, *, max_run_seconds: float = 3600.0) -> None:
        self.app = app
        self.max_run_seconds = _run_seconds(max_run_seconds)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        caller = current_caller()
        if (
            scope.get("type") != "http"
            or scope.get("method") != "POST"
            or not _is_create_path(str(scope.get("path", "")))
            or caller is None
            or not caller.active
        ):
            await self.app(scope, receive, send)
            return
        buffered, complete = await _peek(receive)
        if _too_large(buffered, complete):
            # Its "background" cannot be read: passed on as a foreground request, a background
            # run would outlive the request's Caller and fail closed with no word of why.
            await _too_large_answer(send, 'whether it asks for "background": true')
            return
        replay = _replay(buffered, receive)
        background, unstored = (
            _flags(b"".join(m.get("body", b"") for m in buffered)) if complete else (False, False)
        )
        noted = _unstored.set(unstored)
        try:
            if not background:
                await self.app(scope, replay, send)
                return
            run_caller = _run_copy(caller, max_run_seconds=self.max_run_seconds)
            reset = set_current(run_caller)
            marker = _run_caller.set(run_caller)
            try:
                await self.app(scope, replay, send)
            finally:
                # Not ended here: the run outlives this request (see the module docstring).
                _run_caller.reset(marker)
                reset_current(reset)
        finally:
            _unstored.reset(noted)


def _is_create_path(path: str) -> bool:
    """Whether ``path`` is ``{prefix}/responses`` as the host's router matches it: Starlette's
    route patterns end in ``$``, which also matches before a final line break (``POST
    /responses%0A``), and a trailing slash is redirected to it."""
    return path.rstrip("\n").rstrip("/").endswith("/responses")


def _run_seconds(value: object) -> float:
    # Checked where it is given: a string was an untyped TypeError (from install(), only when
    # the app starts), and NaN was accepted (a deadline that compares false with every time).
    return seconds(value, what="max_run_seconds", low=0, high=math.inf, above_low=True)


async def _peek(receive: Receive, limit: int = _MAX_BODY) -> tuple[list[Message], bool]:
    buffered: list[Message] = []
    size = 0
    while size <= limit:
        message = await receive()
        buffered.append(message)
        if message.get("type") != "http.request":
            return buffered, False
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            return buffered, size <= limit
    return buffered, False


def _too_large(buffered: list[Message], complete: bool) -> bool:
    """Whether ``_peek`` stopped at its limit (not at a disconnect)."""
    return not complete and bool(buffered) and buffered[-1].get("type") == "http.request"


async def _too_large_answer(send: Send, what: str) -> None:
    await _answer(
        send,
        413,
        "request_too_large",
        f"entra_passthrough: the request body is over {_MAX_BODY // (1024 * 1024)} MiB, the "
        f"most read to check {what}; nothing was run. Send a smaller body (a large file by "
        "URL or file id, not inline).",
        None,
    )


def _replay(buffered: list[Message], receive: Receive) -> Receive:
    pending = list(buffered)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


def _flags(body: bytes) -> tuple[bool, bool]:
    """``(background, unstored)``: whether the body asks for ``"background": true`` and for
    ``"store": false``."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        # Not JSON, or nested past the parser's recursion limit (a body built to crash it):
        # neither; the host answers it as it sees fit, never a crash here.
        return False, False
    if not isinstance(parsed, dict):
        return False, False
    return parsed.get("background") is True, parsed.get("store") is False


#: How long the owner of a stored response (or conversation) is kept: 30 days, the retention
#: of a stored response in the Responses API. A response whose owner is no longer known is
#: refused to every caller but a platform user (below).
RESPONSE_OWNER_SECONDS = 30 * 86400.0

#: ``{prefix}/responses/{id}``, ``.../cancel``, ``.../input_items``: the routes that name a
#: stored response by id (``ResponsesHostServer``), with the method each one answers.
_BY_ID = re.compile(r"/responses/([^/]+?)(/cancel|/input_items)?/?\n?\Z")
_BY_ID_METHODS = {
    None: ("GET", "HEAD", "DELETE"),  # Starlette answers HEAD with the GET route's handler
    "/cancel": ("POST",),
    "/input_items": ("GET", "HEAD"),
}
#: How much of a created response is read for its id before it goes out (its first SSE event,
#: or the head of its JSON).
_MAX_ID_SCAN = 256 * 1024
_ID_AT_START = re.compile(rb'^\s*\{\s*"id"\s*:\s*"([^"\\]{1,256})"')
_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,256}")
#: How long a name (a conversation, an id the client chose) claimed by a create request is kept
#: before the host has stored a response under it; then ``retention``.
CLAIM_SECONDS = 3600.0
_ANONYMOUS = b"anonymous"
#: Whether the in-process owner store's limit has been said (``_unknown_owner``).
_unknown_owner_said = False


class ResponseOwners:
    """Pure ASGI middleware (inside ``CallerMiddleware``; ``install`` adds it to a
    ``ResponsesHostServer``): a stored response is read (``GET /responses/{id}``, its
    ``input_items``), cancelled, deleted or continued (``previous_response_id``) only by the
    user who created it, and a ``conversation`` only by the user who first used it. A create
    request's ``item_reference`` inputs must name items of the caller's own responses.

    ``ResponsesHostServer`` serves a stored response by id to whoever sends the id (its own
    check covers a response still running, by the ``x-agent-user-id`` header any client can
    send outside Foundry). Here the owner is the creating request's user as the library knows
    it (``UserKey``: the verified token's tenant and object id, else the platform's user id;
    a request with neither is "anonymous"), recorded before the response's id goes out, and
    every request naming that id must be the same user: another one gets the host's 404, as
    for an id that does not exist.

    The host also copies any stored item into a new response for whoever names its id in an
    ``item_reference`` input. Its item ids carry the partition key of their response's id
    (``_partition_of``), so the owner of each created response's partition is recorded too
    (the first user's; never taken by another), and a reference to an item whose partition is
    not the caller's, or to an id in another format, is refused: 404 "Item with id ... not
    found." (``param`` ``input``), as for an item that does not exist.

    An id (or an item's partition) whose owner is not recorded (created before this
    middleware, on a replica that does not share ``store``, or evicted) is refused, except to
    a platform user inside Foundry (``FOUNDRY_HOSTING_ENVIRONMENT`` set: the host then keeps
    responses in Foundry's storage, which keeps each platform user's apart;
    ``platform_storage`` says so explicitly). An id the client chooses for a new response
    (``x-agent-response-id``, ``response_id``) is claimed like a conversation. For replicas,
    or to keep owners across restarts, pass a shared ``store`` (``RedisStore``). Unreadable
    owners (the store down): 503, never served.

    >>> app.add_middleware(ResponseOwners, store=RedisStore.from_url(url, namespace="owners:"))
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        store: TokenStore | None = None,
        retention: float = RESPONSE_OWNER_SECONDS,
        platform_storage: bool | None = None,
    ) -> None:
        if store is not None and not isinstance(store, TokenStore):
            raise ConfigurationError(
                f"ResponseOwners(store=...) needs a TokenStore, not {type(store).__name__}.",
                fix="pass a MemoryStore or a RedisStore (entra_passthrough.redis), or leave it "
                "out for an in-process store.",
            )
        self.app = app
        # Inside Foundry (FOUNDRY_HOSTING_ENVIRONMENT, as the host itself decides) its storage
        # partitions responses by the platform's user id: a platform user may be left to it
        # for an id whose owner is not recorded here. Elsewhere (the host's file or memory
        # store) nothing else keeps users apart, and any client can send that header.
        if platform_storage is None:
            platform_storage = bool(os.environ.get("FOUNDRY_HOSTING_ENVIRONMENT", ""))
        self.platform_storage = platform_storage
        self.store: TokenStore = store if store is not None else MemoryStore(max_entries=100_000)
        self.retention = seconds(
            retention, what="ResponseOwners(retention=...)", low=0, high=math.inf, above_low=True
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        method = scope.get("method")
        path = str(scope.get("path", ""))
        named = _BY_ID.search(path)
        owned = named is not None and method in _BY_ID_METHODS.get(named.group(2), ())
        creates = not owned and method == "POST" and _is_create_path(path)
        unusable = _unusable_user(scope) if owned or creates else None
        if unusable == "ambiguous":
            # The platform's user id sent more than once: the capture trusts neither copy, so
            # the request has no user, and its response would have gone to the "anonymous"
            # owner that every request with no user shares (read and continued by any of them).
            await _answer(
                send,
                400,
                "ambiguous_user",
                "entra_passthrough: the request carries the platform's user id header "
                "(x-agent-user-id) more than once, so its user is ambiguous; nothing was stored "
                "or read. Send it once (the ingress adds it: drop the client's copy).",
                None,
            )
            return
        if unusable == "unreadable":
            # Sent once, but not a value the capture reads (over 256 bytes, control
            # characters): the request would have had no user, as above.
            await _answer(
                send,
                400,
                "unreadable_user",
                "entra_passthrough: the request's platform user id header (x-agent-user-id) "
                "is not a user id this host can read (longer than 256 bytes, holding control "
                "characters, or UTF-8 whose text a Latin-1 id could also spell), so the request "
                "would have no user; nothing was stored or read. Send a printable id of at "
                "most 256 bytes (ASCII, as the platform issues them).",
                None,
            )
            return
        if owned and named is not None:
            if await self._may_use("response", named.group(1), _owner(), send):
                await self.app(scope, receive, send)
            return
        if creates:
            await self._create(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _create(self, scope: Scope, receive: Receive, send: Send) -> None:
        buffered, complete = await _peek(receive)
        if _too_large(buffered, complete):
            await _too_large_answer(send, "which user's response or conversation it continues")
            return
        owner = _owner()
        previous, conversation, chosen, unstored, references = _continued(
            b"".join(m.get("body", b"") for m in buffered)
        )
        if previous is not None and not await self._may_use(
            "response", previous, owner, send, param="previous_response_id"
        ):
            return
        if not await self._may_reference(references, owner, send):
            return
        # The host takes the new response's id from the client when it names one (header or
        # body), checking only its format: naming another user's id would store the new
        # response under it (and record its owner over the first). Claimed here, first use
        # wins, like a conversation. A claim lives ``CLAIM_SECONDS`` until the host stores a
        # response (a 2xx) under this user, which keeps it ``retention``: requests the host
        # refuses leave only short claims, which a bounded store (and Redis' volatile-ttl)
        # evicts before any owner. Never deleted: another request of the same user may be
        # using the name meanwhile.
        # Claimed as the host will use it: it strips the header's value and the body's
        # ``response_id`` (" X " names X; claimed as sent, another user's id took their
        # response, its owner overwritten when the host stored the new one under X).
        named = (*_header_values(scope, b"x-agent-response-id"), chosen)
        stripped = dict.fromkeys(name.strip() for name in named if name is not None)
        wanted = [("response", name, "response_id") for name in stripped if name]
        if conversation is not None:
            wanted.append(("conversation", conversation, "conversation"))
        for kind, name, param in wanted:
            if not await self._may_use(kind, name, owner, send, param=param, claim=True):
                return
            # The host puts the new response, and its items, in the partition this name
            # carries (``_partition_of``): one recorded as another user's is theirs, and their
            # item references would reach this user's items in it.
            partition = _partition_of(name)
            if partition is not None and not await self._partition_free(
                partition, owner, send, kind=kind, name=name, param=param
            ):
                return
        # The store must take a write before the host runs anything: else the new response's
        # owner could not be recorded, and its creator could never read it (a background run
        # that ran, its result lost to them).
        if not await self._writable(send):
            return
        names = [_owner_key(kind, name) for kind, name, _ in wanted]
        await self.app(
            scope, _replay(buffered, receive), self._recording(owner, send, names, unstored)
        )

    async def _may_reference(
        self, references: list[str], owner: tuple[bytes, bool], send: Send
    ) -> bool:
        """Whether the user ``owner`` may use the items ``references`` names (``item_reference``
        inputs, which the host copies from its store into the new response): each must be in
        the host's id format, in a partition recorded as this user's (unknown: a platform user
        inside Foundry only). If not, the refusal is sent, as for an item that does not exist.
        """
        partitions: dict[str, str] = {}
        for item_id in references:
            partition = _partition_of(item_id)
            if partition is None:
                await _not_found(send, "Item", item_id, "input")
                return False
            partitions.setdefault(partition, item_id)
        for partition, item_id in partitions.items():
            if not await self._may_use("partition", partition, owner, send, item=item_id):
                return False
        return True

    async def _partition_free(
        self,
        partition: str,
        owner: tuple[bytes, bool],
        send: Send,
        *,
        kind: str,
        name: str,
        param: str,
    ) -> bool:
        """Whether the partition ``partition`` of a name the client chose (a conversation, a
        new response's id) is not another user's; if it is, the refusal is sent, as for a name
        that does not exist. An unknown partition is free (recorded once a response is)."""
        try:
            entry = await self.store.get(_owner_key("partition", partition))
        except Exception as exc:  # the store's own failure: never served
            await self._unavailable(send, exc)
            return False
        if entry is None or hmac.compare_digest(entry.value, owner[0]):
            return True
        await _not_found(
            send, "Conversation" if kind == "conversation" else "Response", name, param
        )
        return False

    async def _keep(self, key: str, owner: bytes) -> bool:
        """``key`` this owner's for ``retention``: written if absent or theirs (compare-and-set
        on its version), left alone (``False``) if another user's."""
        entry = await self.store.get(key)
        if entry is None:
            await self.store.put(key, owner, ttl=self.retention, expect=None)
        elif hmac.compare_digest(entry.value, owner):
            await self.store.put(key, owner, ttl=self.retention, expect=entry.version)
        else:
            return False
        return True

    async def _writable(self, send: Send) -> bool:
        """Whether the store takes a write (a short-lived probe); if not, the 503 is sent."""
        try:
            await self.store.put(_owner_key("probe", ""), b"", ttl=60.0)
        except Exception as exc:  # the store's own failure: nothing is created
            await self._unavailable(send, exc)
            return False
        return True

    async def _unavailable(self, send: Send, exc: BaseException) -> None:
        _log.warning(
            "the response owner store failed (%s: %s); the request was refused",
            type(exc).__name__,
            safe_text(str(exc), 500),
        )
        await _answer(
            send,
            503,
            "server_error",
            "entra_passthrough: the owners of responses could not be read or written; try again.",
            None,
            retry_after=True,
        )

    async def _may_use(
        self,
        kind: str,
        name: str,
        owner: tuple[bytes, bool],
        send: Send,
        *,
        param: str = "response_id",
        claim: bool = False,
        item: str | None = None,
    ) -> bool:
        """Whether the user ``owner`` may use the response (or conversation) ``name``; if not,
        the refusal is sent. ``claim``: an unknown name becomes this user's (first use wins).
        ``item``: the referenced item whose partition ``name`` is (kind ``partition``), which
        the refusal names instead."""
        key = _owner_key(kind, name)
        try:
            entry = await self.store.get(key)
            if entry is None and claim:
                ttl = min(CLAIM_SECONDS, self.retention)
                if await self.store.put(key, owner[0], ttl=ttl, expect=None) is None:
                    entry = await self.store.get(key)  # claimed meanwhile by another request
                else:
                    return True
        except Exception as exc:  # the store's own failure: never served
            await self._unavailable(send, exc)
            return False
        if entry is None:
            # Unknown: a platform user only, inside Foundry (its storage keeps them apart).
            allowed = owner[1] and self.platform_storage
        else:
            allowed = hmac.compare_digest(entry.value, owner[0])
        if not allowed:
            if entry is None:
                self._unknown_owner()
            if item is not None:
                what, name, param = "Item", item, "input"
            elif kind == "conversation":
                what = "Conversation"
            else:
                what = "Previous response" if param == "previous_response_id" else "Response"
            await _not_found(send, what, name, param)
        return allowed

    def _unknown_owner(self) -> None:
        """Say once per process, the first time, why an id with no known owner is refused:
        with owners kept in this process, a restart or another replica looks like lost data."""
        global _unknown_owner_said
        if _unknown_owner_said or not isinstance(self.store, MemoryStore):
            return
        _unknown_owner_said = True
        _log.warning(
            "a response id (or an item_reference) with no known owner was refused (404, as "
            "for an id that does not exist): owners are kept in this process (ResponseOwners' "
            "in-process store), so responses and their items created before a restart, on "
            "another replica, or evicted from the store at its limit (the oldest first), are "
            "refused to their own users; to keep "
            "owners across restarts and replicas, pass install(host, "
            "response_owners=RedisStore...) (said once per process)"
        )

    def _recording(
        self, owner: tuple[bytes, bool], send: Send, names: list[str], unstored: bool
    ) -> Send:
        """``send``, holding a created response's first bytes until its id is read and its
        owner recorded: a client that has the id can ask for it at once. ``unstored`` (the
        request asked for ``"store": false``): the host keeps nothing under the new id, so no
        owner is recorded for it (it would hold a place in a bounded store for ``retention``,
        and evict the owners of stored responses); unknown, it is refused like any id."""
        held: list[Message] = []
        body = bytearray()
        state = {"done": False, "sse": False}

        async def flush(more: bool) -> None:
            state["done"] = True
            for message in held:
                await send(message)
            held.clear()
            await send({"type": "http.response.body", "body": bytes(body), "more_body": more})
            body.clear()

        async def recording(message: Message) -> None:
            if state["done"]:
                await send(message)
                return
            if message["type"] == "http.response.start":
                if not 200 <= int(message.get("status", 500)) < 300:
                    state["done"] = True  # nothing was stored
                    await send(message)
                    return
                kind = dict(message.get("headers") or []).get(b"content-type", b"")
                state["sse"] = kind.startswith(b"text/event-stream")
                held.append(message)
                return
            if message["type"] != "http.response.body":
                await send(message)
                return
            body.extend(message.get("body", b""))
            more = bool(message.get("more_body", False))
            found = _created_id(bytes(body), sse=state["sse"], complete=not more)
            if found is None and more and len(body) < _MAX_ID_SCAN:
                return  # not yet: hold on
            if found:
                try:
                    if not unstored and not await self._keep(
                        _owner_key("response", found), owner[0]
                    ):
                        # Never taken from its owner, whatever the host did (an id it read
                        # in a way the claim above did not foresee).
                        _log.warning(
                            "the host created a response under an id another user owns; it "
                            "stays theirs and is refused to this request's user"
                        )
                    # Its items' partition (``_partition_of``): the first user's, never taken
                    # by another (a response a client placed in another user's partition, by
                    # an id or a conversation it chose, leaves that partition theirs).
                    partition = None if unstored else _partition_of(found)
                    if partition is not None:
                        await self._keep(_owner_key("partition", partition), owner[0])
                    # The names it was created under (its conversation, an id the client
                    # chose): this user's for ``retention`` from now, if still this user's
                    # (a claim that lapsed during a long run may be another user's now).
                    for key in dict.fromkeys(names):
                        await self._keep(key, owner[0])
                except Exception as exc:
                    # Unrecorded, the response is refused to everyone but a platform user:
                    # it is lost to its creator, never served to another.
                    _log.warning(
                        "the response owner store failed (%s); the new response can be read "
                        "by no one",
                        type(exc).__name__,
                    )
            await flush(more)

        return recording


def _owner() -> tuple[bytes, bool]:
    """The current request's user, as stored (hashed ``UserKey``, or ``anonymous``), and
    whether it is a platform user."""
    key = UserKey.from_caller(current_caller())
    if key is None:
        return _ANONYMOUS, False
    return key.hashed.encode(), key.kind == "platform"


def _owner_key(kind: str, name: str) -> str:
    # Under the library's key prefix (``ep:``), which the documented Redis ACL allows.
    digest = hashlib.sha256(f"{kind}\x00{name}".encode("utf-8", "surrogatepass")).hexdigest()
    return f"ep:v1:owner:{digest}"


def _continued(body: bytes) -> tuple[str | None, str | None, str | None, bool, list[str]]:
    """``(previous_response_id, conversation id, response_id, unstored, references)`` of a
    create request's body (``response_id``: an id the client chose for the new response;
    ``unstored``: it asks for ``"store": false``; ``references``: the ids its ``input`` names
    as stored items, ``_references``)."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return None, None, None, False, []
    if not isinstance(parsed, dict):
        return None, None, None, False, []
    previous = parsed.get("previous_response_id")
    conversation = parsed.get("conversation")
    if isinstance(conversation, dict):
        conversation = conversation.get("id")
    chosen = parsed.get("response_id")
    return (
        previous if isinstance(previous, str) and previous else None,
        conversation if isinstance(conversation, str) and conversation else None,
        chosen if isinstance(chosen, str) and chosen else None,
        parsed.get("store") is False,
        _references(parsed.get("input")),
    )


def _references(items: object) -> list[str]:
    """The item ids an ``input`` list names for the host to copy from its store, as the host
    reads them (azure-ai-agentserver-responses, ``is_item_reference`` and
    ``ResponseContext._resolve_input_items``, on the top-level ``input`` list only): an
    element with ``"type": "item_reference"``, or the shorthand with an ``id`` and no
    ``type``, ``role`` or ``content``; its ``id`` when a string (the host skips any other)."""
    if not isinstance(items, list):
        return []
    found = []
    for item in items:
        if not isinstance(item, dict) or "id" not in item:
            continue
        if item.get("type") == "item_reference" or not (
            "type" in item or "role" in item or "content" in item
        ):
            item_id = item["id"]
            if isinstance(item_id, str):
                found.append(item_id)
    return found


def _partition_of(item_id: str) -> str | None:
    """The partition key of an id in ``ResponsesHostServer``'s format, lower-cased; ``None``
    for an id in any other format.

    The host (azure-ai-agentserver-responses, ``IdGenerator.new_id``) builds every id as
    ``{prefix}_{partitionKey}{entropy}``. After the first ``_`` comes either a 50-character
    body, whose first 18 characters are the partition key (16 hex digits, then ``00``) and the
    rest 32 characters of entropy, or a legacy 48-character body, whose last 16 characters are
    the key (``IdGenerator._try_extract_partition_key_raw``; ids derived from it get that key
    followed by ``00``, as returned here). The host gives a response's items (``msg_``, ``fc_``,
    ``fco_`` ...) the partition key of the response's id, and a continued response that of
    the one it continues: an item's key says whose response it is in. Lower-cased: on a
    file system that ignores case, the host's file store finds an item under any casing of
    its id. tests/integration/test_item_reference_owners.py fails, saying so, if a host's
    item ids stop carrying their response's key."""
    _, delimiter, body = item_id.partition("_")
    if not delimiter:
        return None
    if len(body) == 50:
        return body[:18].lower()
    if len(body) == 48:
        return (body[-16:] + "00").lower()
    return None


async def _not_found(send: Send, what: str, name: str, param: str) -> None:
    """The host's own 404 for an id another user owns, as for one that does not exist."""
    await _answer(
        send, 404, "invalid_request_error", f"{what} with id '{_shown(name)}' not found.", param
    )


def _shown(name: str) -> str:
    """``name`` as a refusal may quote it: only an id of safe characters, else ``(not shown)``."""
    return name if _SAFE_ID.fullmatch(name) else "(not shown)"


def _unusable_user(scope: Scope) -> str | None:
    """``"ambiguous"``: the platform's user id header appears more than once (any values);
    ``"unreadable"``: once, with a value that is not blank but that the capture does not read
    as a user id (``platform_value``); else ``None``."""
    values = [
        value
        for key, value in scope.get("headers") or ()
        if len(key) == len(_USER_ID_HEADER) and key.lower() == _USER_ID_HEADER
    ]
    if len(values) > 1:
        return "ambiguous"
    if values and values[0].strip() and platform_value(values[0]) is None:
        return "unreadable"
    return None


_USER_ID_HEADER = b"x-agent-user-id"


def _header_values(scope: Scope, name: bytes) -> list[str]:
    return [
        value.decode("latin-1")
        for key, value in scope.get("headers") or ()
        if key.lower() == name and value
    ]


def _created_id(body: bytes, *, sse: bool, complete: bool) -> str | None:
    """The id of the response being created, from its first SSE event (``response.created``)
    or its JSON; ``None`` while more is needed; ``""`` when it cannot be found."""
    if sse:
        end = body.find(b"\n\n")
        if end < 0:
            end = body.find(b"\r\n\r\n")
        if end < 0:
            return "" if complete else None
        data = b"".join(
            line[5:].strip() for line in body[:end].splitlines() if line.startswith(b"data:")
        )
        try:
            event = json.loads(data)
        except (ValueError, RecursionError):
            return ""
        response = event.get("response") if isinstance(event, dict) else None
        found = response.get("id") if isinstance(response, dict) else None
        return found if isinstance(found, str) and found else ""
    if complete:
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError):
            parsed = None
        if isinstance(parsed, dict):
            found = parsed.get("id")
            return found if isinstance(found, str) and found else ""
    head = _ID_AT_START.match(body)
    if head is not None:
        return head.group(1).decode("utf-8", "replace")
    return "" if complete or len(body) >= _MAX_ID_SCAN else None


async def _answer(
    send: Send,
    status: int,
    code: str,
    message: str,
    param: str | None,
    *,
    retry_after: bool = False,
) -> None:
    """An error in the Responses API's shape (``ResponsesHostServer``'s own 404)."""
    error: dict[str, Any] = {"code": code, "message": message, "type": "invalid_request_error"}
    if status >= 500:
        error["type"] = "server_error"
    if param is not None:
        error["param"] = param
    payload = json.dumps({"error": error}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    if retry_after:
        headers.append((b"retry-after", b"5"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def _readiness_paths(app: Any) -> tuple[str, ...]:
    """The paths of the app's routes named ``readiness`` (the agent server's health probe,
    which sends no token), without path parameters."""
    paths = []
    for route in getattr(app, "routes", None) or ():
        path = getattr(route, "path", None)
        if (
            getattr(route, "name", None) == "readiness"
            and isinstance(path, str)
            and path.startswith("/")
            and "{" not in path
        ):
            paths.append(path)
    return tuple(paths)


def install(
    app: Any,
    *,
    assertion_headers: Sequence[str] = ("authorization",),
    require_caller: bool = False,
    verifier: Any = None,
    max_run_seconds: float = 3600.0,
    close_on_shutdown: Sequence[Any] = (),
    response_owners: TokenStore | None = None,
    open_paths: Sequence[str] | None = None,
) -> Any:
    """Add the capture middleware to a ``ResponsesHostServer`` (or any Starlette app) before
    it starts: ``CallerMiddleware`` outermost, ``BackgroundRunCallers`` inside, and on a
    ``ResponsesHostServer`` (an app with a route named ``get_response``) ``ResponseOwners``
    between them: a stored response or conversation is used only by the user who created it.
    Returns ``app``.

    ``close_on_shutdown``: a list of objects with ``async aclose()`` (an ``EntraMCPToolPool``,
    an ``httpx2.AsyncClient``) or ``async close()`` (an ``EntraMCPTool``) to close when the
    host shuts down, after its own shutdown handler (which closes the agent), each in turn: one
    that fails is logged (its type) and the next ones are still closed. Anything else is
    refused here (``ConfigurationError``).
    ``response_owners``: where ``ResponseOwners`` keeps each response's owner (default: in
    this process); a shared ``RedisStore`` for replicas, and to keep them across restarts.
    ``open_paths``: paths whose ``GET``/``HEAD`` ``require_caller`` and ``verifier`` leave
    alone (``CallerMiddleware(open_paths=)``); default: the host's readiness route
    (``/readiness`` on a ``ResponsesHostServer``), which a health probe calls without a token.

    >>> app = install(ResponsesHostServer(agent=make_agent), verifier=JwtVerifier(...),
    ...               close_on_shutdown=[pool])
    """
    from .._middleware import CallerMiddleware

    add = getattr(app, "add_middleware", None)
    if add is None:
        raise ConfigurationError(
            "install(app) needs an app with add_middleware (ResponsesHostServer, Starlette); "
            "wrap other ASGI apps yourself: CallerMiddleware(BackgroundRunCallers(app))."
        )
    # Starlette builds its middleware only when the app first starts: checked now, not then.
    max_run_seconds = _run_seconds(max_run_seconds)
    if response_owners is not None and not isinstance(response_owners, TokenStore):
        raise ConfigurationError(
            f"install(response_owners=...) needs a TokenStore, not "
            f"{type(response_owners).__name__}.",
            fix="pass a MemoryStore or a RedisStore (entra_passthrough.redis), or leave it out.",
        )
    # Checked before anything is added: a refused install changes nothing.
    # (Not its truth: a pool given alone is falsy while it holds no connection.)
    nothing = close_on_shutdown is None or (
        isinstance(close_on_shutdown, list | tuple) and not close_on_shutdown
    )
    chain_shutdown = None if nothing else _shutdown_chain(app, close_on_shutdown)
    # Starlette prepends: the last one added is the outermost.
    add(BackgroundRunCallers, max_run_seconds=max_run_seconds)
    if _serves_stored_responses(app):
        add(ResponseOwners, store=response_owners)
    add(
        CallerMiddleware,
        assertion_headers=tuple(assertion_headers),
        require_caller=require_caller,
        verifier=verifier,
        open_paths=_readiness_paths(app) if open_paths is None else open_paths,
    )
    if chain_shutdown is not None:
        chain_shutdown()
    return app


def _serves_stored_responses(app: Any) -> bool:
    """Whether ``app`` serves stored responses by id (``ResponsesHostServer``'s named route)."""
    routes = getattr(app, "routes", None) or ()
    return any(getattr(route, "name", None) == "get_response" for route in routes)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _shutdown_chain(app: Any, entries: Any) -> Any:
    """Check the host and the ``close_on_shutdown`` entries; return what registers the chained
    handler (called once the middleware is added)."""
    register = getattr(app, "shutdown_handler", None)
    # The host keeps one handler (ResponsesHostServer's closes the agent): run it first. Refuse
    # rather than drop it if its slot moved.
    found, previous = shutdown_handler_of(app)
    if register is None:
        raise ConfigurationError(
            f"close_on_shutdown needs an AgentServerHost (a ResponsesHostServer): "
            f"{type(app).__name__} has no shutdown_handler.",
            fix="pass the host itself to install(), or leave close_on_shutdown out and close "
            "what it names in your own shutdown (await pool.aclose())",
        )
    if not found:
        raise ConfigurationError(
            "close_on_shutdown cannot chain the host's own shutdown handler: this "
            f"azure-ai-agentserver-core ({_version('azure-ai-agentserver-core')}) no longer "
            "keeps it in _shutdown_fn, and replacing it would drop "
            "the handler that closes the agent.",
            fix="install the versions entra-passthrough[agent-framework] pins (pip install "
            "'entra-passthrough[agent-framework]'), or leave close_on_shutdown out and close "
            "what it names in your own shutdown (await pool.aclose())",
        )

    closers = _closers(entries)

    async def shutdown() -> None:
        try:
            if previous is not None:
                await previous()
        finally:
            for index, (entry, close) in enumerate(closers):
                try:
                    result = close()
                    if inspect.isawaitable(result):
                        await result
                except Exception as exc:  # the next ones are closed all the same
                    _log.warning(
                        "close_on_shutdown: closing entry %d (%s) failed: %s",
                        index,
                        type(entry).__name__,
                        type(exc).__name__,
                    )

    return lambda: register(shutdown)


_CLOSE_ON_SHUTDOWN_FIX = (
    "pass a list of objects with async aclose() (an EntraMCPToolPool, an httpx2.AsyncClient) "
    "or async close() (an EntraMCPTool), e.g. close_on_shutdown=[pool]; close anything else "
    "in your own shutdown"
)


def _closers(entries: Any) -> list[tuple[Any, Any]]:
    """``(entry, its close)`` for each ``close_on_shutdown`` entry: its ``aclose``, else an
    ``async close`` (``EntraMCPTool``'s); anything else is refused, naming its place and type
    (never its value)."""
    if _closer(entries) is not None or isinstance(entries, str | bytes):
        raise ConfigurationError(
            f"close_on_shutdown takes a list, not one {type(entries).__name__}.",
            fix=_CLOSE_ON_SHUTDOWN_FIX,
        )
    try:
        items = list(entries)
    except TypeError:
        raise ConfigurationError(
            f"close_on_shutdown takes a list, not {type(entries).__name__}.",
            fix=_CLOSE_ON_SHUTDOWN_FIX,
        ) from None
    closers: list[tuple[Any, Any]] = []
    for index, entry in enumerate(items):
        close = _closer(entry)
        if close is None:
            has_close = callable(getattr(entry, "close", None))
            why = "has a synchronous close()" if has_close else "has neither aclose() nor close()"
            raise ConfigurationError(
                f"close_on_shutdown[{index}] ({type(entry).__name__}) cannot be closed at "
                f"shutdown: it {why}.",
                fix=_CLOSE_ON_SHUTDOWN_FIX,
            )
        closers.append((entry, close))
    return closers


def _closer(entry: Any) -> Any:
    """What closes ``entry`` at shutdown: its ``aclose``, else its ``close`` when that is a
    coroutine function; ``None`` when neither."""
    aclose = getattr(entry, "aclose", None)
    if callable(aclose):
        return aclose
    close = getattr(entry, "close", None)
    if callable(close) and inspect.iscoroutinefunction(close):
        return close
    return None
