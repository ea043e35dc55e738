"""Real components for the integration, churn, fault and consent tests: the Entra emulator
with many users, a real mcp server (``MCPServer`` + ``EntraTokenVerifier``) on uvicorn that
records every HTTP request it receives, and a real ``ResponsesHostServer`` on uvicorn.
Readiness is polled, never slept for.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import MCPDeprecationWarning
from mcp.server.mcpserver import MCPServer
from mcp_types import ElicitRequest, ElicitRequestURLParams, InputRequiredResult
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from _support.servers import ServerThread
from entra_passthrough import JwtVerifier, OnBehalfOf, Policy, TokenChain, TokenVerificationError
from entra_passthrough._jwt import JwtDecodeError, UnverifiedClaims
from entra_passthrough.server import (
    EntraChallengeMiddleware,
    EntraTokenVerifier,
    auth_settings,
    current_user,
)
from entra_passthrough.testing import EntraEmulator, World
from entra_passthrough.testing._world import Grant, User, stable_id

ASGI = Callable[..., Any]

CONSENT_URL = "https://notes.example.com/connect?user=me"


# --- autouse fixtures for the packages that run agents against MCP servers ----------------------
# A package's conftest imports them (``from _support.mcp_world import ...``): pytest registers the
# fixtures a conftest holds, imported or not.


@pytest.fixture(autouse=True)
def legacy_ping_is_expected() -> None:
    """agent-framework pings legacy (mcp 1.x-style) sessions and mcp 2.3 warns that ping is
    gone in protocol 2026-07-28. Under filterwarnings=error that warning would fail every ping
    (in the host's thread too) and force a reconnect: ignore it, it is not ours (pytest restores
    the filters after each test)."""
    warnings.filterwarnings("ignore", message="ping is removed", category=MCPDeprecationWarning)


@pytest.fixture(autouse=True)
def agentserver_state_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hosted agents' state (ResponsesHostServer) goes to the test's tmp_path."""
    monkeypatch.setenv("AGENTSERVER_STATE_ROOT", str(tmp_path / "agentserver"))


# --- the world ------------------------------------------------------------------------------


def synthetic_users(world: World, count: int) -> list[User]:
    tenant = world.tenants[0]
    return [
        User(
            name=f"user{i:03d}",
            upn=f"user{i:03d}@{tenant.domain}",
            oid=stable_id("user", tenant.name, f"user{i:03d}"),
            tenant_id=tenant.id,
            password=f"user{i:03d}-password",
            display_name=f"Synthetic User {i}",
        )
        for i in range(count)
    ]


def world_with_users(count: int) -> tuple[World, list[User]]:
    world = World.default()
    users = synthetic_users(world, count)
    agent = world.app("agent")
    mcp = world.app("mcp")
    assert agent is not None
    assert mcp is not None
    for user in users:
        world = world.with_user(user)
        world = world.with_grant(
            Grant(agent.client_id, mcp.client_id, ("access_as_user",), user=user.name)
        )
    return world, users


def make_chain(idp: EntraEmulator, *, policy: Policy = Policy.USER_ONLY, **kw: Any) -> TokenChain:
    obo = OnBehalfOf(
        client_id=idp.agent.client_id,
        tenant_id=idp.tenant_id,
        client_secret=idp.agent.secret,
        authority_host=idp.url,
        http_client=idp.msal_http_client(),
        max_workers=8,
    )
    return TokenChain([obo], policy=policy, **kw)


def mcp_scopes(idp: EntraEmulator) -> list[str]:
    return [f"{idp.mcp.app_id_uri}/.default"]


def agent_token(idp: EntraEmulator, user: str | User, **kw: Any) -> str:
    return idp.user_token(user, audience=idp.agent.client_id, **kw)


# --- what the MCP server saw ------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    method: str  # HTTP method
    rpc: str | None  # JSON-RPC method (None for GET/DELETE or a batch/notification-less body)
    oid: str | None  # the bearer's oid (unverified; the server verified it), None = no token
    status: int
    tool: str | None = None
    caller_tag: str | None = None  # the "who" argument of a tools/call
    session: str | None = None  # mcp-session-id sent, or assigned by the answer to initialize
    at: float = 0.0  # time.monotonic() when the request arrived


@dataclass
class Recorder:
    """Every request, in the order it *arrived* (a long GET stream is listed when it opened)."""

    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, item: Seen) -> int:
        with self.lock:
            self.seen.append(item)
            return len(self.seen) - 1

    def finish(self, index: int, status: int, session: str | None = None) -> None:
        with self.lock:
            self.seen[index] = replace(self.seen[index], status=status, session=session)

    def snapshot(self) -> list[Seen]:
        with self.lock:
            return list(self.seen)

    def clear(self) -> None:
        with self.lock:
            self.seen.clear()


def _bearer_oid(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return None
            try:
                return UnverifiedClaims.from_token(token.strip()).oid or "?"
            except JwtDecodeError:
                return "undecodable"
    return None


def _header(headers: list[tuple[bytes, bytes]], wanted: bytes) -> str | None:
    for name, value in headers:
        if name.lower() == wanted:
            return value.decode("latin-1")
    return None


async def read_json_request(receive: Any) -> tuple[Any, Callable[[], Awaitable[Any]]]:
    """Read a request's whole body ahead of the app: its JSON (``None`` if empty or not JSON)
    and a ``receive`` for the app that replays the messages read, then reads on."""
    messages: list[dict[str, Any]] = []
    body = b""
    while True:
        message = await receive()
        messages.append(message)
        body += message.get("body", b"")
        if message["type"] != "http.request" or not message.get("more_body"):
            break
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        parsed = None

    async def replay() -> Any:
        return messages.pop(0) if messages else await receive()

    return parsed, replay


_EXPIRED = TokenVerificationError("the token has expired")


def refusing_rpc(
    app: ASGI,
    base: str,
    rpc: str,
    seen: list[str],
    *,
    hold: Callable[[float], float] | None = None,
    refusal: TokenVerificationError | None = _EXPIRED,
    scopes: tuple[str, ...] = ("api://records/.default",),
    when: Callable[[], bool] = lambda: True,
) -> ASGI:
    """Answers every JSON-RPC ``rpc`` POST (while ``when()``) with the library's own 401/403
    challenge for ``refusal`` (default: an expired token, 401 ``invalid_token``; ``None``: a bare
    401 with no error code), recording it
    in ``seen``; with ``hold``, only once ``hold(exp)`` has passed (``exp``: the bearer token's,
    0 without one): a request that reached the server after its token's end. The rest goes on."""
    from entra_passthrough._types import token_exp
    from entra_passthrough._www_auth import challenge, send_challenge

    async def wrapper(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await app(scope, receive, send)
            return
        body, replay = await read_json_request(receive)
        if not isinstance(body, dict) or body.get("method") != rpc or not when():
            await app(scope, replay, send)
            return
        seen.append(rpc)
        if hold is not None:
            bearer = dict(scope["headers"]).get(b"authorization", b"").decode()
            moment = hold(token_exp(bearer.removeprefix("Bearer ")) or 0.0)
            await asyncio.sleep(min(10.0, max(0.0, moment - time.time()) + 0.05))
        status, header, payload = challenge(
            error=refusal,
            resource_metadata=f"{base}/.well-known/oauth-protected-resource/mcp",
            scopes=list(scopes),
        )
        await send_challenge(send, status, header, payload)

    return wrapper


def recording(app: ASGI, recorder: Recorder) -> ASGI:
    """Outermost ASGI wrapper: records (method, JSON-RPC method, token oid, status) for every
    HTTP request, whatever the app answers."""

    async def wrapper(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        parsed, replay = await read_json_request(receive)
        rpc = tool = tag = None
        if isinstance(parsed, dict):
            rpc = parsed.get("method") if isinstance(parsed.get("method"), str) else None
            params = parsed.get("params") if isinstance(parsed.get("params"), dict) else {}
            if rpc == "tools/call":
                tool = params.get("name")
                args = params.get("arguments") or {}
                tag = args.get("who") if isinstance(args, dict) else None
        status = {"code": 0}

        session = _header(scope.get("headers") or [], b"mcp-session-id")

        async def spy(message: dict[str, Any]) -> None:
            nonlocal session
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                session = session or _header(message.get("headers") or [], b"mcp-session-id")
            await send(message)

        index = recorder.add(
            Seen(
                method=scope["method"],
                rpc=rpc,
                oid=_bearer_oid(scope.get("headers") or []),
                status=0,
                tool=tool,
                caller_tag=tag,
                at=time.monotonic(),
            )
        )
        try:
            await app(scope, replay, spy)
        finally:
            recorder.finish(index, status["code"], session)

    return wrapper


def legacy_only(app: ASGI) -> ASGI:
    """Make the server look like an mcp 1.x server: modern (2026-07-28) requests are refused
    (HTTP 400, no JSON-RPC body), so mcp 2.x clients fall back to ``initialize`` and a
    ``mcp-session-id`` session, which the SDK binds to the principal that opened it."""
    modern = {v.encode() for v in MODERN_PROTOCOL_VERSIONS}

    async def wrapper(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            for name, value in scope.get("headers") or []:
                if name.lower() == b"mcp-protocol-version" and value in modern:
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 400,
                            "headers": [(b"content-type", b"text/plain")],
                        }
                    )
                    await send({"type": "http.response.body", "body": b"legacy server"})
                    return
        await app(scope, receive, send)

    return wrapper


class _UserOrApp:
    """Delegated tokens as usual; app-only tokens only with the Tools.Call role."""

    def __init__(self, user: JwtVerifier, app: JwtVerifier) -> None:
        self.user, self.app = user, app
        self.audiences = user.audiences

    async def verify_async(self, token: str) -> Any:
        try:
            return await self.user.verify_async(token)
        except TokenVerificationError:
            return await self.app.verify_async(token)


def build_mcp_app(
    idp: EntraEmulator,
    *,
    base_url: str,
    recorder: Recorder,
    stateful: bool = False,
    allow_app: bool = False,
    executions: list[tuple[str, str]] | None = None,
    hold: float = 0.0,
    gate: threading.Event | None = None,
    json_response: bool = True,
    extra_tools: Callable[[MCPServer], None] | None = None,
) -> ASGI:
    """The recording MCP server. ``executions``, when given, gets ``(who, oid)`` each time the
    ``whoami`` tool body runs: what ran on the server, by whom, however often it was sent.
    ``hold`` keeps each ``whoami`` call running that long after it was recorded (so that a
    restart finds calls in flight); ``gate``, when given, keeps it running until the test sets
    it (bounded: 30 s). ``json_response=False`` answers with SSE streams (the mcp SDK's
    default; a legacy session's answers are then always SSE, a modern server's only for a
    handler that runs past its deferral window). ``extra_tools(server)`` registers more tools."""
    jwks_client = httpx2.AsyncClient(
        verify=ssl.create_default_context(cafile=idp.ca_file), trust_env=False
    )
    common: dict[str, Any] = {
        "audiences": [idp.mcp.client_id, idp.mcp.app_id_uri],
        "tenants": [idp.tenant_id],
        "authority_host": idp.url,
        "http_client": jwks_client,
    }
    verifier: Any = JwtVerifier(**common)
    if allow_app:
        app_verifier = JwtVerifier(**common, allow_app_only=True, required_roles=["Tools.Call"])
        verifier = _UserOrApp(verifier, app_verifier)
    auth = auth_settings(
        resource_server_url=f"{base_url}/mcp",
        tenant_id=idp.tenant_id,
        scopes=[] if allow_app else ["access_as_user"],
        app_id_uri=idp.mcp.app_id_uri,
        authority_host=idp.url,
    )
    server = MCPServer(
        "records",
        token_verifier=EntraTokenVerifier(verifier, app_id_uri=idp.mcp.app_id_uri),
        auth=auth,
    )

    @server.tool()
    async def whoami(who: str = "") -> str:
        """Who the server sees, and who the model said was asking (``who``)."""
        user = current_user()
        if executions is not None:
            executions.append((who, user.oid))  # list.append is atomic: no lock needed
        if hold:
            await asyncio.sleep(hold)
        if gate is not None:
            await asyncio.to_thread(gate.wait, 30)
        return json.dumps({"oid": user.oid, "upn": user.upn, "who": who})

    @server.tool()
    async def needs_link() -> InputRequiredResult:
        """Asks the user to visit a link first (URL elicitation, protocol 2026-07-28)."""
        params = ElicitRequestURLParams(
            message="Sign in to the notes service", url=CONSENT_URL, elicitation_id="e1"
        )
        return InputRequiredResult(input_requests={"consent": ElicitRequest(params=params)})

    if extra_tools is not None:
        extra_tools(server)

    app = server.streamable_http_app(stateless_http=not stateful, json_response=json_response)
    wrapped: ASGI = EntraChallengeMiddleware(app, settings=auth)
    if stateful:
        wrapped = legacy_only(wrapped)
    return closing_on_shutdown(recording(wrapped, recorder), jwks_client)


def closing_on_shutdown(app: ASGI, client: httpx2.AsyncClient) -> ASGI:
    """Close ``client`` when the server shuts down (lifespan), in the server's own loop."""

    async def wrapper(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return

        async def on_send(message: dict[str, Any]) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await client.aclose()
            await send(message)

        await app(scope, receive, on_send)

    return wrapper


def host_app(agent: Any, *, close_on_shutdown: tuple[Any, ...] | list[Any] = ()) -> Any:
    """A ``ResponsesHostServer`` for tests: capture installed, no console telemetry exporters."""
    from agent_framework_foundry_hosting import ResponsesHostServer

    from entra_passthrough.agent_framework import install

    app = ResponsesHostServer(agent, configure_observability=None)
    return install(app, close_on_shutdown=close_on_shutdown)


# --- uvicorn in a thread, restartable on the same port (tests/_support/servers.py) ---------------


def mcp_behind(
    idp: EntraEmulator, hop_port: int, executions: list[tuple[str, str]]
) -> ServerThread:
    """A real MCP server that clients reach through a TCP hop on ``hop_port`` (its advertised
    base URL is the hop's); ``executions`` records every tool run. Set the hop's ``upstream``
    to the returned server's port."""
    return ServerThread(
        lambda _base: build_mcp_app(
            idp,
            base_url=f"http://127.0.0.1:{hop_port}",
            recorder=Recorder(),
            executions=executions,
        ),
        name="mcp",
    ).start()


def serve_asgi(app: ASGI, *, name: str) -> ServerThread:
    return ServerThread(lambda _base: app, name=name).start()


def lifecycle(seen: list[Seen]) -> list[Seen]:
    """Requests that are not tools/call POSTs: discovery, tools/list, ping, GET, DELETE..."""
    return [s for s in seen if s.rpc != "tools/call"]


def calls(seen: list[Seen]) -> list[Seen]:
    return [s for s in seen if s.rpc == "tools/call"]


# --- driving a ResponsesHostServer ---------------------------------------------------------------


async def respond(
    client: httpx2.AsyncClient, token: str | None, text: str, **body: Any
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await client.post(
        "/responses", json={"input": text, "store": False, **body}, headers=headers
    )
    assert response.status_code == 200, response.text[:500]
    payload: dict[str, Any] = response.json()
    return payload


def output_text(payload: dict[str, Any]) -> str:
    texts = [
        part.get("text", "")
        for item in payload.get("output", [])
        if item.get("type") == "message"
        for part in item.get("content", [])
    ]
    return "\n".join(texts)


def tool_outputs(payload: dict[str, Any]) -> list[str]:
    return [
        str(item.get("output"))
        for item in payload.get("output", [])
        if item.get("type") == "function_call_output"
    ]


def seen_oid(payload: dict[str, Any]) -> str | None:
    """The oid the MCP server reported for the (single) tool call of this response."""
    for raw in tool_outputs(payload):
        try:
            outer = json.loads(raw)
            inner = json.loads(outer["result"]) if isinstance(outer, dict) else None
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(inner, dict) and isinstance(inner.get("oid"), str):
            return str(inner["oid"])
    return None
