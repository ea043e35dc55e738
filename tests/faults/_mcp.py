"""MCP server faults through ``entra_mcp_tool``: the server restarted, slow, answering 401, 403,
404 or a JSON-RPC -32000 to a ``tools/call``. Shared by tests/faults/test_mcp_faults.py and the
fault report (``python -m bench._faults``), which imports it with ``tests/`` on ``sys.path``.

Per fault: ``calls`` users each call ``whoami`` once while the fault lasts, then once more after
it; figures: outcomes by type, calls answered as someone else (must be 0), calls the server ran
more than once (must be 0), tools whose calls still fail after the fault is gone (connections
lost for good, must be 0), tokens found in any log record (must be 0).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench._faults import tokens_in

from _support.mcp_world import (
    Recorder,
    ServerThread,
    agent_token,
    build_mcp_app,
    make_chain,
    mcp_scopes,
    world_with_users,
)
from entra_passthrough import bind_caller
from entra_passthrough.agent_framework import entra_mcp_tool
from entra_passthrough.testing import EntraEmulator

ASGI = Any


@dataclass
class FaultBox:
    """The fault the next ``count`` tools/call POSTs get (``kind``: slow, 401, 403, 404,
    -32000)."""

    kind: str | None = None
    count: int = 0
    delay: float = 1.5
    hits: int = 0
    lock: asyncio.Lock | None = field(default=None, repr=False)

    def take(self) -> str | None:
        if self.kind is None or self.count <= 0:
            return None
        self.count -= 1
        self.hits += 1
        return self.kind


def faulty(app: ASGI, box: FaultBox) -> ASGI:
    async def wrapper(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await app(scope, receive, send)
            return
        messages = []
        body = b""
        while True:
            message = await receive()
            messages.append(message)
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        is_call = isinstance(parsed, dict) and parsed.get("method") == "tools/call"
        kind = box.take() if is_call else None

        async def replay() -> dict[str, Any]:
            return messages.pop(0) if messages else await receive()  # then the live stream

        if kind is None or kind == "slow":
            if kind == "slow":
                await asyncio.sleep(box.delay)
            await app(scope, replay, send)
            return
        if kind == "-32000":
            assert isinstance(parsed, dict)
            payload = {
                "jsonrpc": "2.0",
                "id": parsed.get("id"),
                "error": {"code": -32000, "message": "Internal error in the tool's backend"},
            }
            await _answer(send, 200, payload, [])
            return
        status = int(kind)
        headers: list[tuple[bytes, bytes]] = []
        if status == 401:
            headers.append((b"www-authenticate", b'Bearer error="invalid_token"'))
        if status == 403:
            headers.append((b"www-authenticate", b'Bearer error="insufficient_scope"'))
        message = {401: "invalid token", 403: "forbidden", 404: "Session not found"}[status]
        await _answer(
            send,
            status,
            {"jsonrpc": "2.0", "id": "server-error", "error": {"code": -32600, "message": message}},
            headers,
        )

    return wrapper


async def _answer(
    send: Any, status: int, payload: dict[str, Any], headers: list[tuple[bytes, bytes]]
) -> None:
    raw = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(raw)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": raw})


class _Trap(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(record.getMessage())
        except Exception:
            self.lines.append(record.name)


FAULTS = ("restart", "slow", "401", "403", "404", "-32000")


async def mcp_faults(calls: int = 4) -> list[dict[str, Any]]:
    world, users = world_with_users((calls * 2 + 1) * len(FAULTS) + 2)
    rows: list[dict[str, Any]] = []
    root = logging.getLogger()
    trap = _Trap()
    level = root.level
    root.addHandler(trap)
    root.setLevel(logging.DEBUG)
    try:
        with EntraEmulator(world=world) as idp:
            box = FaultBox()
            recorder = Recorder()
            executions: list[tuple[str, str]] = []
            server = ServerThread(
                lambda base: faulty(
                    build_mcp_app(idp, base_url=base, recorder=recorder, executions=executions),
                    box,
                ),
                name="mcp-faults",
            ).start()
            try:
                pool = iter(users)
                for fault in FAULTS:
                    rows.append(
                        await _one_fault(idp, server, box, executions, fault, calls, pool, trap)
                    )
            finally:
                server.stop()
    finally:
        root.removeHandler(trap)
        root.setLevel(level)
    return rows


async def _one_fault(
    idp: EntraEmulator,
    server: ServerThread,
    box: FaultBox,
    executions: list[tuple[str, str]],
    fault: str,
    calls: int,
    pool: Any,
    trap: _Trap,
) -> dict[str, Any]:
    tool = entra_mcp_tool(
        "records", f"{server.base}/mcp", chain=make_chain(idp), scopes=mcp_scopes(idp)
    )
    outcomes: Counter[str] = Counter()
    after: Counter[str] = Counter()
    start_lines = len(trap.lines)
    start_exec = len(executions)
    try:
        warm = next(pool)
        with bind_caller(token=agent_token(idp, warm)):
            await tool.call_tool("whoami", who=warm.oid)
        if fault == "restart":
            server.restart()
        else:
            box.kind, box.count, box.hits = fault, calls, 0
        for _ in range(calls):
            user = next(pool)
            with bind_caller(token=agent_token(idp, user)):
                try:
                    await tool.call_tool("whoami", who=user.oid)
                except Exception as exc:
                    outcomes[type(exc).__name__] += 1
                else:
                    outcomes["ok"] += 1
        box.kind, box.count = None, 0
        for _ in range(calls):
            user = next(pool)
            with bind_caller(token=agent_token(idp, user)):
                try:
                    await tool.call_tool("whoami", who=user.oid)
                except Exception as exc:
                    after[type(exc).__name__] += 1
                else:
                    after["ok"] += 1
    finally:
        await tool.close()
    # What the server ran: (the caller's own oid sent as "who", the verified token's oid).
    ran = Counter(who for who, _ in executions[start_exec:])
    mismatched = sum(1 for who, oid in executions[start_exec:] if who != oid)
    return {
        "group": "MCP server",
        "fault": {"restart": "restarted between calls", "slow": "slow (1.5 s per call)"}.get(
            fault, f"answers {fault} to tools/call"
        ),
        "calls": calls * 2,
        "outcomes": dict(outcomes),
        "outcomes_after": dict(after),
        "answered_as_someone_else": mismatched,
        "ran_twice": sum(1 for n in ran.values() if n > 1),
        "lost_for_good": 1 if after.get("ok", 0) != calls else 0,
        "tokens_logged": tokens_in(idp, "\n".join(trap.lines[start_lines:])),
        "app_fallbacks": mismatched,
        "requests": {},
    }
