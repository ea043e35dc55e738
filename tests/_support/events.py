"""An in-memory mcp ``EventStore`` keyed by stream id alone (the shape of the SDK examples'
store), for tests of resumed SSE answers (``Last-Event-ID``)."""

from __future__ import annotations

import itertools
from typing import Any

from mcp.server.streamable_http import EventMessage, EventStore


class MemoryEventStore(EventStore):
    """Every event in order; a replay sends the events of the stream ``last_event_id`` is in
    that were stored after it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, Any]] = []
        self._ids = itertools.count(1)

    async def store_event(self, stream_id: str, message: Any) -> str:
        event_id = str(next(self._ids))
        self.events.append((event_id, stream_id, message))
        return event_id

    async def replay_events_after(self, last_event_id: str, send_callback: Any) -> str | None:
        stream: str | None = None
        for event_id, stream_id, message in self.events:
            if stream is None:
                if event_id == last_event_id:
                    stream = stream_id
                continue
            if stream_id == stream and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream
