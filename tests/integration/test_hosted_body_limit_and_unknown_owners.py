"""A real ``ResponsesHostServer`` behind ``install(host)``: large create bodies, and ids with no
known owner.

* ``BackgroundRunCallers`` read at most 1 MiB of a create body, ``ResponseOwners`` 32 MiB: a
  ``"background": true`` request between the two was accepted, run as a foreground one, and its
  run's tool calls had no caller (the request's had ended): the user got the host's bare "An
  internal server error occurred." or a ``NoCallerError``, neither naming the size. Both read the
  same 32 MiB now, and a larger body is a typed 413 that says the limit, from either of them.
* With owners kept in this process, an id whose owner is not known (a restart, another replica)
  is a bare 404; the first such refusal now logs one WARNING naming the store to configure.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import pytest
from agent_framework import Agent, tool
from agent_framework_foundry_hosting import ResponsesHostServer

from _support.mcp_world import serve_asgi
from entra_passthrough import CallerMiddleware, current_caller
from entra_passthrough.agent_framework import BackgroundRunCallers, _hosting, install
from entra_passthrough.agent_framework.testing import ScriptedChatClient

PLATFORM = {"x-agent-user-id": "platform-large-body-user"}
MIB = 1024 * 1024


@tool
async def whose_run() -> str:
    """Who the tool call acts for: the active caller's platform user id."""
    caller = current_caller()
    if caller is None or not caller.active:
        return "no active caller"
    return f"caller {caller.user_id}"


@asynccontextmanager
async def _serving(app: Any) -> AsyncIterator[httpx2.AsyncClient]:
    server = serve_asgi(app, name="host")
    try:
        async with httpx2.AsyncClient(base_url=server.base, timeout=60, trust_env=False) as client:
            yield client
    finally:
        server.stop()


def _agent(before_call: Any = None) -> Agent:
    return Agent(
        client=ScriptedChatClient(tool="whose_run", before_call=before_call), tools=[whose_run]
    )


def _text(payload: dict[str, Any]) -> str:
    return json.dumps(payload.get("output") or [])


async def test_a_background_body_over_one_mib_keeps_its_run_caller() -> None:
    posted = threading.Event()

    async def wait_for_post() -> None:
        # The tool call waits until the POST has returned (and its request's Caller ended).
        assert await asyncio.to_thread(posted.wait, 20)

    host = install(ResponsesHostServer(_agent(wait_for_post), configure_observability=None))
    async with _serving(host) as client:
        created = await client.post(
            "/responses",
            json={"input": "big " + "z" * (3 * MIB // 2), "store": True, "background": True},
            headers=PLATFORM,
        )
        posted.set()
        assert created.status_code == 200, created.text[:300]
        rid = created.json()["id"]
        polled: dict[str, Any] = {}
        for _ in range(300):  # bounded: ~30 s
            polled = (await client.get(f"/responses/{rid}", headers=PLATFORM)).json()
            if polled.get("status") not in ("queued", "in_progress"):
                break
            await asyncio.sleep(0.1)
    assert polled.get("status") == "completed", str(polled)[:500]
    assert "caller platform-large-body-user" in _text(polled), _text(polled)[:500]


def _over_the_limit(background: bool) -> bytes:
    body = {"input": "z" * (32 * MIB), "store": True, "background": background}
    return json.dumps(body).encode()


def _assert_413_says_the_limit(answer: httpx2.Response) -> None:
    assert answer.status_code == 413, answer.text[:300]
    error = answer.json()["error"]
    assert error["code"] == "request_too_large"
    assert error["type"] == "invalid_request_error"
    assert "32 MiB" in error["message"]


async def test_a_body_over_the_limit_is_a_413_that_says_the_limit() -> None:
    # install(host): ResponseOwners (outside) reads the body first.
    host = install(ResponsesHostServer(_agent(), configure_observability=None))
    async with _serving(host) as client:
        answer = await client.post(
            "/responses",
            content=_over_the_limit(True),
            headers={**PLATFORM, "content-type": "application/json"},
        )
        _assert_413_says_the_limit(answer)


async def test_background_run_callers_alone_refuses_a_body_it_cannot_read() -> None:
    # A host assembled without ResponseOwners: BackgroundRunCallers cannot read "background"
    # in it, so it is refused rather than run with a Caller that ends with the request.
    host = ResponsesHostServer(_agent(), configure_observability=None)
    host.add_middleware(BackgroundRunCallers)
    host.add_middleware(CallerMiddleware)
    async with _serving(host) as client:
        answer = await client.post(
            "/responses",
            content=_over_the_limit(True),
            headers={**PLATFORM, "content-type": "application/json"},
        )
        _assert_413_says_the_limit(answer)
        assert "background" in answer.json()["error"]["message"]


async def test_an_unknown_owner_is_said_once_with_the_store_to_configure(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_hosting, "_unknown_owner_said", False, raising=False)
    host = install(ResponsesHostServer(_agent(), configure_observability=None))
    alice = {"x-agent-user-id": "platform-owner-alice"}
    bob = {"x-agent-user-id": "platform-owner-bob"}
    caplog.set_level(logging.WARNING, logger="entra_passthrough.agent_framework")

    def said() -> list[str]:
        return [
            record.getMessage()
            for record in caplog.records
            if record.name == "entra_passthrough.agent_framework"
            and "no known owner" in (record.getMessage())
        ]

    async with _serving(host) as client:
        created = await client.post(
            "/responses", json={"input": "hi", "store": True}, headers=alice
        )
        assert created.status_code == 200, created.text[:300]
        rid = created.json()["id"]
        # Another user's id is a known owner: refused, nothing to say.
        assert (await client.get(f"/responses/{rid}", headers=bob)).status_code == 404
        assert said() == []
        # An id created before a restart (its owner not known here): refused, said once.
        unknown = "caresp_" + "0" * 40
        for path in (f"/responses/{unknown}", f"/responses/{unknown}1"):
            assert (await client.get(path, headers=alice)).status_code == 404
        continued = await client.post(
            "/responses",
            json={"input": "again", "store": True, "previous_response_id": unknown},
            headers=alice,
        )
        assert continued.status_code == 404
    lines = said()
    assert len(lines) == 1, lines
    assert "install(host, response_owners=RedisStore" in lines[0]
    assert "in-process" in lines[0]
    assert unknown not in lines[0]
