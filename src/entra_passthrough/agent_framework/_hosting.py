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

The documented alternative, for hosts you assemble yourself::

    app = ResponsesHostServer(agent)
    app.add_middleware(BackgroundRunCallers)           # inner first: Starlette prepends
    app.add_middleware(CallerMiddleware, verifier=verifier)
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from contextvars import ContextVar
from typing import Any

from .._asgi import ASGIApp, Message, Receive, Scope, Send
from .._caller import Caller, current_caller, reset_current, set_current
from .._checks import seconds
from .._errors import ConfigurationError
from ._af_seams import shutdown_handler_of

__all__ = ["BackgroundRunCallers", "end_run_caller", "install", "unstored_request"]


_MAX_PEEK = 1024 * 1024

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
            or not str(scope.get("path", "")).rstrip("/").endswith("/responses")
            or caller is None
            or not caller.active
        ):
            await self.app(scope, receive, send)
            return
        buffered, complete = await _peek(receive)
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


def _run_seconds(value: object) -> float:
    # Checked where it is given: a string was an untyped TypeError (from install(), only when
    # the app starts), and NaN was accepted (a deadline that compares false with every time).
    return seconds(value, what="max_run_seconds", low=0, high=math.inf, above_low=True)


async def _peek(receive: Receive) -> tuple[list[Message], bool]:
    buffered: list[Message] = []
    size = 0
    while size <= _MAX_PEEK:
        message = await receive()
        buffered.append(message)
        if message.get("type") != "http.request":
            return buffered, False
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            return buffered, size <= _MAX_PEEK
    return buffered, False


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


def install(
    app: Any,
    *,
    assertion_headers: Sequence[str] = ("authorization",),
    require_caller: bool = False,
    verifier: Any = None,
    max_run_seconds: float = 3600.0,
    close_on_shutdown: Sequence[Any] = (),
) -> Any:
    """Add the capture middleware to a ``ResponsesHostServer`` (or any Starlette app) before
    it starts: ``CallerMiddleware`` outermost, ``BackgroundRunCallers`` inside. Returns ``app``.

    ``close_on_shutdown``: objects with ``async aclose()`` (e.g. an ``EntraMCPToolPool``) to
    close when the host shuts down, after its own shutdown handler (which closes the agent).

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
    # Starlette prepends: the last one added is the outermost.
    add(BackgroundRunCallers, max_run_seconds=max_run_seconds)
    add(
        CallerMiddleware,
        assertion_headers=tuple(assertion_headers),
        require_caller=require_caller,
        verifier=verifier,
    )
    if close_on_shutdown:
        _chain_shutdown(app, tuple(close_on_shutdown))
    return app


def _chain_shutdown(app: Any, closables: tuple[Any, ...]) -> None:
    register = getattr(app, "shutdown_handler", None)
    # The host keeps one handler (ResponsesHostServer's closes the agent): run it first. Refuse
    # rather than drop it if its slot moved.
    found, previous = shutdown_handler_of(app)
    if register is None or not found:
        raise ConfigurationError(
            "close_on_shutdown needs an AgentServerHost (shutdown_handler, _shutdown_fn)"
        )

    async def shutdown() -> None:
        try:
            if previous is not None:
                await previous()
        finally:
            for closable in closables:
                await closable.aclose()

    register(shutdown)
