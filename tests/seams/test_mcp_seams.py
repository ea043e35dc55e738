"""The private names of the mcp SDK that ``_mcp_seams`` touches are where it expects them. Each
failure names mcp's version, what moved, and the seam to update."""

from __future__ import annotations

import inspect
from importlib import metadata
from typing import Any

import anyio
from mcp import ClientSession

from entra_passthrough._mcp_seams import set_elicitation_callback

MCP = f"mcp {metadata.version('mcp')}"


def moved(package: str, name: str, seam: str) -> str:
    return f"{package} moved or changed `{name}`: update _mcp_seams.py ({seam})."


async def test_set_elicitation_callback_replaces_the_sessions_callback() -> None:
    async def callback(context: Any, params: Any) -> Any:
        return None

    send, receive = anyio.create_memory_object_stream[Any](1)
    with send, receive:
        session = ClientSession(receive, send)
        assert set_elicitation_callback(session, callback), moved(
            MCP, "ClientSession._elicitation_callback", "set_elicitation_callback"
        )
        assert session._elicitation_callback is callback
    # The session answers elicitation/create through that slot (read on each request).
    source = inspect.getsource(ClientSession)
    assert "await self._elicitation_callback(" in source, moved(
        MCP, "ClientSession's call of _elicitation_callback", "set_elicitation_callback"
    )
    assert set_elicitation_callback(object(), callback) is False
