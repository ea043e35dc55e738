"""The emulator's HTTP surface (Starlette) and the uvicorn servers that run it in a thread.

uvicorn binds its own sockets (port 0, then the port is read back), so asyncio sets TCP_NODELAY on
every connection; a socket handed over by hand would add ~40 ms per answer (docs/platform-facts.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import _errors as e
from ._authorize import authorize, logout
from ._az import az_endpoint
from ._device import device_code_endpoint, device_login_page, userinfo
from ._discovery import discovery_v1, discovery_v2, instance, jwks, userrealm
from ._msi import cloud_shell_token, imds_token, msi_token, service_fabric_token
from ._state import Fault, Runtime
from ._token_endpoint import handle_token, personal_accounts, resolve_tenant

logger = logging.getLogger("entra_passthrough.testing")
_NO_STORE = {"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"}


def _endpoint_name(path: str) -> str:
    """The name faults and stats use for a request path."""
    if path == "/servicefabric/token":  # a managed identity endpoint, on the HTTPS port
        return "msi"
    if path.endswith("/token"):
        return "token"
    if "/authorize" in path:
        return "authorize"
    if path.endswith("openid-configuration"):
        return "discovery"
    if path.endswith("/keys"):
        return "jwks"
    if path.startswith("/_emulator/az"):
        return "az"
    if "/userrealm/" in path:
        return "userrealm"
    if path.endswith("/discovery/instance"):
        return "instance"
    if "/logout" in path:
        return "logout"
    return "other"


class FaultMiddleware:
    """Applies injected faults (status, Retry-After, delay, dropped connection) per endpoint."""

    def __init__(self, app: ASGIApp, rt: Runtime, *, name: str | None = None) -> None:
        self.app = app
        self.rt = rt
        self.name = name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or (
            path.startswith("/_emulator/") and not path.startswith("/_emulator/az")
        ):
            await self.app(scope, receive, send)
            return
        with self.rt.lock:
            self.rt.in_flight += 1
        try:
            await self._answer(path, scope, receive, send)
        finally:
            with self.rt.lock:
                self.rt.in_flight -= 1

    async def _answer(self, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        name = self.name or _endpoint_name(path)
        fault = self.rt.take_fault(name)
        if fault is None:
            await self.app(scope, receive, send)
            return
        if fault.status is None and not fault.drop:
            # A pure delay (or a cut body): answer normally afterwards.
            await asyncio.sleep(fault.delay)
            await self.app(scope, receive, _truncating(send, fault.truncate))
            return
        self.rt.count(name)
        await _apply_fault(fault, send)


def _truncating(send: Send, cut: int) -> Send:
    """``send`` with the response body's last ``cut`` bytes removed (Content-Length fixed)."""
    if not cut:
        return send
    start: dict[str, Any] = {}
    chunks: list[bytes] = []

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
            return
        if message["type"] != "http.response.body":
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return
        body = b"".join(chunks)[:-cut]
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return wrapped


class DroppedConnection(Exception):
    """Raised after a partial response so that uvicorn closes the connection mid-answer."""


async def _apply_fault(fault: Fault, send: Send) -> None:
    if fault.delay:
        await asyncio.sleep(fault.delay)
    if fault.drop:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"100")]}
        )
        raise DroppedConnection("injected: connection dropped")
    # AADSTS90033 ("a transient error has occurred") for throttling and server errors; a plain
    # invalid_request otherwise. The text says it was injected so nobody mistakes it for a bug.
    status = fault.status or 503
    transient = status >= 500 or status == 429
    body = e.StsError(
        90033 if transient else 90100,
        "temporarily_unavailable" if transient else "invalid_request",
        "Injected fault: the emulator was told to fail this request.",
        status=status,
    ).body()
    raw = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    if fault.retry_after is not None:
        headers.append((b"retry-after", str(int(fault.retry_after)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": raw})


_FAULT_BODY = (
    'the body must be a JSON object such as {"endpoint": "token", "status": 503, '
    '"retry_after": 2, "delay": 0, "drop": false, "count": 1}'
)


#: The largest request body the token and fault endpoints read (a token request is a few KiB;
#: a client assertion or a user's token a few more). A larger one is refused before it is all
#: in memory (a 64 MiB POST took the emulator from 58 to 249 MiB).
MAX_BODY = 1024 * 1024


async def _bounded_body(request: Request) -> bytes | None:
    """The request's body, or ``None`` once it passes ``MAX_BODY`` (the rest is not read)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large() -> Response:
    return _json(
        {
            "error": "invalid_request",
            "error_description": f"The request body is larger than {MAX_BODY} bytes.",
        },
        413,
    )


def _parse_fault(body: bytes) -> tuple[Fault, str]:
    """``POST /_emulator/faults``'s body as a ``Fault`` and its endpoint name, else a
    ``ValueError`` saying which field is wrong."""
    try:
        data = json.loads(body or b"{}")
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json can read
        raise ValueError(f"{_FAULT_BODY}; it is not JSON.") from None
    if not isinstance(data, dict):
        raise ValueError(f"{_FAULT_BODY}; it is a JSON {type(data).__name__}.")

    def number(key: str, default: float | None, *, low: float, high: float) -> float | None:
        value = data.get(key, default)
        if value is None and key in ("status", "retry_after"):
            return None  # status null: only the delay (as inject_fault(status=None))
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not low <= value <= high
            or (key in ("status", "count") and value != int(value))
        ):
            kind = "a whole number" if key in ("status", "count") else "a number"
            raise ValueError(f"{key!r} must be {kind} from {low:g} to {high:g}.")
        return float(value)

    status = number("status", 503, low=100, high=599)
    retry_after = number("retry_after", None, low=0, high=86_400)
    delay = number("delay", 0.0, low=0, high=3600) or 0.0
    count = number("count", 1, low=1, high=1_000_000) or 1
    drop = data.get("drop", False)
    endpoint = data.get("endpoint", "token")
    if not isinstance(drop, bool):
        raise ValueError("'drop' must be true or false.")
    if not isinstance(endpoint, str) or not endpoint:
        raise ValueError("'endpoint' must be an endpoint name such as \"token\".")
    fault = Fault(
        status=None if status is None else int(status),
        retry_after=retry_after,
        delay=delay,
        drop=drop,
        count=int(count),
    )
    return fault, endpoint


def _json(data: dict[str, Any], status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status, headers=_NO_STORE)


def _v1_shape(result: dict[str, Any], form: dict[str, str]) -> dict[str, Any]:
    """The v1 endpoint's answer: numbers as strings, plus expires_on/not_before/resource
    (https://learn.microsoft.com/previous-versions/azure/active-directory/azuread-dev/
    v1-oauth2-client-creds-grant-flow#service-to-service-access-token-response)."""
    now = int(time.time())
    life = int(result.get("expires_in", 0))
    out = dict(result)
    out["expires_in"] = str(life)
    out["ext_expires_in"] = str(result.get("ext_expires_in", life))
    out["expires_on"] = str(now + life)
    out["not_before"] = str(now)
    if form.get("resource"):
        out["resource"] = form["resource"]
    out.pop("scope", None)
    return out


def build_app(rt: Runtime) -> ASGIApp:
    def handler(fn: Callable[[Runtime, Request], Awaitable[Response]]) -> Callable[..., Any]:
        async def endpoint(request: Request) -> Response:
            return await fn(rt, request)

        return endpoint

    async def token(rt: Runtime, request: Request) -> Response:
        rt.count("token")
        if rt.token_latency:
            await asyncio.sleep(rt.token_latency)
        raw = await _bounded_body(request)
        if raw is None:
            return _too_large()
        body = raw.decode("utf-8", "replace")
        pairs = urllib.parse.parse_qsl(body, keep_blank_values=True)
        form = {k: v for k, v in pairs if v}
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            # A parameter named twice is refused, not resolved to one of its values.
            e.check_no_duplicates(pairs)
            result = handle_token(
                rt,
                request.path_params["tenant"],
                form,
                headers,
                v1=not request.url.path.endswith("/v2.0/token"),
            )
        except e.StsError as err:
            return _json(err.body(request.headers.get("client-request-id")), err.status)
        except Exception:  # a bug, never a crash: Entra's shape, and tests look for 500s
            logger.exception("emulator: unexpected error in the token endpoint")
            bug = e.StsError(90100, "server_error", "Unexpected error in the emulator.", status=500)
            return _json(bug.body(request.headers.get("client-request-id")), 500)
        if not request.url.path.endswith("/v2.0/token"):
            result = _v1_shape(result, form)
        return _json(result)

    async def devicecode(rt: Runtime, request: Request) -> Response:
        rt.count("devicecode")
        segment = request.path_params["tenant"]
        try:
            tenant = resolve_tenant(rt, segment)
        except e.StsError as err:
            return _json(err.body(request.headers.get("client-request-id")), err.status)
        return await device_code_endpoint(rt, request, tenant, personal=personal_accounts(segment))

    async def stats(rt: Runtime, request: Request) -> Response:
        return _json(dict(rt.snapshot()))

    async def faults(rt: Runtime, request: Request) -> Response:
        # A body that is not a JSON object, or a field of the wrong type, is a 400 saying what
        # the body must be (it was a 500 and a closed connection).
        raw = await _bounded_body(request)
        if raw is None:
            return _too_large()
        try:
            fault, endpoint = _parse_fault(raw)
        except ValueError as exc:
            return _json({"error": "invalid_request", "error_description": str(exc)}, 400)
        with rt.lock:
            rt.faults.setdefault(endpoint, []).append(fault)
        return _json({"ok": True})

    async def rotate(rt: Runtime, request: Request) -> Response:
        retire = request.query_params.get("retire_old") in ("1", "true")
        key = rt.keys.rotate(retire_old=retire)
        return _json({"kid": key.kid})

    routes = [
        Route("/common/discovery/instance", handler(instance)),
        Route("/common/userrealm/{user}", handler(userrealm)),
        Route("/_emulator/stats", handler(stats)),
        Route("/_emulator/faults", handler(faults), methods=["POST"]),
        Route("/_emulator/rotate", handler(rotate), methods=["POST"]),
        Route("/_emulator/az", handler(az_endpoint), methods=["POST"]),
        Route("/{tenant}/v2.0/.well-known/openid-configuration", handler(discovery_v2)),
        Route("/{tenant}/.well-known/openid-configuration", handler(discovery_v1)),
        Route("/{tenant}/discovery/v2.0/keys", handler(jwks)),
        Route("/{tenant}/discovery/keys", handler(jwks)),
        Route("/{tenant}/oauth2/v2.0/token", handler(token), methods=["POST"]),
        Route("/{tenant}/oauth2/token", handler(token), methods=["POST"]),
        Route("/{tenant}/oauth2/v2.0/authorize", handler(authorize), methods=["GET", "POST"]),
        Route("/{tenant}/oauth2/v2.0/logout", handler(logout), methods=["GET", "POST"]),
        # The v1 document's authorize and logout (MSAL's oidc_authority= reads it): the v2
        # handlers, with the v2 protocol (scope=); docs/emulator.md, Known differences.
        Route("/{tenant}/oauth2/authorize", handler(authorize), methods=["GET", "POST"]),
        Route("/{tenant}/oauth2/logout", handler(logout), methods=["GET", "POST"]),
        Route("/{tenant}/oauth2/v2.0/devicecode", handler(devicecode), methods=["POST"]),
        Route("/devicelogin", handler(device_login_page), methods=["GET", "POST"]),
        Route("/oidc/userinfo", handler(userinfo), methods=["GET", "POST"]),
        Route("/servicefabric/token", handler(service_fabric_token)),  # HTTPS, thumbprint-pinned
    ]
    return FaultMiddleware(Starlette(routes=routes), rt)


def build_msi_app(rt: Runtime) -> ASGIApp:
    async def endpoint(request: Request) -> Response:
        return await msi_token(rt, request)

    async def imds(request: Request) -> Response:
        return await imds_token(rt, request)

    async def cloud_shell(request: Request) -> Response:
        return await cloud_shell_token(rt, request)

    routes = [
        Route("/msi/token", endpoint),  # App Service (both api versions)
        Route("/metadata/identity/oauth2/token", imds),  # IMDS, Azure Arc
        Route("/cloudshell/token", cloud_shell, methods=["POST"]),
    ]
    return FaultMiddleware(Starlette(routes=routes), rt, name="msi")


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        self.ready.set()

    @property
    def port(self) -> int:
        port: int = self.servers[0].sockets[0].getsockname()[1]
        return port


class ServerThread:
    """Runs the HTTPS app and the plain-HTTP managed identity app in one loop on one thread."""

    def __init__(self, app: ASGIApp, msi_app: ASGIApp, *, cert: str, key: str, port: int) -> None:
        common: dict[str, Any] = {
            "host": "127.0.0.1",
            "log_level": "critical",
            "lifespan": "off",
            "access_log": False,
            "loop": "asyncio",
            "http": "h11",
        }
        self.https = _Server(
            uvicorn.Config(app, port=port, ssl_certfile=cert, ssl_keyfile=key, **common)
        )
        self.http = _Server(uvicorn.Config(msi_app, port=0, **common))
        self._thread = threading.Thread(target=self._run, name="entra-emulator", daemon=True)
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _run(self) -> None:
        async def serve(server: _Server) -> None:
            try:
                await server.serve()
            except SystemExit as exc:
                # uvicorn exits when it cannot bind (a port in use). A SystemExit leaves the
                # event loop from the task's own step: asyncio then logged the task's error
                # with a traceback at shutdown, or whenever the task was collected, in
                # whatever code ran then (Python 3.11's traceback parses source: inside
                # another ast.parse, a SystemError there). An error of this task instead, and
                # the other server shuts down (its sockets closed, not left to the collector).
                for other in (self.https, self.http):
                    other.should_exit = True
                raise RuntimeError(f"the server did not start (exit {exc.code})") from None

        async def both() -> None:
            self._loop = asyncio.get_running_loop()
            outcomes = await asyncio.gather(
                serve(self.https), serve(self.http), return_exceptions=True
            )
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome

        try:
            asyncio.run(both())
        except BaseException as exc:
            self._error = exc
            self.https.ready.set()
            self.http.ready.set()

    def start(self, timeout: float = 30.0) -> tuple[int, int]:
        self._thread.start()
        for server in (self.https, self.http):
            if not server.ready.wait(timeout) or self._error or not server.started:
                self.stop()
                raise RuntimeError("the Entra emulator did not start") from self._error
        return self.https.port, self.http.port

    def _abort_connections(self) -> None:
        # Idle keep-alive TLS connections (a client's pooled session) would hold a graceful
        # shutdown until the TLS close times out; an emulator being closed owes them nothing.
        for server in (self.https, self.http):
            for conn in list(server.server_state.connections):
                transport = getattr(conn, "transport", None)
                if transport is not None:
                    transport.abort()

    def stop(self) -> None:
        for server in (self.https, self.http):
            server.should_exit = True
            server.force_exit = True
        if self._loop is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop may already be closed
                self._loop.call_soon_threadsafe(self._abort_connections)
        if self._thread.is_alive():
            self._thread.join(timeout=10)
