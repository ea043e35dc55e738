"""One ASGI GET driven in process, for tests of plain ASGI layers (no server needed)."""

from __future__ import annotations

from typing import Any


async def asgi_get(
    app: Any,
    headers: list[tuple[bytes, bytes]],
    *,
    path: str = "/me",
    scheme: str = "https",
    client: tuple[str, int] = ("127.0.0.1", 5000),
    server: tuple[str, int] = ("api.test", 443),
) -> tuple[int, dict[bytes, bytes]]:
    """Send ``GET path`` with ``headers`` through ``app``; its status and response headers."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": scheme,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "server": server,
        "client": client,
    }
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], dict(start.get("headers") or [])
