"""A Foundry toolbox stand-in: a real MCP server on loopback that behaves like a toolbox endpoint
(``{project}/toolboxes/{name}/mcp``) as far as the caller can tell.

What it enforces, on *every* HTTP request (``initialize``, notifications, the GET stream, the
closing DELETE, ``tools/list``, ``tools/call``):

* ``Foundry-Features`` names ``Toolboxes=V1Preview`` (else HTTP 400, as the service refuses a
  request without the preview flag);
* ``Authorization: Bearer`` is an *app-only* token for ``https://ai.azure.com`` from the
  emulator's tenant, verified (signature, issuer, audience, lifetime): the agent's own token. A
  user's token forwarded here is refused (HTTP 401);
* ``x-agent-foundry-call-id``, when sent, must be one the platform issued (``call_id(user)``):
  the toolbox resolves the *user* from it, per request. No call id = the agent itself; a
  ``tools/call`` without one is refused (JSON-RPC error), like a delegated tool with no user.

Consent: ``require_consent(user, on=("tools/list", "tools/call"))`` makes the toolbox answer
JSON-RPC -32006 with Foundry's gateway message (``... consent required {"errors": [...
"CONSENT_REQUIRED", "message": "<https link>"}]}``) for *that* user only.

    with EntraEmulator() as idp, ToolboxStandIn(idp) as toolbox:
        call = toolbox.call_id("alice")      # what the platform would send the agent
        ...  # call toolbox.url with the agent's token, Foundry-Features and the call id
        assert toolbox.stats()["missing_features"] == 0

Every request is recorded (``seen()``): HTTP method, JSON-RPC method, call id, resolved user,
whether the features header was there, the status. No token is ever recorded.
"""

from __future__ import annotations

import contextvars
import json
import secrets
import ssl
import threading
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx2
import jwt
import uvicorn

from .._caller import CALL_ID_HEADER
from .._sources.foundry import FEATURES_HEADER, TOOLBOX_FEATURE
from ._world import FOUNDRY_AUDIENCE

if TYPE_CHECKING:
    from ._emulator import EntraEmulator

__all__ = ["ToolboxRequest", "ToolboxStandIn"]

FOUNDRY_CONSENT_REQUIRED = -32006
_RPC_METHODS = ("tools/list", "tools/call")

#: (user name or None for the agent, call id or None) of the request being handled.
_who: contextvars.ContextVar[tuple[str | None, str | None]] = contextvars.ContextVar(
    "toolbox_who", default=(None, None)
)


@dataclass(frozen=True, slots=True)
class ToolboxRequest:
    """One HTTP request the stand-in received (never the token)."""

    method: str
    rpc: str | None
    call_id: str | None
    user: str | None
    features: bool
    status: int


def _header(scope: dict[str, Any], wanted: bytes) -> str | None:
    for name, value in scope.get("headers") or []:
        if name.lower() == wanted:
            return str(value.decode("latin-1"))
    return None


def _is_modern(version: str | None) -> bool:
    if not version:
        return False
    from mcp_types.version import MODERN_PROTOCOL_VERSIONS

    return version in MODERN_PROTOCOL_VERSIONS


def _missing_features(value: str | None, required: Collection[str]) -> list[str]:
    """The flags of ``required`` that a ``Foundry-Features`` value does not name."""
    sent = {part.strip().casefold() for part in (value or "").split(",")}
    return [flag for flag in required if flag.casefold() not in sent]


async def _answer(send: Any, status: int, body: dict[str, Any], **headers: str) -> None:
    raw = json.dumps(body).encode()
    extra = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *extra],
        }
    )
    await send({"type": "http.response.body", "body": raw})


class _AgentTokens:
    """Verifies the bearer the way the service would: the emulator's signing keys, its issuers,
    audience ``https://ai.azure.com`` (or the Foundry app's id), not expired. ``app_only`` says
    whether it is the agent's own token (no user in it)."""

    def __init__(self, idp: EntraEmulator) -> None:
        self.idp = idp
        self.audiences = [idp.foundry.client_id, FOUNDRY_AUDIENCE]
        self.issuers = [idp.issuer(version="1.0"), idp.issuer(version="2.0")]
        self._keys: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        context = ssl.create_default_context(cafile=self.idp.ca_file)
        with httpx2.Client(verify=context, trust_env=False, timeout=10) as client:
            data = client.get(self.idp.jwks_uri()).json()
        keys = {key.key_id: key for key in jwt.PyJWKSet.from_dict(data).keys if key.key_id}
        with self._lock:
            self._keys = keys

    def verify(self, token: str) -> dict[str, Any] | None:
        try:
            kid = str(jwt.get_unverified_header(token).get("kid"))
            if kid not in self._keys:
                self._refresh()  # a rotation; a stand-in may block its loop briefly
            key = self._keys.get(kid)
            if key is None:
                return None
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=["RS256"],
                audience=self.audiences,
                issuer=self.issuers,
                options={"require": ["exp", "iss", "aud"]},
            )
        except (jwt.PyJWTError, httpx2.HTTPError, ValueError):
            return None
        if claims.get("tid") != self.idp.tenant_id:
            return None
        # An app-only token names no delegated scope (and its subject is the app's own oid).
        app_only = "scp" not in claims and claims.get("sub") == claims.get("oid")
        return {"app_only": app_only, "client": claims.get("azp") or claims.get("appid")}


class ToolboxStandIn:
    """A toolbox endpoint on ``http://127.0.0.1:<port>/toolboxes/<name>/mcp`` (uvicorn in a
    thread, port 0). Tools: ``whoami(who="")`` answers the user the toolbox resolved from the
    call id (``{"user", "oid", "call_id", "who"}``).

    ``require_features=False`` turns the ``Foundry-Features`` check off (to show what a client
    that omits it would run into, compare ``stats()["missing_features"]``).
    ``platform_features=("Agents=V2Preview", ...)``: the flags the platform enabled for the agent
    (what it injects in ``FOUNDRY_AGENT_TOOLSET_FEATURES``), required on every request beside
    ``Toolboxes=V1Preview``. ``legacy=True``
    refuses the 2026 protocol (HTTP 400), so that clients fall back to ``initialize`` and an
    ``mcp-session-id`` session with its lifecycle requests (``notifications/initialized``, the
    GET stream, the closing DELETE); it implies ``stateful``.
    """

    def __init__(
        self,
        idp: EntraEmulator,
        *,
        name: str = "standin",
        require_features: bool = True,
        platform_features: Collection[str] = (),
        stateful: bool = False,
        legacy: bool = False,
    ) -> None:
        self.idp = idp
        self.name = name
        self.require_features = require_features
        #: Every flag a request's ``Foundry-Features`` must name.
        self.features = (TOOLBOX_FEATURE, *(f.strip() for f in platform_features if f.strip()))
        self.stateful = stateful or legacy
        self.legacy = legacy
        self._lock = threading.Lock()
        self._calls: dict[str, str] = {}
        self._consent: dict[str, tuple[frozenset[str], str]] = {}
        self._seen: list[ToolboxRequest] = []
        self._counts: Counter[str] = Counter()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- the platform's side: call ids and consent ---------------------------------------------

    def call_id(self, user: str) -> str:
        """A fresh call id for ``user``'s request, as Foundry sends it to the agent."""
        if user not in self.idp.users:
            raise KeyError(f"no user {user!r} in the emulator's world")
        call = "call_" + secrets.token_hex(8)
        with self._lock:
            self._calls[call] = user
        return call

    def require_consent(
        self, user: str, *, on: Collection[str] = _RPC_METHODS, link: str | None = None
    ) -> str:
        """From now on, ``user``'s requests for the methods in ``on`` get -32006 with a consent
        link (returned)."""
        methods = frozenset(on)
        if not methods or not methods <= set(_RPC_METHODS):
            raise ValueError(f"on= must name some of {_RPC_METHODS}")
        link = link or f"https://consent.toolbox.example/{self.name}?user={user}"
        with self._lock:
            self._consent[user] = (methods, link)
        return link

    def grant_consent(self, user: str) -> None:
        with self._lock:
            self._consent.pop(user, None)

    # -- what it saw -----------------------------------------------------------------------------

    def seen(self) -> list[ToolboxRequest]:
        with self._lock:
            return list(self._seen)

    def stats(self) -> dict[str, int]:
        """Counters: ``requests``, ``missing_features``, ``unauthorized``, ``unknown_call``,
        ``consent_required``, ``no_user_call``, ``tool_ran`` (tool calls that ran) and one per
        JSON-RPC method that got past the checks (``server/discover``, ``initialize``,
        ``tools/list``, ``tools/call``...)."""
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        with self._lock:
            self._seen.clear()
            self._counts.clear()

    def _record(self, item: ToolboxRequest, *counters: str) -> None:
        with self._lock:
            if len(self._seen) < 100_000:
                self._seen.append(item)
            self._counts["requests"] += 1
            for counter in counters:
                self._counts[counter] += 1

    # -- the server ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/toolboxes/{self.name}/mcp"

    def _build(self) -> Any:
        from mcp.server.mcpserver import MCPServer

        verifier = _AgentTokens(self.idp)
        server = MCPServer(self.name)
        users = self.idp.users

        @server.tool()
        async def whoami(who: str = "") -> dict[str, Any]:
            """The user the toolbox resolved from this request's call id."""
            user, call = _who.get()
            oid = users[user].oid if user is not None else None
            with self._lock:
                self._counts["tool_ran"] += 1
            return {"user": user, "oid": oid, "call_id": call, "who": who}

        inner = server.streamable_http_app(
            stateless_http=not self.stateful,
            json_response=True,
            streamable_http_path=f"/toolboxes/{self.name}/mcp",
        )
        standin = self

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await inner(scope, receive, send)
                return
            if scope["path"].startswith("/_toolbox/"):
                await standin._control(scope, receive, send)
                return
            await standin._handle(scope, receive, send, inner, verifier)

        return app

    async def _control(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """The platform's side over HTTP, for a client in another process (the benchmark):
        ``POST /_toolbox/calls {"users": [...]}`` -> ``{"call_ids": [...]}``,
        ``GET /_toolbox/stats``, ``POST /_toolbox/reset``."""
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        path, method = scope["path"], scope["method"]
        if path == "/_toolbox/stats" and method == "GET":
            await _answer(send, 200, self.stats())
        elif path == "/_toolbox/reset" and method == "POST":
            self.reset()
            await _answer(send, 200, {})
        elif path == "/_toolbox/calls" and method == "POST":
            try:
                users = json.loads(body)["users"]
                ids = [self.call_id(str(user)) for user in users[:100_000]]
            except (ValueError, KeyError, TypeError) as exc:
                await _answer(send, 400, {"error": type(exc).__name__})
                return
            await _answer(send, 200, {"call_ids": ids})
        else:
            await _answer(send, 404, {"error": "not found"})

    async def _handle(
        self, scope: dict[str, Any], receive: Any, send: Any, inner: Any, verifier: _AgentTokens
    ) -> None:
        messages: list[dict[str, Any]] = []
        body = b""
        while True:
            message = await receive()
            messages.append(message)
            body += message.get("body", b"")
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        rpc: str | None = None
        rpc_id: Any = None
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("method"), str):
            rpc, rpc_id = parsed["method"], parsed.get("id")
        call = _header(scope, CALL_ID_HEADER.encode())
        missing = _missing_features(_header(scope, FEATURES_HEADER.lower().encode()), self.features)
        features = not missing
        method = scope["method"]

        def record(status: int, *counters: str, user: str | None = None) -> None:
            self._record(
                ToolboxRequest(method, rpc, call, user, features, status),
                *counters,
            )

        if self.require_features and not features:
            record(400, "missing_features")
            await _answer(
                send,
                400,
                {
                    "error": {
                        "code": "preview_feature_required",
                        "message": f"A preview feature is not enabled on the request: send the "
                        f"header '{FEATURES_HEADER}' naming {', '.join(missing)}.",
                    }
                },
            )
            return
        scheme, _, token = (_header(scope, b"authorization") or "").partition(" ")
        verified = None
        if scheme.lower() == "bearer" and token.strip():
            verified = verifier.verify(token.strip())
        if verified is None or not verified["app_only"]:
            record(401, "unauthorized")
            why = "a user's token" if verified is not None else "no valid token"
            await _answer(
                send,
                401,
                {"error": {"code": "unauthorized", "message": f"the toolbox got {why}"}},
                www_authenticate='Bearer error="invalid_token"',
            )
            return
        if self.legacy and _is_modern(_header(scope, b"mcp-protocol-version")):
            record(400, "modern_refused")
            await _answer(send, 400, {"error": {"code": "unsupported_protocol_version"}})
            return
        user: str | None = None
        if call is not None:
            with self._lock:
                user = self._calls.get(call)
            if user is None:
                record(403, "unknown_call")
                await _answer(
                    send,
                    403,
                    {"error": {"code": "unknown_call", "message": "unknown call id"}},
                )
                return
        counters = [rpc] if rpc else []
        if rpc in _RPC_METHODS:
            with self._lock:
                consent = self._consent.get(user) if user is not None else None
            if consent is not None and rpc in consent[0]:
                details = {
                    "errors": [
                        {
                            "name": self.name,
                            "type": "mcp",
                            "error": {"code": "CONSENT_REQUIRED", "message": consent[1]},
                        }
                    ]
                }
                record(200, *counters, "consent_required", user=user)
                await _answer(
                    send,
                    200,
                    {
                        "jsonrpc": "2.0",
                        "id": rpc_id,
                        "error": {
                            "code": FOUNDRY_CONSENT_REQUIRED,
                            "message": f"{rpc} failed: consent required {json.dumps(details)}",
                        },
                    },
                )
                return
            if rpc == "tools/call" and user is None:
                record(200, *counters, "no_user_call")
                await _answer(
                    send,
                    200,
                    {
                        "jsonrpc": "2.0",
                        "id": rpc_id,
                        "error": {
                            "code": -32600,
                            "message": f"tools/call needs {CALL_ID_HEADER}: the toolbox runs "
                            "delegated tools as the user it resolves from the call id",
                        },
                    },
                )
                return
        recorded = False

        async def replay() -> dict[str, Any]:
            if messages:
                return messages.pop(0)
            return dict(await receive())

        async def spy(message: dict[str, Any]) -> None:
            nonlocal recorded
            if message["type"] == "http.response.start" and not recorded:
                # Recorded when the answer starts, before the client sees it: a long GET
                # stream is in seen() as soon as it is open.
                recorded = True
                record(int(message["status"]), *counters, user=user)
            await send(message)

        reset = _who.set((user, call))
        try:
            await inner(scope, replay, spy)
        finally:
            _who.reset(reset)
            if not recorded:
                record(500, *counters, user=user)

    def start(self) -> ToolboxStandIn:
        if self._server is not None:
            return self
        config = uvicorn.Config(
            self._build(),
            host="127.0.0.1",
            port=0,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name=f"toolbox-{self.name}", daemon=True)
        thread.start()
        for _ in range(3000):  # bounded: at most ~30 s
            if server.started or not thread.is_alive():
                break
            thread.join(0.01)
        if not server.started:
            server.should_exit = True
            thread.join(5)
            raise RuntimeError("the toolbox stand-in did not start")
        self.port = server.servers[0].sockets[0].getsockname()[1]
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None and thread is not None:
            server.should_exit = True
            thread.join(15)

    def __enter__(self) -> ToolboxStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (
            f"ToolboxStandIn(url={self.url!r}, require_features={self.require_features}, "
            f"features={','.join(self.features)!r})"
        )
