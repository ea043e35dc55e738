"""The records ``ResponseOwners`` writes to a shared store are in docs/scale-out.md's "What is
stored" table, with the value and TTLs they really have: a real redis-server, the middleware
in front of a stand-in Responses host, requests through httpx2's ASGI transport."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import httpx2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from entra_passthrough import UserKey, bind_caller
from entra_passthrough.agent_framework import RESPONSE_OWNER_SECONDS, ResponseOwners
from entra_passthrough.redis import RedisStore

from ._server import RedisServer

PAGE = Path(__file__).resolve().parents[2] / "docs" / "scale-out.md"


def _table() -> str:
    text = PAGE.read_text(encoding="utf-8")
    section = text.split("## What is stored, and for how long", 1)[1].split("\n## ", 1)[0]
    return "\n".join(line for line in section.splitlines() if line.startswith("| `"))


def _name(kind: str, name: str) -> str:
    return "ep:v1:owner:" + hashlib.sha256(f"{kind}\x00{name}".encode()).hexdigest()


async def test_owner_records_are_the_documented_ones(redis_server: RedisServer) -> None:
    async def create(request: Request) -> JSONResponse:
        return JSONResponse({"id": "resp_documented_1", "object": "response"})

    host = Starlette(routes=[Route("/responses", create, methods=["POST"])])
    store = RedisStore.from_url(redis_server.url, namespace="owners-doc:")
    app = ResponseOwners(host, store=store)
    raw = redis_server.client()
    try:
        async with httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=app), base_url="http://agent"
        ) as client:
            with bind_caller(user_id="platform-user-owner-doc"):
                answer = await client.post(
                    "/responses", content=json.dumps({"conversation": "conv_documented_1"})
                )
        assert answer.status_code == 200, answer.text
        written = sorted(k.decode() for k in raw.scan_iter("owners-doc:*"))
        user = UserKey.for_platform_user("platform-user-owner-doc").hashed.encode()
        expected = {
            _name("response", "resp_documented_1"): (user, RESPONSE_OWNER_SECONDS),
            _name("conversation", "conv_documented_1"): (user, RESPONSE_OWNER_SECONDS),
            _name("probe", ""): (b"", 60.0),
        }
        assert written == sorted("owners-doc:" + name for name in expected)
        for name, (value, ttl) in expected.items():
            record = raw.get("owners-doc:" + name)
            assert record is not None, name
            assert record.split(b".", 1)[1] == value, (name, record)
            assert ttl - 60 <= raw.ttl("owners-doc:" + name) <= ttl, name
    finally:
        raw.close()
        await store.aclose()
    # Every kind of record written has a row, saying what its value is and for how long.
    rows = [row for row in _table().splitlines() if row.startswith("| `ep:v1:owner:")]
    assert len(rows) == 1, "no row for ep:v1:owner: records in scale-out.md's table"
    row = rows[0]
    for said in ("UserKey.hashed", "anonymous", "not sealed", "30 days", "1 h", "60 s"):
        assert said in row, f"the owner row does not say {said!r}"
    assert re.search(r"RESPONSE_OWNER_SECONDS", row)
