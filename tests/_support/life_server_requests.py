"""A real legacy (stateful, SSE) MCP server whose tool asks the client something during the call
(``ping``, ``roots/list``), and that records, for every JSON-RPC *answer* the client POSTs back
(its reply to such a request), whose token carried it. Also a server whose typed tool's answer is
rewritten to break the tool's declared output schema. For the integration tests of the
agent-framework tool (``tests/integration``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from pydantic import BaseModel

from _support.mcp_world import (
    ASGI,
    Recorder,
    _bearer_oid,
    build_mcp_app,
    read_json_request,
)
from _support.servers import ServerThread
from entra_passthrough.server import current_user
from entra_passthrough.testing import EntraEmulator

#: Safety net for what the server waits for (never a timed assertion).
BOUND = 20.0


@dataclass(frozen=True)
class Answer:
    """A JSON-RPC answer the client POSTed to the server (to a request the server sent)."""

    rpc_id: Any
    oid: str | None  # the bearer's oid, None without one
    bearer_sha: str | None  # sha256 of the bearer token (compared, never shown)
    status: int  # what the server answered that POST


@dataclass
class ServerLog:
    """What the server saw: the client's answers, each tool run, and the bearer of each
    ``tools/call`` by its ``who`` argument (sha256)."""

    answers: list[Answer] = field(default_factory=list)
    runs: list[tuple[str, str]] = field(default_factory=list)  # (who, verified oid)
    call_bearers: dict[str, str | None] = field(default_factory=dict)
    asked: list[tuple[str, str]] = field(default_factory=list)  # (who, outcome)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Set by the test: a ``later`` question is asked on its session only then.
    ask_now: threading.Event = field(default_factory=threading.Event)

    def snapshot_answers(self) -> list[Answer]:
        with self.lock:
            return list(self.answers)

    def runs_of(self, who: str) -> int:
        with self.lock:
            return sum(1 for tag, _ in self.runs if tag == who)


def _bearer_sha(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name.lower() == b"authorization":
            token = value.decode("latin-1").partition(" ")[2].strip()
            return hashlib.sha256(token.encode()).hexdigest() if token else None
    return None


def _recording_answers(app: ASGI, log: ServerLog) -> ASGI:
    """Outermost: records each POSTed JSON-RPC answer (``result``/``error``, no ``method``)
    with its bearer and the status the server gave it, and each ``tools/call``'s bearer."""

    async def wrapper(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await app(scope, receive, send)
            return
        body, replay = await read_json_request(receive)
        headers = scope.get("headers") or []
        if isinstance(body, dict) and body.get("method") == "tools/call":
            args = (body.get("params") or {}).get("arguments") or {}
            who = args.get("who") if isinstance(args, dict) else None
            if isinstance(who, str):
                with log.lock:
                    log.call_bearers[who] = _bearer_sha(headers)
        is_answer = (
            isinstance(body, dict)
            and "method" not in body
            and ("result" in body or "error" in body)
        )
        if not is_answer:
            await app(scope, replay, send)
            return
        status = {"code": 0}

        async def spy(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await app(scope, replay, spy)
        finally:
            with log.lock:
                log.answers.append(
                    Answer(
                        body.get("id"), _bearer_oid(headers), _bearer_sha(headers), status["code"]
                    )
                )

    return wrapper


def _asking_tools(log: ServerLog, background: set[asyncio.Task[None]]) -> Any:
    def register(server: MCPServer) -> None:
        @server.tool()
        async def ask(ctx: Context, who: str = "", what: str = "ping", later: bool = False) -> str:
            """Asks the client something (``ping`` or ``roots``) during the call; with
            ``later``, once the test sets ``ask_now`` (after the call has returned)."""
            user = current_user()
            with log.lock:
                log.runs.append((who, user.oid))
            session = ctx.session

            async def question() -> str:
                try:
                    if what == "roots":
                        return f"roots: {await session.list_roots()!r}"[:200]
                    return f"ping: {await session.send_ping()!r}"[:200]
                except Exception as exc:  # the client's error answer, or none in time
                    return f"error: {type(exc).__name__}"

            if not later:
                outcome = await asyncio.wait_for(question(), BOUND)
                with log.lock:
                    log.asked.append((who, outcome))
                return json.dumps({"oid": user.oid, "who": who, "asked": outcome})

            async def ask_later() -> None:
                await asyncio.to_thread(log.ask_now.wait, BOUND)
                try:
                    outcome = await asyncio.wait_for(question(), 3.0)
                except TimeoutError:
                    outcome = "no answer"
                with log.lock:
                    log.asked.append((who, outcome))

            task = asyncio.get_running_loop().create_task(ask_later())
            background.add(task)
            task.add_done_callback(background.discard)
            return json.dumps({"oid": user.oid, "who": who, "asked": "later"})

    return register


def asking_legacy_server(idp: EntraEmulator) -> tuple[ServerThread, ServerLog]:
    """A legacy (stateful, SSE answers) MCP server with the ``ask`` tool (plus ``whoami``),
    recording the client's answers. Stop it with ``server.stop()``."""
    log = ServerLog()
    background: set[asyncio.Task[None]] = set()
    server = ServerThread(
        lambda base: _recording_answers(
            build_mcp_app(
                idp,
                base_url=base,
                recorder=Recorder(),
                stateful=True,
                json_response=False,
                extra_tools=_asking_tools(log, background),
            ),
            log,
        ),
        name="mcp-asking",
    ).start()
    return server, log


# --- a typed tool whose answer breaks its declared output schema -------------------------------


class Typed(BaseModel):
    """The ``typed`` tool's output: its declared outputSchema."""

    count: int
    oid: str


#: ``who`` values for which the server's answer to ``typed`` is rewritten.
WRONG = "wrong"  # structuredContent that breaks the schema
MISSING = "missing"  # no structuredContent at all
#: A value the broken answer carries: never quoted in the client's error.
WRONG_VALUE = "a-count-that-is-no-number"


def _breaking_answers(app: ASGI) -> ASGI:
    """Forwards every request (the tool runs); rewrites the JSON answer of a ``typed`` call
    whose ``who`` is ``WRONG`` or ``MISSING``."""

    async def wrapper(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await app(scope, receive, send)
            return
        body, replay = await read_json_request(receive)
        params = body.get("params") if isinstance(body, dict) else None
        args = (params or {}).get("arguments") if isinstance(params, dict) else None
        who = args.get("who") if isinstance(args, dict) else None
        if (
            not isinstance(body, dict)
            or body.get("method") != "tools/call"
            or (params or {}).get("name") != "typed"
            or who not in (WRONG, MISSING)
        ):
            await app(scope, replay, send)
            return
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def rewrite(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            doc = json.loads(b"".join(chunks))
            result = doc["result"]
            if who == WRONG:
                result["structuredContent"] = {"count": WRONG_VALUE, "oid": 5}
            else:
                result.pop("structuredContent", None)
            raw = json.dumps(doc).encode()
            headers = [
                (k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"
            ]
            headers.append((b"content-length", str(len(raw)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": raw})

        await app(scope, replay, rewrite)

    return wrapper


def schema_breaking_server(
    idp: EntraEmulator, executions: list[tuple[str, str]]
) -> tuple[ServerThread, Recorder]:
    """A modern (stateless, JSON answers) MCP server with a ``typed`` tool (it declares an
    outputSchema, ``Typed``) whose answer is rewritten to break it (``WRONG``) or to carry no
    structured content (``MISSING``) after the tool ran; ``executions`` gets ``(who, oid)``
    for each run of ``typed`` (and of ``whoami``)."""
    recorder = Recorder()

    def register(server: MCPServer) -> None:
        @server.tool()
        async def typed(who: str = "") -> Typed:
            """A typed result."""
            user = current_user()
            executions.append((who, user.oid))
            return Typed(count=1, oid=user.oid)

    server = ServerThread(
        lambda base: _breaking_answers(
            build_mcp_app(
                idp,
                base_url=base,
                recorder=recorder,
                executions=executions,
                extra_tools=register,
            )
        ),
        name="mcp-typed",
    ).start()
    return server, recorder
